/**
 * The MLS delivery service ([DS1]–[DS9]) with real MLS clients (ts-mls) on
 * both ends: groups, commits, Welcomes and external joins are produced by
 * ts-mls exactly as the SDK produces them, and members process what the
 * server sequences.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  acceptAll,
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  decodeMlsMessage,
  emptyPskIndex,
  encodeMlsMessage,
  joinGroup,
  joinGroupExternal,
  processMessage,
  type ClientState,
  type CreateCommitOptions,
  type GroupInfo,
  type MLSMessage,
  type Proposal,
} from 'ts-mls';
import { client, registerUser, startApp, uid, WsClient, type Running, type TestUser } from './helpers.js';
import { b64, makeDeviceKeys, makeKeyPackages, registerDevice, unb64, type MadeKeyPackage, type RegisteredDevice } from './mls-helpers.js';

let s: Running;
let req: ReturnType<typeof client>;

beforeAll(async () => {
  s = await startApp();
  req = client(s.url);
});
afterAll(async () => s.close());

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One device of a user: its own session (token) bound to it, and its MLS state once in a group. */
interface Dev extends RegisteredDevice {
  user: TestUser;
  token: string;
  state?: ClientState;
}

async function login(u: TestUser): Promise<string> {
  const res = await req('POST', '/v1/auth/login', { body: { login: u.username, password: u.password } });
  expect(res.status).toBe(200);
  return res.body.accessToken;
}

/** A device on a new session of `u` (the first one may reuse the registration session). */
async function newDevice(u: TestUser, fresh = true): Promise<Dev> {
  const token = fresh ? await login(u) : u.accessToken;
  const reg = await registerDevice(req, token);
  return { ...reg, user: u, token };
}

async function keyPackage(d: Dev): Promise<MadeKeyPackage> {
  return (await makeKeyPackages(d.keys, d.userId, d.deviceId, 1))[0]!;
}

async function conversation(owner: TestUser, others: TestUser[], encryption: 'mls' | 'none' = 'mls'): Promise<string> {
  const res = await req('POST', '/v1/conversations', { token: owner.accessToken, body: { type: 'group', title: `g-${uid(3)}`, memberIds: others.map((o) => o.id), encryption } });
  expect(res.status).toBe(201);
  return res.body.id;
}

const mlsMessage = (m: MLSMessage) => b64(encodeMlsMessage(m));
const groupInfoB64 = (gi: GroupInfo) => mlsMessage({ version: 'mls10', wireformat: 'mls_group_info', groupInfo: gi });

async function groupInfoOf(d: Dev): Promise<string> {
  return groupInfoB64(await createGroupInfoWithExternalPubAndRatchetTree(d.state!, [], d.keys.cs));
}

/** The creator's device makes the group locally and records it on the server. */
async function initGroup(conversationId: string, creator: Dev) {
  const kp = await keyPackage(creator);
  creator.state = await createGroup(enc.encode(conversationId), kp.publicPackage, kp.privatePackage, [], creator.keys.cs);
  return req('POST', `/v1/conversations/${conversationId}/mls/init`, { token: creator.token, body: { cipherSuite: 1, groupInfo: await groupInfoOf(creator) } });
}

interface Built {
  body: { commit: string; groupInfo: string; welcome?: string };
  newState: ClientState;
  /** Key packages added, for the joiners. */
  added: { dev: Dev; kp: MadeKeyPackage }[];
}

/** A commit by `d` as the SDK makes it: PublicMessage, proposals by value, GroupInfo with external_pub and tree. */
async function buildCommit(d: Dev, opts: { add?: Dev[]; packages?: MadeKeyPackage[]; remove?: number[]; options?: CreateCommitOptions } = {}): Promise<Built> {
  const added = await Promise.all((opts.add ?? []).map(async (dev, i) => ({ dev, kp: opts.packages?.[i] ?? (await keyPackage(dev)) })));
  const extraProposals: Proposal[] = [
    ...added.map((a): Proposal => ({ proposalType: 'add', add: { keyPackage: a.kp.publicPackage } })),
    ...(opts.remove ?? []).map((removed): Proposal => ({ proposalType: 'remove', remove: { removed } })),
  ];
  const r = await createCommit({ state: d.state!, cipherSuite: d.keys.cs }, { wireAsPublicMessage: true, ratchetTreeExtension: true, extraProposals, ...opts.options });
  const body: Built['body'] = {
    commit: mlsMessage(r.commit),
    groupInfo: groupInfoB64(await createGroupInfoWithExternalPubAndRatchetTree(r.newState, [], d.keys.cs)),
  };
  if (r.welcome) body.welcome = mlsMessage({ version: 'mls10', wireformat: 'mls_welcome', welcome: r.welcome });
  return { body, newState: r.newState, added };
}

