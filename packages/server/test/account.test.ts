import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { commonPasswordCount } from '../src/modules/auth/passwords.js';
import { CLOSE_CODES } from '@secureconnect/protocol';
import { WsClient, client, registerUser, startApp, uid, type Res, type Running, type TestUser } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Long enough for every node's session cache to re-read the account ([S3]). */
const CACHE_MS = 1_000;

/** The newest mail of `template` to `to`, read from the outbox (no SMTP configured: bodies are kept). */
async function lastMail(s: Running, to: string, template: string) {
  const end = Date.now() + 5_000;
  for (;;) {
    const row = await s.app.ctx.database.db
      .selectFrom('mail_outbox')
      .selectAll()
      .where('to_addr', '=', to)
      .where('template', '=', template)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .executeTakeFirst();
    if (row) return row;
    if (Date.now() > end) throw new Error(`no ${template} mail to ${to}`);
    await sleep(20);
  }
}
const tokenOf = (text: string) => /#token=([A-Za-z0-9_-]+)/.exec(text)![1]!;
const mailCount = async (s: Running, to: string, template: string) =>
  (await s.app.ctx.database.db.selectFrom('mail_outbox').select('id').where('to_addr', '=', to).where('template', '=', template).execute()).length;
const code = (r: Res) => r.body?.error?.code as string | undefined;

describe('[AC3] email verification required', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ EMAIL_VERIFICATION: 'required', ACCOUNT_VERIFY_RESEND_PER_HOUR: '2', MAIL_POLL_INTERVAL_MS: '25' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  it('[AC3] an unverified account may sign in, read its profile and resend, but not create conversations; verifying lifts the limit', async () => {
    const u = await registerUser(s.url);
    const other = await registerUser(s.url);
    const me = await req('GET', '/v1/me', { token: u.accessToken });
    expect(me.status).toBe(200);
    expect(me.body.emailVerified).toBe(false);
    const login = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    expect(login.status).toBe(200);
    expect((await req('GET', '/v1/auth/sessions', { token: u.accessToken })).status).toBe(200);
    const create = await req('POST', '/v1/conversations', { token: u.accessToken, body: { type: 'direct', userId: other.id } });
    expect(create.status).toBe(403);
    expect(code(create)).toBe('email_unverified');
    expect((await req('GET', '/v1/conversations', { token: u.accessToken })).status).toBe(403);
    expect((await req('PATCH', '/v1/me', { token: u.accessToken, body: { statusText: 'x' } })).status).toBe(403);

    const token = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    expect((await req('POST', '/v1/account/verify', { body: { token } })).status).toBe(204);
    await sleep(CACHE_MS);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).body.emailVerified).toBe(true);
    expect((await req('POST', '/v1/conversations', { token: u.accessToken, body: { type: 'direct', userId: other.id } })).status).toBe(201);
  });

  it('[AC3] an unverified account cannot open the WebSocket (close 4412); once verified it can', async () => {
    const u = await registerUser(s.url);
    const held = await WsClient.open(s.wsUrl);
    held.send({ type: 'auth', token: u.accessToken });
    expect((await held.waitClose()).code).toBe(CLOSE_CODES.emailUnverified);
    const token = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    expect((await req('POST', '/v1/account/verify', { body: { token } })).status).toBe(204);
    await sleep(CACHE_MS);
    const ok = await WsClient.connect(s.wsUrl, u.accessToken);
    ok.close();
  });

  it('[AC3] a resend replaces the previous link and is rate limited per account', async () => {
    const u = await registerUser(s.url);
    const first = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    expect((await req('POST', '/v1/account/verify/resend', { token: u.accessToken })).status).toBe(204);
    expect(await mailCount(s, u.email, 'verify_email')).toBe(2);
    const second = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    expect(second).not.toBe(first);
    expect((await req('POST', '/v1/account/verify/resend', { token: u.accessToken })).status).toBe(204);
    const limited = await req('POST', '/v1/account/verify/resend', { token: u.accessToken });
    expect(limited.status).toBe(429);
    expect(code(limited)).toBe('rate_limited');
    const old = await req('POST', '/v1/account/verify', { body: { token: first } });
    expect(old.status).toBe(400);
    expect(code(old)).toBe('invalid_account_token');
    const third = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    expect((await req('POST', '/v1/account/verify', { body: { token: third } })).status).toBe(204);
  });
});

