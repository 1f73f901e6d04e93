import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, uid, type Running } from '../../server/test/helpers.js';
import {
  AuthenticationError, ConflictError, ForbiddenError, NotFoundError, RateLimitedError, SecureConnectClient, ValidationError,
} from '../src/index.js';

describe('SDK REST client against a real server', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  const signUp = async () => {
    const name = `sdk${uid(4)}`;
    const saved: unknown[] = [];
    const c = new SecureConnectClient({ baseUrl: s.url, onTokens: (t) => saved.push(t) });
    const res = await c.register({ email: `${name}@example.test`, username: name, password: `pw-${uid(6)}` });
    return { c, id: res.user.id, name, saved };
  };

  it('registers, converses, pages history and retries sends idempotently', async () => {
    const alice = await signUp();
    const bob = await signUp();
    expect(alice.saved).toHaveLength(1);
    expect((await alice.c.me()).username).toBe(alice.name);

    const conv = await alice.c.direct(bob.id);
    expect((await bob.c.direct(alice.id)).id).toBe(conv.id);
    const first = await alice.c.send(conv.id, { type: 'text', text: 'hello' }, 'retry-1');
    const again = await alice.c.send(conv.id, { type: 'text', text: 'hello' }, 'retry-1');
    expect(again.id).toBe(first.id);
    await bob.c.send(conv.id, { type: 'text', text: 'hi' });
    const page = await bob.c.history(conv.id, { afterSeq: 0 });
    expect(page.map((m) => m.seq)).toEqual([1, 2]);
    await bob.c.markRead(conv.id, 2);
    const list = await bob.c.conversations();
    expect(list.items.find((x) => x.id === conv.id)?.unreadCount).toBe(0);
  });

  it('renews an invalid access token with the refresh token, once, transparently', async () => {
    const alice = await signUp();
    const refreshToken = (alice.saved[0] as { refreshToken: string }).refreshToken;
    const stale = new SecureConnectClient({ baseUrl: s.url, tokens: { accessToken: 'not-a-token', refreshToken } });
    expect((await stale.me()).id).toBe(alice.id);
    expect(stale.accessToken).not.toBe('not-a-token');
  });

  it('maps the error catalogue onto typed errors', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const anon = new SecureConnectClient({ baseUrl: s.url });

    const wrong = await anon.login(alice.name, 'definitely-wrong').catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(AuthenticationError);
    expect((wrong as AuthenticationError).code).toBe('invalid_credentials');
    expect((wrong as AuthenticationError).requestId).toBeTruthy();

    const dup = await anon.register({ email: `${alice.name}@example.test`, username: `x${uid(4)}`, password: 'long-enough-pw' }).catch((e: unknown) => e);
    expect(dup).toBeInstanceOf(ConflictError);
    expect((dup as ConflictError).code).toBe('email_taken');

    const missing = await alice.c.conversation('01890000-0000-7000-8000-000000000000').catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(NotFoundError);

    const invalid = await alice.c.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '' }).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(ValidationError);
    expect((invalid as ValidationError).code).toBe('validation_failed');

    const group = await alice.c.createGroup('g', [bob.id]);
    const msg = await alice.c.send(group.id, { type: 'text', text: 'mine' });
    const notYours = await bob.c.edit(group.id, msg.id, { type: 'text', text: 'hijack' }).catch((e: unknown) => e);
    expect(notYours).toBeInstanceOf(ForbiddenError);
  });

  it('surfaces rate limits with the Retry-After delay', async () => {
    const limited = await startApp({ AUTH_LOGIN_FAILURES_PER_ACCOUNT: '2' });
    try {
      const name = `rl${uid(4)}`;
      const c = new SecureConnectClient({ baseUrl: limited.url });
      await c.register({ email: `${name}@example.test`, username: name, password: 'long-enough-pw' });
      const anon = new SecureConnectClient({ baseUrl: limited.url });
      let err: unknown;
      for (let i = 0; i < 5 && !(err instanceof RateLimitedError); i++) err = await anon.login(name, 'wrong-password').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RateLimitedError);
      expect((err as RateLimitedError).retryAfterSec).toBeGreaterThan(0);
    } finally {
      await limited.close();
    }
  });
});
