/**
 * The realtime session ([CS1]–[CS7]) against a real server (SQLite, or
 * PostgreSQL + Redis when DATABASE_URL/REDIS_URL are set), plus protocol
 * faults that only a scripted server can produce (invalid frames, silence).
 */
import { once } from 'node:events';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { freshDeployment, startApp, uid, type Running } from '../../server/test/helpers.js';
import {
  ConflictError, ForbiddenError, MemoryKeyStore, NotFoundError, PROTOCOL_VERSION, SecureConnectClient, Session, SessionError, ValidationError, keyStoreCursor,
  type Message, type ServerEventOf, type SessionErrorEvent, type SessionOptions, type SessionStateChange, type Tokens, type WebSocketConstructor,
} from '../src/node/index.js';
import { createNodeSession } from '../src/node/index.js';
import { createCommit, createGroup, createGroupInfoWithExternalPubAndRatchetTree, decodeMlsMessage, encodeMlsMessage } from 'ts-mls';
import { b64, makeDeviceKeys, makeKeyPackages, signBindChallenge, unb64 } from '../../server/test/mls-helpers.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(pred: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A `ws` WebSocket that records its URL and the frames it sends, and can drop incoming frames (lost acks). */
function recordingWebSocket() {
  const sockets: Rec[] = [];
  class Rec extends WebSocket {
    readonly sent: any[] = [];
    blackhole = false;
    constructor(readonly url0: string) {
      super(url0);
      sockets.push(this);
    }
    override send(data: any, ...rest: any[]): void {
      this.sent.push(JSON.parse(String(data)));
      (super.send as (...a: any[]) => void).call(this, data, ...rest);
    }
    override emit(event: string | symbol, ...args: any[]): boolean {
      if (event === 'message' && this.blackhole) return false;
      return super.emit(event, ...args);
    }
  }
  return { WS: Rec as unknown as WebSocketConstructor, sockets };
}

/**
 * A TCP load balancer in front of the nodes: `hold()` parks new connections
 * until `route(port)` names the node to send them to.
 */