function postCommit(conversationId: string, d: Dev, body: Built['body']) {
  return req('POST', `/v1/conversations/${conversationId}/mls/commit`, { token: d.token, body });
}

/** Posts a commit that must be accepted, moves the committer on and lets the added devices join from their Welcome event. */
async function commit(conversationId: string, d: Dev, opts: Parameters<typeof buildCommit>[1] = {}) {
  const built = await buildCommit(d, opts);
  const res = await postCommit(conversationId, d, built.body);
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  d.state = built.newState;
  for (const a of built.added) {
    const welcome = await welcomeFor(a.dev, conversationId, res.body.epoch);
    a.dev.state = await joinGroup(welcome, a.kp.publicPackage, a.kp.privatePackage, emptyPskIndex, a.dev.keys.cs);
  }
  return res.body as { message: any; epoch: number };
}

/** The Welcome addressed to `d` for `epoch`, read from the event log as `d` would receive it. */
async function welcomeFor(d: Dev, conversationId: string, epoch: number) {
  const evs = await s.app.ctx.events.readForUser(d.userId, d.deviceId, 0);
  const ev = evs.find((e) => e.event.type === 'mls.welcome' && e.event.conversationId === conversationId && e.event.epoch === epoch);
  expect(ev, 'welcome event').toBeDefined();
  const msg = decodeMlsMessage(unb64((ev!.event as any).welcome), 0)![0];
  if (msg.wireformat !== 'mls_welcome') throw new Error('not a welcome');
  return msg.welcome;
}

/** Processes every commit after the member's epoch, in seq order, from history. */
async function catchUp(conversationId: string, d: Dev) {
  const res = await req('GET', `/v1/conversations/${conversationId}/messages?limit=200`, { token: d.token });
  for (const m of res.body.items) {
    if (m.content.type !== 'mls-commit' || BigInt(m.content.epoch) !== d.state!.groupContext.epoch) continue;
    const msg = decodeMlsMessage(unb64(m.content.commit), 0)![0];
    if (msg.wireformat !== 'mls_public_message') throw new Error('commit is not public');
    d.state = (await processMessage(msg, d.state!, emptyPskIndex, acceptAll, d.keys.cs)).newState;
  }
}

async function encrypted(d: Dev, text: string): Promise<{ type: 'encrypted'; ciphertext: string }> {
  const r = await createApplicationMessage(d.state!, enc.encode(text), d.keys.cs);
  d.state = r.newState;
  return { type: 'encrypted', ciphertext: mlsMessage({ version: 'mls10', wireformat: 'mls_private_message', privateMessage: r.privateMessage }) };
}

function send(conversationId: string, d: Dev, content: unknown, clientMsgId = uid(8)) {
  return req('POST', `/v1/conversations/${conversationId}/messages`, { token: d.token, body: { clientMsgId, content } });
}

async function decrypt(d: Dev, ciphertext: string): Promise<string> {
  const msg = decodeMlsMessage(unb64(ciphertext), 0)![0];
  if (msg.wireformat !== 'mls_private_message') throw new Error('not private');
  const r = await processMessage(msg, d.state!, emptyPskIndex, acceptAll, d.keys.cs);
  d.state = r.newState;
  if (r.kind !== 'applicationMessage') throw new Error(`expected an application message, got ${r.kind}`);
  return dec.decode(r.message);
}

async function status(conversationId: string, d: Dev) {
  return req('GET', `/v1/conversations/${conversationId}/mls`, { token: d.token });
}

/** The leaf of device `d`, as member `viewer` reads it. */
async function leafOf(conversationId: string, d: Dev, viewer: Dev = d): Promise<number> {
  const st = await status(conversationId, viewer);
  return st.body.leaves.find((l: any) => l.deviceId === d.deviceId).leafIndex;
}

const users = (n: number) => Promise.all(Array.from({ length: n }, () => registerUser(s.url)));

/** Alice (owner) and Bob in an encrypted group, each with one device, both in the MLS group at epoch 1. */
async function pair() {
  const [alice, bob] = await users(2);
  const conv = await conversation(alice!, [bob!]);
  const a = await newDevice(alice!, false);
  const b = await newDevice(bob!, false);
  expect((await initGroup(conv, a)).status).toBe(201);
  await commit(conv, a, { add: [b] });
  return { alice: alice!, bob: bob!, conv, a, b };
}

