/**
 * Starts the benchmarked server(s) as child processes: ours (one or two nodes,
 * SQLite or PostgreSQL + Redis, a fresh database per run) or one of the peers
 * in bench/peers/. Every process is started with bench/load/probe.ts preloaded
 * so the coordinator can read its memory and CPU over IPC.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TargetKind } from './common.js';
import { sleep } from './common.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PROBE = join(ROOT, 'bench/load/probe.ts');

export interface Probe {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  cpuUserUs: number;
  cpuSystemUs: number;
  /** VmRSS from /proc/<pid>/status, bytes. */
  vmRss: number;
}

export interface TargetOptions {
  kind: TargetKind;
  engine: 'sqlite' | 'pg';
  nodes: number;
  /** Run packages/server/dist/main.js (what `npm start` runs) instead of the sources through tsx. */
  built: boolean;
  /** Extra environment for our server (limits of a scenario). */
  env?: Record<string, string>;
}

export interface Target {
  kind: TargetKind;
  engine: string;
  /** One base URL per node. */
  urls: string[];
  pids(): number[];
  probe(): Promise<Probe[]>;
  /** Our server only: stop the nodes but keep the data (history seeding), then start them again. */
  stopNodes(): Promise<void>;
  startNodes(): Promise<void>;
  /** Our server only: where the data lives. */
  dataDir: string;
  databaseUrl: string | null;
  stop(): Promise<void>;
}

/** Limits a benchmark must not trip: every client comes from 127.0.0.x and senders send fast. */
export const BENCH_ENV: Record<string, string> = {
  NODE_ENV: 'test',
  HOST: '127.0.0.1',
  LOG_LEVEL: 'warn',
  HTTP_RATE_LIMIT_PER_MINUTE: '10000000',
  AUTH_REGISTER_PER_IP_PER_HOUR: '10000000',
  AUTH_REFRESH_PER_IP_PER_MINUTE: '10000000',
  AUTH_LOGIN_FAILURES_PER_IP: '10000000',
  USER_SEARCH_PER_MINUTE: '10000000',
  WS_FRAMES_PER_SECOND: '100000',
  WS_FRAME_BURST: '100000',
  WS_MAX_CONNECTIONS_PER_NODE: '10000000',
  // A run (setup included) must not outlive its access tokens.
  ACCESS_TOKEN_TTL_SEC: '3600',
};

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A fresh PostgreSQL database and Redis URL: the shared services script, as CI and the tests use it. */
function freshPg(): { DATABASE_URL: string; REDIS_URL: string; REDIS_PREFIX: string } {
  const script = join(ROOT, '../shared/scripts/services.sh');
  if (!existsSync(script)) throw new Error(`--engine pg needs ${script} (or DATABASE_URL and REDIS_URL in the environment)`);
  const out = execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const env: Record<string, string> = {};
  for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  if (!env.DATABASE_URL || !env.REDIS_URL) throw new Error('services.sh printed no DATABASE_URL / REDIS_URL');
  return { DATABASE_URL: env.DATABASE_URL, REDIS_URL: env.REDIS_URL, REDIS_PREFIX: env.REDIS_PREFIX ?? 'sc-bench:' };
}

interface Proc {
  child: ChildProcess;
  exited: Promise<void>;
  pending: ((p: Omit<Probe, 'vmRss'>) => void)[];
}

function startProc(args: string[], env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', '--import', PROBE, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const proc: Proc = { child, exited: new Promise((resolve) => child.once('exit', () => resolve())), pending: [] };
  child.on('message', (m: unknown) => {
    const probe = (m as { probe?: Omit<Probe, 'vmRss'> }).probe;
    if (probe) proc.pending.shift()?.(probe);
  });
  return proc;
}

async function waitReady(url: string, path: string, proc: Proc): Promise<void> {
  for (let i = 0; ; i++) {
    const ok = await fetch(`${url}${path}`).then((r) => r.ok, () => false);
    if (ok) return;
    if (i > 600 || proc.child.exitCode !== null) throw new Error(`server at ${url} did not start`);
    await sleep(100);
  }
}

