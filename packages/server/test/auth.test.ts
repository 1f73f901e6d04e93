import { createHash } from 'node:crypto';
import { SignJWT, createLocalJWKSet, decodeJwt, decodeProtectedHeader, generateKeyPair, importJWK, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TOKEN_AUDIENCE, TOKEN_ISSUER } from '../src/modules/auth/index.js';
import { client, freshDeployment, registerUser, startApp, uid, usingRedis, type Res, type Running, type TestUser } from './helpers.js';

const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The parts of an error answer that do not vary per request. */
const stable = (res: { status: number; body: any; headers: Headers }) => ({
  status: res.status,
  code: res.body?.error?.code,
  message: res.body?.error?.message,
  keys: Object.keys(res.body?.error ?? {}).sort(),
  contentType: res.headers.get('content-type'),
  retryAfter: res.headers.get('retry-after'),
});

describe('auth: tokens, refresh, sessions', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ AUTH_LOGIN_FAILURES_PER_IP: '1000' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  it('[S1] the JWKS publishes every key with its kid and no private part', async () => {
    const res = await req('GET', '/.well-known/jwks.json');
    expect(res.status).toBe(200);
    expect(res.body.keys).toHaveLength(s.config.jwtSigningKeys.length);
    const key = res.body.keys[0];
    expect(key).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', kid: s.config.jwtSigningKeys[0]!.kid });
    expect(key.x).toBe(s.config.jwtSigningKeys[0]!.x);
    for (const k of res.body.keys) expect(k).not.toHaveProperty('d');
    expect(JSON.stringify(res.body)).not.toContain(s.config.jwtSigningKeys[0]!.d!);
  });

  it('[S1][AF-A3] access tokens are EdDSA with kid, sub, sid and a 15 minute lifetime, verifiable with the JWKS', async () => {
    const u = await registerUser(s.url);
    const header = decodeProtectedHeader(u.accessToken);
    expect(header).toMatchObject({ alg: 'EdDSA', kid: s.config.jwtSigningKeys[0]!.kid });
    const claims = decodeJwt(u.accessToken);
    expect(claims.sub).toBe(u.id);
    expect(typeof claims.sid).toBe('string');
    expect(claims.exp! - claims.iat!).toBe(900);
    expect(claims).toMatchObject({ iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE });
    const jwks = (await req('GET', '/.well-known/jwks.json')).body;
    await expect(jwtVerify(u.accessToken, createLocalJWKSet(jwks), { algorithms: ['EdDSA'] })).resolves.toBeTruthy();
  });

  it('[S1] alg none, HS256, a foreign key, an expired token and a wrong audience are refused with invalid_token', async () => {
    const u = await registerUser(s.url);
    const { sub, sid } = decodeJwt(u.accessToken) as { sub: string; sid: string };
    const jwk = s.config.jwtSigningKeys[0]!;
    const ourKey = await importJWK({ ...jwk, alg: 'EdDSA' }, 'EdDSA');
    const now = Math.floor(Date.now() / 1000);
    const sign = (key: Parameters<SignJWT['sign']>[0], opts: { alg?: string; kid?: string; iat?: number; exp?: number; aud?: string } = {}) =>
      new SignJWT({ sid })
        .setProtectedHeader({ alg: opts.alg ?? 'EdDSA', kid: opts.kid ?? jwk.kid, typ: 'JWT' })
        .setSubject(sub)
        .setIssuer(TOKEN_ISSUER)
        .setAudience(opts.aud ?? TOKEN_AUDIENCE)
        .setIssuedAt(opts.iat ?? now)
        .setExpirationTime(opts.exp ?? now + 600)
        .sign(key);

    // The control: a token we forge with the real key is accepted, so each refusal below is about the one thing changed.
    expect((await req('GET', '/v1/me', { token: await sign(ourKey) })).status).toBe(200);

    const payload = { sub, sid, iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, iat: now, exp: now + 600 };
    const algNone = `${b64url({ alg: 'none', typ: 'JWT', kid: jwk.kid })}.${b64url(payload)}.`;
    // HS256 keyed with the public key: the classic algorithm-confusion forgery.
    const hs256 = await sign(new TextEncoder().encode(jwk.x), { alg: 'HS256' });
    const foreign = await sign((await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey);
    const expired = await sign(ourKey, { iat: now - 3600, exp: now - 60 });
    const wrongAud = await sign(ourKey, { aud: 'another-service' });
    const unknownKid = await sign(ourKey, { kid: 'no-such-key' });
    const tampered = `${u.accessToken.split('.')[0]}.${b64url({ ...payload, sub: '00000000-0000-7000-8000-000000000000' })}.${u.accessToken.split('.')[2]}`;
    for (const [name, token] of Object.entries({ algNone, hs256, foreign, expired, wrongAud, unknownKid, tampered, garbage: 'not.a.jwt' })) {
      const res = await req('GET', '/v1/me', { token });
      expect({ name, status: res.status, code: res.body.error?.code }).toEqual({ name, status: 401, code: 'invalid_token' });
    }
    expect((await req('GET', '/v1/me')).body.error.code).toBe('unauthorized');
  });

  it('[AF-I1] register rejects unknown fields, wrong types, bad emails and short passwords with 400', async () => {
    const name = `u${uid(5)}`;
    const good = { email: `${name}@example.test`, username: name, password: 'long-enough-pw' };
    const cases: unknown[] = [
      { ...good, isAdmin: true },
      { ...good, username: 42 },
      { ...good, email: 'not-an-email' },
      { ...good, username: 'has space' },
      { ...good, password: 'short' },
      { ...good, device: 'x'.repeat(65) },
      { email: good.email, password: good.password },
    ];
    for (const body of cases) {
      const res = await req('POST', '/v1/auth/register', { body });
      expect({ body, status: res.status, code: res.body.error?.code }).toEqual({ body, status: 400, code: 'validation_failed' });
    }
    expect((await req('POST', '/v1/auth/register', { raw: '{"email":' })).body.error.code).toBe('invalid_json');
    const samePw = await req('POST', '/v1/auth/register', { body: { ...good, password: name.toUpperCase() } });
    expect([samePw.status, samePw.body.error?.code]).toEqual([400, 'weak_password']);
    expect((await req('POST', '/v1/auth/login', { body: { login: 'x', password: 'y', extra: 1 } })).status).toBe(400);
    expect((await req('POST', '/v1/auth/refresh', { body: { refreshToken: 5 } })).status).toBe(400);
  });

  it('[AF-I1] duplicate email (any case) and username (any case) get 409', async () => {
    const name = `Dup${uid(4)}`;
    const first = await req('POST', '/v1/auth/register', { body: { email: `${name}@Example.test`, username: name, password: 'password-1' } });
    expect(first.status).toBe(201);
    expect(first.body.user).toEqual({ id: expect.any(String), username: name, displayName: name });
    expect(first.body.expiresIn).toBe(900);
    const email = await req('POST', '/v1/auth/register', { body: { email: `${name.toUpperCase()}@EXAMPLE.TEST`, username: `o${uid(5)}`, password: 'password-1' } });
    expect([email.status, email.body.error.code]).toEqual([409, 'email_taken']);
    const user = await req('POST', '/v1/auth/register', { body: { email: `o${uid(5)}@example.test`, username: name.toLowerCase(), password: 'password-1' } });
    expect([user.status, user.body.error.code]).toEqual([409, 'username_taken']);
    // Concurrent registrations of one username: exactly one account.
    const racer = `r${uid(5)}`;
    const results = await Promise.all([0, 1, 2].map((i) => req('POST', '/v1/auth/register', { body: { email: `${racer}${i}@example.test`, username: racer, password: 'password-1' } })));
    expect(results.map((r) => r.status).sort()).toEqual([201, 409, 409]);
  });

  it('[AF-A2] login works with the email (any case) or the username, and stores hashes only', async () => {
    const u = await registerUser(s.url);
    for (const login of [u.email.toUpperCase(), u.username, ` ${u.username.toUpperCase()} `]) {
      const res = await req('POST', '/v1/auth/login', { body: { login, password: u.password } });
      expect(res.status).toBe(200);
      expect(res.body.user.id).toBe(u.id);
      expect((await req('GET', '/v1/me', { token: res.body.accessToken })).body.id).toBe(u.id);
    }
    const row = await s.app.ctx.database.db.selectFrom('users').select('password_hash').where('id', '=', u.id).executeTakeFirstOrThrow();
    expect(row.password_hash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
    const tokens = await s.app.ctx.database.db.selectFrom('refresh_tokens').select('token_hash').execute();
    const hashes = tokens.map((t) => t.token_hash);
    expect(hashes).not.toContain(u.refreshToken);
    expect(hashes).toContain(createHash('sha256').update(u.refreshToken).digest('hex'));
  });

  it('[S2][AF-A3] refresh rotates; reusing an old refresh token revokes the whole session', async () => {
    const u = await registerUser(s.url);
    const r1 = await req('POST', '/v1/auth/refresh', { body: { refreshToken: u.refreshToken } });
    expect(r1.status).toBe(200);
    expect(r1.body.refreshToken).not.toBe(u.refreshToken);
    expect(r1.body.expiresIn).toBe(900);
    expect(decodeJwt(r1.body.accessToken).sid).toBe(decodeJwt(u.accessToken).sid);
    const r2 = await req('POST', '/v1/auth/refresh', { body: { refreshToken: r1.body.refreshToken } });
    expect(r2.status).toBe(200);
    expect((await req('GET', '/v1/me', { token: r2.body.accessToken })).status).toBe(200);

    // A thief replays the first token: the session dies for everybody.
    const replay = await req('POST', '/v1/auth/refresh', { body: { refreshToken: u.refreshToken } });
    expect([replay.status, replay.body.error.code]).toEqual([401, 'invalid_refresh_token']);
    const me = await req('GET', '/v1/me', { token: r2.body.accessToken });
    expect([me.status, me.body.error.code]).toEqual([401, 'invalid_token']);
    const next = await req('POST', '/v1/auth/refresh', { body: { refreshToken: r2.body.refreshToken } });
    expect([next.status, next.body.error.code]).toEqual([401, 'invalid_refresh_token']);
    expect((await req('POST', '/v1/auth/refresh', { body: { refreshToken: 'A'.repeat(43) } })).body.error.code).toBe('invalid_refresh_token');
  });

  it('[S2] of concurrent refreshes with one token at most one succeeds', async () => {
    const u = await registerUser(s.url);
    const results = await Promise.all(Array.from({ length: 6 }, () => req('POST', '/v1/auth/refresh', { body: { refreshToken: u.refreshToken } })));
    const ok = results.filter((r) => r.status === 200);
    expect(ok.length).toBeLessThanOrEqual(1);
    for (const r of results.filter((x) => x.status !== 200)) expect(r.body.error.code).toBe('invalid_refresh_token');
  });

  it('[AF-A4] sessions are listed with device, IP and last seen; one or all others can be revoked', async () => {
    const u = await registerUser(s.url);
    const login = async (device: string) => (await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password, device }, headers: { 'user-agent': 'TestAgent/1.0' } })).body;
    const phone = await login('phone');
    const laptop = await login('laptop');
    const list = await req('GET', '/v1/auth/sessions', { token: u.accessToken });
    expect(list.status).toBe(200);
    expect(list.body.items).toHaveLength(3);
    expect(list.body.items.filter((x: any) => x.current)).toHaveLength(1);
    const phoneSid = decodeJwt(phone.accessToken).sid as string;
    const phoneRow = list.body.items.find((x: any) => x.id === phoneSid);
    expect(phoneRow).toMatchObject({ device: 'phone', ip: '127.0.0.1', current: false });
    expect(Date.parse(phoneRow.lastSeenAt)).toBeGreaterThan(Date.now() - 60_000);

    expect((await req('DELETE', `/v1/auth/sessions/${phoneSid}`, { token: u.accessToken })).status).toBe(204);
    expect((await req('GET', '/v1/me', { token: phone.accessToken })).status).toBe(401);
    expect((await req('POST', '/v1/auth/refresh', { body: { refreshToken: phone.refreshToken } })).status).toBe(401);
    expect((await req('DELETE', `/v1/auth/sessions/${phoneSid}`, { token: u.accessToken })).status).toBe(404);
    // Someone else's session is not found, and stays alive.
    const other = await registerUser(s.url);
    const otherSid = decodeJwt(other.accessToken).sid as string;
    expect((await req('DELETE', `/v1/auth/sessions/${otherSid}`, { token: u.accessToken })).status).toBe(404);
    expect((await req('GET', '/v1/me', { token: other.accessToken })).status).toBe(200);
    expect((await req('DELETE', '/v1/auth/sessions/not-a-uuid', { token: u.accessToken })).status).toBe(400);

    expect((await req('DELETE', '/v1/auth/sessions', { token: u.accessToken })).status).toBe(204);
    expect((await req('GET', '/v1/me', { token: laptop.accessToken })).status).toBe(401);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).status).toBe(200);
    const after = await req('GET', '/v1/auth/sessions', { token: u.accessToken });
    expect(after.body.items.map((x: any) => x.current)).toEqual([true]);
  });

  it('[AF-A4] logout revokes the current session and its refresh token', async () => {
    const u = await registerUser(s.url);
    expect((await req('POST', '/v1/auth/logout', { token: u.accessToken })).status).toBe(204);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).body.error.code).toBe('invalid_token');
    expect((await req('POST', '/v1/auth/refresh', { body: { refreshToken: u.refreshToken } })).status).toBe(401);
    expect((await req('POST', '/v1/auth/logout')).status).toBe(401);
  });

  it('[S4][AF-A2] unknown user and wrong password get identical answers and similar timing', async () => {
    const users: TestUser[] = [];
    for (let i = 0; i < 5; i++) users.push(await registerUser(s.url));
    const wrong: number[] = [];
    const unknown: number[] = [];
    const answers: { wrong: Res[]; unknown: Res[] } = { wrong: [], unknown: [] };
    for (const u of users) {
      let t = performance.now();
      answers.wrong.push(await req('POST', '/v1/auth/login', { body: { login: u.username, password: 'wrong-password' } }));
      wrong.push(performance.now() - t);
      t = performance.now();
      answers.unknown.push(await req('POST', '/v1/auth/login', { body: { login: `nobody${uid(4)}`, password: 'wrong-password' } }));
      unknown.push(performance.now() - t);
    }
    for (const r of [...answers.wrong, ...answers.unknown]) expect(stable(r)).toEqual(stable(answers.wrong[0]!));
    expect(stable(answers.wrong[0]!)).toMatchObject({ status: 401, code: 'invalid_credentials' });
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    // Without the dummy hash an unknown login answers ~10x faster than argon2 takes.
    const ratio = median(unknown) / median(wrong);
    expect(ratio).toBeGreaterThan(0.3);
    expect(ratio).toBeLessThan(3.3);
  });
});