describe('encrypted conversations', () => {
  it('[DS1] a direct pair may have one plaintext and one encrypted conversation; each is idempotent', async () => {
    const [x, y] = await users(2);
    const plain = await req('POST', '/v1/conversations', { token: x!.accessToken, body: { type: 'direct', userId: y!.id } });
    const secret = await req('POST', '/v1/conversations', { token: x!.accessToken, body: { type: 'direct', userId: y!.id, encryption: 'mls' } });
    expect(plain.status).toBe(201);
    expect(secret.status).toBe(201);
    expect(plain.body.encryption).toBe('none');
    expect(secret.body.encryption).toBe('mls');
    expect(secret.body.id).not.toBe(plain.body.id);
    const again = await req('POST', '/v1/conversations', { token: y!.accessToken, body: { type: 'direct', userId: x!.id, encryption: 'mls' } });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(secret.body.id);
  });
});

describe('[DS1] init', () => {
  it('[DS1] the creator records the group at epoch 0 with its device as the only leaf', async () => {
    const [alice, bob] = await users(2);
    const conv = await conversation(alice!, [bob!]);
    const a = await newDevice(alice!, false);
    const res = await initGroup(conv, a);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(res.body).toMatchObject({ conversationId: conv, cipherSuite: 1, epoch: 0, leaves: [{ leafIndex: 0, userId: alice!.id, deviceId: a.deviceId }] });
    const again = await req('POST', `/v1/conversations/${conv}/mls/init`, { token: a.token, body: { cipherSuite: 1, groupInfo: await groupInfoOf(a) } });
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe('conflict');
  });

  it('[DS1] init is refused without a device, for a plaintext conversation, for another device\'s leaf, another group or suite', async () => {
    const [alice, bob] = await users(2);
    const conv = await conversation(alice!, [bob!]);
    const a = await newDevice(alice!);
    const b = await newDevice(bob!);
    const kp = await keyPackage(a);
    a.state = await createGroup(enc.encode(conv), kp.publicPackage, kp.privatePackage, [], a.keys.cs);
    const gi = await groupInfoOf(a);

    const noDevice = await req('POST', `/v1/conversations/${conv}/mls/init`, { token: alice!.accessToken, body: { cipherSuite: 1, groupInfo: gi } });
    expect(noDevice.status).toBe(403);
    expect(noDevice.body.error.code).toBe('device_required');
    const notMine = await req('POST', `/v1/conversations/${conv}/mls/init`, { token: b.token, body: { cipherSuite: 1, groupInfo: gi } });
    expect(notMine.status).toBe(400);
    expect(notMine.body.error.code).toBe('invalid_mls_message');
    const wrongSuite = await req('POST', `/v1/conversations/${conv}/mls/init`, { token: a.token, body: { cipherSuite: 84, groupInfo: gi } });
    expect(wrongSuite.status).toBe(400);
    const plain = await conversation(alice!, [bob!], 'none');
    expect((await req('POST', `/v1/conversations/${plain}/mls/init`, { token: a.token, body: { cipherSuite: 1, groupInfo: gi } })).status).toBe(400);
    const other = await conversation(alice!, [bob!]);
    const wrongGroup = await req('POST', `/v1/conversations/${other}/mls/init`, { token: a.token, body: { cipherSuite: 1, groupInfo: gi } });
    expect(wrongGroup.status).toBe(400);
    expect(wrongGroup.body.error.message).toMatch(/another group/);
    const garbage = await req('POST', `/v1/conversations/${conv}/mls/init`, { token: a.token, body: { cipherSuite: 1, groupInfo: b64(randomBytes(64)) } });
    expect(garbage.status).toBe(400);
    // None of those created anything.
    expect((await status(conv, a)).body.error.code).toBe('mls_not_initialized');
    expect((await initGroup(conv, a)).status).toBe(201);
  });
});

describe('[DS9] status', () => {
  it('[DS9] members read the epoch, GroupInfo and leaves; non-members get 404; before init 409 mls_not_initialized', async () => {
    const { conv, a, b } = await pair();
    const st = await status(conv, b);
    expect(st.status).toBe(200);
    expect(st.body.epoch).toBe(1);
    expect(st.body.leaves.map((l: any) => l.deviceId).sort()).toEqual([a.deviceId, b.deviceId].sort());
    const gi = decodeMlsMessage(unb64(st.body.groupInfo), 0)![0];
    expect(gi.wireformat).toBe('mls_group_info');
    const [stranger] = await users(1);
    const outsider = await req('GET', `/v1/conversations/${conv}/mls`, { token: stranger!.accessToken });
    expect(outsider.status).toBe(404);
    const fresh = await conversation(a.user, []);
    const before = await status(fresh, a);
    expect(before.status).toBe(409);
    expect(before.body.error.code).toBe('mls_not_initialized');
  });
});