describe('account tokens, reset and change', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  beforeAll(async () => {
    s = await startApp({ AUTH_LOGIN_FAILURES_PER_ACCOUNT: '3', AUTH_LOGIN_FAILURES_PER_IP: '1000', ACCOUNT_TOKEN_ATTEMPTS_PER_IP_PER_HOUR: '1000', ACCOUNT_FORGOT_PER_HOUR: '1000', MAIL_POLL_INTERVAL_MS: '25' });
    req = client(s.url);
  });
  afterAll(async () => s.close());

  it('[AC7] expired, reused and forged verification tokens get 400 invalid_account_token; only SHA-256 hashes are stored', async () => {
    const u = await registerUser(s.url);
    const token = tokenOf((await lastMail(s, u.email, 'verify_email')).text_body);
    const stored = await s.app.ctx.database.db.selectFrom('account_tokens').selectAll().where('user_id', '=', u.id).execute();
    expect(stored).toHaveLength(1);
    expect(stored[0]!.token_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(stored[0]!.token_hash).not.toContain(token);
    expect(stored[0]!.expires_at - stored[0]!.created_at).toBe(24 * 3600_000);

    const forged = await req('POST', '/v1/account/verify', { body: { token: `${token.slice(0, -2)}AA` } });
    expect([forged.status, code(forged)]).toEqual([400, 'invalid_account_token']);
    await s.app.ctx.database.db.updateTable('account_tokens').set({ expires_at: Date.now() - 1 }).where('user_id', '=', u.id).execute();
    const expired = await req('POST', '/v1/account/verify', { body: { token } });
    expect([expired.status, code(expired)]).toEqual([400, 'invalid_account_token']);
    await s.app.ctx.database.db.updateTable('account_tokens').set({ expires_at: Date.now() + 60_000 }).where('user_id', '=', u.id).execute();
    expect((await req('POST', '/v1/account/verify', { body: { token } })).status).toBe(204);
    const reused = await req('POST', '/v1/account/verify', { body: { token } });
    expect([reused.status, code(reused)]).toEqual([400, 'invalid_account_token']);
    const malformed = await req('POST', '/v1/account/verify', { body: { token: 'not a token!' } });
    expect(malformed.status).toBe(400);
  });

  it('[AC4] forgot-password answers 202 with the same body for known and unknown addresses, in similar time', async () => {
    const users: TestUser[] = [];
    for (let i = 0; i < 5; i++) users.push(await registerUser(s.url));
    const known: number[] = [];
    const unknown: number[] = [];
    const bodies: string[] = [];
    for (const u of users) {
      let t = performance.now();
      const a = await req('POST', '/v1/account/password/forgot', { body: { email: u.email } });
      known.push(performance.now() - t);
      t = performance.now();
      const b = await req('POST', '/v1/account/password/forgot', { body: { email: `nobody${uid(4)}@example.test` } });
      unknown.push(performance.now() - t);
      for (const r of [a, b]) {
        expect(r.status).toBe(202);
        bodies.push(JSON.stringify(r.body));
      }
    }
    expect(new Set(bodies)).toEqual(new Set([JSON.stringify({ status: 'accepted' })]));
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
    const ratio = median(unknown) / median(known);
    expect(ratio).toBeGreaterThan(0.3);
    expect(ratio).toBeLessThan(3.3);
    for (const u of users) expect(await mailCount(s, u.email, 'password_reset')).toBe(1);
  });

  it('[AC4] a reset sets the password, ends every session, mails a notice, and its link works once within 1 h', async () => {
    const u = await registerUser(s.url);
    const second = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    expect((await req('POST', '/v1/account/password/forgot', { body: { email: u.email.toUpperCase() } })).status).toBe(202);
    const mail = await lastMail(s, u.email, 'password_reset');
    const token = tokenOf(mail.text_body);
    const row = await s.app.ctx.database.db.selectFrom('account_tokens').selectAll().where('user_id', '=', u.id).where('purpose', '=', 'reset').executeTakeFirstOrThrow();
    expect(row.expires_at - row.created_at).toBe(3600_000);

    const weak = await req('POST', '/v1/account/password/reset', { body: { token, newPassword: 'password1' } });
    expect([weak.status, code(weak)]).toEqual([400, 'weak_password']);
    const newPassword = `new-${uid(8)}`;
    expect((await req('POST', '/v1/account/password/reset', { body: { token, newPassword } })).status).toBe(204);
    await sleep(CACHE_MS);
    for (const t of [u.accessToken, second.body.accessToken]) expect((await req('GET', '/v1/me', { token: t })).status).toBe(401);
    expect((await req('POST', '/v1/auth/refresh', { body: { refreshToken: u.refreshToken } })).status).toBe(401);
    expect((await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } })).status).toBe(401);
    const login = await req('POST', '/v1/auth/login', { body: { login: u.username, password: newPassword } });
    expect(login.status).toBe(200);
    expect((await req('GET', '/v1/me', { token: login.body.accessToken })).body.emailVerified).toBe(true);
    expect(await mailCount(s, u.email, 'password_changed')).toBe(1);

    const reused = await req('POST', '/v1/account/password/reset', { body: { token, newPassword: `other-${uid(8)}` } });
    expect([reused.status, code(reused)]).toEqual([400, 'invalid_account_token']);
  });

  it('[AC7] an expired or forged reset token gets 400 invalid_account_token; a newer request retires the older link', async () => {
    const u = await registerUser(s.url);
    await req('POST', '/v1/account/password/forgot', { body: { email: u.email } });
    const first = tokenOf((await lastMail(s, u.email, 'password_reset')).text_body);
    await req('POST', '/v1/account/password/forgot', { body: { email: u.email } });
    await sleep(50);
    const end = Date.now() + 5_000;
    while ((await mailCount(s, u.email, 'password_reset')) < 2 && Date.now() < end) await sleep(20);
    const second = tokenOf((await lastMail(s, u.email, 'password_reset')).text_body);
    expect(second).not.toBe(first);
    const old = await req('POST', '/v1/account/password/reset', { body: { token: first, newPassword: `n-${uid(8)}` } });
    expect([old.status, code(old)]).toEqual([400, 'invalid_account_token']);
    const forged = await req('POST', '/v1/account/password/reset', { body: { token: 'A'.repeat(43), newPassword: `n-${uid(8)}` } });
    expect([forged.status, code(forged)]).toEqual([400, 'invalid_account_token']);
    await s.app.ctx.database.db.updateTable('account_tokens').set({ expires_at: Date.now() - 1 }).where('user_id', '=', u.id).where('purpose', '=', 'reset').execute();
    const expired = await req('POST', '/v1/account/password/reset', { body: { token: second, newPassword: `n-${uid(8)}` } });
    expect([expired.status, code(expired)]).toEqual([400, 'invalid_account_token']);
    expect((await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } })).status).toBe(200);
  });

  it('[AC5] a change needs the current password, ends the other sessions, keeps this one and mails a notice', async () => {
    const u = await registerUser(s.url);
    const other = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    const newPassword = `chg-${uid(8)}`;
    const wrong = await req('POST', '/v1/account/password', { token: u.accessToken, body: { currentPassword: 'not-it-at-all', newPassword } });
    expect([wrong.status, code(wrong)]).toEqual([401, 'invalid_credentials']);
    expect((await req('POST', '/v1/account/password', { token: u.accessToken, body: { currentPassword: u.password, newPassword } })).status).toBe(204);
    await sleep(CACHE_MS);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).status).toBe(200);
    expect((await req('GET', '/v1/me', { token: other.body.accessToken })).status).toBe(401);
    expect((await req('POST', '/v1/auth/login', { body: { login: u.username, password: newPassword } })).status).toBe(200);
    const notice = await lastMail(s, u.email, 'password_changed');
    expect(notice.subject).toBe('Your password was changed');
  });

  it('[AC5] wrong current passwords are throttled and locked out like logins', async () => {
    const u = await registerUser(s.url);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      statuses.push((await req('POST', '/v1/account/password', { token: u.accessToken, body: { currentPassword: `wrong-${i}-guess`, newPassword: `n-${uid(8)}` } })).status);
    }
    expect(statuses).toEqual([401, 401, 401, 429]);
    // The budget is the account's, shared with login: the right password is refused while locked.
    const locked = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
    expect(locked.status).toBe(429);
  });

  it('[AC6] common passwords and short ones are refused at registration, reset and change', async () => {
    expect(commonPasswordCount()).toBeGreaterThan(10_000);
    for (const pw of ['password', 'iloveyou1', 'Qwertyuiop', 'baseball', 'short7!']) {
      const name = `p${uid(5)}`;
      const r = await req('POST', '/v1/auth/register', { body: { email: `${name}@example.test`, username: name, password: pw } });
      expect([pw, r.status, code(r)]).toEqual([pw, 400, pw.length < 8 ? 'validation_failed' : 'weak_password']);
    }
    const u = await registerUser(s.url);
    const change = await req('POST', '/v1/account/password', { token: u.accessToken, body: { currentPassword: u.password, newPassword: 'sunshine' } });
    expect([change.status, code(change)]).toEqual([400, 'weak_password']);
    await req('POST', '/v1/account/password/forgot', { body: { email: u.email } });
    const token = tokenOf((await lastMail(s, u.email, 'password_reset')).text_body);
    const reset = await req('POST', '/v1/account/password/reset', { body: { token, newPassword: 'trustno1' } });
    expect([reset.status, code(reset)]).toEqual([400, 'weak_password']);
  });
});

describe('[AC7] brute force on the token endpoints', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp({ ACCOUNT_TOKEN_ATTEMPTS_PER_IP_PER_HOUR: '5' });
  });
  afterAll(async () => s.close());

  it('[AC7] guesses at verify and reset share a per-IP budget and then get 429', async () => {
    const req = client(s.url);
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await req('POST', '/v1/account/verify', { body: { token: `guess${uid(16)}` } })).status);
    for (let i = 0; i < 3; i++) statuses.push((await req('POST', '/v1/account/password/reset', { body: { token: `guess${uid(16)}`, newPassword: `n-${uid(8)}` } })).status);
    expect(statuses).toEqual([400, 400, 400, 400, 400, 429]);
    const after = await req('POST', '/v1/account/verify', { body: { token: `guess${uid(16)}` } });
    expect(after.status).toBe(429);
    expect(Number(after.headers.get('retry-after'))).toBeGreaterThan(0);
  });
});
