/**
 * Operational basics: health, headers, CORS, the error envelope, log
 * redaction, OpenAPI, the secret scan and the docs that must match the code.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLOSE_CODES, ERRORS } from '@secureconnect/protocol';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { openBus } from '../src/infra/bus/index.js';
import { openDatabase } from '../src/infra/db/index.js';
import { createLogger } from '../src/infra/logger.js';
import { WsClient, client, registerUser, startApp, testConfig, usingPostgres, type Running } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

/** No response may leak internals: stack frames, file paths, driver messages. */
function expectNoInternals(body: unknown): void {
  const text = JSON.stringify(body);
  expect(text).not.toMatch(/\bat .+\(.+:\d+:\d+\)|node_modules|\.ts:\d+|\.js:\d+|stack/i);
}

describe('health and readiness', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  it('[AF-O1] /healthz answers while the process is alive', async () => {
    const res = await client(s.url)('GET', '/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
  });

  it('[AF-O1] /readyz checks the database and the bus', async () => {
    const ready = await client(s.url)('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ status: 'ok', checks: { database: 'ok', bus: 'ok', shuttingDown: false } });
  });
});

describe('[AF-O1] readiness fails when a dependency is gone', () => {
  it('[AF-O1] /readyz is 503 when the database is closed, 200 /healthz still', async () => {
    const s = await startApp();
    try {
      await s.app.ctx.database.close();
      const started = Date.now();
      const res = await client(s.url)('GET', '/readyz');
      expect(res.status).toBe(503);
      expect(res.body).toMatchObject({ status: 'unavailable', checks: { database: 'failed', bus: 'ok' } });
      // Each check is bounded by its own timeout (1 s), so the probe answers promptly.
      expect(Date.now() - started).toBeLessThan(3_000);
      expect((await client(s.url)('GET', '/healthz')).status).toBe(200);
    } finally {
      // The database is already closed; closing it twice is not what this test is about.
      await s.close().catch(() => undefined);
    }
  });

  it('[AF-O1] /readyz is 503 when the bus is closed', async () => {
    const s = await startApp();
    try {
      await s.app.ctx.bus.close();
      const res = await client(s.url)('GET', '/readyz');
      expect(res.status).toBe(503);
      expect(res.body.checks).toMatchObject({ database: 'ok', bus: 'failed' });
    } finally {
      await s.close().catch(() => undefined);
    }
  });
});

describe('headers, CORS and the error envelope', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp({ CORS_ORIGINS: 'https://app.example.com', BODY_LIMIT_BYTES: '2048' });
  });
  afterAll(async () => s.close());

  it('[AF-O10] security headers are on every response, errors included', async () => {
    const req = client(s.url);
    for (const res of [await req('GET', '/healthz'), await req('GET', '/v1/nope'), await req('POST', '/v1/nope', { raw: '{' })]) {
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
      expect(res.headers.get('content-security-policy')).toContain("default-src 'none'");
      expect(res.headers.get('referrer-policy')).toBe('no-referrer');
      expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
      // Without an https PUBLIC_URL there is no HSTS (it would pin plain-HTTP dev hosts).
      expect(res.headers.get('strict-transport-security')).toBeNull();
    }
  });

  it('[AF-O10] [AF-S7] HSTS is sent when PUBLIC_URL is https', async () => {
    const https = await startApp({ PUBLIC_URL: 'https://chat.example.com' });
    try {
      const res = await client(https.url)('GET', '/healthz');
      expect(res.headers.get('strict-transport-security')).toMatch(/max-age=\d{7,}/);
    } finally {
      await https.close();
    }
  });

  it('[AF-S5] CORS: a listed origin is allowed, an unlisted one gets no CORS headers', async () => {
    const req = client(s.url);
    const allowed = await req('GET', '/healthz', { headers: { origin: 'https://app.example.com' } });
    expect(allowed.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(allowed.headers.get('access-control-allow-credentials')).toBeNull();

    const other = await req('GET', '/healthz', { headers: { origin: 'https://evil.example.com' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();

    const preflightOk = await req('OPTIONS', '/v1/me', { headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' } });
    expect(preflightOk.status).toBeLessThan(300);
    expect(preflightOk.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(preflightOk.headers.get('access-control-allow-headers')).toContain('authorization');

    const preflightBad = await req('OPTIONS', '/v1/me', { headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'GET' } });
    expect(preflightBad.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('[AF-I3] unknown routes get 404 in the catalogue shape with the request id', async () => {
    const res = await client(s.url)('GET', '/v1/nope');
    expect(res.status).toBe(404);
    expect(res.body).toEqual({ error: { code: 'not_found', message: expect.any(String), requestId: res.headers.get('x-request-id') } });
  });

  it('[AF-I3] a known path with the wrong method gets 405 with Allow', async () => {
    const res = await client(s.url)('DELETE', '/healthz');
    expect(res.status).toBe(405);
    expect(res.body.error.code).toBe('method_not_allowed');
    expect(res.headers.get('allow')).toBe('GET');
    const param = await client(s.url)('PUT', '/v1/users/00000000-0000-7000-8000-000000000000');
    expect(param.status).toBe(405);
    expect(param.headers.get('allow')).toBe('GET');
  });

  it('[AF-I3] malformed JSON gets 400 invalid_json, never a stack trace', async () => {
    const res = await client(s.url)('POST', '/v1/auth/login', { raw: '{"login": "a", "password": ' });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_json');
    expect(res.body.error.requestId).toBe(res.headers.get('x-request-id'));
    expectNoInternals(res.body);
  });

  it('[AF-I3] an oversized body gets 413 payload_too_large (BODY_LIMIT_BYTES)', async () => {
    const res = await client(s.url)('POST', '/v1/auth/login', { body: { login: 'someone', password: 'x'.repeat(4096) } });
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe('payload_too_large');
    expectNoInternals(res.body);
  });

  it('[AF-I3][AF-Q2] a wrong content type gets 415, unknown fields get 400 validation_failed', async () => {
    const req = client(s.url);
    const text = await req('POST', '/v1/auth/login', { raw: 'login=a&password=b', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(text.status).toBe(415);
    expect(text.body.error.code).toBe('unsupported_media_type');
    const extra = await req('POST', '/v1/auth/login', { body: { login: 'someone', password: 'whatever-123', admin: true } });
    expect(extra.status).toBe(400);
    expect(extra.body.error.code).toBe('validation_failed');
    expectNoInternals(extra.body);
  });
});

describe('[AF-I5] logs', () => {
  it('[AF-I5] JSON log lines carry request ids and never a password, token or connection string', async () => {
    const lines: string[] = [];
    const destination = { write: (s: string) => void lines.push(s) };
    const config = await testConfig({ LOG_LEVEL: 'trace' });
    const app = await buildApp(config, { logger: createLogger({ level: 'trace', nodeId: 'log-test', destination }) });
    const url = await app.listen();
    try {
      const req = client(url);
      const user = await registerUser(url);
      const secrets = [user.password, user.accessToken, user.refreshToken];
      const wrong = `wrong-${user.password}`;
      secrets.push(wrong);
      await req('POST', '/v1/auth/login', { body: { login: user.username, password: wrong } });
      const login = await req('POST', '/v1/auth/login', { body: { login: user.email, password: user.password } });
      expect(login.status).toBe(200);
      secrets.push(login.body.accessToken, login.body.refreshToken);
      const me = await req('GET', '/v1/me', { token: user.accessToken, headers: { cookie: `sid=${user.refreshToken}` } });
      expect(me.status).toBe(200);
      await req('GET', '/v1/me', { token: `${user.accessToken}x` });
      const refreshed = await req('POST', '/v1/auth/refresh', { body: { refreshToken: user.refreshToken } });
      secrets.push(refreshed.body.accessToken, refreshed.body.refreshToken);
      // The token also travels in the first WebSocket frame.
      const ws = await WsClient.connect(`${url.replace(/^http/, 'ws')}/v1/ws`, login.body.accessToken);
      ws.close();
      await ws.waitClose();

      // A careless log call of a request body or URL is still redacted by the logger.
      const dbPassword = `db-${user.refreshToken.slice(0, 12)}`;
      app.ctx.log.info({ body: { password: user.password }, databaseUrl: `postgres://app:${dbPassword}@db/app`, headers: { authorization: `Bearer ${user.accessToken}` } }, 'careless');

      const text = lines.join('');
      expect(lines.length).toBeGreaterThan(10);
      for (const line of lines) expect(() => JSON.parse(line) as unknown).not.toThrow();
      for (const secret of secrets) {
        expect(secret.length).toBeGreaterThan(7);
        expect(text).not.toContain(secret);
      }
      expect(text).not.toContain(dbPassword);
      expect(text).toContain('careless');
      // Every response's request id appears in the log.
      expect(text).toContain(me.headers.get('x-request-id'));
      const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(entries.some((e) => e.reqId === me.headers.get('x-request-id'))).toBe(true);
      expect(entries.filter((e) => typeof e.node !== 'string' || typeof e.level !== 'string' || typeof e.time !== 'string')).toEqual([]);
    } finally {
      await app.close();
      rmSync(config.dataDir, { recursive: true, force: true });
    }
  });
});

describe('OpenAPI', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  it('serves an OpenAPI 3.1 document with every route of the wire contract', async () => {
    const res = await client(s.url)('GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe('3.1.0');
    const paths = res.body.paths as Record<string, Record<string, any>>;
    const expected: [string, string][] = [
      ['/v1/auth/register', 'post'], ['/v1/auth/login', 'post'], ['/v1/auth/refresh', 'post'], ['/v1/auth/logout', 'post'],
      ['/v1/auth/sessions', 'get'], ['/v1/auth/sessions/{id}', 'delete'],
      ['/v1/me', 'get'], ['/v1/me', 'patch'], ['/v1/users/{id}', 'get'], ['/v1/users', 'get'],
      ['/v1/conversations', 'post'], ['/v1/conversations', 'get'], ['/v1/conversations/{id}', 'get'],
      ['/v1/conversations/{id}/members', 'post'], ['/v1/conversations/{id}/members/{userId}', 'delete'],
      ['/v1/conversations/{id}/messages', 'post'], ['/v1/conversations/{id}/messages', 'get'],
      ['/v1/conversations/{id}/messages/{messageId}', 'patch'], ['/v1/conversations/{id}/messages/{messageId}', 'delete'],
      ['/v1/conversations/{id}/read', 'post'],
    ];
    for (const [path, method] of expected) expect(paths[path]?.[method], `${method.toUpperCase()} ${path}`).toBeDefined();

    // The account routes without bearer auth carry their credential in the body (a mailed token, the 2FA challenge) or ask for a mail ([AC3], [AC4], [MF2]).
    const open = new Set(['/v1/auth/register', '/v1/auth/login', '/v1/auth/login/mfa', '/v1/auth/refresh', '/v1/account/verify', '/v1/account/password/forgot', '/v1/account/password/reset']);
    for (const [path, ops] of Object.entries(paths)) {
      for (const [method, op] of Object.entries(ops)) {
        expect(op.tags?.length, `${method} ${path} has tags`).toBeGreaterThan(0);
        if (path.startsWith('/v1/') && !open.has(path)) expect(op.security, `${method} ${path} declares bearer auth`).toEqual([{ bearer: [] }]);
      }
    }
  });

  it('serves the browsable docs at /docs', async () => {
    const res = await fetch(`${s.url}/docs`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    expect(await res.text()).toContain('swagger');
  });
});

describe('[AF-S1] no secret in the repository', () => {
  const scanner = join(ROOT, 'scripts', 'secret-scan.mjs');
  const scan = (cwd: string) => spawnSync(process.execPath, [scanner], { cwd, encoding: 'utf8', timeout: 60_000 });

  it('[AF-S1] the secret scan passes on this repository', () => {
    const res = scan(ROOT);
    expect(res.stderr).toBe('');
    expect(res.status).toBe(0);
    expect(res.stdout).toMatch(/files clean/);
  });

  it('[AF-S1] the secret scan fails, with file:line, on a repository with a planted secret', () => {
    const repo = mkdtempSync(join(tmpdir(), 'sc-secret-'));
    try {
      execFileSync('git', ['init', '-q'], { cwd: repo });
      writeFileSync(join(repo, 'clean.ts'), 'export const password = process.env.DB_PASSWORD;\n');
      expect(scan(repo).status).toBe(0);

      const pem = generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' });
      writeFileSync(join(repo, 'deploy.pem'), pem);
      // Built at run time so this test file itself holds no secret-shaped literal.
      const awsKey = ['AK', 'IA', 'Z7Q3K9W2M4X8B6N1'].join('');
      writeFileSync(join(repo, 'config.ts'), `// settings\nexport const aws = "${awsKey}";\nexport const db = "postgres://app:${'Zq8v0' + 'Lx3Rr2mW9k'}@db.internal/app";\n`);
      writeFileSync(join(repo, 'ignored.pem'), pem);
      writeFileSync(join(repo, '.gitignore'), 'ignored.pem\n');
      const res = scan(repo);
      expect(res.status).toBe(1);
      expect(res.stderr).toContain('deploy.pem:1: private-key-pem');
      expect(res.stderr).toContain('config.ts:2: aws-access-key-id');
      expect(res.stderr).toContain('config.ts:3: credentials-in-url');
      expect(res.stderr).not.toContain('ignored.pem');
      // The report names the finding without repeating the secret.
      expect(res.stderr).not.toContain(awsKey);

      writeFileSync(join(repo, '.secret-scan-allow'), 'deploy.pem: test fixture\nconfig.ts: test fixture\n');
      expect(scan(repo).status).toBe(0);
    } finally {
      rmSync(repo, { recursive: true, force: true });
    }
  });

  it('[AF-S1] .env is ignored by git and .env.example holds placeholders only', () => {
    expect(read('.gitignore').split('\n').map((l) => l.trim())).toContain('.env');
    const example = read('.env.example');
    for (const line of example.split('\n')) {
      const m = line.match(/^\s*#?\s*([A-Z][A-Z0-9_]*)=(.*)$/);
      if (!m) continue;
      const [, name, value] = m as unknown as [string, string, string];
      if (/(SIGNING_KEYS|PASSWORD|SECRET|TOKEN)$/.test(name)) expect(value, name).toBe('');
      if (/_URL$/.test(name) && value.includes('@')) expect(value, name).toMatch(/:change-me@/);
    }
  });

  it('[AF-S1] .env.example documents every variable config.ts reads, with _FILE for each secret', () => {
    const source = read('packages/server/src/config.ts');
    const names = new Set<string>();
    for (const m of source.matchAll(/env\.([A-Z][A-Z0-9_]+)|\(env, '([A-Z][A-Z0-9_]+)'/g)) names.add((m[1] ?? m[2])!);
    const secrets = source.match(/SECRET_VARS = \[([^\]]+)\]/)![1]!.match(/[A-Z][A-Z0-9_]+/g)!;
    for (const s of secrets) names.add(`${s}_FILE`);
    expect(names.size).toBeGreaterThan(20);
    const documented = new Set([...read('.env.example').matchAll(/^#?\s*([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]));
    expect([...names].filter((n) => !documented.has(n))).toEqual([]);
  });
});

describe('docs match the code', () => {
  it('[AF-I3] docs/API.md lists every error code and every WebSocket close code', () => {
    const api = read('docs/API.md');
    for (const [code, { status }] of Object.entries(ERRORS)) expect(api, code).toMatch(new RegExp(`\\|\\s*\`${code}\`\\s*\\|\\s*${status}\\s*\\|`));
    for (const [name, value] of Object.entries(CLOSE_CODES)) expect(api, name).toMatch(new RegExp(`\\|\\s*${value}\\s*\\|\\s*\`${name}\``));
  });

  it('docs/SPEC.md names, for every rule, a test file that cites it', () => {
    const spec = read('docs/SPEC.md');
    const rules = [...spec.matchAll(/^#+\s*\[([A-Z]{1,2}-?[A-Z]?\d+)\]/gm)].map((m) => m[1]!);
    // 27 delivery/protocol rules plus the audit findings in scope.
    expect(rules.length).toBeGreaterThanOrEqual(27);
    const missing: string[] = [];
    for (const id of rules) {
      const section = spec.slice(spec.search(new RegExp(`^#+\\s*\\[${id}\\]`, 'm'))).split(/\n#+\s*\[/)[0]!;
      const proofLine = section.split('\n').find((l) => l.startsWith('Proof:')) ?? '';
      const files = [...proofLine.matchAll(/`([\w./-]+\.(?:ts|js|mjs|md|json|sh|example)|\.ci\/run)`/g)].map((m) => m[1]!);
      const tests = files.filter((f) => f.endsWith('.test.ts'));
      // A test file proves the rule when it cites the rule or a rule the proof line delegates to.
      const cited = [`[${id}]`, ...[...proofLine.matchAll(/\[([A-Z]{1,2}-?[A-Z]?\d+)\]/g)].map((m) => m[0])];
      const ok = files.length > 0 && files.every((f) => safeRead(f) !== '') && (tests.length === 0 || tests.some((f) => cited.some((c) => safeRead(f).includes(c))));
      if (!ok) missing.push(id);
    }
    expect(missing).toEqual([]);
  });
});

function safeRead(p: string): string {
  try {
    return read(p);
  } catch {
    return '';
  }
}

/** Runs the real entry point (src/main.ts through tsx), as `npm start` does after building. */
function serverProcess(env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'packages/server/src/main.ts'), 'serve'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, out: () => stdout, err: () => stderr };
}

describe('process lifecycle', () => {
  it('[AF-I4] [AF-S4] a startup failure stops the process with exit 1 and one clear message, no stack trace', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sc-main-'));
    try {
      const p = serverProcess({ NODE_ENV: 'production', DATA_DIR: dataDir, CORS_ORIGINS: '*' });
      expect(await p.exited).toBe(1);
      expect(p.err()).toContain('Invalid configuration');
      for (const name of ['JWT_SIGNING_KEYS', 'PUBLIC_URL', 'CORS_ORIGINS']) expect(p.err()).toContain(name);
      expect(p.err()).not.toMatch(/^\s+at /m);
      // Nothing started: no database was created.
      expect(readdirSync(dataDir)).toEqual([]);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('[AF-I4] only main.ts exits the process', () => {
    const offenders: string[] = [];
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const full = join(dir, name);
        if (statSync(full).isDirectory()) walk(full);
        else if (name.endsWith('.ts') && !name.endsWith('.test.ts') && /process\.exit\(/.test(readFileSync(full, 'utf8'))) offenders.push(full.slice(ROOT.length));
      }
    };
    walk(join(ROOT, 'packages/server/src'));
    expect(offenders).toEqual(['packages/server/src/main.ts']);
  });

  it('[AF-O4] SIGTERM: the server drains, closes every part and exits 0', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sc-main-'));
    const port = await freePort();
    const p = serverProcess({ NODE_ENV: 'development', DATA_DIR: dataDir, PORT: String(port), SHUTDOWN_GRACE_MS: '2000', LOG_LEVEL: 'info', ...engineEnv() });
    try {
      const base = `http://127.0.0.1:${port}`;
      await expect.poll(async () => (await fetch(`${base}/readyz`).catch(() => null))?.status, { timeout: 30_000, interval: 200 }).toBe(200);
      const user = await registerUser(base);
      const ws = await WsClient.connect(`ws://127.0.0.1:${port}/v1/ws`, user.accessToken);
      const started = Date.now();
      p.child.kill('SIGTERM');
      expect((await ws.waitClose(10_000)).code).toBe(CLOSE_CODES.serviceRestart);
      expect(ws.frames.some((f) => f.type === 'reconnect')).toBe(true);
      expect(await p.exited).toBe(0);
      expect(Date.now() - started).toBeLessThan(10_000);
      const log = p.out();
      expect(log).toContain('"msg":"shutting down"');
      expect(log).toContain('"msg":"closed"');
      expect(p.err()).toBe('');
    } finally {
      p.child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

/** The engines of this test run, each deployment isolated like startApp's. */
function engineEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  // A child process cannot share startApp's per-test schema cheaply; SQLite in its data dir is
  // enough here, and Redis (when configured) gets its own prefix.
  if (process.env.REDIS_URL) {
    env.REDIS_URL = process.env.REDIS_URL;
    env.REDIS_PREFIX = `${process.env.REDIS_PREFIX ?? 'sc-test:'}ops-${Date.now()}:`;
  }
  return env;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

describe('[AF-I6] timeouts on dependency calls', () => {
  // A server that accepts connections and never says a word: the worst dependency.
  let silent: Server;
  let port = 0;
  const sockets = new Set<Socket>();
  beforeAll(async () => {
    silent = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => socket.destroy());
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    port = (silent.address() as { port: number }).port;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  });
  const log = createLogger({ level: 'silent', nodeId: 'timeouts' });

  it('[AF-I6] [AF-D3] a PostgreSQL server that never answers fails the query after DATABASE_CONNECT_TIMEOUT_MS', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sc-to-'));
    const config = await loadConfig({ NODE_ENV: 'test', DATA_DIR: dataDir, DATABASE_URL: `postgres://app:pw@127.0.0.1:${port}/app`, DATABASE_CONNECT_TIMEOUT_MS: '300' });
    const database = openDatabase(config, log);
    const started = Date.now();
    try {
      await expect(sql`select 1`.execute(database.db)).rejects.toThrow();
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      await database.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('[AF-I6] [AF-O4] a Redis server that never answers fails commands after REDIS_COMMAND_TIMEOUT_MS and cannot hang shutdown', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sc-to-'));
    const config = await loadConfig({ NODE_ENV: 'test', DATA_DIR: dataDir, REDIS_URL: `redis://127.0.0.1:${port}/0`, REDIS_COMMAND_TIMEOUT_MS: '200' });
    const bus = openBus(config, log);
    const started = Date.now();
    try {
      await expect(bus.publish('ch', 1)).rejects.toThrow();
      expect(Date.now() - started).toBeLessThan(3_000);
      // Shutdown is bounded too: QUIT to a silent server must not hang the process.
      const closing = Date.now();
      await bus.close();
      expect(Date.now() - closing).toBeLessThan(3_000);
    } finally {
      await bus.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it.runIf(usingPostgres)('[AF-I6] [AF-D3] PostgreSQL statements are cut at DATABASE_STATEMENT_TIMEOUT_MS', async () => {
    const s = await startApp({ DATABASE_STATEMENT_TIMEOUT_MS: '200' });
    try {
      const started = Date.now();
      await expect(sql`select pg_sleep(3)`.execute(s.app.ctx.database.db)).rejects.toThrow(/timeout|cancel/i);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      await s.close();
    }
  });
});

describe('[AF-D5] indexes', () => {
  it('[AF-D5] every foreign key column leads an index (or the primary key)', async () => {
    const s = await startApp();
    try {
      const db = s.app.ctx.database.db;
      const fks: { table: string; cols: string[] }[] = [];
      const indexes: { table: string; cols: string[] }[] = [];
      if (s.app.ctx.database.dialect === 'sqlite') {
        const tables = (await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name not like 'sqlite_%' and name not like 'kysely_%'`.execute(db)).rows;
        for (const { name } of tables) {
          const fkRows = (await sql<{ id: number; from: string }>`select * from pragma_foreign_key_list(${name})`.execute(db)).rows;
          const byId = new Map<number, string[]>();
          for (const r of fkRows) byId.set(r.id, [...(byId.get(r.id) ?? []), r.from]);
          for (const cols of byId.values()) fks.push({ table: name, cols });
          const idx = (await sql<{ name: string }>`select name from pragma_index_list(${name})`.execute(db)).rows;
          for (const i of idx) {
            const cols = (await sql<{ name: string }>`select name from pragma_index_info(${i.name}) order by seqno`.execute(db)).rows.map((r) => r.name);
            indexes.push({ table: name, cols });
          }
          const pk = (await sql<{ name: string; pk: number }>`select name, pk from pragma_table_info(${name}) where pk > 0 order by pk`.execute(db)).rows.map((r) => r.name);
          if (pk.length > 0) indexes.push({ table: name, cols: pk });
        }
      } else {
        const fkRows = (
          await sql<{ tbl: string; cols: string[] }>`
            select c.conrelid::regclass::text as tbl,
                   array(select a.attname::text from unnest(c.conkey) with ordinality k(n, o)
                         join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.o) as cols
            from pg_constraint c where c.contype = 'f' and c.connamespace = current_schema()::regnamespace`.execute(db)
        ).rows;
        for (const r of fkRows) fks.push({ table: r.tbl, cols: r.cols });
        const idxRows = (
          await sql<{ tbl: string; cols: string[] }>`
            select i.indrelid::regclass::text as tbl,
                   array(select a.attname::text from unnest(i.indkey::int2[]) with ordinality k(n, o)
                         join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n order by k.o) as cols
            from pg_index i join pg_class t on t.oid = i.indrelid
            where t.relnamespace = current_schema()::regnamespace`.execute(db)
        ).rows;
        for (const r of idxRows) indexes.push({ table: r.tbl, cols: r.cols });
      }
      expect(fks.length).toBeGreaterThanOrEqual(6);
      const unindexed = fks.filter((fk) => !indexes.some((i) => i.table === fk.table && fk.cols.every((c, n) => i.cols[n] === c)));
      expect(unindexed).toEqual([]);
    } finally {
      await s.close();
    }
  });
});