describe('[DS2] [DS3] commits', () => {
  it('[DS3] an accepted commit is sequenced in the log like a message; members process it and reach the same epoch', async () => {
    const { conv, a, b } = await pair();
    const res = await commit(conv, b);
    expect(res.epoch).toBe(2);
    expect(res.message).toMatchObject({ senderId: b.userId, clientMsgId: 'mls:1', content: { type: 'mls-commit', epoch: 1 } });
    const history = (await req('GET', `/v1/conversations/${conv}/messages`, { token: a.token })).body.items;
    expect(history.map((m: any) => [m.content.type, m.content.epoch])).toEqual([['mls-commit', 0], ['mls-commit', 1]]);
    expect(history[1]).toEqual(res.message);
    const evs = (await s.app.ctx.events.readForUser(a.userId, a.deviceId, 0)).filter((e) => e.conversationId === conv && e.event.type === 'message.created');
    expect(evs.map((e) => (e.event as any).message.seq)).toEqual([1, 2]);
    await catchUp(conv, a);
    expect(a.state!.groupContext.epoch).toBe(2n);
    expect(b.state!.groupContext.epoch).toBe(2n);
    const m = await send(conv, a, await encrypted(a, 'after the commit'));
    expect(m.status).toBe(201);
    expect(await decrypt(b, m.body.content.ciphertext)).toBe('after the commit');
    expect((await status(conv, a)).body.epoch).toBe(2);
    // Commits are bookkeeping: only the message counts as unread.
    const listed = (await req('GET', '/v1/conversations', { token: b.token })).body.items.find((c: any) => c.id === conv);
    expect(listed).toMatchObject({ lastSeq: 3, unreadCount: 1 });
  });

  it('[DS2] two commits racing for one epoch: exactly one 201, the other 409 epoch_conflict with the current epoch; the loser recovers', async () => {
    const { conv, a, b } = await pair();
    const [fromA, fromB] = await Promise.all([buildCommit(a), buildCommit(b)]);
    const results = await Promise.all([postCommit(conv, a, fromA.body), postCommit(conv, b, fromB.body)]);
    expect(results.map((r) => r.status).sort()).toEqual([201, 409]);
    const loser = results.find((r) => r.status === 409)!;
    expect(loser.body.error.code).toBe('epoch_conflict');
    expect(loser.body.error.details).toEqual({ currentEpoch: 2 });
    const [winner, other] = results[0].status === 201 ? [a, b] : [b, a];
    winner.state = (results[0].status === 201 ? fromA : fromB).newState;
    // The loser processes the winning commit and retries on the new epoch.
    await catchUp(conv, other);
    expect(other.state!.groupContext.epoch).toBe(2n);
    const retried = await commit(conv, other);
    expect(retried.epoch).toBe(3);
    await catchUp(conv, winner);
    expect(winner.state.groupContext.epoch).toBe(3n);
    const history = (await req('GET', `/v1/conversations/${conv}/messages`, { token: a.token })).body.items;
    expect(history.filter((m: any) => m.content.type === 'mls-commit').map((m: any) => m.content.epoch)).toEqual([0, 1, 2]);
  });

  it('[DS2] a commit for an old epoch gets 409, one for a future epoch 400; an exact retry of an accepted commit answers with it', async () => {
    const { conv, a, b } = await pair();
    const stale = await buildCommit(b); // built at epoch 1
    const won = await buildCommit(a);
    const first = await postCommit(conv, a, won.body);
    expect(first.status).toBe(201);
    a.state = won.newState;
    const old = await postCommit(conv, b, stale.body);
    expect(old.status).toBe(409);
    expect(old.body.error).toMatchObject({ code: 'epoch_conflict', details: { currentEpoch: 2 } });
    const retry = await postCommit(conv, a, won.body);
    expect(retry.status).toBe(201);
    expect(retry.body.message.id).toBe(first.body.message.id);
    // a is at epoch 2; a commit built on a local state two epochs ahead is for epoch 3.
    const ahead = await buildCommit(a);
    const future = await buildCommit({ ...a, state: ahead.newState });
    const res = await postCommit(conv, a, future.body);
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_mls_message');
    expect((await status(conv, a)).body.epoch).toBe(2);
  });

  it('[DS3] commits are not messages: a send may not take a commit id, and a commit cannot be edited or deleted', async () => {
    const { conv, a } = await pair();
    const history = (await req('GET', `/v1/conversations/${conv}/messages`, { token: a.token })).body.items;
    const c = history[0];
    expect((await req('DELETE', `/v1/conversations/${conv}/messages/${c.id}`, { token: a.token })).status).toBe(403);
    expect((await req('PATCH', `/v1/conversations/${conv}/messages/${c.id}`, { token: a.token, body: { content: await encrypted(a, 'x') } })).status).toBe(403);
    const reserved = await req('POST', `/v1/conversations/${conv}/messages`, { token: a.token, body: { clientMsgId: 'mls:7', content: await encrypted(a, 'x') } });
    expect(reserved.status).toBe(400);
  });
});

