/**
 * Messaging benchmark (docs/PERFORMANCE.md).
 *
 *   npx tsx bench/group-send.ts --members 1000 --rate 50 --seconds 20      # group fan-out
 *   npx tsx bench/group-send.ts --mode chat --senders 50 --seconds 20       # max acknowledged sends/s
 *
 * group: N members in one group conversation, all connected over WebSocket;
 *   one sender sends at a fixed rate (WS `send` with clientMsgIds). Measures
 *   ack latency, delivery latency to every member, and checks that every
 *   member got every message exactly once.
 * chat: S senders, each in its own conversation with a neighbour, each keeping
 *   `--window` sends in flight (closed loop, no pacing). Measures acknowledged
 *   sends per second and ack latency, plus delivery to the other member.
 *
 * Engine: DATABASE_URL / REDIS_URL select PostgreSQL / Redis (a fresh schema
 * and key prefix per run); unset, embedded SQLite in a temp dir. The server
 * runs in its own process (the real entry point, src/main.ts via tsx) so
 * client work does not share its event loop; `--in-process` builds it in this
 * process with buildApp instead, `--url` targets a running server (its rate
 * limits then apply).
 *
 * Latencies are measured from the *intended* send time of a paced message
 * (no coordinated omission) with HdrHistogram, in this one process's clock.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as hdr from 'hdr-histogram-js';
import { freshDatabaseUrl } from '../packages/server/test/helpers.js';
import { api } from './load/common.js';
import { BENCH_ENV, freePort } from './load/targets.js';
import WebSocket from 'ws';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string', default: 'group' },
    members: { type: 'string', default: '100' },
    rate: { type: 'string', default: '50' },
    seconds: { type: 'string', default: '10' },
    senders: { type: 'string', default: '50' },
    window: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '8' },
    url: { type: 'string' },
    'in-process': { type: 'boolean', default: false },
    label: { type: 'string', default: '' },
  },
});
const mode = args.mode === 'chat' ? 'chat' : 'group';
const members = Number(args.members);
const rate = Number(args.rate);
const seconds = Number(args.seconds);
const senders = Number(args.senders);
const windowSize = Number(args.window);
const concurrency = Number(args.concurrency);
const engine = `${process.env.DATABASE_URL ? 'postgres' : 'sqlite'}+${process.env.REDIS_URL ? 'redis' : 'memory'}`;

const histogram = () => hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
const nowUs = () => Math.round(performance.now() * 1000);
const log = (s: string) => process.stderr.write(`${s}\n`);

// ---------------------------------------------------------------- server

interface Target {
  url: string;
  stop(): Promise<void>;
}


async function startTarget(): Promise<Target> {
  if (args.url) return { url: args.url.replace(/\/$/, ''), stop: () => Promise.resolve() };
  const dataDir = mkdtempSync(join(tmpdir(), 'sc-bench-'));
  const env: Record<string, string> = { ...BENCH_ENV, DATA_DIR: dataDir };
  const db = await freshDatabaseUrl();
  if (db) env.DATABASE_URL = db;
  if (process.env.REDIS_URL) {
    env.REDIS_URL = process.env.REDIS_URL;
    env.REDIS_PREFIX = `${process.env.REDIS_PREFIX ?? 'sc-bench:'}${randomBytes(3).toString('hex')}:`;
  }
  const cleanup = () => rmSync(dataDir, { recursive: true, force: true });

  if (args['in-process']) {
    const { loadConfig } = await import('../packages/server/src/config.js');
    const { buildApp } = await import('../packages/server/src/app.js');
    const app = await buildApp(await loadConfig({ ...env, PORT: '0' }));
    const url = await app.listen();
    return {
      url,
      async stop() {
        await app.close();
        cleanup();
      },
    };
  }

  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'packages/server/src/main.ts'), 'serve'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (i > 300 || child.exitCode !== null) throw new Error('server did not start');
    await sleep(100);
  }
  return {
    url,
    async stop() {
      child.kill('SIGTERM');
      await exited;
      cleanup();
    },
  };
}

// ---------------------------------------------------------------- clients

interface User {
  id: string;
  token: string;
}


/** Registers `n` users, `concurrency` at a time (argon2 is deliberately slow). Nothing is cached. */
async function registerUsers(base: string, n: number): Promise<User[]> {
  const run = randomBytes(3).toString('hex');
  const users: User[] = new Array<User>(n);
  let next = 0;
  const started = Date.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) {
        const i = next++;
        const username = `b${run}_${i}`;
        const res = await api<{ user: { id: string }; accessToken: string }>(base, 'POST', '/v1/auth/register', null, {
          email: `${username}@bench.test`,
          username,
          password: randomBytes(12).toString('base64url'),
        });
        users[i] = { id: res.user.id, token: res.accessToken };
        if ((i + 1) % 200 === 0) log(`  registered ${i + 1}/${n}`);
      }
    }),
  );
  log(`registered ${n} users in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return users;
}

interface Conn {
  ws: WebSocket;
  onFrame: (f: any) => void;
}

async function connect(wsUrl: string, token: string, onFrame: (f: any) => void): Promise<Conn> {
  const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
  const conn: Conn = { ws, onFrame };
  await new Promise<void>((resolve, reject) => {
    ws.once('error', reject);
    ws.once('open', () => ws.send(JSON.stringify({ type: 'auth', token })));
    ws.on('message', (data) => {
      const text = data.toString();
      // 1,000 clients in one process parse 50,000 frames/s: skip JSON for the common case and
      // read only what is measured, so the load generator is not the bottleneck.
      const fast = fastEvent(text);
      if (fast) return conn.onFrame(fast);
      const f = JSON.parse(text);
      if (f.type === 'ready') resolve();
      else conn.onFrame(f);
    });
    ws.once('close', (code) => reject(new Error(`closed ${code} before ready`)));
  });
  ws.on('close', (code) => {
    if (code !== 1000 && code !== 1005 && code !== 1012) log(`socket closed unexpectedly: ${code}`);
  });
  return conn;
}

/** A `message.created` event frame reduced to the fields the benchmark reads, without JSON.parse. */
function fastEvent(text: string): any {
  if (!text.startsWith('{"type":"event"') || !text.includes('"type":"message.created"')) return null;
  const field = (name: string) => {
    const at = text.indexOf(`"${name}":"`);
    if (at < 0) return undefined;
    const from = at + name.length + 4;
    return text.slice(from, text.indexOf('"', from));
  };
  const clientMsgId = field('clientMsgId');
  const conversationId = field('conversationId');
  const senderId = field('senderId');
  if (!clientMsgId || !conversationId || !senderId) return null;
  return { type: 'event', event: { type: 'message.created', message: { clientMsgId, conversationId, senderId } } };
}

