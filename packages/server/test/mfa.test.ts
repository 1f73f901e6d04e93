import { MfaRequiredError, SecureConnectClient } from '@secureconnect/sdk';
import { Secret, TOTP } from 'otpauth';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, registerUser, startApp, type Res, type Running, type TestUser } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const code = (r: Res) => r.body?.error?.code as string | undefined;
/** Long enough for every node's session cache to re-read a revoked session ([S3]). */
const CACHE_MS = 1_000;

const totpAt = (secret: string, timestamp = Date.now()) => TOTP.generate({ secret: Secret.fromBase32(secret), timestamp });

async function mails(s: Running, to: string, template: string) {
  return s.app.ctx.database.db.selectFrom('mail_outbox').select(['id', 'text_body']).where('to_addr', '=', to).where('template', '=', template).execute();
}

describe('two-factor authentication', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ AUTH_LOGIN_FAILURES_PER_ACCOUNT: '3', MAIL_POLL_INTERVAL_MS: '25' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  /**
   * A code the server has not seen: forgets the last accepted step, as the
   * passing of time would (each code works once, [MF3]), then a code for now.
   */
  async function freshCode(u: TestUser, secret: string): Promise<string> {
    await s.app.ctx.database.db.updateTable('mfa_totp').set({ last_step: null }).where('user_id', '=', u.id).execute();
    return totpAt(secret);
  }

  async function reauth(u: TestUser, token = u.accessToken, body: Record<string, unknown> = {}) {
    return req('POST', '/v1/auth/reauth', { token, body: { password: u.password, ...body } });
  }

  /** Registers a user and turns 2FA on; returns the secret and recovery codes. */
  async function enrolled(): Promise<{ u: TestUser; secret: string; recoveryCodes: string[] }> {
    const u = await registerUser(s.url);
    expect((await reauth(u)).status).toBe(200);
    const start = await req('POST', '/v1/account/mfa/totp', { token: u.accessToken });
    expect(start.status).toBe(200);
    const confirm = await req('POST', '/v1/account/mfa/totp/confirm', { token: u.accessToken, body: { code: totpAt(start.body.secret) } });
    expect(confirm.status).toBe(200);
    return { u, secret: start.body.secret as string, recoveryCodes: confirm.body.recoveryCodes as string[] };
  }

  async function challenge(u: TestUser): Promise<string> {
    const res = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    expect(res.status).toBe(200);
    expect(res.body.mfaRequired).toBe(true);
    expect(res.body.accessToken).toBeUndefined();
    return res.body.mfaToken as string;
  }

  it('[MF1] enrolment: a secret and otpauth URI, activated by a first code, 10 recovery codes once, stored encrypted and hashed, a notice mail', async () => {
    const u = await registerUser(s.url);
    expect((await reauth(u)).status).toBe(200);
    const start = await req('POST', '/v1/account/mfa/totp', { token: u.accessToken });
    expect(start.status).toBe(200);
    expect(start.body.secret).toMatch(/^[A-Z2-7]{32}$/);
    expect(start.body.otpauthUri).toMatch(/^otpauth:\/\/totp\/SecureConnect:.+secret=[A-Z2-7]+/);
    // Not active until confirmed: login still answers with tokens.
    expect((await req('GET', '/v1/account/mfa', { token: u.accessToken })).body).toEqual({ totp: false, recoveryCodesRemaining: 0 });
    expect((await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } })).body.accessToken).toBeTypeOf('string');

    const wrong = await req('POST', '/v1/account/mfa/totp/confirm', { token: u.accessToken, body: { code: totpAt(start.body.secret, Date.now() - 10 * 60_000) } });
    expect(wrong.status).toBe(401);
    expect(code(wrong)).toBe('invalid_mfa_code');
    const confirm = await req('POST', '/v1/account/mfa/totp/confirm', { token: u.accessToken, body: { code: totpAt(start.body.secret) } });
    expect(confirm.status).toBe(200);
    const codes = confirm.body.recoveryCodes as string[];
    expect(codes).toHaveLength(10);
    expect(new Set(codes).size).toBe(10);
    expect((await req('GET', '/v1/account/mfa', { token: u.accessToken })).body).toEqual({ totp: true, recoveryCodesRemaining: 10 });
    // Once only: a second confirm (or enrolment) is refused while 2FA is on.
    expect((await req('POST', '/v1/account/mfa/totp/confirm', { token: u.accessToken, body: { code: totpAt(start.body.secret) } })).status).toBe(409);
    expect((await req('POST', '/v1/account/mfa/totp', { token: u.accessToken })).status).toBe(409);

    const db = s.app.ctx.database.db;
    const row = await db.selectFrom('mfa_totp').selectAll().where('user_id', '=', u.id).executeTakeFirstOrThrow();
    expect(row.secret_enc).not.toContain(start.body.secret);
    expect(Buffer.from(row.secret_enc, 'base64').toString('latin1')).not.toContain(start.body.secret);
    const stored = (await db.selectFrom('mfa_recovery_codes').select('code_hash').where('user_id', '=', u.id).execute()).map((r) => r.code_hash);
    expect(stored).toHaveLength(10);
    for (const c of codes) expect(stored).not.toContain(c);
    expect(await mails(s, u.email, 'mfa_enabled')).toHaveLength(1);
  });

  it('[MF2] with 2FA a correct password gives a single-use challenge, not tokens; the code turns it into a session; accounts without 2FA are unchanged', async () => {
    const plain = await registerUser(s.url);
    const direct = await req('POST', '/v1/auth/login', { body: { login: plain.username, password: plain.password } });
    expect(direct.status).toBe(200);
    expect(Object.keys(direct.body).sort()).toEqual(['accessToken', 'expiresIn', 'refreshToken', 'user']);

    const { u, secret } = await enrolled();
    expect(code(await req('POST', '/v1/auth/login', { body: { login: u.username, password: 'wrong-password' } }))).toBe('invalid_credentials');
    const mfaToken = await challenge(u);
    const stored = await s.app.ctx.database.db.selectFrom('mfa_challenges').select('token_hash').where('user_id', '=', u.id).execute();
    expect(stored.map((r) => r.token_hash)).not.toContain(mfaToken);

    const ok = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken, code: await freshCode(u, secret) } });
    expect(ok.status).toBe(200);
    expect(ok.body.user.id).toBe(u.id);
    expect((await req('GET', '/v1/me', { token: ok.body.accessToken })).status).toBe(200);
    // The challenge worked once.
    const again = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken, code: await freshCode(u, secret) } });
    expect(again.status).toBe(401);
    expect(code(again)).toBe('invalid_mfa_token');
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: 'x'.repeat(43), code: '123456' } }))).toBe('invalid_mfa_token');
  });

  it('[MF2] an expired challenge is refused', async () => {
    const { u, secret } = await enrolled();
    const mfaToken = await challenge(u);
    await s.app.ctx.database.db.updateTable('mfa_challenges').set({ expires_at: Date.now() - 1 }).where('user_id', '=', u.id).execute();
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken, code: await freshCode(u, secret) } }))).toBe('invalid_mfa_token');
  });

  it('[MF3] a code is accepted once: the same code again, even on a new challenge, is refused', async () => {
    const { u, secret } = await enrolled();
    const c = await freshCode(u, secret);
    expect((await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), code: c } })).status).toBe(200);
    const replay = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), code: c } });
    expect(replay.status).toBe(401);
    expect(code(replay)).toBe('invalid_mfa_code');
    // A code from an earlier step than the accepted one is a replay too; one far off is simply wrong.
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), code: totpAt(secret, Date.now() - 30_000) } }))).toBe('invalid_mfa_code');
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), code: totpAt(secret, Date.now() + 5 * 60_000) } }))).toBe('invalid_mfa_code');
  });

  it('[MF2] wrong codes are throttled per account: 429 with Retry-After after the limit, even for the right code', async () => {
    const { u, secret } = await enrolled();
    const mfaToken = await challenge(u);
    const bad = (Number(totpAt(secret)) + 500_000) % 1_000_000;
    const wrong = String(bad).padStart(6, '0');
    for (let i = 0; i < 3; i++) expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken, code: wrong } }))).toBe('invalid_mfa_code');
    const locked = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken, code: await freshCode(u, secret) } });
    expect(locked.status).toBe(429);
    expect(Number(locked.headers.get('retry-after'))).toBeGreaterThan(0);
    // Re-authentication checks the same second-factor budget.
    const re = await req('POST', '/v1/auth/reauth', { token: u.accessToken, body: { password: u.password, code: await freshCode(u, secret) } });
    expect(re.status).toBe(429);
  });

  it('[MF4] a recovery code signs in once; the count drops; regenerating (after re-auth) invalidates the old ones', async () => {
    const { u, recoveryCodes } = await enrolled();
    const [first, second] = recoveryCodes as [string, string];
    // Typed loosely: case and dashes do not matter.
    const ok = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), recoveryCode: first.toLowerCase().replace(/-/g, ' ') } });
    expect(ok.status).toBe(200);
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), recoveryCode: first } }))).toBe('invalid_mfa_code');
    expect((await req('GET', '/v1/account/mfa', { token: u.accessToken })).body).toEqual({ totp: true, recoveryCodesRemaining: 9 });

    // Regenerating needs a recent re-authentication of this session.
    const token = ok.body.accessToken as string;
    expect(code(await req('POST', '/v1/account/mfa/recovery-codes', { token }))).toBe('reauth_required');
    expect((await reauth(u, token, { recoveryCode: second })).status).toBe(200);
    const regen = await req('POST', '/v1/account/mfa/recovery-codes', { token });
    expect(regen.status).toBe(200);
    expect(regen.body.recoveryCodes).toHaveLength(10);
    // One old code is enough: more would spend the throttling budget.
    expect(code(await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), recoveryCode: recoveryCodes[2]! } }))).toBe('invalid_mfa_code');
    expect((await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), recoveryCode: regen.body.recoveryCodes[0] } })).status).toBe(200);
    expect((await req('GET', '/v1/account/mfa', { token })).body.recoveryCodesRemaining).toBe(9);
  });

  it('[MF5] enrolment needs a re-authentication of this session; a wrong password does not give one; with 2FA on, re-auth needs a code', async () => {
    const u = await registerUser(s.url);
    const denied = await req('POST', '/v1/account/mfa/totp', { token: u.accessToken });
    expect(denied.status).toBe(403);
    expect(code(denied)).toBe('reauth_required');
    expect(code(await req('POST', '/v1/auth/reauth', { token: u.accessToken, body: { password: 'not-the-password' } }))).toBe('invalid_credentials');
    expect((await req('POST', '/v1/account/mfa/totp', { token: u.accessToken })).status).toBe(403);
    // Another session of the same user is not re-authenticated by this one.
    const other = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    const re = await reauth(u);
    expect(re.status).toBe(200);
    expect(Date.parse(re.body.reauthUntil)).toBeGreaterThan(Date.now());
    expect(code(await req('POST', '/v1/account/mfa/totp', { token: other.body.accessToken }))).toBe('reauth_required');
    expect((await req('POST', '/v1/account/mfa/totp', { token: u.accessToken })).status).toBe(200);

    const { u: v, secret } = await enrolled();
    const noCode = await reauth(v);
    expect(noCode.status).toBe(400);
    expect((await reauth(v, v.accessToken, { code: await freshCode(v, secret) })).status).toBe(200);
  });

  it('[MF6] disabling needs re-auth and a current code, sends a notice, ends the other sessions, and login no longer asks for a code', async () => {
    const { u, secret } = await enrolled();
    const otherSession = await req('POST', '/v1/auth/login/mfa', { body: { mfaToken: await challenge(u), code: await freshCode(u, secret) } });
    expect(otherSession.status).toBe(200);

    // The enrolment's re-authentication is still fresh for u's first session: a wrong code is refused.
    expect(code(await req('DELETE', '/v1/account/mfa/totp', { token: u.accessToken, body: { code: totpAt(secret, Date.now() - 10 * 60_000) } }))).toBe('invalid_mfa_code');
    expect(code(await req('DELETE', '/v1/account/mfa/totp', { token: otherSession.body.accessToken, body: { code: await freshCode(u, secret) } }))).toBe('reauth_required');
    const off = await req('DELETE', '/v1/account/mfa/totp', { token: u.accessToken, body: { code: await freshCode(u, secret) } });
    expect(off.status).toBe(204);
    expect((await req('GET', '/v1/account/mfa', { token: u.accessToken })).body).toEqual({ totp: false, recoveryCodesRemaining: 0 });
    expect(await mails(s, u.email, 'mfa_disabled')).toHaveLength(1);
    await sleep(CACHE_MS);
    expect((await req('GET', '/v1/me', { token: otherSession.body.accessToken })).status).toBe(401);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).status).toBe(200);
    expect((await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } })).body.accessToken).toBeTypeOf('string');
  });
});