describe('[DS4] commit checks', () => {
  it("[DS4] adding a non-member's device is refused", async () => {
    const { conv, a } = await pair();
    const [carol] = await users(1);
    const c = await newDevice(carol!, false);
    const built = await buildCommit(a, { add: [c] });
    const res = await postCommit(conv, a, built.body);
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('invalid_mls_message');
    expect(res.body.error.message).toMatch(/not a member/);
    expect((await status(conv, a)).body.epoch).toBe(1);
  });

  it("[DS4] an added key package must carry the device's registered signature key", async () => {
    const { conv, a, bob } = await pair();
    const b2 = await newDevice(bob);
    // Bob's identity and device id, but a key the server never registered for that device.
    const forged = (await makeKeyPackages(await makeDeviceKeys(), bob.id, b2.deviceId, 1))[0]!;
    const res = await postCommit(conv, a, (await buildCommit(a, { add: [b2], packages: [forged] })).body);
    expect(res.status).toBe(400);
    expect(res.body.error.message).toMatch(/registered signature key/);
    // A revoked device cannot be added either.
    const b3 = await newDevice(bob);
    const b3Package = await keyPackage(b3);
    expect((await req('DELETE', `/v1/devices/${b3.deviceId}`, { token: b2.token })).status).toBe(204);
    const revoked = await postCommit(conv, a, (await buildCommit(a, { add: [b3], packages: [b3Package] })).body);
    expect(revoked.status).toBe(400);
    expect(revoked.body.error.message).toMatch(/not an active device/);
    expect((await status(conv, a)).body.epoch).toBe(1);
  });

  it("[DS4] a commit whose sender leaf is another device is refused (403), also for the same user's other device", async () => {
    const { conv, a, b } = await pair();
    const a2 = await newDevice(a.user);
    const built = await buildCommit(a);
    for (const d of [b, a2]) {
      const res = await postCommit(conv, d, built.body);
      expect(res.status).toBe(403);
      expect(res.body.error.code).toBe('forbidden');
    }
    // Without a device the caller cannot commit at all.
    const noDevice = await req('POST', `/v1/conversations/${conv}/mls/commit`, { token: await login(a.user), body: built.body });
    expect(noDevice.status).toBe(403);
    expect(noDevice.body.error.code).toBe('device_required');
    expect((await postCommit(conv, a, built.body)).status).toBe(201);
  });

  it('[DS4] a tampered signature, a GroupInfo that is not the commit\'s, and proposals by reference are refused', async () => {
    const { conv, a, b } = await pair();
    const built = await buildCommit(a);
    const msg = decodeMlsMessage(unb64(built.body.commit), 0)![0];
    if (msg.wireformat !== 'mls_public_message') throw new Error('not public');
    const sig = msg.publicMessage.auth.signature;
    sig[0] = sig[0]! ^ 0xff;
    const tampered = await postCommit(conv, a, { ...built.body, commit: mlsMessage(msg) });
    expect(tampered.status).toBe(400);
    expect(tampered.body.error.message).toMatch(/signature/);

    const other = await buildCommit(a);
    const mismatched = await postCommit(conv, a, { ...built.body, groupInfo: other.body.groupInfo });
    expect(mismatched.status).toBe(400);
    expect(mismatched.body.error.code).toBe('invalid_mls_message');

    // A standalone proposal is not a commit.
    const { createProposal } = await import('ts-mls');
    const proposal = await createProposal(b.state!, true, { proposalType: 'remove', remove: { removed: await leafOf(conv, a) } }, b.keys.cs);
    const standalone = await postCommit(conv, b, { commit: mlsMessage(proposal.message), groupInfo: built.body.groupInfo });
    expect(standalone.status).toBe(400);
    expect((await status(conv, a)).body.epoch).toBe(1);
  });

  it("[DS4] removing a current member's device takes an owner or admin; a removed member's devices must be removed", async () => {
    const [alice, bob, carol] = await users(3);
    const conv = await conversation(alice!, [bob!, carol!]);
    const a = await newDevice(alice!, false);
    const b = await newDevice(bob!, false);
    const c = await newDevice(carol!, false);
    expect((await initGroup(conv, a)).status).toBe(201);
    await commit(conv, a, { add: [b, c] });
    await catchUp(conv, b);
    const carolLeaf = await leafOf(conv, c);

    // Bob is a plain member: he may not remove Carol's active device.
    const byMember = await postCommit(conv, b, (await buildCommit(b, { remove: [carolLeaf] })).body);
    expect(byMember.status).toBe(403);

    // Carol is removed from the conversation; a commit that keeps her device is refused ...
    expect((await req('DELETE', `/v1/conversations/${conv}/members/${carol!.id}`, { token: alice!.accessToken })).status).toBe(204);
    const keeps = await postCommit(conv, b, (await buildCommit(b)).body);
    expect(keeps.status).toBe(400);
    expect(keeps.body.error.message).toMatch(/not a member/);
    // ... and now any member may remove it.
    const removed = await commit(conv, b, { remove: [carolLeaf] });
    expect(removed.epoch).toBe(2);
    expect((await status(conv, a)).body.leaves.map((l: any) => l.userId).sort()).toEqual([alice!.id, bob!.id].sort());
  });
});

