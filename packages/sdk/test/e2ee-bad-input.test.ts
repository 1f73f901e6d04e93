/**
 * Hostile or broken input against the E2EE layer through a real server:
 * every case is refused with a clear error and leaves every client's group
 * state usable (the next message still decrypts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type Running } from '../../server/test/helpers.js';
import { createMlsCrypto, CryptoError } from '../src/crypto/index.js';
import { decodeGroupRecord, fromB64, toB64 } from '../src/e2ee/records.js';
import {
  ConflictError, ValidationError, newClientMsgId,
  type Content, type MessengerSession, type Session, type SessionEventName, type SessionHandler,
} from '../src/index.js';
import { openDevice, signUp, waitFor, type Account, type EventLog, type TestDevice } from './e2ee-helpers.js';

describe('E2EE bad input', () => {
  let s: Running;
  let alice: Account;
  let bob: Account;
  let a1: TestDevice;
  let b1: TestDevice;
  let conv: string;
  const devices: TestDevice[] = [];
  let tamper = false;
  /** Bob's event logs across his restart. */
  const bobLogs: EventLog[] = [];

  /** Alice's session as her messenger sees it: flips the last ciphertext byte (inside the AEAD tag) while `tamper` is set. */
  const tampering = (session: Session): MessengerSession => ({
    on: <K extends SessionEventName>(type: K, handler: SessionHandler<K>) => session.on(type, handler),
    send: (conversationId: string, content: Content, clientMsgId?: string) => {
      if (tamper && content.type === 'encrypted') {
        const bytes = fromB64(content.ciphertext);
        bytes[bytes.length - 1]! ^= 0x01;
        content = { type: 'encrypted', ciphertext: toB64(bytes) };
      }
      return session.send(conversationId, content, clientMsgId);
    },
  });

  /** A message each way still decrypts: no state was corrupted. */
  const stillTalking = async (tag: string) => {
    await a1.messenger.send(conv, `a-${tag}`);
    await b1.messenger.send(conv, `b-${tag}`);
    await waitFor(() => b1.log.texts(conv).includes(`a-${tag}`) && a1.log.texts(conv).includes(`b-${tag}`), `both to read ${tag}`);
  };

  beforeAll(async () => {
    s = await startApp();
    [alice, bob] = await Promise.all([signUp(s, 'al'), signUp(s, 'bo')]);
    a1 = await openDevice(s, alice, 'a1', { wrap: tampering });
    b1 = await openDevice(s, bob, 'b1');
    devices.push(a1, b1);
    bobLogs.push(b1.log);
    conv = (await a1.messenger.openConversation([bob.id])).conversation.id;
    await waitFor(() => b1.log.joined.some((j) => j.conversationId === conv), 'Bob to join');
  });
  afterAll(async () => {
    for (const d of devices) await d.stop();
    await s?.close();
  });

  it('[EC3] a tampered ciphertext is reported undecryptable and the next valid message decrypts', async () => {
    tamper = true;
    try {
      await a1.messenger.send(conv, 'tampered');
    } finally {
      tamper = false;
    }
    const bad = await waitFor(() => b1.log.undecryptable.find((u) => u.conversationId === conv), 'Bob to report it');
    expect(bad).toMatchObject({ kind: 'message', reason: 'decrypt_failed', senderId: alice.id });
    expect(bad.error).toBeInstanceOf(CryptoError);
    expect(b1.log.texts(conv)).not.toContain('tampered');
    await stillTalking('after-tamper');
    expect(b1.log.undecryptable).toHaveLength(1);
  });

  it('[EC3] a replayed message (same ciphertext, new clientMsgId) is refused by the receiver', async () => {
    const original = await a1.messenger.send(conv, 'only once');
    await waitFor(() => b1.log.texts(conv).includes('only once'), 'Bob to read it');
    const before = b1.log.undecryptable.length;
    const replay = await a1.client.send(conv, original.content as Content, newClientMsgId());
    expect(replay.seq).toBeGreaterThan(original.seq);
    const refused = await waitFor(() => b1.log.undecryptable.slice(before).find((u) => u.seq === replay.seq), 'Bob to refuse the replay');
    expect(refused.reason).toBe('replay');
    expect(b1.log.texts(conv).filter((t) => t === 'only once')).toHaveLength(1);
    await stillTalking('after-replay');
  });

  it('[EC6] a commit for an old epoch gets 409 epoch_conflict; a client whose commit is stale catches up and retries', async () => {
    // Bob goes offline; his state (a copy from his key store) stays at the epoch he left at.
    await b1.stop();
    const crypto = createMlsCrypto();
    const stale = crypto.decodeState(decodeGroupRecord((await b1.store.get(`e2ee/group/${conv}`))!).state);
    const aliceEpoch = await a1.messenger.updateKeys(conv);
    expect(crypto.epoch(stale)).toBe(aliceEpoch - 1);
    const staleCommit = await crypto.commit(stale, {});
    crypto.discardCommit(staleCommit.pendingState);
    const old = await b1.client.mlsCommit(conv, { commit: toB64(staleCommit.commit), groupInfo: toB64(staleCommit.groupInfo) }).catch((e: unknown) => e);
    expect(old).toBeInstanceOf(ConflictError);
    expect(old).toMatchObject({ code: 'epoch_conflict', details: { currentEpoch: aliceEpoch } });

    // Bob's messenger, restarted without events, commits from the same stale epoch: it catches up and retries.
    b1 = await openDevice(s, bob, 'b1', { store: b1.store, client: b1.client, offline: true });
    devices.push(b1);
    bobLogs.push(b1.log);
    const conflicts = b1.conflicts.length;
    expect(await b1.messenger.updateKeys(conv)).toBe(aliceEpoch + 1);
    expect(b1.conflicts.length - conflicts).toBe(1);
    await b1.session.start();
    await waitFor(async () => (await a1.messenger.epoch(conv)) === aliceEpoch + 1, 'Alice to apply Bob\'s commit');
    expect(Buffer.from(await a1.messenger.epochAuthenticator(conv))).toEqual(Buffer.from(await b1.messenger.epochAuthenticator(conv)));
    await stillTalking('after-old-commit');
  });

  it('[EC1] a key package carrying someone else\'s identity gets 400 invalid_key_package', async () => {
    const crypto = createMlsCrypto();
    const keys = await crypto.generateSignatureKeys(1);
    const [forged] = await crypto.createKeyPackages({ userId: bob.id, deviceId: b1.info.deviceId }, keys, 1, 1);
    const refused = await a1.client.uploadKeyPackages({ keyPackages: [toB64(forged!.publicBytes)] }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ValidationError);
    expect(refused).toMatchObject({ code: 'invalid_key_package', details: { reason: 'not_this_device' } });
    // Alice's stock is untouched by the refused batch.
    expect((await a1.client.keyPackageStatus()).stock).toEqual([{ cipherSuite: 1, available: 12, lastResort: true }]);
    await stillTalking('after-forged-key-package');
  });

  it('[EC2] a Welcome naming the wrong device gets 400 invalid_mls_message', async () => {
    // Two devices outside the group, each with key packages: Bob's second and Alice's second.
    const b2 = await openDevice(s, bob, 'b2', { offline: true });
    const a2 = await openDevice(s, alice, 'a2', { offline: true });
    devices.push(b2, a2);
    const forBob = (await a1.client.claimKeyPackages({ userIds: [bob.id], cipherSuite: 1 })).keyPackages.find((k) => k.deviceId === b2.info.deviceId)!;
    const forAlice = (await a1.client.claimKeyPackages({ userIds: [alice.id], cipherSuite: 1 })).keyPackages.find((k) => k.deviceId === a2.info.deviceId)!;

    // A copy of Alice's state (her messenger's own is never touched): a commit adding b2 with the Welcome of one adding a2.
    const crypto = createMlsCrypto();
    const state = crypto.decodeState(decodeGroupRecord((await a1.store.get(`e2ee/group/${conv}`))!).state);
    const addB2 = await crypto.commit(state, { add: [fromB64(forBob.keyPackage)] });
    const addA2 = await crypto.commit(state, { add: [fromB64(forAlice.keyPackage)] });
    crypto.discardCommit(addB2.pendingState);
    crypto.discardCommit(addA2.pendingState);
    const refused = await a1.client
      .mlsCommit(conv, { commit: toB64(addB2.commit), groupInfo: toB64(addB2.groupInfo), welcome: toB64(addA2.welcome!) })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ValidationError);
    expect(refused).toMatchObject({ code: 'invalid_mls_message' });

    // Nothing moved: same epoch everywhere, no Welcome reached a2 or b2, and the conversation goes on.
    expect((await a1.client.mlsStatus(conv)).epoch).toBe(await a1.messenger.epoch(conv));
    await b2.session.start();
    await a2.session.start();
    await stillTalking('after-wrong-welcome');
    expect(await b2.messenger.hasGroup(conv)).toBe(false);
    expect(await a2.messenger.hasGroup(conv)).toBe(false);
    expect(a2.log.errors).toEqual([]);
    expect(b2.log.errors).toEqual([]);
  });

  it('no client state was corrupted and nothing else was reported', async () => {
    await stillTalking('final');
    expect(a1.log.errors).toEqual([]);
    expect(bobLogs.flatMap((l) => l.errors)).toEqual([]);
    expect(bobLogs.flatMap((l) => l.undecryptable).map((u) => u.reason)).toEqual(['decrypt_failed', 'replay']);
    // Alice's own replayed message cannot be reopened by her either (MLS keys are single-use).
    expect(a1.log.undecryptable.map((u) => u.reason)).toEqual(['replay']);
  });
});
