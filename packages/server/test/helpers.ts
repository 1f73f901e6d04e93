/**
 * Test harness: starts the real app on a random port with a temp data dir.
 * With DATABASE_URL set, each app gets its own fresh PostgreSQL schema; with
 * REDIS_URL set, its own key/channel prefix. So test files run in parallel on
 * shared engines without seeing each other.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import WebSocket from 'ws';
import { buildApp, type App } from '../src/app.js';
import { loadConfig, type Config } from '../src/config.js';

export const usingPostgres = Boolean(process.env.DATABASE_URL);
export const usingRedis = Boolean(process.env.REDIS_URL);

export const uid = (n = 6) => randomBytes(n).toString('hex');

/** A DATABASE_URL pointing at a fresh schema of the test database (or null on SQLite). */
export async function freshDatabaseUrl(): Promise<string | null> {
  const base = process.env.DATABASE_URL;
  if (!base) return null;
  const schema = `t_${uid(5)}`;
  const client = new pg.Client({ connectionString: base });
  await client.connect();
  try {
    await client.query(`create schema ${schema}`);
  } finally {
    await client.end();
  }
  const u = new URL(base);
  u.searchParams.set('options', `-c search_path=${schema}`);
  return u.toString();
}

export type TestEnv = {
  DATA_DIR: string;
  DATABASE_URL?: string;
  REDIS_URL?: string;
  REDIS_PREFIX: string;
};

/** Environment for one isolated deployment (nodes sharing it form a cluster). */
export async function freshDeployment(): Promise<TestEnv> {
  const env: TestEnv = {
    DATA_DIR: mkdtempSync(join(tmpdir(), 'sc-test-')),
    REDIS_PREFIX: `${process.env.REDIS_PREFIX ?? 'sc-test:'}${uid(4)}:`,
  };
  const db = await freshDatabaseUrl();
  if (db) env.DATABASE_URL = db;
  if (process.env.REDIS_URL) env.REDIS_URL = process.env.REDIS_URL;
  return env;
}

export async function testConfig(env: Partial<TestEnv> & Record<string, string | undefined> = {}): Promise<Config> {
  const deployment = env.DATA_DIR ? (env as TestEnv) : { ...(await freshDeployment()), ...env };
  return loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    HTTP_RATE_LIMIT_PER_MINUTE: '1000000',
    // Every test client shares 127.0.0.1; tests of these limits lower them explicitly.
    AUTH_REGISTER_PER_IP_PER_HOUR: '1000000',
    AUTH_REFRESH_PER_IP_PER_MINUTE: '1000000',
    USER_SEARCH_PER_MINUTE: '1000000',
    ...deployment,
  });
}

export interface Running {
  app: App;
  config: Config;
  url: string;
  wsUrl: string;
  close(): Promise<void>;
}

export async function startApp(env: Partial<TestEnv> & Record<string, string | undefined> = {}): Promise<Running> {
  const config = await testConfig(env);
  const app = await buildApp(config);
  const url = await app.listen();
  return {
    app,
    config,
    url,
    wsUrl: `${url.replace(/^http/, 'ws')}/v1/ws`,
    async close() {
      await app.close();
      if (!env.DATA_DIR) rmSync(config.dataDir, { recursive: true, force: true });
    },
  };
}

export interface Res<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/** Minimal JSON client for tests. */
export function client(base: string) {
  return async function req<T = any>(method: string, path: string, opts: { token?: string; body?: unknown; headers?: Record<string, string>; raw?: string } = {}): Promise<Res<T>> {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    let body: string | undefined;
    if (opts.raw !== undefined) {
      body = opts.raw;
      headers['content-type'] ??= 'application/json';
    } else if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['content-type'] = 'application/json';
    }
    const res = await fetch(base + path, { method, headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      /* not JSON: keep the text */
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  };
}

export interface TestUser {
  id: string;
  username: string;
  email: string;
  password: string;
  accessToken: string;
  refreshToken: string;
}

export async function registerUser(base: string, name = `u${uid(5)}`): Promise<TestUser> {
  const req = client(base);
  const password = `pw-${uid(8)}`;
  const email = `${name}@example.test`;
  const res = await req('POST', '/v1/auth/register', { body: { email, username: name, password, displayName: name } });
  if (res.status !== 201) throw new Error(`register failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { id: res.body.user.id, username: name, email, password, accessToken: res.body.accessToken, refreshToken: res.body.refreshToken };
}

/** A WebSocket test client that queues every server frame and lets a test wait for one. */
export class WsClient {
  readonly frames: any[] = [];
  private waiters: { pred: (f: any) => boolean; resolve: (f: any) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }[] = [];
  closed: { code: number; reason: string } | null = null;
  private closeWaiters: ((c: { code: number; reason: string }) => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      this.frames.push(frame);
      for (const w of [...this.waiters]) {
        if (w.pred(frame)) {
          clearTimeout(w.timer);
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(frame);
        }
      }
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.closeWaiters) w(this.closed);
      for (const w of this.waiters) {
        clearTimeout(w.timer);
        w.reject(new Error(`socket closed (${code}) while waiting`));
      }
      this.waiters = [];
    });
  }

  static async open(wsUrl: string, headers: Record<string, string> = {}): Promise<WsClient> {
    const ws = new WebSocket(wsUrl, { headers });
    const c = new WsClient(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    });
    return c;
  }

  /** Opens, authenticates and waits for `ready`. */
  static async connect(wsUrl: string, token: string, cursor?: string): Promise<WsClient> {
    const c = await WsClient.open(wsUrl);
    c.send({ type: 'auth', token, ...(cursor !== undefined ? { cursor } : {}) });
    await c.next((f) => f.type === 'ready');
    return c;
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Resolves with the first frame (already received or future) matching `pred`. */
  next(pred: (f: any) => boolean, timeoutMs = 5_000): Promise<any> {
    const seen = this.frames.find(pred);
    if (seen) return Promise.resolve(seen);
    if (this.closed) return Promise.reject(new Error(`socket closed (${this.closed.code})`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(new Error(`timed out waiting for frame; got ${JSON.stringify(this.frames.slice(-5))}`));
      }, timeoutMs);
      this.waiters.push({ pred, resolve, reject, timer });
    });
  }

  events(type?: string): any[] {
    return this.frames.filter((f) => f.type === 'event' && (!type || f.event.type === type));
  }

  waitClose(timeoutMs = 5_000): Promise<{ code: number; reason: string }> {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('socket did not close')), timeoutMs);
      this.closeWaiters.push((c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
  }

  close(): void {
    this.ws.close();
  }
}
