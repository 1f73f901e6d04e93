/**
 * [EC9] Joining around a ts-mls 1.6.4 defect, through a real server (SQLite,
 * or PostgreSQL + Redis with DATABASE_URL/REDIS_URL). ts-mls validates a
 * received tree as if every non-blank node on an unmerged leaf's path had to
 * list the same unmerged leaves (RFC 9420 §12.4.3.1 asks less), so a device
 * added after a path update above a still-unmerged leaf cannot join. Leaves
 * are numbered as in the tree (leaf 0 = the creator).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type Running } from '../../server/test/helpers.js';
import { createMlsCrypto, CryptoError } from '../src/crypto/index.js';
import { decodeGroupRecord, fromB64, toB64 } from '../src/e2ee/records.js';
import { createNodeSession } from '../src/node/index.js';
import {
  E2eeError, EncryptedMessenger, MemoryKeyStore, SecureConnectClient, keyStoreCursor,
  type EncryptedMessengerOptions, type KeyStore, type MessengerSession, type Session, type SessionEventName, type SessionHandler,
} from '../src/index.js';
import { EventLog, barrier, openDevice, signUp, waitFor, type Account, type TestDevice } from './e2ee-helpers.js';

const UNMERGED_DEFECT = /non-blank intermediate node must list leaf node in its unmerged_leaves/;
/** Quick timed rejoins, so that a test sees them run out. */
const FAST_REJOIN = { initialMs: 50, maxMs: 200, attempts: 3 };

interface JoinDeviceOptions {
  store?: KeyStore;
  client?: SecureConnectClient;
  wrap?: (session: Session) => MessengerSession;
  rejoinBackoff?: EncryptedMessengerOptions['rejoinBackoff'];
}