describe('[DS5] welcome', () => {
  it('[DS5] a Welcome is required when devices are added and must be for exactly their key packages', async () => {
    const { conv, a, bob } = await pair();
    const b2 = await newDevice(bob);
    const b3 = await newDevice(bob);
    const forB2 = await buildCommit(a, { add: [b2] });
    const forB3 = await buildCommit(a, { add: [b3] });
    const missing = await postCommit(conv, a, { commit: forB2.body.commit, groupInfo: forB2.body.groupInfo });
    expect(missing.status).toBe(400);
    const wrong = await postCommit(conv, a, { ...forB2.body, welcome: forB3.body.welcome! });
    expect(wrong.status).toBe(400);
    expect(wrong.body.error).toMatchObject({ code: 'invalid_mls_message', message: 'Welcome is not for the added devices' });
    const extra = await postCommit(conv, a, { ...(await buildCommit(a)).body, welcome: forB2.body.welcome! });
    expect(extra.status).toBe(400);
    expect((await status(conv, a)).body.epoch).toBe(1);
  });

  it('[DS5] the welcome event reaches only the added device, live and on resume', async () => {
    const { conv, a, bob, b } = await pair();
    const b2 = await newDevice(bob);
    const sockets = {
      b: await WsClient.connect(s.wsUrl, b.token),
      b2: await WsClient.connect(s.wsUrl, b2.token),
      a: await WsClient.connect(s.wsUrl, a.token),
    };
    try {
      const res = await commit(conv, a, { add: [b2] });
      const ev = await sockets.b2.next((f) => f.type === 'event' && f.event.type === 'mls.welcome');
      expect(ev.event).toMatchObject({ conversationId: conv, epoch: res.epoch });
      // Each added device gets only its own EncryptedGroupSecrets (not n per device).
      const w = decodeMlsMessage(Buffer.from((ev.event as { welcome: string }).welcome, 'base64'), 0)?.[0];
      expect(w?.wireformat === 'mls_welcome' ? w.welcome.secrets.length : -1).toBe(1);
      // The commit itself reaches everyone; the Welcome nobody else.
      await sockets.b.next((f) => f.type === 'event' && f.event.type === 'message.created' && f.event.message.content.epoch === 1);
      await sockets.a.next((f) => f.type === 'event' && f.event.type === 'message.created' && f.event.message.content.epoch === 1);
      expect(sockets.b.events('mls.welcome')).toEqual([]);
      expect(sockets.a.events('mls.welcome')).toEqual([]);
      // b2 joined from it and reads what follows.
      await catchUp(conv, b);
      const m = await send(conv, a, await encrypted(a, 'welcome aboard'));
      expect(await decrypt(b2, m.body.content.ciphertext)).toBe('welcome aboard');
      expect(await decrypt(b, m.body.content.ciphertext)).toBe('welcome aboard');
    } finally {
      for (const c of Object.values(sockets)) c.close();
    }
    const resumed = await WsClient.connect(s.wsUrl, b.token, '0');
    try {
      await resumed.next((f) => f.type === 'event' && f.event.type === 'message.created' && f.event.message.content.epoch === 1);
      expect(resumed.events('mls.welcome').filter((f) => f.event.conversationId === conv && f.event.epoch === 2)).toEqual([]);
    } finally {
      resumed.close();
    }
    // The added device gets its Welcome on resume too.
    const b2Resumed = await WsClient.connect(s.wsUrl, b2.token, '0');
    try {
      const ev = await b2Resumed.next((f) => f.type === 'event' && f.event.type === 'mls.welcome');
      expect(ev.event).toMatchObject({ conversationId: conv, epoch: 2 });
    } finally {
      b2Resumed.close();
    }
  });
});

