/**
 * Load-generator coordinator (issue 4; method in docs/PERFORMANCE.md, "Benchmark suite").
 *
 *   npx tsx bench/load/run.ts <fanout|chat|idle|history|churn> [--target ours|ws-peer|sio-peer]
 *       [--engine sqlite|pg] [--nodes 1|2] [--workers 2] [--addresses 8] [--built] [options]
 *
 * Starts the target server(s) as child processes (ours on a fresh SQLite dir
 * or a fresh PostgreSQL database + Redis prefix), creates users and
 * conversations over REST, forks `--workers` worker processes that open the
 * WebSocket connections (source addresses 127.0.0.1..127.0.0.N), drives the
 * scenario, merges the workers' HDR histograms and per-message delivery
 * counts, prints a table and writes JSON to bench/results/. Exits 1 when a
 * run is incomplete (a message lost or duplicated, or a connection failed).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type * as hdr from 'hdr-histogram-js';
import {
  api, fromB64, mergeHistograms, sleep, summary,
  type ConnSpec, type FromWorker, type TargetKind, type ToWorker, type WorkerChatResult, type WorkerFanoutResult,
} from './common.js';
import { ROOT, startTarget, type Probe, type Target } from './targets.js';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    target: { type: 'string', default: 'ours' },
    engine: { type: 'string', default: 'sqlite' },
    nodes: { type: 'string', default: '1' },
    workers: { type: 'string', default: '2' },
    addresses: { type: 'string', default: '8' },
    built: { type: 'boolean', default: false },
    // fanout
    members: { type: 'string', default: '100' },
    senders: { type: 'string', default: '1' },
    rate: { type: 'string', default: '50' },
    seconds: { type: 'string', default: '10' },
    // chat
    pairs: { type: 'string', default: '500' },
    'per-user-rate': { type: 'string', default: '1' },
    // idle
    connections: { type: 'string', default: '1000' },
    'conns-per-user': { type: 'string', default: '10' },
    'heartbeat-ms': { type: 'string' },
    // history
    messages: { type: 'string', default: '1000000' },
    'page-size': { type: 'string', default: '50' },
    walkers: { type: 'string', default: '8' },
    // churn
    concurrency: { type: 'string', default: '50' },
    'drain-ms': { type: 'string', default: '30000' },
    'register-concurrency': { type: 'string', default: '16' },
    label: { type: 'string', default: '' },
    out: { type: 'string' },
  },
});

const scenario = positionals[0] ?? '';
const SCENARIOS = ['fanout', 'chat', 'idle', 'history', 'churn'] as const;
type Scenario = (typeof SCENARIOS)[number];
if (!(SCENARIOS as readonly string[]).includes(scenario)) {
  process.stderr.write(`usage: npx tsx bench/load/run.ts <${SCENARIOS.join('|')}> [--target ours|ws-peer|sio-peer] [--engine sqlite|pg] [--nodes 1|2] ...\n`);
  process.exit(2);
}
const kind = args.target as TargetKind;
if (!['ours', 'ws-peer', 'sio-peer'].includes(kind)) throw new Error(`--target must be ours, ws-peer or sio-peer (got ${args.target})`);
const engine = args.engine === 'pg' ? 'pg' : args.engine === 'sqlite' ? 'sqlite' : null;
if (!engine) throw new Error(`--engine must be sqlite or pg (got ${args.engine})`);
const int = (name: keyof typeof args, min = 1): number => {
  const v = Number(args[name]);
  if (!Number.isFinite(v) || v < min) throw new Error(`--${name} must be a number >= ${min}`);
  return v;
};
const nodes = int('nodes');
const workerCount = int('workers');
const addressCount = Math.min(254, int('addresses'));
const drainMs = int('drain-ms', 0);
const log = (s: string) => process.stderr.write(`${s}\n`);

// ---------------------------------------------------------------- REST setup (ours)

interface User {
  id: string;
  token: string;
}


/** Runs `fn(i)` for i in [0, n), `concurrency` at a time. */
async function parallel(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

/** Real registrations (argon2id at the production cost, spread over the libuv pool by parallel requests). */
async function registerUsers(base: string, n: number): Promise<User[]> {
  const run = randomBytes(3).toString('hex');
  const users = new Array<User>(n);
  const started = Date.now();
  let done = 0;
  await parallel(n, int('register-concurrency'), async (i) => {
    const username = `l${run}_${i}`;
    const res = await api<{ user: { id: string }; accessToken: string }>(base, 'POST', '/v1/auth/register', null, {
      email: `${username}@bench.test`,
      username,
      password: randomBytes(12).toString('base64url'),
    });
    users[i] = { id: res.user.id, token: res.accessToken };
    if (++done % 500 === 0) log(`  registered ${done}/${n}`);
  });
  log(`registered ${n} users in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return users;
}

async function createGroup(base: string, users: User[]): Promise<string> {
  const owner = users[0]!;
  const first = users.slice(1, 256).map((u) => u.id);
  const conv = await api<{ id: string }>(base, 'POST', '/v1/conversations', owner.token, { type: 'group', title: 'bench', memberIds: first });
  const rest = users.slice(256);
  await parallel(rest.length, 4, async (i) => {
    await api(base, 'POST', `/v1/conversations/${conv.id}/members`, owner.token, { userId: rest[i]!.id });
  });
  return conv.id;
}

// ---------------------------------------------------------------- workers

interface Worker {
  child: ChildProcess;
  specs: ConnSpec[];
  next(): Promise<FromWorker>;
  send(m: ToWorker): void;
}

const errorSamples: string[] = [];

function startWorkers(conns: ConnSpec[]): Worker[] {
  const out: Worker[] = [];
  for (let w = 0; w < workerCount; w++) {
    const child = fork(join(ROOT, 'bench/load/worker.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const queue: FromWorker[] = [];
    const waiting: ((m: FromWorker) => void)[] = [];
    child.on('message', (raw: unknown) => {
      const m = raw as FromWorker;
      if (m.samples) errorSamples.push(...m.samples.slice(0, 5 - Math.min(5, errorSamples.length)));
      if (m.type === 'error') log(`worker ${w}: ${m.message}`);
      const wake = waiting.shift();
      if (wake) wake(m);
      else queue.push(m);
    });
    child.once('exit', (code) => {
      if (code !== 0) for (const wake of waiting.splice(0)) wake({ type: 'error', message: `worker ${w} exited with ${code}` });
    });
    out.push({
      child,
      specs: conns.filter((c) => c.index % workerCount === w),
      next: () => {
        const m = queue.shift();
        return m ? Promise.resolve(m) : new Promise((r) => waiting.push(r));
      },
      send: (m) => child.send(m),
    });
  }
  return out;
}

async function expect<T extends FromWorker['type']>(w: Worker, type: T): Promise<Extract<FromWorker, { type: T }>> {
  const m = await w.next();
  if (m.type !== type) throw new Error(m.type === 'error' ? m.message : `expected ${type} from a worker, got ${m.type}`);
  return m as Extract<FromWorker, { type: T }>;
}

async function connectAll(workers: Worker[], target: TargetKind): Promise<{ connected: number; failed: number; connect: hdr.Histogram; seconds: number }> {
  const started = Date.now();
  for (const w of workers) w.send({ type: 'setup', target, conns: w.specs, connectConcurrency: 64 });
  const ready = await Promise.all(workers.map((w) => expect(w, 'ready')));
  const connected = ready.reduce((a, r) => a + r.connected, 0);
  const failed = ready.reduce((a, r) => a + r.failed, 0);
  const seconds = (Date.now() - started) / 1000;
  log(`connected ${connected} sockets (${failed} failed) in ${seconds.toFixed(1)} s`);
  return { connected, failed, connect: mergeHistograms(ready.map((r) => r.connectMs)), seconds };
}

async function closeWorkers(workers: Worker[]): Promise<void> {
  await Promise.all(
    workers.map(async (w) => {
      if (w.child.exitCode !== null) return;
      const exited = new Promise<void>((r) => w.child.once('exit', () => r()));
      w.send({ type: 'close' });
      const killer = setTimeout(() => w.child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }),
  );
}

const address = (i: number) => `127.0.0.${1 + (i % addressCount)}`;

/** Connection specs for `count` connections; for ours, user `userOf(i)` with room `roomOf(i)`. */
function specsFor(target: Target, count: number, tokenOf: (i: number) => string, roomOf: (i: number) => string): ConnSpec[] {
  return Array.from({ length: count }, (_x, i) => ({
    index: i,
    url: target.urls[i % target.urls.length]!,
    token: tokenOf(i),
    room: roomOf(i),
    localAddress: address(i),
  }));
}

// ---------------------------------------------------------------- scenarios

type Result = Record<string, unknown> & { complete: boolean };

async function fanout(target: Target): Promise<Result> {
  const members = int('members', 2);
  const senders = Math.min(members, int('senders'));
  const rates = String(args.rate).split(',').map(Number);
  const seconds = Number(args.seconds);
  let users: User[] = [];
  let room = 'fanout';
  if (kind === 'ours') {
    users = await registerUsers(target.urls[0]!, members);
    room = await createGroup(target.urls[0]!, users);
    log(`group of ${members} members`);
  }
  const conns = specsFor(target, members, (i) => users[i]?.token ?? '', () => room);
  const workers = startWorkers(conns);
  try {
    const c = await connectAll(workers, kind);
    if (c.failed > 0) throw new Error(`${c.failed} connections failed: ${errorSamples.join('; ')}`);
    // Senders spread over the workers (connection i belongs to worker i % W).
    const senderIdx = Array.from({ length: senders }, (_x, s) => s);
    const steps: Record<string, unknown>[] = [];
    let complete = true;
    for (const [step, rate] of rates.entries()) {
      await sleep(1000);
      const startAt = Date.now() + 500;
      for (const w of workers) w.send({ type: 'fanout', step: { step, rate, seconds, senders: senderIdx, startAt, recipients: members, drainMs } });
      const rs: WorkerFanoutResult[] = (await Promise.all(workers.map((w) => expect(w, 'fanoutResult')))).map((r) => r.result);
      const perMessage = rs.map((r) => fromB64(r.perMessage)).reduce((acc, a) => {
        for (let i = 0; i < a.length; i++) acc[i]! += a[i]!;
        return acc;
      });
      let missing = 0;
      let short = 0;
      for (const n of perMessage) {
        if (n < members) {
          missing += members - n;
          short++;
        }
      }
      const sent = rs.reduce((a, r) => a + r.sent, 0);
      const deliveries = rs.reduce((a, r) => a + r.deliveries, 0);
      const duplicates = rs.reduce((a, r) => a + r.duplicates, 0);
      const unexpected = rs.reduce((a, r) => a + r.unexpected, 0);
      const errors = rs.reduce((a, r) => a + r.errors, 0);
      const acked = rs.reduce((a, r) => a + r.acked, 0);
      const lastAt = Math.max(...rs.map((r) => r.lastDeliveryAt));
      const elapsed = Math.max(seconds, (lastAt - startAt) / 1000);
      const delivery = summary(mergeHistograms(rs.map((r) => r.delivery)));
      const ack = summary(mergeHistograms(rs.map((r) => r.ack)));
      const ok = missing === 0 && duplicates === 0 && unexpected === 0 && errors === 0 && acked === sent && perMessage.length === sent;
      complete &&= ok;
      const row = {
        rate, seconds, sent, acked, expectedDeliveries: sent * members, deliveries, missing, messagesShort: short, duplicates, unexpected, errors,
        deliveriesPerSec: Math.round(deliveries / elapsed), ackMs: ack, deliveryMs: delivery, complete: ok,
      };
      steps.push(row);
      log(`step ${step}: ${rate} msg/s -> ${row.deliveriesPerSec} deliveries/s, p50/p99/max ${delivery.p50}/${delivery.p99}/${delivery.max} ms, ${ok ? 'complete' : 'INCOMPLETE'}`);
    }
    const under = steps.filter((s) => (s.deliveryMs as { p99: number }).p99 <= 100);
    const knee = {
      /** The highest offered rate whose delivery p99 stayed at or under 100 ms. */
      lastUnder100msRate: under.length ? (under[under.length - 1]!.rate as number) : null,
      deliveriesPerSecAtIt: under.length ? (under[under.length - 1]!.deliveriesPerSec as number) : null,
      firstOver100msRate: (steps.find((s) => (s.deliveryMs as { p99: number }).p99 > 100)?.rate as number | undefined) ?? null,
    };
    return { params: { members, senders, rates, seconds }, connect: { seconds: c.seconds, ms: summary(c.connect) }, steps, knee, complete };
  } finally {
    await closeWorkers(workers);
  }
}

async function chat(target: Target): Promise<Result> {
  const pairs = int('pairs');
  const perUserRate = Number(args['per-user-rate']);
  const seconds = Number(args.seconds);
  const n = pairs * 2;
  let users: User[] = [];
  const rooms: string[] = [];
  if (kind === 'ours') {
    users = await registerUsers(target.urls[0]!, n);
    await parallel(pairs, 8, async (k) => {
      const conv = await api<{ id: string }>(target.urls[0]!, 'POST', '/v1/conversations', users[2 * k]!.token, { type: 'direct', userId: users[2 * k + 1]!.id });
      rooms[k] = conv.id;
    });
  } else {
    for (let k = 0; k < pairs; k++) rooms[k] = `pair-${k}`;
  }
  const conns = specsFor(target, n, (i) => users[i]?.token ?? '', (i) => rooms[i >> 1]!);
  const partner: Record<number, number> = {};
  for (let i = 0; i < n; i++) partner[i] = i ^ 1;
  const workers = startWorkers(conns);
  try {
    const c = await connectAll(workers, kind);
    if (c.failed > 0) throw new Error(`${c.failed} connections failed: ${errorSamples.join('; ')}`);
    await sleep(1000);
    const startAt = Date.now() + 500;
    for (const w of workers) w.send({ type: 'chat', step: { perUserRate, seconds, partner, users: n, startAt, drainMs } });
    const rs: WorkerChatResult[] = (await Promise.all(workers.map((w) => expect(w, 'chatResult')))).map((r) => r.result);
    const perMessage = rs.map((r) => fromB64(r.perMessage)).reduce((acc, a) => {
      for (let i = 0; i < a.length; i++) acc[i]! += a[i]!;
      return acc;
    });
    let missing = 0;
    let multi = 0;
    for (const k of perMessage) {
      if (k === 0) missing++;
      else if (k > 1) multi += k - 1;
    }
    const sent = rs.reduce((a, r) => a + r.sent, 0);
    const acked = rs.reduce((a, r) => a + r.acked, 0);
    const ackedInWindow = rs.reduce((a, r) => a + r.ackedInWindow, 0);
    const duplicates = rs.reduce((a, r) => a + r.duplicates, 0) + multi;
    const unexpected = rs.reduce((a, r) => a + r.unexpected, 0);
    const errors = rs.reduce((a, r) => a + r.errors, 0);
    const complete = missing === 0 && duplicates === 0 && unexpected === 0 && errors === 0 && acked === sent && perMessage.length === sent;
    return {
      params: { pairs, users: n, perUserRate, seconds, offeredPerSec: n * perUserRate },
      connect: { seconds: c.seconds, ms: summary(c.connect) },
      sent, acked, ackedPerSec: Math.round(ackedInWindow / seconds), missing, duplicates, unexpected, errors,
      ackMs: summary(mergeHistograms(rs.map((r) => r.ack))),
      deliveryMs: summary(mergeHistograms(rs.map((r) => r.delivery))),
      complete,
    };
  } finally {
    await closeWorkers(workers);
  }
}

const sumProbe = (ps: Probe[]) => ps.reduce(
  (a, p) => ({ vmRss: a.vmRss + p.vmRss, heapUsed: a.heapUsed + p.heapUsed, external: a.external + p.external, cpuUs: a.cpuUs + p.cpuUserUs + p.cpuSystemUs }),
  { vmRss: 0, heapUsed: 0, external: 0, cpuUs: 0 },
);

async function idle(target: Target): Promise<Result> {
  const connections = int('connections');
  const perUser = kind === 'ours' ? Math.min(1000, int('conns-per-user')) : 1;
  const seconds = Number(args.seconds);
  let users: User[] = [];
  if (kind === 'ours') users = await registerUsers(target.urls[0]!, Math.ceil(connections / perUser));
  const conns = specsFor(target, connections, (i) => users[Math.floor(i / perUser)]?.token ?? '', () => 'idle');
  await sleep(1000);
  const before = sumProbe(await target.probe());
  const workers = startWorkers(conns);
  try {
    const c = await connectAll(workers, kind);
    await sleep(2000);
    const after = sumProbe(await target.probe());
    log(`idle for ${seconds} s`);
    const t0 = Date.now();
    await sleep(seconds * 1000);
    const end = sumProbe(await target.probe());
    const window = (Date.now() - t0) / 1000;
    const mb = (b: number) => Math.round(b / 1024 / 102.4) / 10;
    return {
      params: { connections, connsPerUser: perUser, seconds, heartbeatMs: args['heartbeat-ms'] ?? (kind === 'sio-peer' ? 'socket.io default 25000' : '25000') },
      connected: c.connected, failed: c.failed, connect: { seconds: c.seconds, ms: summary(c.connect) },
      serverRssMB: { before: mb(before.vmRss), after: mb(after.vmRss), end: mb(end.vmRss) },
      heapUsedMB: { before: mb(before.heapUsed), after: mb(after.heapUsed) },
      rssPerConnKB: Math.round(((after.vmRss - before.vmRss) / Math.max(1, c.connected) / 1024) * 10) / 10,
      heapPerConnKB: Math.round(((after.heapUsed - before.heapUsed) / Math.max(1, c.connected) / 1024) * 10) / 10,
      idleCpuPercent: Math.round(((end.cpuUs - after.cpuUs) / 1e6 / window) * 1000) / 10,
      complete: c.failed === 0 && c.connected === connections,
    };
  } finally {
    await closeWorkers(workers);
  }
}

/**
 * Seeds `count` messages into one conversation directly in the database, with
 * every server node stopped (the only place the benchmark writes SQL; the
 * server's own send path at a few thousand per second would take minutes per
 * million). Rows mirror what the send path writes: seq 1..count, the sender's
 * clientMsgId unique, text bodies, the conversation's last_seq advanced.
 */
async function seedHistory(target: Target, conversationId: string, senderId: string, count: number): Promise<void> {
  await target.stopNodes();
  const started = Date.now();
  const now = Date.now() - count;
  if (target.databaseUrl) {
    const pg = (await import('pg')).default;
    const client = new pg.Client({ connectionString: target.databaseUrl });
    await client.connect();
    try {
      await client.query('begin');
      await client.query(
        `insert into messages (id, conversation_id, seq, sender_id, client_msg_id, content_type, body, created_at)
         select gen_random_uuid()::text, $1, s, $2, 'seed-' || s, 'text', 'history message ' || s, $3::bigint + s
         from generate_series(1, $4::bigint) as s`,
        [conversationId, senderId, now, count],
      );
      await client.query('update conversations set last_seq = $1 where id = $2', [count, conversationId]);
      await client.query('commit');
    } finally {
      await client.end();
    }
  } else {
    const SQLite = (await import('better-sqlite3')).default;
    const { uuidv7 } = await import('uuidv7');
    const db = new SQLite(join(target.dataDir, 'secureconnect.db'));
    try {
      const insert = db.prepare(
        `insert into messages (id, conversation_id, seq, sender_id, client_msg_id, content_type, body, created_at) values (?, ?, ?, ?, ?, 'text', ?, ?)`,
      );
      const batch = db.transaction((from: number, to: number) => {
        for (let s = from; s <= to; s++) insert.run(uuidv7(), conversationId, s, senderId, `seed-${s}`, `history message ${s}`, now + s);
      });
      for (let from = 1; from <= count; from += 100_000) batch(from, Math.min(count, from + 99_999));
      db.prepare('update conversations set last_seq = ? where id = ?').run(count, conversationId);
    } finally {
      db.close();
    }
  }
  log(`seeded ${count} messages in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  await target.startNodes();
}

async function history(target: Target): Promise<Result> {
  if (kind !== 'ours') throw new Error('history needs --target ours: the peers keep no messages');
  const count = int('messages', 2);
  const pageSize = Math.min(200, int('page-size'));
  const walkers = int('walkers');
  const seconds = Number(args.seconds);
  const [owner, other] = await registerUsers(target.urls[0]!, 2);
  const conv = await api<{ id: string }>(target.urls[0]!, 'POST', '/v1/conversations', owner!.token, { type: 'group', title: 'history', memberIds: [other!.id] });
  await seedHistory(target, conv.id, owner!.id, count);
  // The proof that the seeded rows are what the API serves: the newest page, read through it.
  const top = await api<{ items: { seq: number }[] }>(target.urls[0]!, 'GET', `/v1/conversations/${conv.id}/messages?limit=1`, owner!.token);
  if (top.items[0]?.seq !== count) throw new Error(`after seeding, the newest seq is ${top.items[0]?.seq}, not ${count}`);
  const workers = startWorkers([]);
  try {
    const per = Math.ceil(walkers / workerCount);
    workers.forEach((w, i) =>
      w.send({ type: 'history', url: target.urls[i % target.urls.length]!, token: owner!.token, conversationId: conv.id, topSeq: count, walkers: per, walkerOffset: i * per, pageSize, seconds }),
    );
    const rs = await Promise.all(workers.map((w) => expect(w, 'historyResult')));
    const pages = rs.reduce((a, r) => a + r.pages, 0);
    const gaps = rs.reduce((a, r) => a + r.gaps, 0);
    const errors = rs.reduce((a, r) => a + r.errors, 0);
    const elapsed = Math.max(...rs.map((r) => r.elapsedMs)) / 1000;
    return {
      params: { messages: count, pageSize, walkers: per * workerCount, seconds },
      pages, messagesRead: rs.reduce((a, r) => a + r.messages, 0), pagesPerSec: Math.round(pages / elapsed), gaps, errors,
      pageMs: summary(mergeHistograms(rs.map((r) => r.latency))),
      complete: gaps === 0 && errors === 0 && pages > 0,
    };
  } finally {
    await closeWorkers(workers);
  }
}

async function churn(target: Target): Promise<Result> {
  const concurrency = int('concurrency');
  const seconds = Number(args.seconds);
  let users: User[] = [];
  if (kind === 'ours') users = await registerUsers(target.urls[0]!, concurrency);
  const conns = specsFor(target, concurrency, (i) => users[i]?.token ?? '', () => 'churn');
  const workers = startWorkers(conns);
  try {
    for (const w of workers) w.send({ type: 'churn', target: kind, conns: w.specs, seconds });
    const rs = await Promise.all(workers.map((w) => expect(w, 'churnResult')));
    const cycles = rs.reduce((a, r) => a + r.cycles, 0);
    const errors = rs.reduce((a, r) => a + r.errors, 0);
    return {
      params: { concurrency, seconds },
      cycles, cyclesPerSec: Math.round(cycles / seconds), errors,
      cycleMs: summary(mergeHistograms(rs.map((r) => r.latency))),
      complete: errors === 0 && cycles > 0,
    };
  } finally {
    await closeWorkers(workers);
  }
}

// ---------------------------------------------------------------- main

function flatten(o: Record<string, unknown>, prefix = ''): Record<string, string | number | boolean | null> {
  const out: Record<string, string | number | boolean | null> = {};
  for (const [k, v] of Object.entries(o)) {
    if (Array.isArray(v)) v.forEach((x, i) => Object.assign(out, typeof x === 'object' && x ? flatten(x as Record<string, unknown>, `${prefix}${k}[${i}].`) : { [`${prefix}${k}[${i}]`]: x as number }));
    else if (v && typeof v === 'object') Object.assign(out, flatten(v as Record<string, unknown>, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = v as string | number | boolean | null;
  }
  return out;
}

async function main(): Promise<void> {
  const s = scenario as Scenario;
  const extraEnv: Record<string, string> = {};
  if (s === 'idle') extraEnv.WS_MAX_CONNECTIONS_PER_USER = String(Math.min(1000, int('conns-per-user')));
  if (args['heartbeat-ms']) extraEnv.WS_HEARTBEAT_INTERVAL_MS = String(args['heartbeat-ms']);
  const loadAtStart = loadavg()[0]!;
  const target = await startTarget({ kind, engine: engine!, nodes: kind === 'ours' ? nodes : 1, built: args.built === true, env: extraEnv });
  log(`${s}: target ${kind} (${target.engine}, ${target.urls.length} node(s) ${target.urls.join(' ')}), ${workerCount} workers, ${addressCount} source addresses`);
  let result: Result;
  try {
    const run = { fanout, chat, idle, history, churn }[s];
    result = await run(target);
  } finally {
    await target.stop();
  }
  const machine = { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', memGB: Math.round(totalmem() / 2 ** 30), node: process.version, loadAtStart, loadAtEnd: loadavg()[0] };
  const record = {
    scenario: s, date: new Date().toISOString(), target: kind, engine: target.engine, nodes: target.urls.length,
    server: kind === 'ours' ? (args.built ? 'dist' : 'tsx') : 'tsx', workers: workerCount, addresses: addressCount, label: args.label, machine,
    ...result, errorSamples,
  };
  const file = args.out ?? join(ROOT, 'bench', 'results', `${s}-${kind}-${target.engine}-${record.date.replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(file, '..'), { recursive: true });
  writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
  console.table(flatten(result));
  process.stdout.write(`complete: ${result.complete ? 'yes' : 'NO'}\nresult: ${file}\n`);
  if (!result.complete) process.exitCode = 1;
}

main().catch((e: unknown) => {
  log((e as Error).stack ?? String(e));
  process.exitCode = 1;
});