describe('[S4] login throttling', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ AUTH_LOGIN_FAILURES_PER_ACCOUNT: '3', AUTH_LOGIN_FAILURES_PER_IP: '1000', AUTH_LOGIN_LOCKOUT_BASE_SEC: '1' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  const login = (l: string, password: string) => req('POST', '/v1/auth/login', { body: { login: l, password } });

  it('[S4][AF-A2] failures lock the account with 429 and Retry-After, lockouts grow, success resets the count', async () => {
    const u = await registerUser(s.url);
    // Two failures then a success: the count starts over.
    expect((await login(u.username, 'wrong-1')).status).toBe(401);
    expect((await login(u.email, 'wrong-2')).status).toBe(401);
    expect((await login(u.username, u.password)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await login(u.username, `wrong-${i}`)).status).toBe(401);
    // Locked, even with the right password and via the email.
    const locked = await login(u.email, u.password);
    expect(stable(locked)).toMatchObject({ status: 429, code: 'rate_limited', retryAfter: '1' });
    await sleep(1_100);
    for (let i = 0; i < 3; i++) expect((await login(u.username, `wrong-${i}`)).status).toBe(401);
    const lockedAgain = await login(u.username, u.password);
    expect(stable(lockedAgain)).toMatchObject({ status: 429, retryAfter: '2' });
    await sleep(2_100);
    expect((await login(u.username, u.password)).status).toBe(200);
  });

  it('[S4][AF-A2] an unknown login locks the same way and answers identically to a known one', async () => {
    const u = await registerUser(s.url);
    const ghost = `ghost${uid(4)}`;
    for (let i = 0; i < 3; i++) {
      const [known, unknown] = [await login(u.username, 'bad-pass'), await login(ghost, 'bad-pass')];
      expect(stable(unknown)).toEqual(stable(known));
    }
    const [known, unknown] = [await login(u.username, 'bad-pass'), await login(ghost, 'bad-pass')];
    expect(stable(known).status).toBe(429);
    expect(stable(unknown)).toEqual(stable(known));
  });
});