describe('[DS6] pending removal', () => {
  it('[DS6] after a member is removed, encrypted sends get 409 mls_commit_required until the removing commit', async () => {
    const [alice, bob, carol] = await users(3);
    const conv = await conversation(alice!, [bob!, carol!]);
    const a = await newDevice(alice!, false);
    const b = await newDevice(bob!, false);
    const c = await newDevice(carol!, false);
    expect((await initGroup(conv, a)).status).toBe(201);
    await commit(conv, a, { add: [b, c] });
    expect((await send(conv, a, await encrypted(a, 'all three'))).status).toBe(201);

    expect((await req('DELETE', `/v1/conversations/${conv}/members/${carol!.id}`, { token: alice!.accessToken })).status).toBe(204);
    const blocked = await send(conv, a, await encrypted(a, 'carol must not read this'));
    expect(blocked.status).toBe(409);
    expect(blocked.body.error.code).toBe('mls_commit_required');

    await commit(conv, a, { remove: [await leafOf(conv, c, a)] });
    await catchUp(conv, b);
    const after = await send(conv, a, await encrypted(a, 'only us'));
    expect(after.status).toBe(201);
    expect(await decrypt(b, after.body.content.ciphertext)).toBe('only us');
  });

  it('[DS6] removing a member who holds no leaf blocks nothing', async () => {
    const [alice, bob, dave] = await users(3);
    const conv = await conversation(alice!, [bob!, dave!]);
    const a = await newDevice(alice!, false);
    const b = await newDevice(bob!, false);
    expect((await initGroup(conv, a)).status).toBe(201);
    await commit(conv, a, { add: [b] });
    expect((await req('DELETE', `/v1/conversations/${conv}/members/${dave!.id}`, { token: alice!.accessToken })).status).toBe(204);
    expect((await send(conv, a, await encrypted(a, 'dave never had a device here'))).status).toBe(201);
  });

  it('[DS6] a revoked device blocks sends in its groups until a commit removes it', async () => {
    const { conv, a, b, bob } = await pair();
    const b2 = await newDevice(bob);
    await commit(conv, a, { add: [b2] });
    await catchUp(conv, b);
    expect((await req('DELETE', `/v1/devices/${b2.deviceId}`, { token: b.token })).status).toBe(204);
    const blocked = await send(conv, b, await encrypted(b, 'x'));
    expect(blocked.status).toBe(409);
    expect(blocked.body.error.code).toBe('mls_commit_required');
    // Bob removes his own revoked device.
    await commit(conv, b, { remove: [await leafOf(conv, b2, b)] });
    await catchUp(conv, a);
    const ok = await send(conv, b, await encrypted(b, 'clean again'));
    expect(ok.status).toBe(201);
    expect(await decrypt(a, ok.body.content.ciphertext)).toBe('clean again');
  });
});

describe('[DS7] content of encrypted conversations', () => {
  it('[DS7] only PrivateMessages of this group at a recent epoch are accepted; plaintext conversations are unchanged', async () => {
    const { conv, a, b } = await pair();
    const text = await send(conv, a, { type: 'text', text: 'plaintext leak' });
    expect(text.status).toBe(400);
    expect(text.body.error.code).toBe('invalid_mls_message');
    const random = await send(conv, a, { type: 'encrypted', ciphertext: b64(randomBytes(96)) });
    expect(random.status).toBe(400);
    expect(random.body.error.code).toBe('invalid_mls_message');
    // A commit is not an application message.
    const asMessage = await send(conv, a, { type: 'encrypted', ciphertext: (await buildCommit(a)).body.commit });
    expect(asMessage.status).toBe(400);

    // A PrivateMessage of another group.
    const other = await pair();
    const foreign = await send(conv, a, await encrypted(other.a, 'elsewhere'));
    expect(foreign.status).toBe(400);
    expect(foreign.body.error.message).toMatch(/another group/);

    // Stale: three epochs behind. A retry of a send stored before still answers with the original ([M1]).
    const staleContent = await encrypted(b, 'old news');
    const sentEarly = await send(conv, b, await encrypted(b, 'sent in time'), 'early-1');
    expect(sentEarly.status).toBe(201);
    for (let i = 0; i < 3; i++) await commit(conv, a);
    const stale = await send(conv, b, staleContent);
    expect(stale.status).toBe(400);
    expect(stale.body.error.message).toBe('stale epoch');
    const retried = await send(conv, b, sentEarly.body.content, 'early-1');
    expect(retried.status).toBe(200);
    expect(retried.body.id).toBe(sentEarly.body.id);
    await catchUp(conv, b);
    expect((await send(conv, b, await encrypted(b, 'fresh'))).status).toBe(201);

    // Editing is checked the same way.
    const mine = await send(conv, b, await encrypted(b, 'to edit'));
    expect((await req('PATCH', `/v1/conversations/${conv}/messages/${mine.body.id}`, { token: b.token, body: { content: { type: 'encrypted', ciphertext: b64(randomBytes(96)) } } })).status).toBe(400);
    expect((await req('PATCH', `/v1/conversations/${conv}/messages/${mine.body.id}`, { token: b.token, body: { content: await encrypted(b, 'edited') } })).status).toBe(200);

    // Plaintext conversations take text and opaque ciphertext as before.
    const plain = await conversation(a.user, [b.user], 'none');
    expect((await send(plain, a, { type: 'text', text: 'hello' })).status).toBe(201);
    expect((await send(plain, a, { type: 'encrypted', ciphertext: b64(randomBytes(48)) })).status).toBe(201);
  });

  it('[DS7] an encrypted conversation refuses sends before its group exists (409 mls_not_initialized)', async () => {
    const [alice, bob] = await users(2);
    const conv = await conversation(alice!, [bob!]);
    const a = await newDevice(alice!, false);
    const kp = await keyPackage(a);
    a.state = await createGroup(enc.encode(conv), kp.publicPackage, kp.privatePackage, [], a.keys.cs);
    const res = await send(conv, a, await encrypted(a, 'too early'));
    expect(res.status).toBe(409);
    expect(res.body.error.code).toBe('mls_not_initialized');
  });
});

