/**
 * The key directory ([K1]–[K6]): devices bound to sessions, verified key
 * packages, atomic claims (also across nodes on PostgreSQL), the low-stock
 * event addressed to one device, and revocation.
 */
import { randomBytes } from 'node:crypto';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLOSE_CODES, E2EE_LIMITS } from '@secureconnect/protocol';
import { makeKeyPackageRef } from 'ts-mls/keyPackage.js';
import { inspectKeyPackage } from '../src/infra/mls/keypackage.js';
import { WsClient, client, freshDeployment, registerUser, startApp, usingPostgres, type Running, type TestUser } from './helpers.js';
import {
  b64, lifetimeDays, makeDeviceKeys, makeKeyPackages, registerDevice, registerDeviceWithPackages, signBindChallenge, testSuiteImpl, unb64,
  type Http,
} from './mls-helpers.js';

const DAY = 86_400;
const LOGIN_LIMITS = { AUTH_LOGIN_FAILURES_PER_ACCOUNT: '1000', AUTH_LOGIN_FAILURES_PER_IP: '100000' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A second session of an existing user (a new login), with its session id. */
async function login(http: Http, u: TestUser): Promise<{ token: string; sessionId: string }> {
  const res = await http('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
  expect(res.status).toBe(200);
  return { token: res.body.accessToken, sessionId: (decodeJwt(res.body.accessToken) as { sid: string }).sid };
}

async function direct(http: Http, a: TestUser, b: TestUser): Promise<string> {
  const res = await http('POST', '/v1/conversations', { token: a.accessToken, body: { type: 'direct', userId: b.id } });
  expect([200, 201]).toContain(res.status);
  return res.body.id;
}

const flipLastByte = (s: string) => {
  const bytes = unb64(s);
  bytes[bytes.length - 1]! ^= 0x01;
  return b64(bytes);
};

describe('key directory', () => {
  let s: Running;
  let http: Http;
  const ws = (token: string) => WsClient.connect(s.wsUrl, token);
  beforeAll(async () => {
    // Tests open many sessions of one account in parallel; every login attempt counts against these budgets.
    s = await startApp(LOGIN_LIMITS);
    http = client(s.url);
  });
  afterAll(async () => s.close());

  describe('[K1] devices', () => {
    it('[K1] registering a device returns it, binds the calling session (ready carries the device) and a second registration on that session is a conflict', async () => {
      const a = await registerUser(s.url);
      expect((await http('GET', '/v1/key-packages', { token: a.accessToken })).body.error.code).toBe('device_required');
      const dev = await registerDevice(http, a.accessToken, 'laptop');
      expect(dev.device).toMatchObject({ id: dev.deviceId, userId: a.id, name: 'laptop', signatureKey: dev.keys.publicKeyB64 });
      // Bound at once: the same token now speaks for the device.
      const status = await http('GET', '/v1/key-packages', { token: a.accessToken });
      expect(status.status).toBe(200);
      expect(status.body).toEqual({ deviceId: dev.deviceId, stock: [] });
      const ws = await WsClient.connect(s.wsUrl, a.accessToken);
      expect(ws.frames.find((f) => f.type === 'ready').deviceId).toBe(dev.deviceId);
      ws.close();
      const again = await http('POST', '/v1/devices', { token: a.accessToken, body: { name: 'again', signatureKey: (await makeDeviceKeys()).publicKeyB64 } });
      expect(again.status).toBe(409);
      expect(again.body.error.code).toBe('conflict');
    });

    it('[K1] the signature key must be 32 bytes and not registered before', async () => {
      const a = await registerUser(s.url);
      const b = await registerUser(s.url);
      const short = await http('POST', '/v1/devices', { token: a.accessToken, body: { name: 'x', signatureKey: b64(randomBytes(31)) } });
      expect(short.status).toBe(400);
      const long = await http('POST', '/v1/devices', { token: a.accessToken, body: { name: 'x', signatureKey: b64(randomBytes(33)) } });
      expect(long.status).toBe(400);
      const dev = await registerDevice(http, a.accessToken);
      const taken = await http('POST', '/v1/devices', { token: b.accessToken, body: { name: 'copy', signatureKey: dev.keys.publicKeyB64 } });
      expect(taken.status).toBe(409);
      expect(taken.body.error.code).toBe('conflict');
    });

    it('[K1] a user has at most E2EE_LIMITS.devicesPerUser active devices, also when registrations race', async () => {
      const a = await registerUser(s.url);
      const sessions = await Promise.all(Array.from({ length: E2EE_LIMITS.devicesPerUser + 3 }, () => login(http, a)));
      const results = await Promise.all(
        sessions.map(async (x) => http('POST', '/v1/devices', { token: x.token, body: { name: 'd', signatureKey: (await makeDeviceKeys()).publicKeyB64 } })),
      );
      expect(results.filter((r) => r.status === 201)).toHaveLength(E2EE_LIMITS.devicesPerUser);
      const refused = results.filter((r) => r.status !== 201);
      expect(refused.map((r) => [r.status, r.body.error.code])).toEqual(refused.map(() => [409, 'device_limit']));
      expect((await http('GET', `/v1/users/${a.id}/devices`, { token: a.accessToken })).body.items).toHaveLength(E2EE_LIMITS.devicesPerUser);
      // A session whose registration was refused is still free to bind to a device.
      const free = sessions[results.findIndex((r) => r.status !== 201)]!;
      expect((await http('GET', '/v1/key-packages', { token: free.token })).body.error.code).toBe('device_required');
    });

    it('[K1] device.added reaches the owner and everyone who shares a conversation with them, and nobody else', async () => {
      const a = await registerUser(s.url);
      const peer = await registerUser(s.url);
      const stranger = await registerUser(s.url);
      await direct(http, a, peer);
      const [wsOwner, wsPeer, wsStranger] = await Promise.all([ws(a.accessToken), ws(peer.accessToken), ws(stranger.accessToken)]);
      const other = await login(http, a);
      const dev = await registerDevice(http, other.token, 'phone');
      for (const ws of [wsOwner, wsPeer]) {
        const f = await ws.next((x) => x.type === 'event' && x.event.type === 'device.added');
        expect(f.event.device).toEqual(dev.device);
      }
      // A later event for everyone proves the stranger's socket was live and skipped it.
      await direct(http, stranger, a);
      await wsStranger.next((x) => x.type === 'event' && x.event.type === 'conversation.updated');
      expect(wsStranger.events('device.added')).toEqual([]);
      for (const ws of [wsOwner, wsPeer, wsStranger]) ws.close();
    });

    it('[K1] binding a session to an existing device needs an Ed25519 signature over bindChallenge(sessionId) by the device key', async () => {
      const a = await registerUser(s.url);
      const b = await registerUser(s.url);
      const dev = await registerDevice(http, a.accessToken);
      const first = decodeJwt(a.accessToken) as { sid: string };
      const second = await login(http, a);
      const bind = (token: string, deviceId: string, signature: string) => http('POST', `/v1/devices/${deviceId}/bind`, { token, body: { signature } });

      const good = await signBindChallenge(dev.keys, second.sessionId);
      const flipped = await bind(second.token, dev.deviceId, flipLastByte(good));
      expect([flipped.status, flipped.body.error.code]).toEqual([403, 'forbidden']);
      // A proof made for another session does not transfer.
      const replayed = await bind(second.token, dev.deviceId, await signBindChallenge(dev.keys, first.sid));
      expect(replayed.status).toBe(403);
      const wrongKey = await bind(second.token, dev.deviceId, await signBindChallenge(await makeDeviceKeys(), second.sessionId));
      expect(wrongKey.status).toBe(403);
      expect((await http('GET', '/v1/key-packages', { token: second.token })).body.error.code).toBe('device_required');

      const ok = await bind(second.token, dev.deviceId, good);
      expect(ok.status).toBe(200);
      expect(ok.body.id).toBe(dev.deviceId);
      // Visible at once on this node, and the session can act for the device.
      const [kp] = await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1);
      expect((await http('POST', '/v1/key-packages', { token: second.token, body: { keyPackages: [kp!.b64] } })).status).toBe(200);
      expect((await bind(second.token, dev.deviceId, good)).status).toBe(200); // idempotent

      // Someone else's device is not found; a session bound to one device cannot move to another.
      const bSession = decodeJwt(b.accessToken) as { sid: string };
      expect((await bind(b.accessToken, dev.deviceId, await signBindChallenge(dev.keys, bSession.sid))).status).toBe(404);
      const third = await login(http, a);
      const dev2 = await registerDevice(http, third.token);
      const moved = await bind(second.token, dev2.deviceId, await signBindChallenge(dev2.keys, second.sessionId));
      expect([moved.status, moved.body.error.code]).toEqual([409, 'conflict']);
    });

    it('[K1] device.added goes to every peer: the event log appends any number of entries in one transaction, in order', async () => {
      const u = await registerUser(s.url);
      const n = 2_500;
      const ids = await s.app.ctx.database.db.transaction().execute((trx) =>
        s.app.ctx.events.append(trx, Array.from({ length: n }, (_, i) => ({ conversationId: null, userId: u.id, event: { type: 'device.revoked' as const, userId: u.id, deviceId: `d-${i}` } }))),
      );
      expect(ids).toHaveLength(n);
      expect(ids.every((id, i) => i === 0 || id > ids[i - 1]!)).toBe(true);
      const stored = await s.app.ctx.events.readForUser(u.id, null, ids[0]! - 1, n);
      expect(stored.map((e) => e.event.type === 'device.revoked' && e.event.deviceId)).toEqual(Array.from({ length: n }, (_, i) => `d-${i}`));
    });

    it('[K1] a socket whose session gets its device after connecting receives that device\'s events from then on', async () => {
      const c = await registerUser(s.url);
      const ws = await WsClient.connect(s.wsUrl, c.accessToken);
      expect(ws.frames.find((f) => f.type === 'ready').deviceId).toBeNull();
      const dev = await registerDeviceWithPackages(http, c.accessToken, 2);
      const other = await login(http, c);
      const claim = await http('POST', '/v1/key-packages/claim', { token: other.token, body: { userIds: [c.id], cipherSuite: 1 } });
      expect(claim.body.keyPackages).toHaveLength(1);
      const low = await ws.next((f) => f.type === 'event' && f.event.type === 'key_packages.low');
      expect(low.event).toEqual({ type: 'key_packages.low', deviceId: dev.deviceId, cipherSuite: 1, available: 1 });
      ws.close();
    });
  });

  describe('[K6] device list', () => {
    it('[K6] any signed-in user lists any user\'s active devices with their keys; unknown users are 404', async () => {
      const a = await registerUser(s.url);
      const stranger = await registerUser(s.url);
      const d1 = await registerDevice(http, a.accessToken, 'one');
      const d2 = await registerDevice(http, (await login(http, a)).token, 'two');
      const res = await http('GET', `/v1/users/${a.id}/devices`, { token: stranger.accessToken });
      expect(res.status).toBe(200);
      expect(res.body.items).toEqual([d1.device, d2.device]);
      expect((await http('DELETE', `/v1/devices/${d1.deviceId}`, { token: a.accessToken })).status).toBe(204);
      expect((await http('GET', `/v1/users/${a.id}/devices`, { token: stranger.accessToken })).body.items.map((d: any) => d.id)).toEqual([d2.deviceId]);
      const unknown = await http('GET', `/v1/users/${'0'.repeat(8)}-0000-7000-8000-${'0'.repeat(12)}/devices`, { token: stranger.accessToken });
      expect([unknown.status, unknown.body.error.code]).toEqual([404, 'not_found']);
      expect((await http('GET', `/v1/users/${a.id}/devices`)).status).toBe(401);
    });
  });

  describe('[K2] key package upload', () => {
    it('[K2] inspectKeyPackage accepts a valid package of suite 1 and 84 and reports suite, identity, key, ref and expiry', async () => {
      for (const suite of [1, 84]) {
        const keys = await makeDeviceKeys(suite);
        const userId = '01900000-0000-7000-8000-000000000001';
        const deviceId = '01900000-0000-7000-8000-000000000002';
        const lifetime = lifetimeDays(30);
        const [kp] = await makeKeyPackages(keys, userId, deviceId, 1, { lifetime });
        const r = await inspectKeyPackage(unb64(kp!.b64), Date.now());
        if (!r.ok) throw new Error(`refused: ${r.reason}`);
        expect(r.cipherSuite).toBe(suite);
        expect(r.identity).toEqual({ userId, deviceId });
        expect(r.signatureKey).toBe(keys.publicKeyB64);
        expect(r.notAfter).toBe(Number(lifetime.notAfter) * 1000);
        expect(r.ref).toBe(b64(await makeKeyPackageRef(kp!.publicPackage, (await testSuiteImpl(suite)).hash)));
      }
    });

    it('[K2] a session without a device cannot upload (403 device_required)', async () => {
      const a = await registerUser(s.url);
      const keys = await makeDeviceKeys();
      const [kp] = await makeKeyPackages(keys, a.id, '01900000-0000-7000-8000-000000000002', 1);
      const res = await http('POST', '/v1/key-packages', { token: a.accessToken, body: { keyPackages: [kp!.b64] } });
      expect([res.status, res.body.error.code]).toEqual([403, 'device_required']);
    });

    it('[K2] every refusal is 400 invalid_key_package with {index, reason}, and a batch with one bad package stores nothing', async () => {
      const a = await registerUser(s.url);
      const b = await registerUser(s.url);
      const dev = await registerDevice(http, a.accessToken);
      const dev2 = await registerDevice(http, (await login(http, a)).token);
      const [good] = await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1);
      const now = BigInt(Math.floor(Date.now() / 1000));
      const suite3 = await makeDeviceKeys(3);
      const cases: [string, string, string][] = [
        ['signature flipped', flipLastByte(good!.b64), 'signature'],
        ['another user\'s identity', (await makeKeyPackages(dev.keys, b.id, dev.deviceId, 1))[0]!.b64, 'not_this_device'],
        ['another device\'s identity', (await makeKeyPackages(dev.keys, a.id, dev2.deviceId, 1))[0]!.b64, 'not_this_device'],
        ['an identity that is not ours', (await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1, { identity: new TextEncoder().encode('alice@example') }))[0]!.b64, 'identity'],
        ['another device\'s signature key', (await makeKeyPackages(dev2.keys, a.id, dev.deviceId, 1))[0]!.b64, 'signature_key'],
        ['expired', (await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1, { lifetime: { notBefore: now - 2n * BigInt(DAY), notAfter: now - BigInt(DAY) } }))[0]!.b64, 'lifetime'],
        ['not yet valid', (await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1, { lifetime: { notBefore: now + 3600n, notAfter: now + 30n * BigInt(DAY) } }))[0]!.b64, 'lifetime'],
        ['longer than 90 days', (await makeKeyPackages(dev.keys, a.id, dev.deviceId, 1, { lifetime: lifetimeDays(91) }))[0]!.b64, 'lifetime'],
        ['cipher suite 3', (await makeKeyPackages(suite3, a.id, dev.deviceId, 1))[0]!.b64, 'cipher_suite'],
        ['garbage', b64(randomBytes(200)), 'malformed'],
        ['trailing bytes', b64(new Uint8Array([...unb64(good!.b64), 0])), 'trailing_bytes'],
      ];
      for (const [what, kp, reason] of cases) {
        const res = await http('POST', '/v1/key-packages', { token: a.accessToken, body: { keyPackages: [good!.b64, kp] } });
        expect([what, res.status, res.body.error?.code, res.body.error?.details]).toEqual([what, 400, 'invalid_key_package', { index: 1, reason }]);
      }
      const lr = await http('POST', '/v1/key-packages', { token: a.accessToken, body: { keyPackages: [good!.b64], lastResort: cases[0]![1] } });
      expect(lr.body.error.details).toEqual({ index: 'lastResort', reason: 'signature' });
      // Nothing from any refused batch was stored.
      expect((await http('GET', '/v1/key-packages', { token: a.accessToken })).body.stock).toEqual([]);
      expect((await http('POST', '/v1/key-packages', { token: a.accessToken, body: { keyPackages: [good!.b64] } })).body.stock).toEqual([{ cipherSuite: 1, available: 1, lastResort: false }]);
    });

    it('[K2] uploads are idempotent per package, the last-resort package is replaced per suite, and a device holds at most E2EE_LIMITS.keyPackagesPerDevice', async () => {
      const a = await registerUser(s.url);
      const dev = await registerDevice(http, a.accessToken);
      const max = E2EE_LIMITS.keyPackagesPerDevice;
      const batch = E2EE_LIMITS.keyPackagesPerUpload;
      const packages = await makeKeyPackages(dev.keys, a.id, dev.deviceId, max + 3);
      const upload = (body: unknown) => http('POST', '/v1/key-packages', { token: a.accessToken, body });
      for (let i = 0; i < max - 1; i += batch) expect((await upload({ keyPackages: packages.slice(i, Math.min(i + batch, max - 1)).map((p) => p.b64) })).status).toBe(200);
      // A retried package is not counted twice.
      expect((await upload({ keyPackages: [packages[0]!.b64] })).body.stock).toEqual([{ cipherSuite: 1, available: max - 1, lastResort: false }]);
      const over = await upload({ keyPackages: [packages[max - 1]!.b64, packages[max]!.b64] });
      expect([over.status, over.body.error.code]).toEqual([409, 'conflict']);
      expect((await upload({ keyPackages: [packages[max - 1]!.b64], lastResort: packages[max + 1]!.b64 })).body.stock).toEqual([{ cipherSuite: 1, available: max, lastResort: true }]);
      expect((await upload({ keyPackages: [], lastResort: packages[max + 2]!.b64 })).body.stock).toEqual([{ cipherSuite: 1, available: max, lastResort: true }]);
      // The replaced last-resort package is gone: a claim that empties nothing hands out the newest one.
      const rows = await s.app.ctx.database.db.selectFrom('key_packages').select(['data']).where('device_id', '=', dev.deviceId).where('last_resort', '=', 1).execute();
      expect(rows.map((r) => r.data)).toEqual([packages[max + 2]!.b64]);
    });

    it('[K2] an X-Wing (suite 84) device uploads and is claimed by suite', async () => {
      const a = await registerUser(s.url);
      const dev = await registerDeviceWithPackages(http, a.accessToken, 2, { suite: 84 });
      const other = await login(http, a);
      const claim84 = await http('POST', '/v1/key-packages/claim', { token: other.token, body: { userIds: [a.id], cipherSuite: 84 } });
      // One of the device's packages (packages of one upload share a timestamp, so which one is not specified).
      expect(claim84.body.keyPackages).toHaveLength(1);
      expect(dev.packages.map((p) => p.b64)).toContain(claim84.body.keyPackages[0].keyPackage);
      const claim1 = await http('POST', '/v1/key-packages/claim', { token: other.token, body: { userIds: [a.id], cipherSuite: 1 } });
      expect(claim1.body).toEqual({ keyPackages: [], missing: [{ userId: a.id, deviceId: dev.deviceId }] });
    });
  });

  describe('[K3] claim', () => {
    it('[K3] one package per active device, never the same one twice under many concurrent claims; then the last-resort package', async () => {
      const alice = await registerUser(s.url);
      const bob = await registerUser(s.url);
      await direct(http, alice, bob);
      const stock = 30;
      const dev = await registerDeviceWithPackages(http, bob.accessToken, stock, { lastResort: true });
      const lastResort = dev.packages[stock]!.b64;
      const claims = await Promise.all(
        Array.from({ length: stock + 10 }, () => http('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: [bob.id], cipherSuite: 1 } })),
      );
      expect(claims.every((c) => c.status === 200)).toBe(true);
      const handed = claims.map((c) => { expect(c.body.keyPackages).toHaveLength(1); return c.body.keyPackages[0]; });
      const fresh = handed.filter((k) => !k.lastResort).map((k) => k.keyPackage);
      expect(fresh).toHaveLength(stock);
      expect(new Set(fresh).size).toBe(stock);
      expect(new Set(fresh)).toEqual(new Set(dev.packages.slice(0, stock).map((p) => p.b64)));
      expect(handed.filter((k) => k.lastResort).map((k) => k.keyPackage)).toEqual(Array(10).fill(lastResort));
      expect(handed.every((k) => k.userId === bob.id && k.deviceId === dev.deviceId)).toBe(true);
      expect((await http('GET', '/v1/key-packages', { token: bob.accessToken })).body.stock).toEqual([{ cipherSuite: 1, available: 0, lastResort: true }]);
    });

    it('[K3] devices with nothing are listed as missing, expired packages are not handed out, and the requesting device is skipped', async () => {
      const alice = await registerUser(s.url);
      const bob = await registerUser(s.url);
      await direct(http, alice, bob);
      const aliceDev = await registerDeviceWithPackages(http, alice.accessToken, 1);
      const aliceOther = await registerDeviceWithPackages(http, (await login(http, alice)).token, 1);
      const bobDev = await registerDevice(http, bob.accessToken);
      // Expire Bob's only package in place (uploads refuse expired ones).
      const [kp] = await makeKeyPackages(bobDev.keys, bob.id, bobDev.deviceId, 1);
      expect((await http('POST', '/v1/key-packages', { token: bob.accessToken, body: { keyPackages: [kp!.b64] } })).status).toBe(200);
      await s.app.ctx.database.db.updateTable('key_packages').set({ expires_at: Date.now() - 1 }).where('device_id', '=', bobDev.deviceId).execute();
      const res = await http('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: [alice.id, bob.id], cipherSuite: 1 } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({
        keyPackages: [{ userId: alice.id, deviceId: aliceOther.deviceId, keyPackage: aliceOther.packages[0]!.b64, lastResort: false }],
        missing: [{ userId: bob.id, deviceId: bobDev.deviceId }],
      });
      expect(res.body.keyPackages.some((k: any) => k.deviceId === aliceDev.deviceId)).toBe(false);
    });

    it('[K3] only the caller and users who share a conversation with the caller can be claimed; others are 404', async () => {
      const alice = await registerUser(s.url);
      const stranger = await registerUser(s.url);
      await registerDeviceWithPackages(http, stranger.accessToken, 2);
      const res = await http('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: [alice.id, stranger.id], cipherSuite: 1 } });
      expect([res.status, res.body.error.code]).toEqual([404, 'not_found']);
      const unknown = await http('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: ['01900000-0000-7000-8000-0000000000ff'], cipherSuite: 1 } });
      expect(unknown.body.error.code).toBe('not_found');
      // Nothing was consumed by the refused claim.
      expect((await http('GET', '/v1/key-packages', { token: stranger.accessToken })).body.stock).toEqual([{ cipherSuite: 1, available: 2, lastResort: false }]);
    });

    it('[K3] claims are rate limited per caller', async () => {
      const a = await registerUser(s.url);
      const { CLAIMS_PER_MINUTE } = await import('../src/modules/devices/index.js');
      const statuses: number[] = [];
      for (let i = 0; i <= CLAIMS_PER_MINUTE; i++) statuses.push((await http('POST', '/v1/key-packages/claim', { token: a.accessToken, body: { userIds: [a.id], cipherSuite: 1 } })).status);
      expect(statuses.slice(0, CLAIMS_PER_MINUTE).every((x) => x === 200)).toBe(true);
      expect(statuses[CLAIMS_PER_MINUTE]).toBe(429);
    });
  });

  describe('[K4] low stock', () => {
    it('[K4] a claim leaving a device below the low-water mark tells that device only (live and on resume)', async () => {
      const alice = await registerUser(s.url);
      const bob = await registerUser(s.url);
      const conv = await direct(http, alice, bob);
      const low = E2EE_LIMITS.keyPackagesLowWater;
      const d1 = await registerDeviceWithPackages(http, bob.accessToken, low);
      const s2 = await login(http, bob);
      const d2 = await registerDeviceWithPackages(http, s2.token, low + 5);
      const s3 = await login(http, bob); // no device
      const [ws1, ws2, ws3] = await Promise.all([ws(bob.accessToken), ws(s2.token), ws(s3.token)]);
      expect(ws1.frames.find((f) => f.type === 'ready').deviceId).toBe(d1.deviceId);
      expect(ws2.frames.find((f) => f.type === 'ready').deviceId).toBe(d2.deviceId);

      const claim = await http('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: [bob.id], cipherSuite: 1 } });
      expect(claim.body.keyPackages).toHaveLength(2);
      const got = await ws1.next((f) => f.type === 'event' && f.event.type === 'key_packages.low');
      expect(got.event).toEqual({ type: 'key_packages.low', deviceId: d1.deviceId, cipherSuite: 1, available: low - 1 });
      // A message after it reaches every socket; by then the others would have had the warning.
      const sent = await http('POST', `/v1/conversations/${conv}/messages`, { token: alice.accessToken, body: { clientMsgId: 'after-low', content: { type: 'text', text: 'hi' } } });
      expect(sent.status).toBe(201);
      for (const ws of [ws1, ws2, ws3]) await ws.next((f) => f.type === 'event' && f.event.type === 'message.created');
      expect(ws2.events('key_packages.low')).toEqual([]);
      expect(ws3.events('key_packages.low')).toEqual([]);
      expect(ws1.events('key_packages.low')).toHaveLength(1);
      for (const ws of [ws1, ws2, ws3]) ws.close();

      // Resume from the start: only device 1's sessions replay it.
      const replay = async (token: string) => {
        const ws = await WsClient.connect(s.wsUrl, token, '0');
        const types = ws.events().map((f) => f.event.type);
        ws.close();
        return types;
      };
      expect(await replay(bob.accessToken)).toContain('key_packages.low');
      expect(await replay(s2.token)).not.toContain('key_packages.low');
      expect(await replay(s3.token)).not.toContain('key_packages.low');
      expect(await replay(s2.token)).toContain('message.created');
    });
  });

  describe('[K5] revocation', () => {
    it('[K5] revoking a device ends its sessions (socket closes, REST 401), deletes its packages, tells peers, and is idempotent', async () => {
      const alice = await registerUser(s.url);
      const bob = await registerUser(s.url);
      await direct(http, alice, bob);
      const dev = await registerDeviceWithPackages(http, alice.accessToken, 3, { lastResort: true });
      const bound = await login(http, alice);
      expect((await http('POST', `/v1/devices/${dev.deviceId}/bind`, { token: bound.token, body: { signature: await signBindChallenge(dev.keys, bound.sessionId) } })).status).toBe(200);
      const other = await login(http, alice);
      const [wsDevice, wsBound, wsBob, wsOther] = await Promise.all([ws(alice.accessToken), ws(bound.token), ws(bob.accessToken), ws(other.token)]);
      const hooked: unknown[] = [];
      s.app.services.devices.onRevoke(async (trx, d) => {
        if (d.deviceId !== dev.deviceId) return;
        // Runs inside the revoking transaction: the device is already marked there.
        const row = await trx.selectFrom('devices').select('revoked_at').where('id', '=', d.deviceId).executeTakeFirstOrThrow();
        hooked.push({ ...d, revoked: row.revoked_at !== null });
      });

      expect((await http('DELETE', `/v1/devices/${dev.deviceId}`, { token: bob.accessToken })).status).toBe(404);
      expect((await http('DELETE', `/v1/devices/${dev.deviceId}`, { token: other.token })).status).toBe(204);
      expect(hooked).toEqual([{ userId: alice.id, deviceId: dev.deviceId, revoked: true }]);
      for (const ws of [wsDevice, wsBound]) expect((await ws.waitClose()).code).toBe(CLOSE_CODES.sessionRevoked);
      for (const t of [alice.accessToken, bound.token]) expect((await http('GET', '/v1/auth/sessions', { token: t })).status).toBe(401);
      // The session that revoked (bound to no device) lives on.
      expect((await http('GET', '/v1/auth/sessions', { token: other.token })).status).toBe(200);
      const ev = await wsBob.next((f) => f.type === 'event' && f.event.type === 'device.revoked');
      expect(ev.event).toEqual({ type: 'device.revoked', userId: alice.id, deviceId: dev.deviceId });
      await wsOther.next((f) => f.type === 'event' && f.event.type === 'device.revoked');
      const left = await s.app.ctx.database.db.selectFrom('key_packages').select('ref').where('device_id', '=', dev.deviceId).execute();
      expect(left).toEqual([]);
      const claim = await http('POST', '/v1/key-packages/claim', { token: bob.accessToken, body: { userIds: [alice.id], cipherSuite: 1 } });
      expect(claim.body).toEqual({ keyPackages: [], missing: [] });
      // A revoked device cannot be bound again, and a repeat revoke changes nothing.
      const again = await login(http, alice);
      expect((await http('POST', `/v1/devices/${dev.deviceId}/bind`, { token: again.token, body: { signature: await signBindChallenge(dev.keys, again.sessionId) } })).status).toBe(404);
      expect((await http('DELETE', `/v1/devices/${dev.deviceId}`, { token: other.token })).status).toBe(204);
      expect(hooked).toHaveLength(1);
      await sleep(50);
      expect(wsBob.events('device.revoked')).toHaveLength(1);
      for (const ws of [wsBob, wsOther]) ws.close();
    });

    it('[K5] a failing revoke hook rolls the whole revocation back', async () => {
      const a = await registerUser(s.url);
      const dev = await registerDeviceWithPackages(http, a.accessToken, 2);
      const other = await login(http, a);
      s.app.services.devices.onRevoke(async (_trx, d) => {
        if (d.deviceId === dev.deviceId) throw new Error('hook failed');
        return Promise.resolve();
      });
      expect((await http('DELETE', `/v1/devices/${dev.deviceId}`, { token: other.token })).status).toBe(500);
      expect((await http('GET', `/v1/users/${a.id}/devices`, { token: other.token })).body.items.map((d: any) => d.id)).toEqual([dev.deviceId]);
      expect((await http('GET', '/v1/key-packages', { token: a.accessToken })).body.stock).toEqual([{ cipherSuite: 1, available: 2, lastResort: false }]);
    });
  });
});

// A SQLite deployment is a single node (one writer): there is no second node to race, so these run on PostgreSQL only.
describe.skipIf(!usingPostgres)('[K1][K3] two nodes on one PostgreSQL (and Redis when configured)', () => {
  let n1: Running;
  let n2: Running;
  let h1: Http;
  let h2: Http;
  beforeAll(async () => {
    const env = await freshDeployment();
    n1 = await startApp({ ...env, ...LOGIN_LIMITS });
    n2 = await startApp({ ...env, ...LOGIN_LIMITS });
    h1 = client(n1.url);
    h2 = client(n2.url);
  });
  afterAll(async () => {
    await n1?.close();
    await n2?.close();
  });

  it('[K3] two nodes never hand out the same package', async () => {
    const alice = await registerUser(n1.url);
    const carol = await registerUser(n2.url);
    const bob = await registerUser(n1.url);
    await direct(h1, alice, bob);
    await direct(h2, carol, bob);
    const stock = 40;
    const dev = await registerDeviceWithPackages(h1, bob.accessToken, stock, { lastResort: true });
    const claims = await Promise.all(
      Array.from({ length: stock + 10 }, (_, i) =>
        i % 2 === 0
          ? h1('POST', '/v1/key-packages/claim', { token: alice.accessToken, body: { userIds: [bob.id], cipherSuite: 1 } })
          : h2('POST', '/v1/key-packages/claim', { token: carol.accessToken, body: { userIds: [bob.id], cipherSuite: 1 } }),
      ),
    );
    const handed = claims.map((c) => c.body.keyPackages[0]);
    const fresh = handed.filter((k) => !k.lastResort).map((k) => k.keyPackage);
    expect(fresh).toHaveLength(stock);
    expect(new Set(fresh).size).toBe(stock);
    expect(handed.filter((k) => k.lastResort)).toHaveLength(10);
    expect(new Set(fresh)).toEqual(new Set(dev.packages.slice(0, stock).map((p) => p.b64)));
  });

  it('[K1] a binding made on one node holds on the other within 1 s', async () => {
    const a = await registerUser(n1.url);
    const dev = await registerDevice(h1, a.accessToken);
    const other = await login(h2, a);
    // Node 2 has looked the session up (no device) and caches that.
    expect((await h2('GET', '/v1/key-packages', { token: other.token })).status).toBe(403);
    const bound = await h1('POST', `/v1/devices/${dev.deviceId}/bind`, { token: other.token, body: { signature: await signBindChallenge(dev.keys, other.sessionId) } });
    expect(bound.status).toBe(200);
    const t0 = Date.now();
    let status = 0;
    while (Date.now() - t0 < 1_000 && status !== 200) {
      status = (await h2('GET', '/v1/key-packages', { token: other.token })).status;
      if (status !== 200) await sleep(20);
    }
    expect(status).toBe(200);
  });
});