describe('[AF-A1] rate limits on register, refresh and login per IP', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ AUTH_REGISTER_PER_IP_PER_HOUR: '3', AUTH_REFRESH_PER_IP_PER_MINUTE: '3', AUTH_LOGIN_FAILURES_PER_IP: '4', AUTH_LOGIN_FAILURES_PER_ACCOUNT: '100' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  it('[AF-A1] register is limited per IP', async () => {
    const users = [await registerUser(s.url), await registerUser(s.url), await registerUser(s.url)];
    expect(users).toHaveLength(3);
    const name = `u${uid(5)}`;
    const res = await req('POST', '/v1/auth/register', { body: { email: `${name}@example.test`, username: name, password: 'password-1' } });
    expect([res.status, res.body.error.code]).toEqual([429, 'rate_limited']);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
  });

  it('[AF-A1] refresh is limited per IP', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await req('POST', '/v1/auth/refresh', { body: { refreshToken: `x${uid(16)}` } })).status);
    expect(statuses).toEqual([401, 401, 401, 429]);
  });

  it('[S4][AF-A1] failed logins from one IP across many accounts lock that IP', async () => {
    for (let i = 0; i < 4; i++) expect((await req('POST', '/v1/auth/login', { body: { login: `spray${uid(4)}`, password: 'password-1' } })).status).toBe(401);
    const res = await req('POST', '/v1/auth/login', { body: { login: `spray${uid(4)}`, password: 'password-1' } });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });
});