async function connectAll(wsUrl: string, users: User[], onFrame: (i: number, f: any) => void): Promise<Conn[]> {
  const conns: Conn[] = new Array<Conn>(users.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < users.length) {
        const i = next++;
        conns[i] = await connect(wsUrl, users[i]!.token, (f) => onFrame(i, f));
      }
    }),
  );
  return conns;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const pct = (h: hdr.Histogram, p: number) => h.getValueAtPercentile(p) / 1000;

// ---------------------------------------------------------------- scenarios

async function groupScenario(base: string) {
  const users = await registerUsers(base, members);
  const owner = users[0]!;
  const first = users.slice(1, 256).map((u) => u.id);
  const conv = await api<{ id: string }>(base, 'POST', '/v1/conversations', owner.token, { type: 'group', title: 'bench', memberIds: first });
  for (const u of users.slice(256)) await api(base, 'POST', `/v1/conversations/${conv.id}/members`, owner.token, { userId: u.id });
  log(`group ${conv.id} with ${members} members`);

  const total = Math.round(rate * seconds);
  const intended = new Map<string, number>();
  const ack = histogram();
  const delivery = histogram();
  const got: Set<string>[] = users.map(() => new Set());
  let duplicates = 0;
  let deliveries = 0;
  let errors = 0;

  const conns = await connectAll(`${base.replace(/^http/, 'ws')}/v1/ws`, users, (i, f) => {
    if (f.type === 'event' && f.event.type === 'message.created' && f.event.message.conversationId === conv.id) {
      const cid: string = f.event.message.clientMsgId;
      const t0 = intended.get(cid);
      if (t0 === undefined) return;
      if (got[i]!.has(cid)) duplicates++;
      else {
        got[i]!.add(cid);
        deliveries++;
        delivery.recordValue(Math.max(1, nowUs() - t0));
      }
    } else if (f.type === 'ack') {
      const t0 = intended.get(f.message.clientMsgId);
      if (t0 !== undefined) ack.recordValue(Math.max(1, nowUs() - t0));
    } else if (f.type === 'error') {
      errors++;
    }
  });
  log(`connected ${conns.length} sockets; sending ${total} messages at ${rate}/s`);

  const sender = conns[0]!;
  const start = nowUs();
  for (let n = 0; n < total; n++) {
    const due = start + Math.round((n * 1e6) / rate);
    const wait = (due - nowUs()) / 1000;
    if (wait > 1) await sleep(wait);
    const cid = `m${n}`;
    intended.set(cid, due);
    sender.ws.send(JSON.stringify({ type: 'send', reqId: cid, conversationId: conv.id, clientMsgId: cid, content: { type: 'text', text: `message ${n} ${'x'.repeat(64)}` } }));
  }
  const sentFor = (nowUs() - start) / 1e6;
  const expected = total * members;
  const deadline = Date.now() + 30_000;
  while (deliveries < expected && Date.now() < deadline) await sleep(50);
  for (const c of conns) c.ws.close();

  const missing = expected - deliveries;
  return {
    scenario: 'group',
    params: { members, rate, seconds, messages: total },
    achievedSendRate: total / sentFor,
    acked: ack.totalCount,
    errors,
    ackMs: { p50: pct(ack, 50), p99: pct(ack, 99), max: ack.maxValue / 1000 },
    deliveries,
    expectedDeliveries: expected,
    missing,
    duplicates,
    deliveryMs: { p50: pct(delivery, 50), p99: pct(delivery, 99), p999: pct(delivery, 99.9), max: delivery.maxValue / 1000 },
    deliveriesPerSec: deliveries / sentFor,
    complete: missing === 0 && duplicates === 0 && errors === 0,
  };
}