async function loadBalancer() {
  let target!: Promise<number>;
  let release: (port: number) => void = () => undefined;
  const sockets = new Set<Socket>();
  const server = createServer((downstream) => {
    sockets.add(downstream);
    downstream.pause();
    downstream.on('error', () => downstream.destroy());
    downstream.on('close', () => sockets.delete(downstream));
    void target.then((port) => {
      const upstream = connect(port, '127.0.0.1', () => {
        downstream.pipe(upstream);
        upstream.pipe(downstream);
        downstream.resume();
      });
      sockets.add(upstream);
      upstream.on('error', () => downstream.destroy());
      upstream.on('close', () => {
        sockets.delete(upstream);
        downstream.destroy();
      });
      downstream.on('close', () => upstream.destroy());
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const lb = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold() {
      target = new Promise<number>((resolve) => (release = resolve));
    },
    route(port: number) {
      release(port);
      target = Promise.resolve(port);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const so of sockets) so.destroy();
        server.close(() => resolve());
      }),
  };
  lb.hold();
  return lb;
}

const FAST: Partial<SessionOptions> = { backoff: { initialMs: 50, maxMs: 400 } };

describe('Session against a real server', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  const sessions: Session[] = [];
  afterAll(async () => {
    for (const x of sessions) await x.close();
  });

  async function signUp(base = s.url) {
    const name = `cs${uid(4)}`;
    const password = `pw-${uid(6)}`;
    let tokens: Tokens | null = null;
    const c = new SecureConnectClient({ baseUrl: base, onTokens: (t) => (tokens = t) });
    const res = await c.register({ email: `${name}@example.test`, username: name, password });
    return { c, id: res.user.id, name, password, tokens: () => tokens! };
  }

  /** A session that records what it receives. */
  function open(client: SecureConnectClient, opts: Partial<SessionOptions> = {}) {
    const rec = recordingWebSocket();
    const session = new Session({ client, WebSocket: rec.WS, ...FAST, ...opts });
    sessions.push(session);
    const messages: Message[] = [];
    const errors: SessionErrorEvent[] = [];
    const states: SessionStateChange[] = [];
    session.on('message.created', (e) => {
      messages.push(e.message);
    });
    session.on('error', (e) => {
      errors.push(e);
    });
    session.on('state', (st) => {
      states.push(st);
    });
    return { session, messages, errors, states, sockets: rec.sockets };
  }

  const texts = (ms: Message[]) => ms.map((m) => (m.content.type === 'text' ? m.content.text : m.content.type));

  it('[CS1] authenticates with its first frame (no token in the URL), speaks the protocol version, and delivers typed events', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c);
    const ready = await a.session.start();
    expect(ready.userId).toBe(alice.id);
    expect(a.session.state).toBe('open');

    const url = new URL(a.sockets[0]!.url0);
    expect(`${url.protocol}//${url.host}${url.pathname}`).toBe(`${s.url.replace('http', 'ws')}/v1/ws`);
    expect(url.search).toBe('');
    const auth = a.sockets[0]!.sent[0];
    expect(auth).toEqual({ type: 'auth', token: alice.c.accessToken, protocolVersion: PROTOCOL_VERSION });

    let typed: ServerEventOf<'message.created'> | undefined;
    const off = a.session.on('message.created', (e) => {
      expectTypeOf(e).toEqualTypeOf<ServerEventOf<'message.created'>>();
      expectTypeOf(e.message.seq).toBeNumber();
      typed = e;
    });
    await bob.c.send(conv.id, { type: 'text', text: 'hello alice' });
    await until(() => a.messages.length === 1, 'the message event');
    expect(typed?.message.content).toEqual({ type: 'text', text: 'hello alice' });
    off();
    typed = undefined;
    await bob.c.send(conv.id, { type: 'text', text: 'again' });
    await until(() => a.messages.length === 2, 'the second message event');
    expect(typed).toBeUndefined();
    expect(a.errors).toEqual([]);
  });

  it('[CS2] [CS3] a dropped connection reconnects and resumes: messages sent meanwhile arrive exactly once, in order', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c, { backoff: { initialMs: 300, maxMs: 300 } });
    await a.session.start();
    await bob.c.send(conv.id, { type: 'text', text: 'before' });
    await until(() => a.messages.length === 1, 'the first message');
    const cursorBefore = a.session.cursor;
    expect(cursorBefore).toMatch(/^[0-9]+$/);

    a.sockets[0]!.terminate(); // the network goes away
    for (let i = 1; i <= 5; i++) await bob.c.send(conv.id, { type: 'text', text: `while away ${i}` });
    await until(() => a.messages.length === 6, 'the missed messages', 15_000);
    expect(a.sockets.length).toBe(2);
    // The new socket resumed from the last handled event.
    expect(a.sockets[1]!.sent[0]).toMatchObject({ type: 'auth', cursor: cursorBefore });
    expect(texts(a.messages)).toEqual(['before', 'while away 1', 'while away 2', 'while away 3', 'while away 4', 'while away 5']);
    expect(new Set(a.messages.map((m) => m.id)).size).toBe(6);
    expect(a.states.some((st) => st.state === 'closed' && st.willReconnect)).toBe(true);

    await bob.c.send(conv.id, { type: 'text', text: 'live again' });
    await until(() => a.messages.length === 7, 'a live message after the resume');
    await sleep(200);
    expect(a.messages.length).toBe(7);
  });

  it('[CS2] a server restart: the reconnect frame is honoured and the next node replays what was missed', async () => {
    const env = await freshDeployment();
    const balancer = await loadBalancer();
    let s1: Running | undefined = await startApp({ ...env });
    let s2: Running | undefined;
    try {
      balancer.route(Number(new URL(s1.url).port));
      const alice = await signUp(balancer.url);
      const bob = await signUp(s1.url);
      const conv = await alice.c.direct(bob.id);
      // A long backoff: only the server's reconnect delay (< 1 s) can bring it back quickly.
      const a = open(alice.c, { backoff: { initialMs: 60_000, maxMs: 60_000 } });
      await a.session.start();
      await bob.c.send(conv.id, { type: 'text', text: 'one' });
      await until(() => a.messages.length === 1, 'the first message');

      // The node goes away; the balancer holds new connections until the next node is up (on SQLite it must
      // reopen the same database, so it can only start after the first one stopped).
      balancer.hold();
      await s1.close();
      s1 = undefined;
      const closed = a.states.find((st) => st.state === 'closed');
      expect(closed).toMatchObject({ state: 'closed', willReconnect: true, reason: 'the server asked to reconnect' });
      expect((closed as { retryInMs: number }).retryInMs).toBeLessThan(1_000);

      s2 = await startApp({ ...env });
      balancer.route(Number(new URL(s2.url).port));
      const bob2 = new SecureConnectClient({ baseUrl: s2.url, tokens: bob.tokens() });
      await bob2.send(conv.id, { type: 'text', text: 'two' });
      await until(() => a.messages.length === 2, 'the message sent during the restart', 15_000);
      expect(texts(a.messages)).toEqual(['one', 'two']);
      expect(a.sockets.length).toBe(2);
      expect(a.session.state).toBe('open');
      await a.session.close();
    } finally {
      await s1?.close();
      await s2?.close();
      await balancer.close();
    }
  });

  it('[CS3] the cursor outlives the client through a CursorStore, and an event whose handler failed is redelivered before later ones', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const store = keyStoreCursor(new MemoryKeyStore());

    const first = open(alice.c, { cursorStore: store });
    await first.session.start();
    await bob.c.send(conv.id, { type: 'text', text: 'seen by the first run' });
    await until(() => first.messages.length === 1, 'the first run\'s message');
    await first.session.close();
    expect(await store.load()).toBe(first.session.cursor);

    await bob.c.send(conv.id, { type: 'text', text: 'fail-once' });
    await bob.c.send(conv.id, { type: 'text', text: 'after' });

    const second = open(alice.c, { cursorStore: store });
    const handled: string[] = [];
    let failed = false;
    second.session.on('message.created', ({ message }) => {
      const text = message.content.type === 'text' ? message.content.text : '';
      if (text === 'fail-once' && !failed) {
        failed = true;
        throw new Error('app handler failed');
      }
      handled.push(text);
    });
    const ready = await second.session.start();
    expect(ready.replayed).toBeGreaterThanOrEqual(2);
    await until(() => handled.length === 2, 'both replayed messages handled', 15_000);
    expect(handled).toEqual(['fail-once', 'after']);
    expect(second.errors.filter((e) => e.kind === 'handler')).toMatchObject([{ kind: 'handler', willRetry: true, event: { type: 'message.created' } }]);
    expect(second.sockets.length).toBe(2); // the replay came from a new socket, resumed before the failed event
    await sleep(200);
    expect(handled).toEqual(['fail-once', 'after']);
    expect(await store.load()).toBe(second.session.cursor);
  });

  it('[CS3] a durable event whose handler keeps failing is skipped after maxHandlerAttempts, with an error each time', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c, { maxHandlerAttempts: 3, backoff: { initialMs: 10, maxMs: 20 } });
    const handled: string[] = [];
    a.session.on('message.created', ({ message }) => {
      const text = message.content.type === 'text' ? message.content.text : '';
      if (text === 'poison') throw new Error('always fails');
      handled.push(text);
    });
    await a.session.start();
    await bob.c.send(conv.id, { type: 'text', text: 'poison' });
    await bob.c.send(conv.id, { type: 'text', text: 'next' });
    await until(() => handled.length === 1, 'the event after the poison one', 15_000);
    expect(handled).toEqual(['next']);
    expect(a.errors.filter((e) => e.kind === 'handler').map((e) => e.willRetry)).toEqual([true, true, false]);
  });

  it('[CS3] an expired cursor: resync is emitted and the session continues from the server\'s position', async () => {
    const own = await startApp();
    try {
      const alice = await signUp(own.url);
      const bob = await signUp(own.url);
      const conv = await alice.c.direct(bob.id);
      const store = keyStoreCursor(new MemoryKeyStore());
      const first = open(alice.c, { cursorStore: store });
      await first.session.start();
      await bob.c.send(conv.id, { type: 'text', text: 'old' });
      await until(() => first.messages.length === 1, 'the first message');
      await first.session.close();
      const stale = await store.load();
      await bob.c.send(conv.id, { type: 'text', text: 'pruned away' });
      await own.app.ctx.events.prune(Date.now() + 1_000);

      const second = open(alice.c, { cursorStore: store });
      const order: string[] = [];
      second.session.on('resync', ({ cursor }) => {
        order.push(`resync:${cursor}`);
      });
      second.session.on('ready', () => {
        order.push('ready');
      });
      const ready = await second.session.start();
      expect(order).toEqual([`resync:${ready.cursor}`, 'ready']);
      expect(second.sockets.length).toBe(2);
      expect(second.sockets[0]!.sent[0]).toMatchObject({ cursor: stale });
      expect(second.sockets[1]!.sent[0].cursor).toBeUndefined();
      expect(BigInt(ready.cursor)).toBeGreaterThan(BigInt(stale!));
      expect(await store.load()).toBe(ready.cursor);
      await bob.c.send(conv.id, { type: 'text', text: 'new' });
      await until(() => second.messages.length === 1, 'a message after the resync');
      expect(texts(second.messages)).toEqual(['new']);
      await second.session.close();
    } finally {
      await own.close();
    }
  });

  it('[CS4] sends queued while offline and sends whose ack was lost are stored exactly once, in order, and every promise resolves', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c);
    const history = async () => texts(await bob.c.history(conv.id, { afterSeq: 0, limit: 100 }));

    // Offline: the session has not connected yet.
    const offline = [1, 2, 3].map((i) => a.session.send(conv.id, { type: 'text', text: `offline ${i}` }));
    expect(a.session.queued).toBe(3);
    await a.session.start();
    const sentOffline = await Promise.all(offline);
    expect(sentOffline.map((m) => m.seq)).toEqual([1, 2, 3]);

    // Mid-flight: the server stores the first, its ack never arrives, then the connection dies.
    const sock = a.sockets[0]!;
    sock.blackhole = true;
    const ids = [1, 2, 3].map((i) => `mid-${i}-${uid(3)}`);
    const midflight = ids.map((id, i) => a.session.send(conv.id, { type: 'text', text: `mid ${i + 1}` }, id));
    for (const end = Date.now() + 10_000; (await history()).length < 4 && Date.now() < end; ) await sleep(20);
    await sleep(100);
    // Ordered: the conversation's next send waits for the previous ack.
    expect(sock.sent.filter((f) => f.type === 'send').map((f) => f.clientMsgId).slice(3)).toEqual([ids[0]]);
    expect(await history()).toEqual(['offline 1', 'offline 2', 'offline 3', 'mid 1']);
    expect(a.session.queued).toBe(3);
    sock.terminate();

    const sentMid = await Promise.all(midflight);
    expect(a.sockets.length).toBe(2);
    // The first is sent again with its original clientMsgId: the server answers with the stored message.
    expect(a.sockets[1]!.sent.filter((f) => f.type === 'send').map((f) => f.clientMsgId)).toEqual(ids);
    const stored = await bob.c.history(conv.id, { afterSeq: 0, limit: 100 });
    expect(texts(stored)).toEqual(['offline 1', 'offline 2', 'offline 3', 'mid 1', 'mid 2', 'mid 3']);
    expect(sentMid.map((m) => m.id)).toEqual(stored.slice(3).map((m) => m.id));
    expect(a.session.queued).toBe(0);
  });

  it('[CS4] unordered pipelining: many sends in flight when the connection dies are each stored exactly once', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c, { ordered: false });
    await a.session.start();
    const sock = a.sockets[0]!;
    sock.blackhole = true;
    const ids = Array.from({ length: 8 }, (_, i) => `pipe-${i}-${uid(3)}`);
    const pending = ids.map((id, i) => a.session.send(conv.id, { type: 'text', text: `p${i}` }, id));
    await until(() => sock.sent.filter((f) => f.type === 'send').length === 8, 'all frames written at once');
    const count = async () => (await bob.c.history(conv.id, { afterSeq: 0, limit: 100 })).length;
    for (const end = Date.now() + 10_000; (await count()) < 8 && Date.now() < end; ) await sleep(20);
    sock.terminate();
    const sent = await Promise.all(pending);
    const stored = await bob.c.history(conv.id, { afterSeq: 0, limit: 100 });
    expect(stored.map((m) => m.clientMsgId).sort()).toEqual([...ids].sort());
    expect(sent.map((m) => m.id).sort()).toEqual(stored.map((m) => m.id).sort());
  });

  it('[CS4] a refused send rejects with the typed error; invalid content and a full queue are refused before sending', async () => {
    const alice = await signUp();
    const a = open(alice.c, { maxQueue: 2 });
    await a.session.start();
    const notMine = await a.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: 'hi' }).catch((e: unknown) => e);
    expect(notMine).toBeInstanceOf(NotFoundError);
    expect((notMine as NotFoundError).code).toBe('not_found');

    const invalid = await a.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '' }).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(ValidationError);
    expect((invalid as ValidationError).code).toBe('validation_failed');

    const offline = open(alice.c, { maxQueue: 2 });
    const p1 = offline.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '1' });
    const p2 = offline.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '2' });
    const full = await offline.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '3' }).catch((e: unknown) => e);
    expect(full).toBeInstanceOf(SessionError);
    expect((full as SessionError).code).toBe('queue_full');
    await offline.session.close();
    for (const p of [p1, p2]) {
      const err = await p.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SessionError);
      expect(err).toMatchObject({ code: 'closed', reason: 'closed' });
    }
    await expect(offline.session.send('01890000-0000-7000-8000-000000000000', { type: 'text', text: '4' })).rejects.toMatchObject({ code: 'closed' });
  });

  it('[CS5] handlers run one at a time in server order; typing and read helpers reach the other member', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const a = open(alice.c);
    const b = open(bob.c);
    let running = 0;
    let overlap = 0;
    const seqs: number[] = [];
    const order: string[] = [];
    a.session.on('message.created', async ({ message }) => {
      running++;
      if (running > 1) overlap++;
      await sleep(Math.floor(Math.random() * 15));
      seqs.push(message.seq);
      order.push(`message:${message.seq}`);
      running--;
    });
    a.session.on('event', (e) => {
      if (e.type === 'message.created') order.push(`event:${e.message.seq}`);
    });
    const typing: string[] = [];
    const reads: number[] = [];
    a.session.on('typing', (e) => {
      expectTypeOf(e).toEqualTypeOf<ServerEventOf<'typing'>>();
      typing.push(e.userId);
    });
    a.session.on('read', (e) => {
      if (e.userId === bob.id) reads.push(e.seq);
    });
    await a.session.start();
    await b.session.start();

    await Promise.all(Array.from({ length: 12 }, (_, i) => b.session.send(conv.id, { type: 'text', text: `m${i}` })));
    await until(() => seqs.length === 12, 'every message handled');
    expect(overlap).toBe(0);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    // Typed handlers of an event run before the catch-all, and each event finishes before the next starts.
    expect(order.slice(0, 4)).toEqual([`message:${seqs[0]}`, `event:${seqs[0]}`, `message:${seqs[1]}`, `event:${seqs[1]}`]);

    expect(b.session.typing(conv.id)).toBe(true);
    await until(() => typing.length === 1, 'the typing event');
    expect(typing).toEqual([bob.id]);
    b.session.markRead(conv.id, 5);
    b.session.markRead(conv.id, 12);
    await until(() => reads.includes(12), 'the read event');
    expect((await bob.c.conversation(conv.id)).readSeq).toBe(12);
  });

  it('[CS7] a refused access token is refreshed once and the session reconnects; an expiring one is refreshed before connecting', async () => {
    const alice = await signUp();
    /** A refresh token of a new session of alice's. */
    const freshRefreshToken = async () => {
      let refreshToken = '';
      const c = new SecureConnectClient({ baseUrl: s.url, onTokens: (t) => (refreshToken = t?.refreshToken ?? '') });
      await c.login(alice.name, alice.password);
      return refreshToken;
    };

    const stale = new SecureConnectClient({ baseUrl: s.url, tokens: { accessToken: 'not-a-token', refreshToken: await freshRefreshToken() } });
    const a = open(stale);
    const ready = await a.session.start();
    expect(ready.userId).toBe(alice.id);
    expect(a.sockets.length).toBe(2);
    expect(a.sockets[0]!.sent[0].token).toBe('not-a-token');
    expect(a.sockets[1]!.sent[0].token).toBe(stale.accessToken);
    expect(a.states.find((st) => st.state === 'closed')).toMatchObject({ code: 4401 });

    // An access token whose exp has passed is renewed before the socket opens (no 4401 round trip).
    const b64url = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const expired = `${b64url({ alg: 'EdDSA' })}.${b64url({ sub: alice.id, exp: Math.floor(Date.now() / 1000) - 60 })}.sig`;
    const expiring = new SecureConnectClient({ baseUrl: s.url, tokens: { accessToken: expired, refreshToken: await freshRefreshToken() } });
    const b = open(expiring);
    await b.session.start();
    expect(b.sockets.length).toBe(1);
    expect(b.sockets[0]!.sent[0].token).not.toBe(expired);
    expect(b.sockets[0]!.sent[0].token).toBe(expiring.accessToken);
  });

  it('[CS7] a refused refresh token ends the session for good', async () => {
    const bad = new SecureConnectClient({ baseUrl: s.url, tokens: { accessToken: 'not-a-token', refreshToken: 'not-a-refresh-token' } });
    const a = open(bad);
    const closed: unknown[] = [];
    a.session.on('closed', (c) => {
      closed.push(c);
    });
    const err = await a.session.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SessionError);
    expect(err).toMatchObject({ code: 'closed', reason: 'unauthenticated' });
    await until(() => closed.length === 1, 'the closed event');
    expect(closed[0]).toMatchObject({ reason: 'unauthenticated', code: 4401 });
    await sleep(300);
    expect(a.sockets.length).toBe(1);
    expect(a.session.state).toBe('closed');
  });

  it('[CS2] a revoked session is not reconnected; its pending sends are rejected', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const conv = await alice.c.direct(bob.id);
    const other = new SecureConnectClient({ baseUrl: s.url });
    await other.login(alice.name, alice.password);
    const a = open(alice.c);
    const closed: unknown[] = [];
    a.session.on('closed', (c) => {
      closed.push(c);
    });
    const ready = await a.session.start();
    a.sockets[0]!.blackhole = true; // so this send stays unacknowledged
    // Caught at once: the revocation may reach the socket before revokeSession's response does.
    const pending = a.session.send(conv.id, { type: 'text', text: 'in flight' }).catch((e: unknown) => e);
    await other.revokeSession(ready.sessionId);
    const err = await pending;
    expect(err).toBeInstanceOf(SessionError);
    expect(err).toMatchObject({ code: 'closed', reason: 'revoked' });
    await until(() => closed.length === 1, 'the closed event');
    expect(closed[0]).toMatchObject({ reason: 'revoked', code: 4409 });
    await sleep(400);
    expect(a.sockets.length).toBe(1);
    expect(a.session.state).toBe('closed');
  });

  it('[CS1] createNodeSession wires the ws package', async () => {
    const alice = await signUp();
    const session = createNodeSession({ client: alice.c });
    sessions.push(session);
    expect((await session.start()).userId).toBe(alice.id);
    await session.close();
    expect(session.state).toBe('closed');
  });
});

