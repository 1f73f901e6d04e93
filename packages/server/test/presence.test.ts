import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { MemoryPresenceStore, RedisPresenceStore, createPresenceService, type PresenceStore } from '../src/modules/presence/index.js';
import { WsClient, client, registerUser, startApp, uid, usingRedis, type Running, type TestUser } from './helpers.js';

const u = (n: number) => `0190${String(n).padStart(4, '0')}-0000-7000-8000-${uid(6)}`;

/** One contract, two engines: the in-memory and the Redis store must behave identically ([P2]). */
function storeContract(name: string, make: () => Promise<{ a: PresenceStore; b: PresenceStore; done: () => Promise<void> }>) {
  describe(`[P2] presence store contract: ${name}`, () => {
    let a: PresenceStore;
    let b: PresenceStore;
    let done: () => Promise<void>;
    beforeAll(async () => {
      ({ a, b, done } = await make());
    });
    afterAll(async () => done());

    it('online on the first connection, offline on the last', async () => {
      const user = u(1);
      const t = 1_000_000;
      expect(await a.add({ userId: user, connId: 'c1' }, t, t + 30_000)).toBe(true);
      expect(await b.add({ userId: user, connId: 'c2' }, t, t + 30_000)).toBe(false);
      expect((await a.counts([user], t)).get(user)).toBe(2);
      expect(await a.remove({ userId: user, connId: 'c1' }, t)).toBe(false);
      expect(await b.remove({ userId: user, connId: 'c2' }, t)).toBe(true);
      expect(await b.remove({ userId: user, connId: 'c2' }, t)).toBe(false);
      expect((await a.counts([user], t)).get(user)).toBe(0);
    });

    it('a lapsed connection is not counted and is swept exactly once', async () => {
      const user = u(2);
      const t = 2_000_000;
      await a.add({ userId: user, connId: 'c1' }, t, t + 100);
      await a.add({ userId: user, connId: 'c2' }, t, t + 100);
      expect((await b.counts([user], t + 50)).get(user)).toBe(2);
      expect((await b.counts([user], t + 150)).get(user)).toBe(0);
      const first = await b.sweep(t + 150);
      const second = await a.sweep(t + 150);
      const mine = [...first, ...second].filter((o) => o.userId === user);
      expect(mine).toHaveLength(1);
      expect(mine[0]!.expiredAt).toBe(t + 100);
      // The node comes back after a stall: its heartbeat brings the user online again, once.
      expect(await a.refresh([{ userId: user, connId: 'c1' }, { userId: user, connId: 'c2' }], t + 30_000)).toEqual([user]);
      expect(await a.remove({ userId: user, connId: 'c1' }, t + 200)).toBe(false);
      expect(await a.remove({ userId: user, connId: 'c2' }, t + 200)).toBe(true);
    });

    it('concurrent sweepers announce every offline exactly once', async () => {
      const t = 3_000_000;
      const users = Array.from({ length: 40 }, (_, i) => u(100 + i));
      for (const user of users) {
        await a.add({ userId: user, connId: 'x' }, t, t + 10);
        await b.add({ userId: user, connId: 'y' }, t, t + 10);
      }
      const results = await Promise.all([a.sweep(t + 20), b.sweep(t + 20), a.sweep(t + 20), b.sweep(t + 20)]);
      const off = results.flat().map((o) => o.userId).filter((id) => users.includes(id));
      expect(off.sort()).toEqual([...users].sort());
    });

    it('a removal after the sweep announced the user does not announce again', async () => {
      const user = u(3);
      const t = 4_000_000;
      await a.add({ userId: user, connId: 'c1' }, t, t + 10);
      expect((await b.sweep(t + 20)).map((o) => o.userId)).toContain(user);
      expect(await a.remove({ userId: user, connId: 'c1' }, t + 30)).toBe(false);
    });

    it('a new connection while only lapsed ones remain is not a new online (no offline was announced)', async () => {
      const user = u(4);
      const t = 5_000_000;
      await a.add({ userId: user, connId: 'dead' }, t, t + 10);
      expect(await b.add({ userId: user, connId: 'fresh' }, t + 20, t + 30_000)).toBe(false);
      expect((await a.counts([user], t + 20)).get(user)).toBe(1);
      // The lapsed entry was pruned by the add: only the live one remains, so its removal takes the user offline.
      expect(await a.remove({ userId: user, connId: 'fresh' }, t + 40)).toBe(true);
      expect((await a.sweep(t + 40)).map((o) => o.userId)).not.toContain(user);
    });
  });
}

storeContract('memory', () => {
  const s = new MemoryPresenceStore();
  return Promise.resolve({ a: s, b: s, done: () => Promise.resolve() });
});

if (usingRedis) {
  storeContract('redis', () => {
    const prefix = `sc-test:presence:${uid(4)}:`;
    // Two connections, as two nodes would have.
    const r1 = new Redis(process.env.REDIS_URL!);
    const r2 = new Redis(process.env.REDIS_URL!);
    return Promise.resolve({
      a: new RedisPresenceStore(r1, prefix),
      b: new RedisPresenceStore(r2, prefix),
      async done() {
        const keys = await r1.keys(`${prefix}*`);
        if (keys.length > 0) await r1.del(...keys);
        await Promise.all([r1.quit(), r2.quit()]);
      },
    });
  });
} else {
  describe.skip('[P2] presence store contract: redis (REDIS_URL unset)', () => {
    it('skipped', () => undefined);
  });
}

const APP_ENV = { AUTH_REGISTER_PER_IP_PER_HOUR: '100000', PRESENCE_TTL_MS: '900' };