async function chatScenario(base: string) {
  const users = await registerUsers(base, senders);
  // Each sender talks in its own conversation with its neighbour, so sends spread over many conversations.
  const convs: string[] = [];
  for (let i = 0; i < senders; i++) {
    const res = await api<{ id: string }>(base, 'POST', '/v1/conversations', users[i]!.token, { type: 'group', title: `chat ${i}`, memberIds: [users[(i + 1) % senders]!.id] });
    convs.push(res.id);
  }
  const ack = histogram();
  const delivery = histogram();
  const sentAt = new Map<string, number>();
  let acked = 0;
  let errors = 0;
  let deliveries = 0;
  let running = true;
  const pumps: (() => void)[] = [];

  const conns = await connectAll(`${base.replace(/^http/, 'ws')}/v1/ws`, users, (i, f) => {
    if (f.type === 'ack') {
      const t0 = sentAt.get(f.reqId);
      if (t0 !== undefined) ack.recordValue(Math.max(1, nowUs() - t0));
      acked++;
      pumps[i]!();
    } else if (f.type === 'error') {
      errors++;
      pumps[i]!();
    } else if (f.type === 'event' && f.event.type === 'message.created' && f.event.message.senderId !== users[i]!.id) {
      const t0 = sentAt.get(f.event.message.clientMsgId);
      if (t0 !== undefined) {
        deliveries++;
        delivery.recordValue(Math.max(1, nowUs() - t0));
      }
    }
  });
  log(`connected ${conns.length} senders; window ${windowSize} each, ${seconds} s`);

  let seq = 0;
  users.forEach((_u, i) => {
    pumps[i] = () => {
      if (!running) return;
      const cid = `s${i}_${seq++}`;
      sentAt.set(cid, nowUs());
      conns[i]!.ws.send(JSON.stringify({ type: 'send', reqId: cid, conversationId: convs[i], clientMsgId: cid, content: { type: 'text', text: `hello ${cid}` } }));
    };
  });
  const start = nowUs();
  for (let i = 0; i < senders; i++) for (let w = 0; w < windowSize; w++) pumps[i]!();
  await sleep(seconds * 1000);
  running = false;
  const elapsed = (nowUs() - start) / 1e6;
  const ackedInWindow = acked;
  await sleep(2_000);
  for (const c of conns) c.ws.close();
  return {
    scenario: 'chat',
    params: { senders, window: windowSize, seconds },
    ackedSendsPerSec: ackedInWindow / elapsed,
    acked: ackedInWindow,
    errors,
    ackMs: { p50: pct(ack, 50), p99: pct(ack, 99), max: ack.maxValue / 1000 },
    deliveries,
    deliveryMs: { p50: pct(delivery, 50), p99: pct(delivery, 99), max: delivery.maxValue / 1000 },
  };
}

// ---------------------------------------------------------------- main

async function main() {
  const target = await startTarget();
  log(`target ${target.url} (${args.url ? 'external' : args['in-process'] ? 'in-process' : 'child process'}), engine ${engine}`);
  try {
    const result = mode === 'chat' ? await chatScenario(target.url) : await groupScenario(target.url);
    const machine = { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version, platform: `${process.platform} ${process.arch}` };
    const record = { date: new Date().toISOString(), engine, server: args.url ? 'external' : args['in-process'] ? 'in-process' : 'child-process', label: args.label, machine, ...result };
    const dir = join(ROOT, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${mode}-${engine}-${record.date.replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
    console.table(flatten(result));
    console.log(`result: ${file}`);
    if ('complete' in result && !result.complete) process.exitCode = 1;
  } finally {
    await target.stop();
  }
}

function flatten(o: Record<string, unknown>, prefix = ''): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v && typeof v === 'object') Object.assign(out, flatten(v as Record<string, unknown>, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = typeof v === 'number' ? Math.round(v * 100) / 100 : (v as string | boolean);
  }
  return out;
}

await main();