describe('E2EE REST methods of the client, and their events on the session', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  async function signUp() {
    const name = `e2${uid(4)}`;
    const password = `pw-${uid(6)}`;
    const c = new SecureConnectClient({ baseUrl: s.url });
    const res = await c.register({ email: `${name}@example.test`, username: name, password });
    return { c, id: res.user.id, name, password };
  }

  it('[K1] [K2] [K3] [DS1] [DS2] [DS5] [CS5] devices, key packages, an encrypted conversation and its commits, through the SDK', async () => {
    const alice = await signUp();
    const bob = await signUp();
    const aliceKeys = await makeDeviceKeys(1);
    const bobKeys = await makeDeviceKeys(1);

    // Devices: registering binds the calling session; anyone may list a user's devices.
    const aliceDevice = await alice.c.registerDevice({ name: 'laptop', signatureKey: aliceKeys.publicKeyB64 });
    expect(aliceDevice).toMatchObject({ userId: alice.id, name: 'laptop', signatureKey: aliceKeys.publicKeyB64 });
    const bobDevice = await bob.c.registerDevice({ name: 'phone', signatureKey: bobKeys.publicKeyB64 });
    expect((await bob.c.devices(alice.id)).map((d) => d.id)).toEqual([aliceDevice.id]);

    // Key packages: upload, status, claim (by a peer, once they share a conversation).
    const bobPackages = await makeKeyPackages(bobKeys, bob.id, bobDevice.id, 3);
    const uploaded = await bob.c.uploadKeyPackages({ keyPackages: bobPackages.slice(0, 2).map((p) => p.b64), lastResort: bobPackages[2]!.b64 });
    expect(uploaded).toEqual({ deviceId: bobDevice.id, stock: [{ cipherSuite: 1, available: 2, lastResort: true }] });
    expect(await bob.c.keyPackageStatus()).toEqual(uploaded);
    const bad = await bob.c.uploadKeyPackages({ keyPackages: ['AAAA'] }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect((bad as ValidationError).code).toBe('invalid_key_package');

    // An encrypted direct conversation is distinct from the plaintext one.
    const conv = await alice.c.direct(bob.id, { encryption: 'mls' });
    expect(conv.encryption).toBe('mls');
    const plain = await alice.c.direct(bob.id);
    expect(plain.encryption).toBe('none');
    expect(plain.id).not.toBe(conv.id);
    const claimed = await alice.c.claimKeyPackages({ userIds: [bob.id], cipherSuite: 1 });
    expect(claimed.keyPackages).toHaveLength(1);
    expect(claimed.keyPackages[0]).toMatchObject({ userId: bob.id, deviceId: bobDevice.id, lastResort: false });
    expect((await bob.c.keyPackageStatus()).stock[0]!.available).toBe(1);

    // MLS: not initialised yet, then init, then a commit adding bob's device whose Welcome reaches bob's session.
    const notYet = await alice.c.mlsStatus(conv.id).catch((e: unknown) => e);
    expect(notYet).toBeInstanceOf(ConflictError);
    expect((notYet as ConflictError).code).toBe('mls_not_initialized');
    const own = (await makeKeyPackages(aliceKeys, alice.id, aliceDevice.id, 1))[0]!;
    const state0 = await createGroup(new TextEncoder().encode(conv.id), own.publicPackage, own.privatePackage, [], aliceKeys.cs);
    const groupInfoB64 = async (state: typeof state0) =>
      b64(encodeMlsMessage({ version: 'mls10', wireformat: 'mls_group_info', groupInfo: await createGroupInfoWithExternalPubAndRatchetTree(state, [], aliceKeys.cs) }));
    const init = await alice.c.mlsInit(conv.id, { cipherSuite: 1, groupInfo: await groupInfoB64(state0) });
    expect(init).toMatchObject({ conversationId: conv.id, cipherSuite: 1, epoch: 0, leaves: [{ leafIndex: 0, userId: alice.id, deviceId: aliceDevice.id }] });

    const bobSession = createNodeSession({ client: bob.c, ...FAST });
    const welcomes: ServerEventOf<'mls.welcome'>[] = [];
    const commits: Message[] = [];
    bobSession.on('mls.welcome', (e) => {
      expectTypeOf(e.welcome).toBeString();
      welcomes.push(e);
    });
    bobSession.on('message.created', ({ message }) => {
      if (message.content.type === 'mls-commit') commits.push(message);
    });
    try {
      expect((await bobSession.start()).deviceId).toBe(bobDevice.id);
      const decoded = decodeMlsMessage(unb64(claimed.keyPackages[0]!.keyPackage), 0)![0];
      if (decoded.wireformat !== 'mls_key_package') throw new Error('claimed bytes are not a key package');
      const r = await createCommit(
        { state: state0, cipherSuite: aliceKeys.cs },
        { wireAsPublicMessage: true, ratchetTreeExtension: true, extraProposals: [{ proposalType: 'add', add: { keyPackage: decoded.keyPackage } }] },
      );
      const body = {
        commit: b64(encodeMlsMessage(r.commit)),
        groupInfo: await groupInfoB64(r.newState),
        welcome: b64(encodeMlsMessage({ version: 'mls10', wireformat: 'mls_welcome', welcome: r.welcome! })),
      };
      const accepted = await alice.c.mlsCommit(conv.id, body);
      expect(accepted.epoch).toBe(1);
      expect(accepted.message.content).toMatchObject({ type: 'mls-commit', epoch: 0 });
      // The same commit again is an idempotent retry; a different commit for the spent epoch loses.
      expect((await alice.c.mlsCommit(conv.id, body)).message.id).toBe(accepted.message.id);
      const rival = await createCommit({ state: state0, cipherSuite: aliceKeys.cs }, { wireAsPublicMessage: true, ratchetTreeExtension: true });
      const again = await alice.c.mlsCommit(conv.id, { commit: b64(encodeMlsMessage(rival.commit)), groupInfo: await groupInfoB64(rival.newState) }).catch((e: unknown) => e);
      expect(again).toBeInstanceOf(ConflictError);
      expect(again).toMatchObject({ code: 'epoch_conflict', details: { currentEpoch: 1 } });
      expect((await bob.c.mlsStatus(conv.id)).epoch).toBe(1);

      await until(() => welcomes.length === 1 && commits.length === 1, 'the welcome and the commit on bob\'s session');
      expect(welcomes[0]).toMatchObject({ conversationId: conv.id, epoch: 1, welcome: body.welcome });
      expect(commits[0]!.id).toBe(accepted.message.id);

      // Binding a second session of bob's to his device proves possession of its key; then revoking it ends both sessions.
      const second = new SecureConnectClient({ baseUrl: s.url });
      await second.login(bob.name, bob.password);
      const wrong = await second.bindDevice(bobDevice.id, await signBindChallenge(bobKeys, '01890000-0000-7000-8000-000000000000')).catch((e: unknown) => e);
      expect(wrong).toBeInstanceOf(ForbiddenError);
      expect(await second.bindDevice(bobDevice.id, await signBindChallenge(bobKeys, second.sessionId!))).toMatchObject({ id: bobDevice.id });
      const revokedEvents: ServerEventOf<'device.revoked'>[] = [];
      const aliceSession = createNodeSession({ client: alice.c, ...FAST });
      aliceSession.on('device.revoked', (e) => {
        revokedEvents.push(e);
      });
      try {
        await aliceSession.start();
        await second.revokeDevice(bobDevice.id);
        await until(() => revokedEvents.length === 1, 'device.revoked at alice');
        expect(revokedEvents[0]).toMatchObject({ userId: bob.id, deviceId: bobDevice.id });
        await until(() => bobSession.state === 'closed', 'bob\'s device session to end');
        expect(await alice.c.devices(bob.id)).toEqual([]);
      } finally {
        await aliceSession.close();
      }
    } finally {
      await bobSession.close();
    }
  });
});