function vmRss(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function probeProc(proc: Proc): Promise<Probe> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('probe timed out')), 30_000);
    proc.pending.push((p) => {
      clearTimeout(timer);
      resolve({ ...p, vmRss: vmRss(proc.child.pid ?? 0) });
    });
    proc.child.send('probe');
  });
}

async function stopProc(proc: Proc): Promise<void> {
  if (proc.child.exitCode === null) proc.child.kill('SIGTERM');
  const killed = setTimeout(() => proc.child.kill('SIGKILL'), 20_000);
  await proc.exited;
  clearTimeout(killed);
}

export async function startTarget(opts: TargetOptions): Promise<Target> {
  if (opts.kind !== 'ours') {
    const port = await freePort();
    const file = opts.kind === 'ws-peer' ? 'bench/peers/ws-broadcast.ts' : 'bench/peers/socketio-room.ts';
    const proc = startProc([join(ROOT, file)], { PORT: String(port), HOST: '127.0.0.1' });
    const url = `http://127.0.0.1:${port}`;
    await waitReady(url, '/', proc);
    const unsupported = () => Promise.reject(new Error('peers keep no data'));
    return {
      kind: opts.kind,
      engine: 'none',
      urls: [url],
      pids: () => [proc.child.pid ?? 0],
      probe: async () => [await probeProc(proc)],
      stopNodes: unsupported,
      startNodes: unsupported,
      dataDir: '',
      databaseUrl: null,
      stop: () => stopProc(proc),
    };
  }

  const dataDir = mkdtempSync(join(tmpdir(), 'sc-load-'));
  const env: Record<string, string> = { ...BENCH_ENV, ...opts.env, DATA_DIR: dataDir };
  if (opts.engine === 'pg') {
    const pg = process.env.DATABASE_URL && process.env.REDIS_URL
      ? { DATABASE_URL: process.env.DATABASE_URL, REDIS_URL: process.env.REDIS_URL, REDIS_PREFIX: process.env.REDIS_PREFIX ?? 'sc-bench:' }
      : freshPg();
    env.DATABASE_URL = pg.DATABASE_URL;
    env.REDIS_URL = pg.REDIS_URL;
    env.REDIS_PREFIX = `${pg.REDIS_PREFIX}load-${randomBytes(3).toString('hex')}:`;
    if (process.env.DATABASE_URL) {
      // A caller-provided database is shared: isolate this run in a schema of its own.
      const { freshDatabaseUrl } = await import('../../packages/server/test/helpers.js');
      env.DATABASE_URL = (await freshDatabaseUrl()) ?? env.DATABASE_URL;
    }
  } else if (opts.nodes > 1) {
    throw new Error('--nodes 2 needs --engine pg (two nodes share PostgreSQL and Redis)');
  }

  const entry = opts.built ? join(ROOT, 'packages/server/dist/main.js') : join(ROOT, 'packages/server/src/main.ts');
  if (opts.built && !existsSync(entry)) throw new Error(`${entry} is missing: run npm run build:server first`);
  const ports: number[] = [];
  for (let i = 0; i < opts.nodes; i++) ports.push(await freePort());
  const urls = ports.map((p) => `http://127.0.0.1:${p}`);
  let procs: Proc[] = [];

  const startNodes = async () => {
    // The first node migrates alone; the others start once the schema exists.
    procs = [];
    for (let i = 0; i < ports.length; i++) {
      const proc = startProc([entry, 'serve'], { ...env, PORT: String(ports[i]), NODE_ID: `bench-${i}` });
      procs.push(proc);
      await waitReady(urls[i]!, '/readyz', proc);
    }
  };
  const stopNodes = async () => {
    await Promise.all(procs.map(stopProc));
  };
  await startNodes();
  return {
    kind: 'ours',
    engine: opts.engine === 'pg' ? 'postgres+redis' : 'sqlite',
    urls,
    pids: () => procs.map((p) => p.child.pid ?? 0),
    probe: () => Promise.all(procs.map(probeProc)),
    stopNodes,
    startNodes,
    dataDir,
    databaseUrl: env.DATABASE_URL ?? null,
    async stop() {
      await stopNodes();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