describe('[S3] revocation across nodes', () => {
  it('[S3][AF-A3] a revoked session stops working on another node within 1 s', async () => {
    const env = await freshDeployment();
    const a = await startApp({ ...env });
    const b = await startApp({ ...env });
    try {
      const revokedOnB: string[] = [];
      const off = b.app.services.auth.onSessionRevoked((sid) => revokedOnB.push(sid));
      const u = await registerUser(a.url);
      const sid = decodeJwt(u.accessToken).sid as string;
      // b has looked the session up and may cache it.
      expect((await client(b.url)('GET', '/v1/me', { token: u.accessToken })).status).toBe(200);
      expect((await client(b.url)('GET', '/v1/me', { token: u.accessToken })).status).toBe(200);
      expect((await client(a.url)('POST', '/v1/auth/logout', { token: u.accessToken })).status).toBe(204);
      const revokedAt = performance.now();
      expect((await client(a.url)('GET', '/v1/me', { token: u.accessToken })).status).toBe(401);
      let status = 200;
      while (status === 200 && performance.now() - revokedAt < 1_500) {
        status = (await client(b.url)('GET', '/v1/me', { token: u.accessToken })).status;
        if (status === 200) await sleep(25);
      }
      const elapsed = performance.now() - revokedAt;
      expect(status).toBe(401);
      expect(elapsed).toBeLessThan(1_100);
      // With a shared bus (Redis) every node hears of it (the gateway closes sockets with this).
      if (usingRedis) {
        await expect.poll(() => revokedOnB, { timeout: 1_000 }).toContain(sid);
      }
      off();
    } finally {
      await b.close();
      await a.close();
    }
  });
});
