import { createServer, type Server, type Socket } from 'node:net';
import { simpleParser, type ParsedMail } from 'mailparser';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { escapeHtml, listDeadLetters, pickLocale, renderMail } from '../src/modules/mail/index.js';
import { client, freshDeployment, startApp, uid, type Running } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Received {
  at: number;
  to: string[];
  mail: ParsedMail;
}

/**
 * A real SMTP server in-process. `refuse(rcpt)` decides per delivery attempt
 * whether to answer 451 (temporary failure) instead of accepting.
 */
class TestSmtp {
  readonly received: Received[] = [];
  readonly attempts = new Map<string, number[]>();
  refuse: (rcpt: string, attempt: number) => boolean = () => false;
  private server: SMTPServer;
  port = 0;

  constructor() {
    this.server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['AUTH', 'STARTTLS'],
      logger: false,
      onRcptTo: (address, _session, cb) => {
        const list = this.attempts.get(address.address) ?? [];
        list.push(Date.now());
        this.attempts.set(address.address, list);
        if (this.refuse(address.address, list.length)) {
          const err = new Error('mailbox busy, try later') as Error & { responseCode: number };
          err.responseCode = 451;
          cb(err);
          return;
        }
        cb();
      },
      onData: (stream, session, cb) => {
        simpleParser(stream).then(
          (mail) => {
            this.received.push({ at: Date.now(), to: session.envelope.rcptTo.map((r) => r.address), mail });
            cb();
          },
          (err: Error) => cb(err),
        );
      },
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.server.address() as { port: number }).port;
  }

  async waitFor(to: string, timeoutMs = 10_000): Promise<Received> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = this.received.find((m) => m.to.includes(to));
      if (r) return r;
      if (Date.now() > end) throw new Error(`no mail to ${to} within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function register(base: string, opts: { name?: string; lang?: string; displayName?: string } = {}) {
  const name = opts.name ?? `m${uid(5)}`;
  const email = `${name}@example.test`;
  const res = await client(base)('POST', '/v1/auth/register', {
    body: { email, username: name, password: `pw-${uid(8)}`, displayName: opts.displayName ?? name },
    ...(opts.lang ? { headers: { 'accept-language': opts.lang } } : {}),
  });
  expect(res.status).toBe(201);
  return { id: res.body.user.id as string, email, accessToken: res.body.accessToken as string };
}

const outboxRows = (s: Running, to: string) => s.app.ctx.database.db.selectFrom('mail_outbox').selectAll().where('to_addr', '=', to).execute();

async function waitForRow(s: Running, to: string, pred: (r: Awaited<ReturnType<typeof outboxRows>>[number]) => boolean, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const rows = await outboxRows(s, to);
    const r = rows.find(pred);
    if (r) return r;
    if (Date.now() > end) throw new Error(`outbox row for ${to} did not reach the state: ${JSON.stringify(rows.map((x) => [x.status, x.attempts, x.last_error]))}`);
    await sleep(25);
  }
}

describe('mail over a real SMTP server', () => {
  const smtp = new TestSmtp();
  let s: Running;
  const base = 150;
  beforeAll(async () => {
    await smtp.start();
    s = await startApp({
      MAIL_SMTP_URL: `smtp://127.0.0.1:${smtp.port}`,
      MAIL_FROM: 'SecureConnect <no-reply@example.test>',
      MAIL_POLL_INTERVAL_MS: '25',
      MAIL_RETRY_BASE_MS: String(base),
      MAIL_MAX_ATTEMPTS: '3',
    });
  });
  afterEach(() => {
    smtp.refuse = () => false;
  });
  afterAll(async () => {
    await s.close();
    await smtp.close();
  });

  it('[AC8][AC3] the registration mail arrives with a link whose token verifies the address once', async () => {
    const u = await register(s.url);
    const got = await smtp.waitFor(u.email);
    expect(got.mail.from?.text).toContain('no-reply@example.test');
    expect(got.mail.subject).toBe('Confirm your email address');
    const token = /#token=([A-Za-z0-9_-]+)/.exec(got.mail.text ?? '')?.[1];
    expect(token).toBeDefined();
    expect(got.mail.html).toContain(`#token=${token}`);
    const req = client(s.url);
    expect((await req('GET', '/v1/me', { token: u.accessToken })).body.emailVerified).toBe(false);
    expect((await req('POST', '/v1/account/verify', { body: { token } })).status).toBe(204);
    await sleep(1_000); // the session cache holds the old state for under a second
    expect((await req('GET', '/v1/me', { token: u.accessToken })).body.emailVerified).toBe(true);
    const again = await req('POST', '/v1/account/verify', { body: { token } });
    expect(again.status).toBe(400);
    expect(again.body.error.code).toBe('invalid_account_token');
    // Delivered mails do not keep their bodies (they carry tokens).
    const [row] = await outboxRows(s, u.email);
    expect(row).toMatchObject({ status: 'sent', attempts: 1, text_body: '', html_body: '' });
  });

  it('[AC1][AC8] a refused delivery is retried with exponential backoff until the server accepts', async () => {
    smtp.refuse = (_rcpt, attempt) => attempt <= 2;
    const u = await register(s.url);
    const got = await smtp.waitFor(u.email);
    const tries = smtp.attempts.get(u.email)!;
    expect(tries).toHaveLength(3);
    const gap1 = tries[1]! - tries[0]!;
    const gap2 = tries[2]! - tries[1]!;
    expect(gap1).toBeGreaterThanOrEqual(base);
    expect(gap2).toBeGreaterThanOrEqual(2 * base);
    expect(got.mail.subject).toBe('Confirm your email address');
    const row = await waitForRow(s, u.email, (r) => r.status === 'sent');
    expect(row.attempts).toBe(3);
  });

  it('[AC1][AC8] after MAIL_MAX_ATTEMPTS refusals the mail is a dead letter with its last error, listed for operators', async () => {
    smtp.refuse = () => true;
    const u = await register(s.url);
    const row = await waitForRow(s, u.email, (r) => r.status === 'dead');
    expect(row.attempts).toBe(3);
    expect(row.last_error).toMatch(/451/);
    expect(smtp.attempts.get(u.email)).toHaveLength(3);
    expect(smtp.received.some((m) => m.to.includes(u.email))).toBe(false);
    const dead = await listDeadLetters(s.app.ctx.database, 100);
    expect(dead.find((d) => d.id === row.id)).toMatchObject({ to: u.email, status: 'dead', attempts: 3, template: 'verify_email' });
    await sleep(4 * base);
    expect(smtp.attempts.get(u.email)).toHaveLength(3);
  });

  it('[AC1][AC8] the mail is rolled back with the registration that failed after enqueueing it', async () => {
    const poisoned = `rb${uid(5)}`;
    s.app.services.auth.onAccountCreated((_trx, a) => (a.email.startsWith(poisoned) ? Promise.reject(new Error('forced failure after the mail was enqueued')) : Promise.resolve()));
    const res = await client(s.url)('POST', '/v1/auth/register', { body: { email: `${poisoned}@example.test`, username: poisoned, password: `pw-${uid(8)}` } });
    expect(res.status).toBe(500);
    expect(await outboxRows(s, `${poisoned}@example.test`)).toEqual([]);
    const user = await s.app.ctx.database.db.selectFrom('users').select('id').where('username_lower', '=', poisoned).executeTakeFirst();
    expect(user).toBeUndefined();
    // The hook is additive, so prove a healthy registration still mails: the rollback was specific.
    const ok = await register(s.url);
    await smtp.waitFor(ok.email);
  });

  it('[AC2][AC8] Accept-Language picks the Czech template; display names are escaped in HTML', async () => {
    const u = await register(s.url, { lang: 'cs-CZ,cs;q=0.9,en;q=0.8', displayName: '<b>Ann & "Bo"</b>' });
    const got = await smtp.waitFor(u.email);
    expect(got.mail.subject).toBe('Potvrďte svou e-mailovou adresu');
    expect(got.mail.text).toContain('Dobrý den, <b>Ann & "Bo"</b>,');
    expect(got.mail.html).toContain('lang="cs"');
    expect(got.mail.html).toContain('&lt;b&gt;Ann &amp; &quot;Bo&quot;&lt;/b&gt;');
    expect(got.mail.html).not.toContain('<b>Ann');
    const en = await register(s.url, { lang: 'de-DE,fr;q=0.5' });
    expect((await smtp.waitFor(en.email)).mail.subject).toBe('Confirm your email address');
  });
});