describe('[MF2] the SDK client', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  it('[MF2] login() throws MfaRequiredError with the challenge; loginMfa() completes it; the 2FA methods round-trip', async () => {
    const u = await registerUser(s.url);
    const c = new SecureConnectClient({ baseUrl: s.url });
    await c.login(u.username, u.password);
    await c.reauth(u.password);
    const { secret } = await c.enrolTotp();
    expect((await c.confirmTotp(totpAt(secret))).recoveryCodes).toHaveLength(10);
    expect(await c.mfaStatus()).toEqual({ totp: true, recoveryCodesRemaining: 10 });

    const fresh = new SecureConnectClient({ baseUrl: s.url });
    const err = await fresh.login(u.username, u.password).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MfaRequiredError);
    await s.app.ctx.database.db.updateTable('mfa_totp').set({ last_step: null }).where('user_id', '=', u.id).execute();
    const signedIn = await fresh.loginMfa((err as MfaRequiredError).mfaToken, { code: totpAt(secret) });
    expect(signedIn.user.id).toBe(u.id);
    expect((await fresh.me()).id).toBe(u.id);
  });
});

describe('[MF5] re-authentication expires', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ REAUTH_TTL_SEC: '1' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  it('[MF5] a re-authentication lets the session change 2FA settings only until REAUTH_TTL_SEC has passed', async () => {
    const u = await registerUser(s.url);
    expect((await req('POST', '/v1/auth/reauth', { token: u.accessToken, body: { password: u.password } })).status).toBe(200);
    await sleep(1_100);
    const late = await req('POST', '/v1/account/mfa/totp', { token: u.accessToken });
    expect(late.status).toBe(403);
    expect(code(late)).toBe('reauth_required');
  });
});