describe('Session against a scripted server (faults a real server does not make)', () => {
  const READY = {
    type: 'ready', userId: '01890000-0000-7000-8000-000000000001', sessionId: '01890000-0000-7000-8000-000000000002',
    deviceId: null, cursor: '5', protocolVersion: PROTOCOL_VERSION, replayed: 0,
  };

  async function scripted(onAuth: (ws: WebSocket, n: number, frames: any[]) => void) {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await once(wss, 'listening');
    const conns: { ws: WebSocket; frames: any[]; openedAt: number; closedAt: number | null }[] = [];
    wss.on('connection', (ws) => {
      const c = { ws, frames: [] as any[], openedAt: Date.now(), closedAt: null as number | null };
      const n = conns.push(c) - 1;
      ws.on('close', () => (c.closedAt = Date.now()));
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        c.frames.push(f);
        if (f.type === 'auth') onAuth(ws, n, c.frames);
      });
    });
    const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/v1/ws`;
    const client = new SecureConnectClient({ baseUrl: 'http://127.0.0.1:9', tokens: { accessToken: 'opaque-token', refreshToken: 'r' } });
    return {
      url,
      conns,
      client,
      close: () =>
        new Promise<void>((resolve) => {
          for (const c of conns) c.ws.terminate();
          wss.close(() => resolve());
        }),
    };
  }

  it('[CS1] a frame outside the protocol is reported and the socket replaced, resuming from the last good cursor', async () => {
    const srv = await scripted((ws, n) => {
      ws.send(JSON.stringify(READY));
      if (n === 0) ws.send(JSON.stringify({ type: 'event', cursor: '6', event: { type: 'bogus' } }));
    });
    const session = createNodeSession({ client: srv.client, url: srv.url, ...FAST });
    const errors: SessionErrorEvent[] = [];
    session.on('error', (e) => {
      errors.push(e);
    });
    try {
      await session.start();
      await until(() => srv.conns.length === 2 && srv.conns[1]!.frames.length > 0, 'a second connection');
      expect(errors[0]).toMatchObject({ kind: 'protocol' });
      expect(errors[0]!.error.message).toMatch(/invalid frame/);
      expect(srv.conns[0]!.closedAt).not.toBeNull();
      expect(srv.conns[1]!.frames[0]).toMatchObject({ type: 'auth', cursor: '5' });
    } finally {
      await session.close();
      await srv.close();
    }
  });

  it('[CS6] pings an idle server and replaces a connection that stays silent for two heartbeats', async () => {
    const srv = await scripted((ws, n) => {
      ws.send(JSON.stringify(READY));
      // The second connection answers pings; the first never says anything again.
      if (n > 0) ws.on('message', (d) => JSON.parse(String(d)).type === 'ping' && ws.send('{"type":"pong"}'));
    });
    const session = createNodeSession({ client: srv.client, url: srv.url, heartbeatMs: 100, ...FAST });
    try {
      await session.start();
      const openedAt = Date.now();
      await until(() => srv.conns.length === 2, 'a replacement connection', 5_000);
      const first = srv.conns[0]!;
      expect(first.frames.some((f) => f.type === 'ping')).toBe(true);
      expect(first.closedAt! - openedAt).toBeGreaterThanOrEqual(190);
      await sleep(700); // pongs keep the second one alive through many heartbeats
      expect(srv.conns.length).toBe(2);
      expect(srv.conns[1]!.frames.filter((f) => f.type === 'ping').length).toBeGreaterThanOrEqual(2);
      expect(session.state).toBe('open');
    } finally {
      await session.close();
      await srv.close();
    }
  });

  it('[CS2] backoff doubles per failed attempt up to the cap, with full jitter', async () => {
    const srv = await scripted((ws) => ws.close(1011, 'internal'));
    const delays: number[] = [];
    const session = createNodeSession({ client: srv.client, url: srv.url, backoff: { initialMs: 10, maxMs: 80 }, random: () => 0.999 });
    session.on('state', (st) => {
      if (st.state === 'closed' && st.retryInMs !== undefined) delays.push(st.retryInMs);
    });
    void session.start().catch(() => undefined);
    try {
      await until(() => delays.length >= 6, 'six retries');
      expect(delays.slice(0, 6)).toEqual([9, 19, 39, 79, 79, 79]);
    } finally {
      await session.close();
      await srv.close();
    }
    const zero = await scripted((ws) => ws.close(1011, 'internal'));
    const jittered: number[] = [];
    const s2 = createNodeSession({ client: zero.client, url: zero.url, backoff: { initialMs: 10_000, maxMs: 10_000 }, random: () => 0 });
    s2.on('state', (st) => {
      if (st.state === 'closed' && st.retryInMs !== undefined) jittered.push(st.retryInMs);
    });
    void s2.start().catch(() => undefined);
    try {
      await until(() => jittered.length >= 3, 'three retries');
      expect(jittered.slice(0, 3)).toEqual([0, 0, 0]);
    } finally {
      await s2.close();
      await zero.close();
    }
  });

  it('[CS4] paces frames under the rate limit: a burst, then the steady rate', async () => {
    const arrivals: number[] = [];
    const srv = await scripted((ws) => {
      ws.send(JSON.stringify(READY));
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        if (f.type !== 'send') return;
        arrivals.push(Date.now());
        const message = {
          id: '01890000-0000-7000-8000-0000000000aa', conversationId: f.conversationId, seq: arrivals.length, senderId: READY.userId,
          clientMsgId: f.clientMsgId, content: f.content, createdAt: new Date().toISOString(), editedAt: null, deletedAt: null,
        };
        ws.send(JSON.stringify({ type: 'ack', reqId: f.reqId, message }));
      });
    });
    const session = createNodeSession({ client: srv.client, url: srv.url, framesPerSecond: 20, frameBurst: 5, ordered: false });
    try {
      await session.start();
      const started = Date.now();
      const conv = '01890000-0000-7000-8000-0000000000bb';
      const sent = await Promise.all(Array.from({ length: 15 }, (_, i) => session.send(conv, { type: 'text', text: `t${i}` })));
      expect(sent.map((m) => m.content)).toEqual(Array.from({ length: 15 }, (_, i) => ({ type: 'text', text: `t${i}` })));
      // The auth frame took one token: 4 go at once, the other 11 at 20/s (about 550 ms).
      expect(arrivals[3]! - started).toBeLessThan(100);
      expect(arrivals[14]! - started).toBeGreaterThanOrEqual(500);
      // After the burst, ten frames at 20/s take about 500 ms (timers and the loopback add jitter to single gaps).
      expect(arrivals[14]! - arrivals[4]!).toBeGreaterThanOrEqual(450);
    } finally {
      await session.close();
      await srv.close();
    }
  });

  it('[CS2] waits the reconnect frame\'s delay, not the backoff', async () => {
    let askedAt = 0;
    const srv = await scripted((ws, n) => {
      ws.send(JSON.stringify(READY));
      if (n === 0) {
        setTimeout(() => {
          askedAt = Date.now();
          ws.send(JSON.stringify({ type: 'reconnect', afterMs: 250 }));
        }, 20);
      }
    });
    const session = createNodeSession({ client: srv.client, url: srv.url, backoff: { initialMs: 60_000, maxMs: 60_000 } });
    try {
      await session.start();
      await until(() => srv.conns.length === 2, 'the reconnection', 5_000);
      const gap = srv.conns[1]!.openedAt - askedAt;
      expect(gap).toBeGreaterThanOrEqual(240);
      expect(gap).toBeLessThan(1_000);
      expect(srv.conns[0]!.closedAt).not.toBeNull();
    } finally {
      await session.close();
      await srv.close();
    }
  });
});

describe('SDK core is browser-safe', () => {
  it('[CS1] nothing outside src/node (and the CLI) imports Node modules or uses Node globals', () => {
    const root = fileURLToPath(new URL('../src/', import.meta.url));
    const files = (dir: string): string[] =>
      readdirSync(dir).flatMap((n) => {
        const p = join(dir, n);
        if (statSync(p).isDirectory()) return n === 'node' || n === 'cli' ? [] : files(p);
        return p.endsWith('.ts') ? [p] : [];
      });
    const offenders: string[] = [];
    for (const f of files(root)) {
      const src = readFileSync(f, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      if (/from\s+['"](node:|ws['"]|fs['"]|path['"]|crypto['"])|require\(|\bBuffer\.|\bprocess\./.test(src)) offenders.push(f.slice(root.length));
    }
    expect(files(root).length).toBeGreaterThan(3);
    expect(offenders).toEqual([]);
  });
});