/** Like openDevice (suite 1, started), with the messenger's rejoin backoff settable and mlsStatus calls counted. */
async function openJoinDevice(s: Running, account: Account, name: string, opts: JoinDeviceOptions = {}): Promise<TestDevice & { statusCalls: () => number }> {
  let client = opts.client;
  if (!client) {
    client = new SecureConnectClient({ baseUrl: s.url });
    await client.login(account.username, account.password, name);
  }
  let calls = 0;
  const mlsStatus = client.mlsStatus.bind(client);
  client.mlsStatus = (conversationId) => {
    calls++;
    return mlsStatus(conversationId);
  };
  const store = opts.store ?? new MemoryKeyStore();
  const session = createNodeSession({ client, cursorStore: keyStoreCursor(store), backoff: { initialMs: 50, maxMs: 500 } });
  const messenger = new EncryptedMessenger({
    client, session: opts.wrap ? opts.wrap(session) : session, keyStore: store, cipherSuite: 1, keyPackageBatch: 12,
    ...(opts.rejoinBackoff ? { rejoinBackoff: opts.rejoinBackoff } : {}),
  });
  const log = new EventLog(messenger);
  const info = await messenger.setupDevice(name);
  await session.start();
  return {
    account, client, store, session, messenger, info, log, conflicts: [], statusCalls: () => calls,
    async stop() {
      messenger.close();
      await session.close();
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('[EC9] joining despite the ts-mls 1.6.4 tree check', () => {
  let s: Running;
  let alice: Account;
  /** Bob, Carol, Dave and Erin: one device each, in every conversation below. */
  let crowd: Account[];
  let a1: TestDevice;
  const byUser = new Map<string, TestDevice>();
  const devices: TestDevice[] = [];
  const crypto = createMlsCrypto();

  const track = <T extends TestDevice>(d: T): T => {
    devices.push(d);
    return d;
  };
  /** Epoch authenticators of every device are equal, i.e. they share one group state. */
  const sameEpoch = async (conv: string, list: TestDevice[]) => {
    const auths = await Promise.all(list.map(async (d) => toB64(await d.messenger.epochAuthenticator(conv))));
    return new Set(auths).size === 1;
  };
  /** `from` sends and every other device of `list` reads it. */
  const talk = async (conv: string, list: TestDevice[], from: TestDevice, text: string) => {
    await from.messenger.send(conv, text);
    for (const d of list) if (d !== from) await waitFor(() => d.log.texts(conv).includes(text), `${d.info.deviceId} to read "${text}"`);
  };
  /** The server's view of who holds which leaf. */
  const leafOwners = async (conv: string) => new Map((await a1.client.mlsStatus(conv)).leaves.map((l) => [l.leafIndex, l]));
  const storedState = async (d: TestDevice, conv: string) => crypto.decodeState(decodeGroupRecord((await d.store.get(`e2ee/group/${conv}`))!).state);
  const commitsBy = async (conv: string, userId: string) =>
    (await a1.client.history(conv, { afterSeq: 0 })).filter((m) => m.content.type === 'mls-commit' && m.senderId === userId).length;
  const errorsCoded = (d: TestDevice, code: string) => d.log.errors.filter((e) => e.error instanceof E2eeError && e.error.code === code);

  /**
   * A group of Alice (leaf 0) and the crowd (leaves 1–4, tree of 8 leaves); the crowd member at leaf 1 is
   * removed by Alice, whose UpdatePath fills the node above leaves 0–3 and the root. Returns who is at leaf 4.
   */
  const groupWithHoleAtLeaf1 = async (title: string): Promise<{ conv: string; far: TestDevice; members: TestDevice[] }> => {
    const conv = (await a1.messenger.openConversation(crowd.map((u) => u.id), { title })).conversation.id;
    for (const u of crowd) await waitFor(() => byUser.get(u.id)!.log.joined.some((j) => j.conversationId === conv), 'the crowd to join');
    const owners = await leafOwners(conv);
    expect([...owners.keys()].sort()).toEqual([0, 1, 2, 3, 4]);
    await a1.messenger.removeMember(conv, owners.get(1)!.userId);
    const far = byUser.get(owners.get(4)!.userId)!;
    const members = [a1, ...[2, 3, 4].map((leaf) => byUser.get(owners.get(leaf)!.userId)!)];
    const epoch = await a1.messenger.epoch(conv);
    for (const d of members) await waitFor(async () => (await d.messenger.epoch(conv)) === epoch, 'the removal to be applied');
    return { conv, far, members };
  };

  beforeAll(async () => {
    s = await startApp();
    alice = await signUp(s, 'al');
    crowd = await Promise.all(['bo', 'ca', 'da', 'er'].map((p) => signUp(s, p)));
    a1 = track(await openDevice(s, alice, 'a1'));
    for (const u of crowd) byUser.set(u.id, track(await openDevice(s, u, `${u.username}-1`)));
  });
  afterAll(async () => {
    for (const d of devices) await d.stop();
    await s?.close();
  });

  it('[EC9] a device added after a path update above an unmerged leaf cannot join (the defect); it stays stranded without busy-looping and rejoins once the unmerged device commits its path', async () => {
    const [xavier, yolanda] = await Promise.all([signUp(s, 'xa'), signUp(s, 'yo')]);
    const { conv, far, members } = await groupWithHoleAtLeaf1('EC9 defect');
    // Xavier's device has run once (its session cursor is stored), then goes offline: its Welcome waits for it.
    let x1 = await openDevice(s, xavier, 'x1');
    await x1.stop();
    // Added at leaf 1: the node above leaves 0–3 and the root list leaf 1 as unmerged.
    await a1.messenger.addMember(conv, xavier.id);
    expect((await leafOwners(conv)).get(1)?.deviceId).toBe(x1.info.deviceId);
    // The device at leaf 4 commits a path: the root no longer lists leaf 1, the node below it still does.
    await far.messenger.updateKeys(conv);
    // Yolanda's device lands at leaf 5, under the root only; ts-mls refuses the tree it receives.
    let y1 = track(await openJoinDevice(s, yolanda, 'y1', { rejoinBackoff: FAST_REJOIN }));
    await a1.messenger.addMember(conv, yolanda.id);
    const status = await a1.client.mlsStatus(conv);
    expect(status.leaves.find((l) => l.leafIndex === 5)?.deviceId).toBe(y1.info.deviceId);

    const welcomeFailure = await waitFor(() => y1.log.errors.find((e) => e.context.includes('from a Welcome')), 'y1 to fail its Welcome');
    expect(welcomeFailure.error).toBeInstanceOf(CryptoError);
    expect(welcomeFailure.error.message).toMatch(UNMERGED_DEFECT);
    // Its external rejoins fail the same way until the timed ones are spent; then it says so.
    const stuck = await waitFor(() => errorsCoded(y1, 'join_failed')[0], 'y1 to report join_failed');
    expect((stuck.error.cause as Error).message).toMatch(UNMERGED_DEFECT);
    expect(await y1.messenger.hasGroup(conv)).toBe(false);
    expect(y1.log.joined).toEqual([]);
    // Without any workaround, ts-mls refuses the server's current GroupInfo for any joiner.
    const keys = await crypto.generateSignatureKeys(1);
    const refused = await crypto.joinExternal(fromB64(status.groupInfo), { userId: yolanda.id, deviceId: y1.info.deviceId }, keys).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CryptoError);
    expect((refused as CryptoError).message).toMatch(UNMERGED_DEFECT);
    // Members are not affected.
    await talk(conv, members, far, 'members still talk');

    // Stranded means: a marker in the key store, so a restarted client goes on; it tries, reports, then waits.
    expect(await y1.store.list('e2ee/stranded/')).toEqual([`e2ee/stranded/${conv}`]);
    await y1.stop();
    y1 = track(await openJoinDevice(s, yolanda, 'y1', { store: y1.store, client: y1.client, rejoinBackoff: FAST_REJOIN }));
    await waitFor(() => errorsCoded(y1, 'join_failed').length === 1, 'the restarted y1 to try and report');
    const calls = y1.statusCalls();
    expect(calls).toBe(FAST_REJOIN.attempts);
    await sleep(800);
    expect(y1.statusCalls()).toBe(calls);

    // Xavier's device comes back: it joins from its Welcome (its tree was valid), catches up, finds its leaf
    // unmerged and commits a path update, which clears leaf 1 from every node; at that commit y1 rejoins.
    x1 = track(await openDevice(s, xavier, 'x1', { store: x1.store, client: x1.client }));
    await waitFor(() => x1.log.joined.some((j) => j.conversationId === conv && j.via === 'welcome'), 'x1 to join');
    const rejoined = await waitFor(() => y1.log.joined.find((j) => j.conversationId === conv), 'y1 to rejoin');
    expect(rejoined.via).toBe('resync');
    expect(await commitsBy(conv, xavier.id)).toBe(1);
    expect(await y1.store.list('e2ee/stranded/')).toEqual([]);
    expect(y1.statusCalls()).toBe(calls + 1);
    // One leaf for y1 (its old one was replaced), and nobody is unmerged any more.
    const after = await a1.client.mlsStatus(conv);
    expect(after.leaves.filter((l) => l.deviceId === y1.info.deviceId)).toHaveLength(1);
    expect(crypto.isUnmerged(await storedState(x1, conv))).toBe(false);

    const everyone = [...members, x1, y1];
    for (const d of everyone) await waitFor(async () => (await d.messenger.epoch(conv)) === after.epoch, `${d.info.deviceId} at epoch ${after.epoch}`);
    expect(await sameEpoch(conv, everyone)).toBe(true);
    await talk(conv, everyone, y1, 'y1 is in');
    await talk(conv, everyone, a1, 'welcome both');
    expect(x1.log.errors).toEqual([]);
    for (const d of everyone) expect(d.log.undecryptable).toEqual([]);
  });

  it('[EC9] a device added by Welcome commits a path update right after joining; losing that epoch race it catches up and retries, so a later device joins', async () => {
    const [zed, wendy] = await Promise.all([signUp(s, 'ze'), signUp(s, 'we')]);
    const { conv, far, members } = await groupWithHoleAtLeaf1('EC9 race');
    const z1 = track(await openDevice(s, zed, 'z1'));
    // z1's first commit (its path update) is held until the device at leaf 4 has committed a path of its own.
    const mlsCommit = z1.client.mlsCommit.bind(z1.client);
    let held!: () => void;
    const holding = new Promise<void>((r) => (held = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let first = true;
    z1.client.mlsCommit = async (c, body) => {
      if (first) {
        first = false;
        held();
        await released;
      }
      return mlsCommit(c, body);
    };
    await a1.messenger.addMember(conv, zed.id);
    const addEpoch = await a1.messenger.epoch(conv);
    await holding;
    // (z1's messenger holds the conversation's lock while its commit is out: read its key store instead.)
    expect(crypto.epoch(await storedState(z1, conv))).toBe(addEpoch);
    expect(crypto.isUnmerged(await storedState(z1, conv))).toBe(true);
    // The far device wins the epoch: it refreshes the root, but the node above leaves 0–3 still lists z1.
    expect(await far.messenger.updateKeys(conv)).toBe(addEpoch + 1);
    release();
    await waitFor(async () => (await z1.messenger.epoch(conv)) === addEpoch + 2, 'z1 to commit after catching up');
    z1.client.mlsCommit = mlsCommit;
    expect(z1.conflicts).toHaveLength(1);
    expect(await commitsBy(conv, zed.id)).toBe(1);
    expect(crypto.isUnmerged(await storedState(z1, conv))).toBe(false);

    // Without z1's path update the tree would now refuse every joiner; Wendy's device joins from its Welcome.
    const w1 = track(await openDevice(s, wendy, 'w1'));
    await a1.messenger.addMember(conv, wendy.id);
    await waitFor(() => w1.log.joined.some((j) => j.conversationId === conv), 'w1 to join');
    expect(w1.log.joined.map((j) => j.via)).toEqual(['welcome']);
    // Unmerged at the root, w1 commits its own path update too.
    await waitFor(async () => (await commitsBy(conv, wendy.id)) === 1, 'w1 to commit its path');
    expect(w1.log.errors).toEqual([]);
    const everyone = [...members, z1, w1];
    const epoch = (await a1.client.mlsStatus(conv)).epoch;
    for (const d of everyone) await waitFor(async () => (await d.messenger.epoch(conv)) === epoch, `${d.info.deviceId} at epoch ${epoch}`);
    expect(await sameEpoch(conv, everyone)).toBe(true);
    await talk(conv, everyone, w1, 'w1 is in');
    for (const d of everyone) expect(d.log.errors).toEqual([]);
  });

  it('[EC9] two devices added together both race to commit their path update: the loser finds its leaf merged by the winner\'s path and commits nothing', async () => {
    const victor = await signUp(s, 'vi');
    const conv = (await a1.messenger.openConversation(crowd.map((u) => u.id), { title: 'EC9 pair' })).conversation.id;
    const members = [a1, ...crowd.map((u) => byUser.get(u.id)!)];
    for (const d of members.slice(1)) await waitFor(() => d.log.joined.some((j) => j.conversationId === conv), 'the crowd to join');
    // Alice's path fills the root; Victor's devices land at leaves 5 and 6, unmerged at the root only.
    await a1.messenger.updateKeys(conv);
    const v1 = track(await openDevice(s, victor, 'v1'));
    const v2 = track(await openDevice(s, victor, 'v2'));
    const originals = [v1.client.mlsCommit.bind(v1.client), v2.client.mlsCommit.bind(v2.client)];
    const gate = barrier(2, async (i: number, c: string, body: Parameters<typeof v1.client.mlsCommit>[1]) => originals[i]!(c, body));
    v1.client.mlsCommit = (c, body) => gate(0, c, body);
    v2.client.mlsCommit = (c, body) => gate(1, c, body);
    try {
      await a1.messenger.addMember(conv, victor.id);
      const addEpoch = await a1.messenger.epoch(conv);
      expect([...(await leafOwners(conv)).values()].filter((l) => l.userId === victor.id).map((l) => l.leafIndex).sort()).toEqual([5, 6]);
      await waitFor(() => v1.conflicts.length + v2.conflicts.length === 1, 'one of them to lose the epoch');
      for (const d of [v1, v2]) await waitFor(async () => (await d.messenger.hasGroup(conv)) && (await d.messenger.epoch(conv)) === addEpoch + 1, 'both at the winner\'s epoch');
      // The loser, caught up, has nothing left to do.
      await sleep(300);
      expect(await commitsBy(conv, victor.id)).toBe(1);
      expect((await a1.client.mlsStatus(conv)).epoch).toBe(addEpoch + 1);
      for (const d of [v1, v2]) expect(crypto.isUnmerged(await storedState(d, conv))).toBe(false);
    } finally {
      v1.client.mlsCommit = originals[0]!;
      v2.client.mlsCommit = originals[1]!;
    }
    const everyone = [...members, v1, v2];
    for (const d of everyone) await waitFor(async () => (await d.messenger.epoch(conv)) === (await a1.messenger.epoch(conv)), 'everyone at one epoch');
    expect(await sameEpoch(conv, everyone)).toBe(true);
    await talk(conv, everyone, v2, 'two devices, one path');
    for (const d of everyone) expect(d.log.errors).toEqual([]);
  });

  it('[EC9] a device whose Welcome fails for another reason (damaged in transit) rejoins at once by external commit', async () => {
    const tess = await signUp(s, 'te');
    const conv = (await a1.messenger.openConversation(crowd.slice(0, 1).map((u) => u.id), { title: 'EC9 damaged' })).conversation.id;
    const b = byUser.get(crowd[0]!.id)!;
    await waitFor(() => b.log.joined.some((j) => j.conversationId === conv), 'Bob to join');
    // The messenger sees every Welcome with its last byte (inside the GroupInfo's AEAD tag) flipped.
    const damaging = (session: Session): MessengerSession => ({
      on: <K extends SessionEventName>(type: K, handler: SessionHandler<K>) =>
        session.on(type, (type === 'mls.welcome'
          ? (e: Parameters<SessionHandler<'mls.welcome'>>[0]) => {
              const bytes = fromB64(e.welcome);
              bytes[bytes.length - 1]! ^= 0x01;
              return (handler as SessionHandler<'mls.welcome'>)({ ...e, welcome: toB64(bytes) });
            }
          : handler) as SessionHandler<K>),
      send: (conversationId, content, clientMsgId) => session.send(conversationId, content, clientMsgId),
    });
    const t1 = track(await openJoinDevice(s, tess, 't1', { wrap: damaging }));
    await a1.messenger.addMember(conv, tess.id);
    const joined = await waitFor(() => t1.log.joined.find((j) => j.conversationId === conv), 't1 to rejoin');
    expect(joined.via).toBe('resync');
    expect(t1.log.errors).toHaveLength(1);
    expect(t1.log.errors[0]!.context).toContain('from a Welcome');
    expect(t1.log.errors[0]!.error).toBeInstanceOf(CryptoError);
    expect(await t1.store.list('e2ee/stranded/')).toEqual([]);
    const status = await a1.client.mlsStatus(conv);
    expect(status.leaves.filter((l) => l.deviceId === t1.info.deviceId)).toHaveLength(1);
    const everyone = [a1, b, t1];
    for (const d of everyone) await waitFor(async () => (await d.messenger.epoch(conv)) === status.epoch, 'everyone at one epoch');
    expect(await sameEpoch(conv, everyone)).toBe(true);
    await talk(conv, everyone, a1, 'hello Tess');
    await talk(conv, everyone, t1, 'hi all');
  });
});