describe('[AC1] several nodes share one outbox', () => {
  it('[AC1] two nodes\' workers deliver every mail exactly once', async () => {
    const smtp = new TestSmtp();
    await smtp.start();
    const env = { ...(await freshDeployment()), MAIL_SMTP_URL: `smtp://127.0.0.1:${smtp.port}`, MAIL_POLL_INTERVAL_MS: '10' };
    const a = await startApp(env);
    const b = await startApp(env);
    try {
      // Registered while both workers poll, so both race for the same due rows.
      const users = await Promise.all(Array.from({ length: 16 }, (_, i) => register(i % 2 === 0 ? a.url : b.url)));
      for (const u of users) await smtp.waitFor(u.email);
      await sleep(300);
      for (const u of users) expect(smtp.received.filter((m) => m.to.includes(u.email)), u.email).toHaveLength(1);
      expect(smtp.received).toHaveLength(16);
    } finally {
      await a.close();
      await b.close();
      await smtp.close();
    }
  });
});

describe('[AC2] templates', () => {
  it('[AC2] every template exists in en and cs, as text and HTML, with the link and token', () => {
    for (const t of ['verify_email', 'password_reset', 'password_changed'] as const) {
      const en = renderMail(t, 'en', { name: 'A', link: 'https://x.test/a#token=T0k', token: 'T0k' });
      const cs = renderMail(t, 'cs', { name: 'A', link: 'https://x.test/a#token=T0k', token: 'T0k' });
      expect(en.subject).not.toBe(cs.subject);
      for (const r of [en, cs]) {
        expect(r.text.length).toBeGreaterThan(20);
        expect(r.html).toMatch(/^<!doctype html>/);
        if (t !== 'password_changed') expect(r.text).toContain('https://x.test/a#token=T0k');
      }
    }
    expect(renderMail('verify_email', 'xx', { name: 'A' }).subject).toBe('Confirm your email address');
    expect(pickLocale('cs')).toBe('cs');
    expect(pickLocale('en-US,cs;q=0.9')).toBe('en');
    expect(pickLocale('de, cs;q=0.1')).toBe('cs');
    expect(pickLocale(undefined)).toBe('en');
    expect(escapeHtml(`<a href="x" onclick='y'>&</a>`)).toBe('&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
  });
});

describe('[AC1] SMTP timeouts and configuration', () => {
  let silent: Server;
  const sockets = new Set<Socket>();
  let s: Running | undefined;
  afterAll(async () => {
    await s?.close();
    for (const sock of sockets) sock.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  });

  it('[AC1][AF-I6] a server that accepts the connection but never greets costs one attempt, not a stuck worker', async () => {
    silent = createServer((sock) => {
      sockets.add(sock);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    s = await startApp({ MAIL_SMTP_URL: `smtp://127.0.0.1:${port}`, MAIL_CONNECT_TIMEOUT_MS: '300', MAIL_POLL_INTERVAL_MS: '25', MAIL_RETRY_BASE_MS: '60000' });
    const u = await register(s.url);
    const t0 = Date.now();
    const row = await waitForRow(s, u.email, (r) => r.attempts === 1, 5_000);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(row.status).toBe('pending');
    expect(row.last_error).toMatch(/greeting|timeout/i);
  });

  it('[AC1] production refuses to start without MAIL_SMTP_URL and MAIL_FROM', async () => {
    const err = await loadConfig({ NODE_ENV: 'production' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(String((err as Error).message)).toMatch(/MAIL_SMTP_URL/);
    expect(String((err as Error).message)).toMatch(/MAIL_FROM/);
    const bad = await loadConfig({ NODE_ENV: 'test', MAIL_SMTP_URL: 'http://mail.example.test' }).catch((e: unknown) => e);
    expect(String((bad as Error).message)).toMatch(/smtp:\/\/ or smtps:\/\//);
  });
});

describe('[AC1] development outbox', () => {
  it('[AC1] GET /dev/outbox lists mails only when NODE_ENV=development; elsewhere it does not exist', async () => {
    const dev = await startApp({ NODE_ENV: 'development', MAIL_POLL_INTERVAL_MS: '25' });
    const test = await startApp({});
    try {
      const u = await register(dev.url);
      await waitForRow(dev, u.email, (r) => r.status === 'sent');
      const res = await client(dev.url)('GET', '/dev/outbox');
      expect(res.status).toBe(200);
      const item = res.body.items.find((m: { to: string }) => m.to === u.email);
      expect(item).toMatchObject({ status: 'sent', template: 'verify_email', subject: 'Confirm your email address' });
      expect(item.text).toMatch(/#token=[A-Za-z0-9_-]{43}/);
      expect((await client(test.url)('GET', '/dev/outbox')).status).toBe(404);
    } finally {
      await dev.close();
      await test.close();
    }
  });
});
