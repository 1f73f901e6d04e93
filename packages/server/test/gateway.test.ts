import { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { CLOSE_CODES, PROTOCOL_VERSION, ServerFrameValidator, WS_LIMITS } from '@secureconnect/protocol';
import { WsClient, client, registerUser, startApp, uid, type Running, type TestUser } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function conversation(base: string, owner: TestUser, others: TestUser[]): Promise<string> {
  const req = client(base);
  const res =
    others.length === 1
      ? await req('POST', '/v1/conversations', { token: owner.accessToken, body: { type: 'direct', userId: others[0]!.id } })
      : await req('POST', '/v1/conversations', { token: owner.accessToken, body: { type: 'group', title: 'g', memberIds: others.map((o) => o.id) } });
  if (res.status !== 201 && res.status !== 200) throw new Error(`conversation: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.id as string;
}

async function sendRest(base: string, user: TestUser, conversationId: string, text: string, clientMsgId = `c-${uid(6)}`) {
  const res = await client(base)('POST', `/v1/conversations/${conversationId}/messages`, {
    token: user.accessToken,
    body: { clientMsgId, content: { type: 'text', text } },
  });
  if (res.status !== 201 && res.status !== 200) throw new Error(`send: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Opens a socket without waiting for `open` to succeed; resolves with the HTTP status of a refused upgrade. */
function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.once('open', () => {
      ws.close();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

const created = (conversationId: string) => (f: any) => f.type === 'event' && f.event.type === 'message.created' && f.event.message.conversationId === conversationId;

describe('gateway: authentication and origin', () => {
  let s: Running;
  let alice: TestUser;
  beforeAll(async () => {
    s = await startApp({ WS_AUTH_TIMEOUT_MS: '300', CORS_ORIGINS: 'https://app.example.test' });
    alice = await registerUser(s.url);
  });
  afterAll(async () => s?.close());

  it('[G1] a socket that sends no auth frame within the deadline is closed 4401', async () => {
    const c = await WsClient.open(s.wsUrl);
    const started = Date.now();
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(c.frames).toEqual([]);
  });

  it('[G1] a bad token is closed 4401 and learns nothing', async () => {
    const c = await WsClient.open(s.wsUrl);
    c.send({ type: 'auth', token: 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.' });
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
    expect(c.frames).toEqual([]);
  });

  it('[G1][AF-R1] any frame before auth closes 4401', async () => {
    const c = await WsClient.open(s.wsUrl);
    c.send({ type: 'ping' });
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
    expect(c.frames).toEqual([]);
  });

  it('[G1][AF-R1] a token in the URL is never read', async () => {
    const c = await WsClient.open(`${s.wsUrl}?token=${alice.accessToken}&access_token=${alice.accessToken}`);
    c.send({ type: 'ping' });
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
    expect(c.frames).toEqual([]);
  });

  it('[G1] a valid auth frame gets `ready` with the protocol version; ping → pong', async () => {
    const c = await WsClient.connect(s.wsUrl, alice.accessToken);
    const ready = c.frames[0];
    expect(ServerFrameValidator.Check(ready)).toBe(true);
    expect(ready).toMatchObject({ type: 'ready', userId: alice.id, protocolVersion: PROTOCOL_VERSION, replayed: 0 });
    c.send({ type: 'ping' });
    await c.next((f) => f.type === 'pong');
    c.close();
  });

  it('[G1] a different protocolVersion gets an error and close 4400', async () => {
    const c = await WsClient.open(s.wsUrl);
    c.send({ type: 'auth', token: alice.accessToken, protocolVersion: PROTOCOL_VERSION + 1 });
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.badFrame);
    expect(c.frames).toMatchObject([{ type: 'error', error: { code: 'bad_request' } }]);
  });

  it('[G2][AF-R2] a foreign Origin is refused with 403 at the upgrade; a listed one and none are accepted', async () => {
    expect(await upgradeStatus(s.wsUrl, { origin: 'https://evil.example' })).toBe(403);
    expect(await upgradeStatus(s.wsUrl, { origin: 'null' })).toBe(403);
    const ok = await WsClient.open(s.wsUrl, { origin: 'https://app.example.test' });
    ok.send({ type: 'auth', token: alice.accessToken });
    await ok.next((f) => f.type === 'ready');
    ok.close();
    expect(await upgradeStatus(s.wsUrl)).toBe(101);
  });

  it('only /v1/ws upgrades', async () => {
    expect(await upgradeStatus(s.wsUrl.replace('/v1/ws', '/v1/other'))).toBe(404);
  });
});

describe('gateway: frames and limits', () => {
  let s: Running;
  let alice: TestUser;
  let bob: TestUser;
  beforeAll(async () => {
    s = await startApp({ WS_FRAMES_PER_SECOND: '20', WS_FRAME_BURST: '30', WS_MAX_CONNECTIONS_PER_USER: '3', WS_MAX_BUFFERED_BYTES: '16384' });
    [alice, bob] = await Promise.all([registerUser(s.url), registerUser(s.url)]);
  });
  afterAll(async () => s?.close());

  it('[G3][AF-I1] a frame over the size limit closes 1009', async () => {
    const c = await WsClient.connect(s.wsUrl, alice.accessToken);
    c.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(WS_LIMITS.maxFrameBytes + 10) }));
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.tooLarge);
  });

  it('[AF-I1] invalid JSON closes 4400', async () => {
    const c = await WsClient.connect(s.wsUrl, alice.accessToken);
    c.send('{"type":');
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.badFrame);
  });

  it('[AF-I1] a frame that fails the schema gets validation_failed with its reqId; the socket stays', async () => {
    const c = await WsClient.connect(s.wsUrl, alice.accessToken);
    c.send({ type: 'send', reqId: 'r1', conversationId: 'nope', clientMsgId: 'x', content: { type: 'text', text: 'hi' } });
    c.send({ type: 'ping', extra: true });
    c.send({ type: 'teleport' });
    const errs = await waitFrames(c, (f) => f.type === 'error', 3);
    expect(errs[0]).toMatchObject({ type: 'error', reqId: 'r1', error: { code: 'validation_failed' } });
    expect(errs[1]).toMatchObject({ type: 'error', error: { code: 'validation_failed' } });
    expect(errs[1].reqId).toBeUndefined();
    c.send({ type: 'ping' });
    await c.next((f) => f.type === 'pong');
    expect(c.closed).toBeNull();
    c.close();
  });

  it('[G3][AF-R3] a frame flood closes 4429', async () => {
    const c = await WsClient.connect(s.wsUrl, alice.accessToken);
    for (let i = 0; i < 60; i++) c.send({ type: 'ping' });
    expect((await c.waitClose()).code).toBe(CLOSE_CODES.rateLimited);
    // A client within the rate is not affected.
    const calm = await WsClient.connect(s.wsUrl, alice.accessToken);
    for (let i = 0; i < 10; i++) {
      calm.send({ type: 'ping' });
      await sleep(60);
    }
    await waitFrames(calm, (f) => f.type === 'pong', 10);
    expect(calm.closed).toBeNull();
    calm.close();
    await calm.waitClose();
  });

  it('[G3][AF-R3] connections per user are limited (4429)', async () => {
    await waitFor(() => s.app.gateway.stats.connections === 0, 5_000, 'previous sockets to go');
    const open = [await WsClient.connect(s.wsUrl, bob.accessToken), await WsClient.connect(s.wsUrl, bob.accessToken), await WsClient.connect(s.wsUrl, bob.accessToken)];
    const extra = await WsClient.open(s.wsUrl);
    extra.send({ type: 'auth', token: bob.accessToken });
    expect((await extra.waitClose()).code).toBe(CLOSE_CODES.rateLimited);
    // Another user is unaffected, and closing one frees a slot.
    const other = await WsClient.connect(s.wsUrl, alice.accessToken);
    open[0]!.close();
    await open[0]!.waitClose();
    await waitFor(() => s.app.gateway.stats.connections === 3, 5_000, 'slot to free');
    const again = await WsClient.connect(s.wsUrl, bob.accessToken);
    for (const c of [...open, other, again]) c.close();
  });

  it('[G3][AF-R3][AF-R6] a client that stops reading is cut off (4508) instead of being buffered for', async () => {
    const conv = await conversation(s.url, alice, [bob]);
    const victim = await WsClient.connect(s.wsUrl, bob.accessToken);
    const raw = (victim.ws as any)._socket as Socket;
    raw.pause();
    const before = s.app.gateway.stats.slowConsumers;
    const text = 'x'.repeat(7_900);
    // Well past the kernel's socket buffers plus the 16 KiB limit.
    for (let batch = 0; batch < 40 && s.app.gateway.stats.slowConsumers === before; batch++) {
      await Promise.all(Array.from({ length: 25 }, () => sendRest(s.url, alice, conv, text)));
    }
    expect(s.app.gateway.stats.slowConsumers).toBe(before + 1);
    raw.resume();
    expect((await victim.waitClose()).code).toBe(CLOSE_CODES.slowConsumer);
  });

  it('[E3][G3] a replay far larger than the buffer limit is paced by the client, not cut off', async () => {
    const cuts = s.app.gateway.stats.slowConsumers;
    // Everything Bob can see, from the start: the megabytes of the previous test, through a 16 KiB limit.
    const r = await WsClient.connect(s.wsUrl, bob.accessToken, '0');
    const ready = r.frames.find((f) => f.type === 'ready');
    expect(ready.replayed).toBeGreaterThan(100);
    expect(r.events('message.created').length).toBeGreaterThan(100);
    expect(s.app.gateway.stats.slowConsumers).toBe(cuts);
    r.close();
  });
});

/** Waits until `n` frames matching `pred` have arrived; returns them in order. */
async function waitFrames(c: WsClient, pred: (f: any) => boolean, n: number, timeoutMs = 10_000): Promise<any[]> {
  await waitFor(() => c.frames.filter(pred).length >= n || c.closed !== null, timeoutMs, `${n} frames`);
  const got = c.frames.filter(pred);
  if (got.length < n) throw new Error(`socket closed (${c.closed?.code}) after ${got.length}/${n} frames`);
  return got;
}

describe('gateway: slow consumers on the fan-out path', () => {
  it('[G3][G7] in a group, a member who never reads is cut 4508 while a reading member gets every message in order', async () => {
    const s = await startApp({ WS_MAX_BUFFERED_BYTES: '16384' });
    try {
      const [alice, reader, victim] = await Promise.all([registerUser(s.url), registerUser(s.url), registerUser(s.url)]);
      const conv = await conversation(s.url, alice, [reader, victim]);
      const r = await WsClient.connect(s.wsUrl, reader.accessToken);
      const v = await WsClient.connect(s.wsUrl, victim.accessToken);
      const raw = (v.ws as any)._socket as Socket;
      raw.pause();
      const text = 'y'.repeat(7_900);
      let sent = 0;
      for (let batch = 0; batch < 40 && s.app.gateway.stats.slowConsumers === 0; batch++) {
        await Promise.all(Array.from({ length: 25 }, () => sendRest(s.url, alice, conv, text)));
        sent += 25;
      }
      expect(s.app.gateway.stats.slowConsumers).toBe(1);
      const got = await waitFrames(r, created(conv), sent, 20_000);
      expect(got.map((f) => f.event.message.seq)).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
      expect(r.closed).toBeNull();
      raw.resume();
      expect((await v.waitClose()).code).toBe(CLOSE_CODES.slowConsumer);
      r.close();
    } finally {
      await s.close();
    }
  });
});

describe('gateway: per-node limit', () => {
  it('[G3][AF-R3] connections beyond the node limit are closed 4429', async () => {
    const s = await startApp({ WS_MAX_CONNECTIONS_PER_NODE: '2' });
    try {
      const [x, y] = await Promise.all([registerUser(s.url), registerUser(s.url)]);
      const held = [await WsClient.connect(s.wsUrl, x.accessToken), await WsClient.connect(s.wsUrl, y.accessToken)];
      const third = await WsClient.open(s.wsUrl);
      expect((await third.waitClose()).code).toBe(CLOSE_CODES.rateLimited);
      held[0]!.close();
      await held[0]!.waitClose();
      await waitFor(() => s.app.gateway.stats.connections === 1, 5_000, 'a free slot');
      const again = await WsClient.connect(s.wsUrl, x.accessToken);
      again.close();
      held[1]!.close();
    } finally {
      await s.close();
    }
  });
});

describe('gateway: heartbeat', () => {
  let s: Running;
  let alice: TestUser;
  beforeAll(async () => {
    s = await startApp({ WS_HEARTBEAT_INTERVAL_MS: '200' });
    alice = await registerUser(s.url);
  });
  afterAll(async () => s?.close());

  it('[G4] a client that answers nothing is terminated; one that answers pings stays', async () => {
    const healthy = await WsClient.connect(s.wsUrl, alice.accessToken);
    const silent = await WsClient.connect(s.wsUrl, alice.accessToken);
    const raw = (silent.ws as any)._socket as Socket;
    raw.pause();
    const before = s.app.gateway.stats.heartbeatTimeouts;
    await waitFor(() => s.app.gateway.stats.heartbeatTimeouts > before, 3_000, 'heartbeat timeout');
    await sleep(600);
    expect(s.app.gateway.stats.connections).toBe(1);
    expect(healthy.closed).toBeNull();
    raw.resume();
    await silent.waitClose();
    healthy.close();
  });
});

describe('gateway: delivery and resume', () => {
  let s: Running;
  let alice: TestUser;
  let bob: TestUser;
  let carol: TestUser;
  let conv: string;
  beforeAll(async () => {
    s = await startApp({ WS_FRAMES_PER_SECOND: '10000', WS_FRAME_BURST: '10000' });
    [alice, bob, carol] = await Promise.all([registerUser(s.url), registerUser(s.url), registerUser(s.url)]);
    conv = await conversation(s.url, alice, [bob]);
  });
  afterAll(async () => s?.close());

  it('[G5] every connection of a user receives the event, built once as the same frame', async () => {
    const b1 = await WsClient.connect(s.wsUrl, bob.accessToken);
    const b2 = await WsClient.connect(s.wsUrl, bob.accessToken);
    const outsider = await WsClient.connect(s.wsUrl, carol.accessToken);
    const m = await sendRest(s.url, alice, conv, 'hello both');
    const [e1, e2] = await Promise.all([b1.next(created(conv)), b2.next(created(conv))]);
    expect(e1).toEqual(e2);
    expect(e1.event.message).toEqual(m);
    expect(ServerFrameValidator.Check(e1)).toBe(true);
    await sleep(200);
    expect(outsider.events()).toEqual([]);
    for (const c of [b1, b2, outsider]) c.close();
  });

  it('[G5][G7] events committed together reach a socket as one write of shared frames, complete and in order', async () => {
    const b1 = await WsClient.connect(s.wsUrl, bob.accessToken);
    const b2 = await WsClient.connect(s.wsUrl, bob.accessToken);
    const before = { ...s.app.gateway.stats };
    // Concurrent sends share a group commit, so their events are fanned out in one tick.
    const sent = await Promise.all(Array.from({ length: 40 }, (_, i) => sendRest(s.url, alice, conv, `burst ${i} ${'é'.repeat(i * 5)}`)));
    const [got1, got2] = await Promise.all([waitFrames(b1, created(conv), 40), waitFrames(b2, created(conv), 40)]);
    expect(got1).toEqual(got2);
    expect(got1.map((f) => f.event.message.seq)).toEqual(sent.map((m) => m.seq).sort((x, y) => x - y));
    for (const f of got1) expect(ServerFrameValidator.Check(f)).toBe(true);
    // Cursors strictly increase: no frame was written twice or out of order.
    const cursors = got1.map((f) => BigInt(f.cursor));
    for (let i = 1; i < cursors.length; i++) expect(cursors[i]! > cursors[i - 1]!).toBe(true);
    const frames = s.app.gateway.stats.framesWritten - before.framesWritten;
    const writes = s.app.gateway.stats.socketWrites - before.socketWrites;
    expect(frames).toBeGreaterThanOrEqual(80);
    expect(writes).toBeLessThan(frames);
    for (const c of [b1, b2]) c.close();
  });

  it('[M3][AF-R1] a send over the socket is acknowledged after commit and is then in history', async () => {
    const a = await WsClient.connect(s.wsUrl, alice.accessToken);
    a.send({ type: 'send', reqId: 'q1', conversationId: conv, clientMsgId: 'ws-1', content: { type: 'text', text: 'via ws' } });
    const ack = await a.next((f) => f.type === 'ack' && f.reqId === 'q1');
    expect(ServerFrameValidator.Check(ack)).toBe(true);
    const hist = await client(s.url)('GET', `/v1/conversations/${conv}/messages?afterSeq=${ack.message.seq - 1}`, { token: bob.accessToken });
    expect(hist.body.items[0]).toEqual(ack.message);
    // [M1] the retry returns the original.
    a.send({ type: 'send', reqId: 'q2', conversationId: conv, clientMsgId: 'ws-1', content: { type: 'text', text: 'via ws' } });
    expect((await a.next((f) => f.type === 'ack' && f.reqId === 'q2')).message).toEqual(ack.message);
    // [C3] a conversation the user is not in: error with the reqId, socket stays.
    const c = await WsClient.connect(s.wsUrl, carol.accessToken);
    c.send({ type: 'send', reqId: 'q3', conversationId: conv, clientMsgId: 'x', content: { type: 'text', text: 'intrude' } });
    expect(await c.next((f) => f.type === 'error')).toMatchObject({ reqId: 'q3', error: { code: 'not_found' } });
    a.close();
    c.close();
  });

  it('[AF-F1][M7] typing and [M5] read receipts over the socket reach the other member', async () => {
    const a = await WsClient.connect(s.wsUrl, alice.accessToken);
    const b = await WsClient.connect(s.wsUrl, bob.accessToken);
    a.send({ type: 'typing', conversationId: conv });
    const typing = await b.next((f) => f.type === 'event' && f.event.type === 'typing');
    expect(typing.event).toEqual({ type: 'typing', conversationId: conv, userId: alice.id });
    expect(typing.cursor).toBe(b.frames[0].cursor);
    const m = await sendRest(s.url, alice, conv, 'read me');
    await b.next(created(conv));
    b.send({ type: 'read', conversationId: conv, seq: m.seq });
    const read = await a.next((f) => f.type === 'event' && f.event.type === 'read' && f.event.userId === bob.id);
    expect(read.event.seq).toBe(m.seq);
    a.close();
    b.close();
  });

  it('[E3] disconnect in the middle of a burst of 200, resume with the cursor: every missed message once, in order, then live', async () => {
    const b = await WsClient.connect(s.wsUrl, bob.accessToken);
    const firstSeq = (await sendRest(s.url, alice, conv, 'before burst')).seq as number;
    await b.next((f) => created(conv)(f) && f.event.message.seq === firstSeq);
    const a = await WsClient.connect(s.wsUrl, alice.accessToken);
    const acks: any[] = [];
    const burst = (async () => {
      for (let i = 0; i < 200; i++) {
        a.send({ type: 'send', reqId: `b${i}`, conversationId: conv, clientMsgId: `burst-${uid(4)}-${i}`, content: { type: 'text', text: `m${i}` } });
        if (i % 20 === 19) acks.push(...(await waitFrames(a, (f) => f.type === 'ack', i + 1)).slice(acks.length));
      }
    })();
    await waitFor(() => b.events('message.created').length >= 40, 10_000, 'part of the burst');
    b.ws.terminate();
    await b.waitClose();
    const seen = b.events().filter((f) => f.event.type === 'message.created' && f.event.message.conversationId === conv);
    const cursor = b.frames.filter((f) => f.type === 'event').at(-1).cursor as string;
    await burst;
    expect(acks).toHaveLength(200);

    const r = await WsClient.connect(s.wsUrl, bob.accessToken, cursor);
    const ready = r.frames.find((f) => f.type === 'ready');
    const replayed = r.frames.slice(0, r.frames.indexOf(ready));
    expect(replayed.every((f) => f.type === 'event')).toBe(true);
    expect(ready.replayed).toBe(replayed.length);
    const live = await sendRest(s.url, alice, conv, 'after resume');
    await r.next((f) => created(conv)(f) && f.event.message.seq === live.seq);

    const all = [...seen, ...r.events('message.created')].map((f) => f.event.message.seq as number);
    const expected = Array.from({ length: live.seq - firstSeq + 1 }, (_, i) => firstSeq + i);
    expect(all).toEqual(expected);
    // Durable events' cursors strictly increase across the two connections (ephemeral ones repeat the current cursor).
    const durable = (f: any) => f.type === 'event' && f.event.type !== 'presence' && f.event.type !== 'typing';
    const cursors = [...b.frames, ...r.frames].filter(durable).map((f) => Number(f.cursor));
    expect(cursors).toEqual([...cursors].sort((x, y) => x - y));
    expect(new Set(cursors).size).toBe(cursors.length);
    a.close();
    r.close();
  });

  it('[E3] resume while events keep arriving: the replay/live hand-over has no gap and no duplicate', async () => {
    const b = await WsClient.connect(s.wsUrl, bob.accessToken);
    const start = (await sendRest(s.url, alice, conv, 'mark')).seq as number;
    await b.next((f) => created(conv)(f) && f.event.message.seq === start);
    const cursor = b.frames.filter((f) => f.type === 'event').at(-1).cursor as string;
    b.close();
    await b.waitClose();
    let stop = false;
    let last = start;
    const writer = (async () => {
      while (!stop) last = (await sendRest(s.url, alice, conv, 'flow')).seq as number;
    })();
    await sleep(150);
    const r = await WsClient.connect(s.wsUrl, bob.accessToken, cursor);
    await sleep(300);
    stop = true;
    await writer;
    await r.next((f) => created(conv)(f) && f.event.message.seq === last);
    const seqs = r.events('message.created').map((f) => f.event.message.seq as number);
    expect(seqs).toEqual(Array.from({ length: last - start }, (_, i) => start + 1 + i));
    r.close();
  });

  it('[G5][C3] a removed member gets member.removed and nothing of the conversation after it', async () => {
    const dave = await registerUser(s.url);
    const group = await conversation(s.url, alice, [bob, dave]);
    const d = await WsClient.connect(s.wsUrl, dave.accessToken);
    const b = await WsClient.connect(s.wsUrl, bob.accessToken);
    await sendRest(s.url, alice, group, 'before removal');
    await d.next(created(group));
    const del = await client(s.url)('DELETE', `/v1/conversations/${group}/members/${dave.id}`, { token: alice.accessToken });
    expect(del.status).toBeLessThan(300);
    await d.next((f) => f.type === 'event' && f.event.type === 'member.removed' && f.event.userId === dave.id);
    const after = await sendRest(s.url, alice, group, 'after removal');
    await b.next((f) => created(group)(f) && f.event.message.id === after.id);
    await sleep(100);
    const removedAt = d.frames.findIndex((f) => f.type === 'event' && f.event.type === 'member.removed');
    expect(d.frames.slice(removedAt + 1).filter((f) => f.type === 'event' && (f.event.conversationId === group || f.event.message?.conversationId === group))).toEqual([]);
    d.close();
    b.close();
  });

  it('[S3] logout closes that session’s sockets with 4409, and only those', async () => {
    const req = client(s.url);
    const login = await req('POST', '/v1/auth/login', { body: { login: carol.username, password: carol.password } });
    expect(login.status).toBe(200);
    const doomed = await WsClient.connect(s.wsUrl, carol.accessToken);
    const other = await WsClient.connect(s.wsUrl, login.body.accessToken);
    expect((await req('POST', '/v1/auth/logout', { token: carol.accessToken })).status).toBe(204);
    expect((await doomed.waitClose(2_000)).code).toBe(CLOSE_CODES.sessionRevoked);
    await sleep(100);
    expect(other.closed).toBeNull();
    // The revoked token cannot open a new socket either.
    const retry = await WsClient.open(s.wsUrl);
    retry.send({ type: 'auth', token: carol.accessToken });
    expect((await retry.waitClose()).code).toBe(CLOSE_CODES.unauthenticated);
    other.close();
  });
});

describe('gateway: retention floor', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s?.close());

  it('[E4] a cursor below the retained floor is refused with 4410; at the floor it resumes', async () => {
    const [alice, bob] = await Promise.all([registerUser(s.url), registerUser(s.url)]);
    const conv = await conversation(s.url, alice, [bob]);
    await sendRest(s.url, alice, conv, 'old');
    const b = await WsClient.connect(s.wsUrl, bob.accessToken, '0');
    const cursor = Number(b.frames.find((f) => f.type === 'ready').cursor);
    expect(cursor).toBeGreaterThan(1);
    b.close();
    await s.app.ctx.events.prune(Date.now() + 1_000);
    const floor = await s.app.ctx.events.floor();
    expect(floor).toBe(cursor);
    const stale = await WsClient.open(s.wsUrl);
    stale.send({ type: 'auth', token: bob.accessToken, cursor: String(floor - 1) });
    expect((await stale.waitClose()).code).toBe(CLOSE_CODES.cursorExpired);
    const ok = await WsClient.connect(s.wsUrl, bob.accessToken, String(floor));
    expect(ok.frames.find((f) => f.type === 'ready')).toMatchObject({ cursor: String(floor), replayed: 0 });
    ok.close();
  });
});

describe('gateway: graceful shutdown', () => {
  it('[G6][AF-R4] shutdown sends `reconnect`, closes 1012 and refuses new upgrades with 503', async () => {
    const s = await startApp();
    try {
      const alice = await registerUser(s.url);
      const c = await WsClient.connect(s.wsUrl, alice.accessToken);
      const down = s.app.gateway.shutdown(2_000);
      const closed = await c.waitClose();
      expect(closed.code).toBe(CLOSE_CODES.serviceRestart);
      const reconnect = c.frames.at(-1);
      expect(reconnect).toMatchObject({ type: 'reconnect' });
      expect(ServerFrameValidator.Check(reconnect)).toBe(true);
      await down;
      expect(s.app.gateway.stats.connections).toBe(0);
      expect(await upgradeStatus(s.wsUrl)).toBe(503);
    } finally {
      await s.close();
    }
  });
});