describe('[DS8] external join', () => {
  it("[DS8] a member's new device joins by external commit from the stored GroupInfo", async () => {
    const { conv, a, b, bob } = await pair();
    const b2 = await newDevice(bob);
    const st = await status(conv, b2);
    const giMsg = decodeMlsMessage(unb64(st.body.groupInfo), 0)![0];
    if (giMsg.wireformat !== 'mls_group_info') throw new Error('not a GroupInfo');
    const kp = await keyPackage(b2);
    const joined = await joinGroupExternal(giMsg.groupInfo, kp.publicPackage, kp.privatePackage, false, b2.keys.cs);
    const body = {
      commit: mlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage: joined.publicMessage }),
      groupInfo: groupInfoB64(await createGroupInfoWithExternalPubAndRatchetTree(joined.newState, [], b2.keys.cs)),
    };
    // Only the device itself may submit its join.
    expect((await postCommit(conv, b, body)).status).toBe(403);
    const res = await postCommit(conv, b2, body);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    b2.state = joined.newState;
    expect(res.body.epoch).toBe(2);
    expect((await status(conv, a)).body.leaves.map((l: any) => l.deviceId).sort()).toEqual([a.deviceId, b.deviceId, b2.deviceId].sort());
    await catchUp(conv, a);
    await catchUp(conv, b);
    const m = await send(conv, a, await encrypted(a, 'hello new device'));
    expect(await decrypt(b2, m.body.content.ciphertext)).toBe('hello new device');
    expect(await decrypt(b, m.body.content.ciphertext)).toBe('hello new device');
  });

  it('[DS8] a device that lost its state rejoins by external commit, removing only its own old leaf', async () => {
    const { conv, a, b } = await pair();
    const gi = decodeMlsMessage(unb64((await status(conv, b)).body.groupInfo), 0)![0];
    if (gi.wireformat !== 'mls_group_info') throw new Error('not a GroupInfo');
    const kp = await keyPackage(b);
    const joined = await joinGroupExternal(gi.groupInfo, kp.publicPackage, kp.privatePackage, true, b.keys.cs);
    const body = {
      commit: mlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage: joined.publicMessage }),
      groupInfo: groupInfoB64(await createGroupInfoWithExternalPubAndRatchetTree(joined.newState, [], b.keys.cs)),
    };
    // Someone else's device cannot submit it: the join removes b's leaf and adds b.
    expect((await postCommit(conv, a, body)).status).toBe(403);
    const res = await postCommit(conv, b, body);
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    b.state = joined.newState;
    const leaves = (await status(conv, a)).body.leaves;
    expect(leaves.filter((l: any) => l.deviceId === b.deviceId)).toHaveLength(1);
    expect(leaves).toHaveLength(2);
    await catchUp(conv, a);
    const m = await send(conv, b, await encrypted(b, 'back again'));
    expect(await decrypt(a, m.body.content.ciphertext)).toBe('back again');
  });

  it("[DS8] an external join by a non-member's device is refused", async () => {
    const { conv, a } = await pair();
    const [mallory] = await users(1);
    const m = await newDevice(mallory!, false);
    const gi = (await status(conv, a)).body.groupInfo;
    const giMsg = decodeMlsMessage(unb64(gi), 0)![0];
    if (giMsg.wireformat !== 'mls_group_info') throw new Error('not a GroupInfo');
    const kp = await keyPackage(m);
    const joined = await joinGroupExternal(giMsg.groupInfo, kp.publicPackage, kp.privatePackage, false, m.keys.cs);
    const res = await postCommit(conv, m, {
      commit: mlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage: joined.publicMessage }),
      groupInfo: groupInfoB64(await createGroupInfoWithExternalPubAndRatchetTree(joined.newState, [], m.keys.cs)),
    });
    expect(res.status).toBe(404);
  });
});