async function directConversation(base: string, a: TestUser, b: TestUser): Promise<string> {
  const res = await client(base)('POST', '/v1/conversations', { token: a.accessToken, body: { type: 'direct', userId: b.id } });
  if (res.status !== 201 && res.status !== 200) throw new Error(`conversation: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.id as string;
}

const presenceOf = (userId: string, online: boolean) => (f: any) =>
  f.type === 'event' && f.event.type === 'presence' && f.event.userId === userId && f.event.online === online;

describe('presence over HTTP and WebSocket', () => {
  let s: Running;
  let alice: TestUser;
  let bob: TestUser;
  let carol: TestUser;
  beforeAll(async () => {
    s = await startApp(APP_ENV);
    [alice, bob, carol] = await Promise.all([registerUser(s.url), registerUser(s.url), registerUser(s.url)]);
    await directConversation(s.url, alice, bob);
  });
  afterAll(async () => s?.close());

  it('[AF-F1][P1] presence is visible only to users who share a conversation', async () => {
    const req = client(s.url);
    const bobWs = await WsClient.connect(s.wsUrl, bob.accessToken);
    const aliceWs = await WsClient.connect(s.wsUrl, alice.accessToken);
    await bobWs.next(presenceOf(alice.id, true));

    const seen = await req('GET', `/v1/presence?userIds=${alice.id},${carol.id}`, { token: bob.accessToken });
    expect(seen.status).toBe(200);
    expect(seen.body.items).toEqual([{ userId: alice.id, online: true, lastSeenAt: expect.any(String) }]);

    const stranger = await req('GET', `/v1/presence?userIds=${alice.id},${bob.id}`, { token: carol.accessToken });
    expect(stranger.status).toBe(200);
    expect(stranger.body.items).toEqual([]);
    const carolWs = await WsClient.connect(s.wsUrl, carol.accessToken);

    aliceWs.close();
    const off = await bobWs.next(presenceOf(alice.id, false));
    expect(Date.parse(off.event.lastSeenAt)).toBeGreaterThan(Date.now() - 10_000);
    const after = await req('GET', `/v1/presence?userIds=${alice.id}`, { token: bob.accessToken });
    expect(after.body.items).toEqual([{ userId: alice.id, online: false, lastSeenAt: off.event.lastSeenAt }]);
    // Carol, who shares nothing with Alice, was never told.
    await new Promise((r) => setTimeout(r, 200));
    expect(carolWs.events('presence').filter((f) => f.event.userId === alice.id)).toEqual([]);
    bobWs.close();
    carolWs.close();
  });

  it('[P1] the query is bounded and validated', async () => {
    const req = client(s.url);
    expect((await req('GET', '/v1/presence?userIds=', { token: bob.accessToken })).status).toBe(400);
    expect((await req('GET', '/v1/presence?userIds=not-a-uuid!', { token: bob.accessToken })).status).toBe(400);
    const many = Array.from({ length: 101 }, () => alice.id).join(',');
    expect((await req('GET', `/v1/presence?userIds=${many}`, { token: bob.accessToken })).status).toBe(400);
    expect((await req('GET', `/v1/presence?userIds=${alice.id}`)).status).toBe(401);
  });

  it('[P2] a dead node (memory store, driven clock): its users go offline after the TTL, announced once', async () => {
    let now = Date.now();
    const store = new MemoryPresenceStore();
    const dead = createPresenceService(s.app.ctx, s.app.services, { store, clock: () => now, ttlMs: 5_000 });
    const sweeper = createPresenceService(s.app.ctx, s.app.services, { store, clock: () => now, ttlMs: 5_000 });
    const bobWs = await WsClient.connect(s.wsUrl, bob.accessToken);
    await dead.connected(alice.id, 'conn-on-dead-node');
    await bobWs.next(presenceOf(alice.id, true));
    expect(await sweeper.get({ userId: bob.id, sessionId: 'x', deviceId: null }, [alice.id])).toMatchObject([{ online: true }]);

    now += 4_000;
    await sweeper.tick();
    expect(await sweeper.get({ userId: bob.id, sessionId: 'x', deviceId: null }, [alice.id])).toMatchObject([{ online: true }]);
    now += 2_000;
    await sweeper.tick();
    await sweeper.tick();
    const off = await bobWs.next(presenceOf(alice.id, false));
    // Last seen is when the dead node last vouched for the connection, not when the sweep ran.
    expect(Date.parse(off.event.lastSeenAt)).toBeLessThanOrEqual(now - 5_000);
    expect(await sweeper.get({ userId: bob.id, sessionId: 'x', deviceId: null }, [alice.id])).toMatchObject([{ online: false }]);
    await new Promise((r) => setTimeout(r, 100));
    expect(bobWs.events('presence').filter(presenceOf(alice.id, false))).toHaveLength(1);
    bobWs.close();
  });

  it.skipIf(!usingRedis)('[P2] a dead node (Redis store, heartbeat stopped): another node sweeps its users offline within the TTL', async () => {
    // A second "node" on the same Redis that registers a connection and then never beats again.
    const dead = createPresenceService(s.app.ctx, s.app.services, { ttlMs: 900 });
    const req = client(s.url);
    const bobWs = await WsClient.connect(s.wsUrl, bob.accessToken);
    await dead.connected(alice.id, `conn-${uid(4)}`);
    await bobWs.next(presenceOf(alice.id, true));
    expect((await req('GET', `/v1/presence?userIds=${alice.id}`, { token: bob.accessToken })).body.items[0].online).toBe(true);
    const started = Date.now();
    await bobWs.next(presenceOf(alice.id, false), 5_000);
    // TTL 900 ms + one sweep period (300 ms) + slack.
    expect(Date.now() - started).toBeLessThan(2_500);
    expect((await req('GET', `/v1/presence?userIds=${alice.id}`, { token: bob.accessToken })).body.items[0].online).toBe(false);
    bobWs.close();
  });
});
