/**
 * Two (and for shutdown, three) real server processes on one PostgreSQL and
 * one Redis ([AF-R5], issue 2 item 11): fan-out, presence and revocation
 * across nodes, and a node killed mid-burst losing nothing acknowledged.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLOSE_CODES, ServerFrameValidator } from '@secureconnect/protocol';
import { WsClient, client, freshDeployment, registerUser, uid, type TestEnv, type TestUser } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PRESENCE_TTL_MS = 1_500;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Node {
  name: string;
  proc: ChildProcess;
  url: string;
  wsUrl: string;
  output: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function startNode(name: string, env: TestEnv): Promise<Node> {
  const port = await freePort();
  const proc = spawn(process.execPath, ['--import', 'tsx', 'packages/server/src/main.ts', 'serve'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: process.env.PATH,
      NODE_ENV: 'test',
      PORT: String(port),
      HOST: '127.0.0.1',
      NODE_ID: name,
      DATA_DIR: env.DATA_DIR,
      DATABASE_URL: env.DATABASE_URL,
      REDIS_URL: env.REDIS_URL,
      REDIS_PREFIX: env.REDIS_PREFIX,
      HTTP_RATE_LIMIT_PER_MINUTE: '1000000',
      AUTH_REGISTER_PER_IP_PER_HOUR: '1000000',
      WS_FRAMES_PER_SECOND: '100000',
      WS_FRAME_BURST: '100000',
      WS_MAX_CONNECTIONS_PER_USER: '3',
      PRESENCE_TTL_MS: String(PRESENCE_TTL_MS),
      SHUTDOWN_GRACE_MS: '3000',
      LOG_LEVEL: 'warn',
    },
  });
  const output: string[] = [];
  proc.stdout?.on('data', (d: Buffer) => output.push(d.toString()));
  proc.stderr?.on('data', (d: Buffer) => output.push(d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const node: Node = { name, proc, url, wsUrl: `ws://127.0.0.1:${port}/v1/ws`, output, exited };
  const deadline = Date.now() + 45_000;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${name} exited during start:\n${output.join('')}`);
    try {
      const res = await fetch(`${url}/readyz`);
      if (res.status === 200) return node;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${name} not ready in time:\n${output.join('')}`);
    await sleep(100);
  }
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const created = (conversationId: string) => (f: any) => f.type === 'event' && f.event.type === 'message.created' && f.event.message.conversationId === conversationId;
const presence = (userId: string, online: boolean) => (f: any) => f.type === 'event' && f.event.type === 'presence' && f.event.userId === userId && f.event.online === online;

async function direct(base: string, a: TestUser, b: TestUser): Promise<string> {
  const res = await client(base)('POST', '/v1/conversations', { token: a.accessToken, body: { type: 'direct', userId: b.id } });
  if (res.status !== 201 && res.status !== 200) throw new Error(`conversation: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.id as string;
}

async function history(base: string, user: TestUser, conv: string): Promise<any[]> {
  const out: any[] = [];
  for (let after = 0; ; ) {
    const res = await client(base)('GET', `/v1/conversations/${conv}/messages?afterSeq=${after}&limit=200`, { token: user.accessToken });
    if (res.status !== 200) throw new Error(`history: ${res.status} ${JSON.stringify(res.body)}`);
    out.push(...res.body.items);
    if (res.body.items.length < 200) return out;
    after = res.body.items.at(-1).seq;
  }
}

describe.skipIf(!process.env.DATABASE_URL || !process.env.REDIS_URL)('[AF-R5] several nodes on one PostgreSQL and one Redis', () => {
  let env: TestEnv;
  const nodes: Node[] = [];
  let n1: Node;
  let n2: Node;

  beforeAll(async () => {
    env = await freshDeployment();
    // Started together on purpose: migrations must serialise under their lock (AF-D1).
    const started = await Promise.allSettled([startNode('node-1', env), startNode('node-2', env)]);
    for (const s of started) if (s.status === 'fulfilled') nodes.push(s.value);
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    [n1, n2] = nodes as [Node, Node];
  }, 120_000);

  afterAll(async () => {
    for (const n of nodes) {
      if (n.proc.exitCode === null && n.proc.signalCode === null) n.proc.kill('SIGKILL');
    }
    await Promise.all(nodes.map((n) => n.exited));
    if (env) rmSync(env.DATA_DIR, { recursive: true, force: true });
  });

  it('[G5][AF-R5] a message sent through node 1 reaches a client on node 2 (REST and WebSocket sends)', async () => {
    const alice = await registerUser(n1.url);
    const bob = await registerUser(n2.url);
    const conv = await direct(n1.url, alice, bob);
    const b = await WsClient.connect(n2.wsUrl, bob.accessToken);
    const a = await WsClient.connect(n1.wsUrl, alice.accessToken);
    const res = await client(n1.url)('POST', `/v1/conversations/${conv}/messages`, { token: alice.accessToken, body: { clientMsgId: 'rest-1', content: { type: 'text', text: 'over REST on node 1' } } });
    expect(res.status).toBe(201);
    expect((await b.next(created(conv))).event.message).toEqual(res.body);
    a.send({ type: 'send', reqId: 'w1', conversationId: conv, clientMsgId: 'ws-1', content: { type: 'text', text: 'over WS on node 1' } });
    const ack = await a.next((f) => f.type === 'ack' && f.reqId === 'w1');
    const got = await b.next((f) => created(conv)(f) && f.event.message.id === ack.message.id);
    expect(ServerFrameValidator.Check(got)).toBe(true);
    a.close();
    b.close();
  });

  it('[P2] presence is shared across nodes', async () => {
    const alice = await registerUser(n1.url);
    const bob = await registerUser(n2.url);
    await direct(n2.url, bob, alice);
    const b = await WsClient.connect(n2.wsUrl, bob.accessToken);
    const a = await WsClient.connect(n1.wsUrl, alice.accessToken);
    await b.next(presence(alice.id, true));
    const seen = await client(n2.url)('GET', `/v1/presence?userIds=${alice.id}`, { token: bob.accessToken });
    expect(seen.body.items).toMatchObject([{ userId: alice.id, online: true }]);
    a.close();
    await b.next(presence(alice.id, false));
    const after = await client(n2.url)('GET', `/v1/presence?userIds=${alice.id}`, { token: bob.accessToken });
    expect(after.body.items).toMatchObject([{ userId: alice.id, online: false }]);
    b.close();
  });

  it('[G3][AF-R3] the per-user connection limit counts sockets on every node', async () => {
    const erin = await registerUser(n1.url);
    const held = [await WsClient.connect(n1.wsUrl, erin.accessToken), await WsClient.connect(n1.wsUrl, erin.accessToken), await WsClient.connect(n2.wsUrl, erin.accessToken)];
    const extra = await WsClient.open(n2.wsUrl);
    extra.send({ type: 'auth', token: erin.accessToken });
    expect((await extra.waitClose()).code).toBe(CLOSE_CODES.rateLimited);
    for (const c of held) c.close();
  });

  it('[S3][AF-A3] a session revoked on node 1 closes its socket on node 2 within 1 s and is refused there', async () => {
    const carol = await registerUser(n1.url);
    const c = await WsClient.connect(n2.wsUrl, carol.accessToken);
    const started = Date.now();
    expect((await client(n1.url)('POST', '/v1/auth/logout', { token: carol.accessToken })).status).toBe(204);
    expect((await c.waitClose(1_000)).code).toBe(CLOSE_CODES.sessionRevoked);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((await client(n2.url)('GET', '/v1/me', { token: carol.accessToken })).status).toBe(401);
    const again = await WsClient.open(n2.wsUrl);
    again.send({ type: 'auth', token: carol.accessToken });
    expect((await again.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
  });

  it('[G6][AF-R4] SIGTERM: the node tells its clients to reconnect (1012), acknowledges nothing it loses, and exits cleanly', async () => {
    const n3 = await startNode('node-3', env);
    nodes.push(n3);
    const alice = await registerUser(n3.url);
    const bob = await registerUser(n2.url);
    const conv = await direct(n3.url, alice, bob);
    const a = await WsClient.connect(n3.wsUrl, alice.accessToken);
    for (let i = 0; i < 100; i++) a.send({ type: 'send', reqId: `t${i}`, conversationId: conv, clientMsgId: `term-${i}`, content: { type: 'text', text: `t${i}` } });
    await waitFor(() => a.frames.some((f) => f.type === 'ack'), 10_000, 'first ack');
    n3.proc.kill('SIGTERM');
    const closed = await a.waitClose(10_000);
    expect(closed.code).toBe(CLOSE_CODES.serviceRestart);
    expect(a.frames.find((f) => f.type === 'reconnect')).toMatchObject({ type: 'reconnect', afterMs: expect.any(Number) });
    expect(await n3.exited).toEqual({ code: 0, signal: null });
    const acked = a.frames.filter((f) => f.type === 'ack').map((f) => f.message.id as string);
    const stored = new Set((await history(n2.url, bob, conv)).map((m) => m.id as string));
    for (const id of acked) expect(stored.has(id)).toBe(true);
  }, 60_000);

  it('[E3][AF-R4][P2] SIGKILL of node 1 mid-burst: every acknowledged message survives, its client resumes on node 2 exactly once, its users go offline', async () => {
    const alice = await registerUser(n1.url);
    const bob = await registerUser(n1.url);
    const dave = await registerUser(n2.url);
    const conv = await direct(n1.url, alice, bob);
    await direct(n2.url, dave, alice);
    const watcher = await WsClient.connect(n2.wsUrl, dave.accessToken);
    const b = await WsClient.connect(n1.wsUrl, bob.accessToken);
    const a = await WsClient.connect(n1.wsUrl, alice.accessToken);
    await watcher.next(presence(alice.id, true));
    // A window of 20 sends always in flight, so the kill lands mid-burst with commits pending.
    let sent = 0;
    const sendOne = () => {
      const i = sent++;
      a.send({ type: 'send', reqId: `k${i}`, conversationId: conv, clientMsgId: `kill-${uid(3)}-${i}`, content: { type: 'text', text: `k${i}` } });
    };
    a.ws.on('message', (d) => {
      if (JSON.parse(d.toString()).type === 'ack' && a.ws.readyState === a.ws.OPEN) sendOne();
    });
    for (let i = 0; i < 20; i++) sendOne();
    await waitFor(() => a.frames.filter((f) => f.type === 'ack').length >= 50, 15_000, '50 acks');
    n1.proc.kill('SIGKILL');
    await n1.exited;
    await Promise.all([a.waitClose(), b.waitClose()]);
    const acked = a.frames.filter((f) => f.type === 'ack').map((f) => f.message);
    expect(acked.length).toBeGreaterThanOrEqual(50);
    expect(acked.length).toBeLessThan(sent);

    // Every acknowledged message is durable (read through the surviving node).
    const stored = await history(n2.url, bob, conv);
    const storedIds = new Set(stored.map((m) => m.id as string));
    for (const m of acked) expect(storedIds.has(m.id)).toBe(true);

    // Bob resumes on node 2 with the cursor he had: the union is the whole history, once, in order.
    const durable = b.frames.filter((f) => f.type === 'event' && f.event.type !== 'presence' && f.event.type !== 'typing');
    const cursor = durable.at(-1).cursor as string;
    const r = await WsClient.connect(n2.wsUrl, bob.accessToken, cursor);
    const seqs = [...b.events('message.created'), ...r.events('message.created')].map((f) => f.event.message.seq as number);
    expect(seqs).toEqual(stored.map((m) => m.seq as number));
    // ...and then gets live events on the new node.
    const live = await client(n2.url)('POST', `/v1/conversations/${conv}/messages`, { token: alice.accessToken, body: { clientMsgId: `after-${uid(3)}`, content: { type: 'text', text: 'after' } } });
    expect((await r.next((f) => created(conv)(f) && f.event.message.id === live.body.id)).event.message.seq).toBe(stored.length + 1);

    // Alice's only connection died with node 1: node 2 sweeps her offline within the presence TTL.
    await watcher.next(presence(alice.id, false), PRESENCE_TTL_MS + 3_000);
    r.close();
    watcher.close();
  }, 60_000);
});
