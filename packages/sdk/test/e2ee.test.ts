/**
 * The E2EE layer end to end through a real server (SQLite, or PostgreSQL +
 * Redis with DATABASE_URL/REDIS_URL): Alice with two devices, Bob, Carol.
 * The tests run in order and share the conversation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type Running } from '../../server/test/helpers.js';
import { createMlsCrypto, CryptoError } from '../src/crypto/index.js';
import { decodeGroupRecord, fromB64 } from '../src/e2ee/records.js';
import { barrier, openDevice, signUp, waitFor, type Account, type TestDevice } from './e2ee-helpers.js';

describe('EncryptedMessenger through a real server', () => {
  let s: Running;
  let alice: Account;
  let bob: Account;
  let carol: Account;
  let a1: TestDevice;
  let a2: TestDevice;
  let b1: TestDevice;
  const devices: TestDevice[] = [];
  let conv: string;
  let direct: string;

  const open = async (...args: Parameters<typeof openDevice>) => {
    const d = await openDevice(...args);
    devices.push(d);
    return d;
  };
  const sameEpoch = async (list: TestDevice[]) => {
    const auths = await Promise.all(list.map(async (d) => Buffer.from(await d.messenger.epochAuthenticator(conv)).toString('hex')));
    return new Set(auths).size === 1;
  };

  beforeAll(async () => {
    s = await startApp();
    [alice, bob, carol] = await Promise.all([signUp(s, 'al'), signUp(s, 'bo'), signUp(s, 'ca')]);
  });
  afterAll(async () => {
    for (const d of devices) await d.stop();
    await s?.close();
  });

  it('[EC1] a first run registers the device and uploads key packages; a later run binds the stored device', async () => {
    // The default suite (X-Wing) for Alice's first device: the conversation below runs on it.
    a1 = await open(s, alice, 'a1', { suite: 84 });
    expect(a1.info.created).toBe(true);
    expect(a1.info.cipherSuite).toBe(84);
    const status = await a1.client.keyPackageStatus();
    expect(status.deviceId).toBe(a1.info.deviceId);
    expect(status.stock).toEqual([{ cipherSuite: 84, available: 12, lastResort: true }]);
    // Private halves of the 12 + 1 packages are in the key store, nothing else of them.
    expect(await a1.store.list('e2ee/kp/')).toHaveLength(13);
    expect((await a1.client.devices(alice.id)).map((d) => d.id)).toEqual([a1.info.deviceId]);

    a2 = await open(s, alice, 'a2', { suite: 84 });
    b1 = await open(s, bob, 'b1', { suite: 84 });
    expect(new Set([a1.info.deviceId, a2.info.deviceId, b1.info.deviceId]).size).toBe(3);

    // A second run over the same key store and a new login binds the stored device instead of registering one.
    const again = await openDevice(s, alice, 'a1-again', { store: a1.store, suite: 84, offline: true });
    expect(again.info).toMatchObject({ created: false, deviceId: a1.info.deviceId });
    expect(await again.client.devices(alice.id)).toHaveLength(2);
    await again.stop();
  });

  it('[EC2][EC3][EC4] Alice (2 devices) and Bob converse: every device reads the others in order', async () => {
    const opened = await a1.messenger.openConversation([bob.id], { title: 'Team' });
    conv = opened.conversation.id;
    expect(opened.conversation).toMatchObject({ type: 'group', encryption: 'mls' });
    expect(opened.missing).toEqual([]);
    // Bob's device and Alice's other device join from their Welcomes.
    await waitFor(() => b1.log.joined.some((j) => j.conversationId === conv && j.via === 'welcome'), 'Bob to join');
    await waitFor(() => a2.log.joined.some((j) => j.conversationId === conv && j.via === 'welcome'), 'a2 to join');
    const members = await a1.messenger.members(conv);
    expect(members.map((m) => m.deviceId).sort()).toEqual([a1.info.deviceId, a2.info.deviceId, b1.info.deviceId].sort());

    await a1.messenger.send(conv, 'hello Bob');
    await b1.messenger.send(conv, 'hi Alice');
    await a2.messenger.send(conv, 'from my phone');
    const expected = ['hello Bob', 'hi Alice', 'from my phone'];
    for (const d of [a1, a2, b1]) await waitFor(() => d.log.texts(conv).length === 3, `3 messages at ${d.info.deviceId}`);
    for (const d of [a1, a2, b1]) {
      expect(d.log.texts(conv)).toEqual(expected);
      expect(d.log.undecryptable).toEqual([]);
    }
    const atBob = b1.log.messages.filter((m) => m.conversationId === conv);
    expect(atBob.map((m) => [m.senderId, m.senderDeviceId, m.own])).toEqual([
      [alice.id, a1.info.deviceId, false],
      [bob.id, b1.info.deviceId, true],
      [alice.id, a2.info.deviceId, false],
    ]);
    expect(atBob.map((m) => m.seq)).toEqual([...atBob.map((m) => m.seq)].sort((x, y) => x - y));

    // The server holds ciphertext only.
    const history = await b1.client.history(conv, { afterSeq: 0 });
    expect(history.map((m) => m.content.type)).toEqual(['mls-commit', 'encrypted', 'encrypted', 'encrypted']);
  });

  it('[EC2] a direct encrypted conversation: opened by Bob, joined by both of Alice\'s devices', async () => {
    const opened = await b1.messenger.openConversation([alice.id]);
    direct = opened.conversation.id;
    expect(opened.conversation).toMatchObject({ type: 'direct', encryption: 'mls' });
    for (const d of [a1, a2]) await waitFor(() => d.log.joined.some((j) => j.conversationId === direct), 'Alice to join the direct conversation');
    // Opening it again (from either side) returns the same conversation and commits nothing.
    expect((await a1.messenger.openConversation([bob.id])).conversation.id).toBe(direct);
    expect((await b1.messenger.openConversation([alice.id])).conversation.id).toBe(direct);
    await a2.messenger.send(direct, 'just us');
    await waitFor(() => b1.log.texts(direct).includes('just us') && a1.log.texts(direct).includes('just us'), 'the direct message');
    expect(await a1.messenger.epoch(direct)).toBe(1);
  });

  it('[EC1] a device low on key packages is told so and uploads more', async () => {
    const before = (await a1.client.keyPackageStatus()).stock[0]!.available;
    const stored = (await a1.store.list('e2ee/kp/')).length;
    // Bob (who shares conversations with Alice) claims until her stock falls below the low-water mark (10).
    for (let left = before; left >= 10; left--) await b1.client.claimKeyPackages({ userIds: [alice.id], cipherSuite: 84 });
    await waitFor(async () => (await a1.client.keyPackageStatus()).stock[0]!.available >= 10, 'a1 to replenish');
    expect((await a1.client.keyPackageStatus()).stock[0]).toMatchObject({ cipherSuite: 84, lastResort: true });
    expect((await a1.store.list('e2ee/kp/')).length).toBe(stored + 12);
  });

  it('[EC3] Bob goes offline while Alice sends and commits; he reconnects and catches up in order', async () => {
    await b1.stop();
    const sentWhileAway = ['one', 'two', 'three', 'four'];
    await a1.messenger.send(conv, sentWhileAway[0]!);
    await a2.messenger.send(conv, sentWhileAway[1]!);
    // A commit (key update) in the middle: Bob must apply it between the messages to read the rest.
    const epoch = await a1.messenger.updateKeys(conv);
    await a1.messenger.send(conv, sentWhileAway[2]!);
    await a2.messenger.send(conv, sentWhileAway[3]!);
    await waitFor(() => a2.log.texts(conv).length === 7, 'a2 to read everything');

    // A restarted client: same key store (state, session cursor) and login, new session and messenger.
    b1 = await open(s, bob, 'b1', { store: b1.store, client: b1.client, suite: 84 });
    expect(b1.info.created).toBe(false);
    await waitFor(() => b1.log.texts(conv).length === 4, 'Bob to catch up');
    expect(b1.log.texts(conv)).toEqual(sentWhileAway);
    expect(b1.log.undecryptable).toEqual([]);
    expect(await b1.messenger.epoch(conv)).toBe(epoch);
    await b1.messenger.send(conv, 'back');
    await waitFor(() => a1.log.texts(conv).at(-1) === 'back' && a2.log.texts(conv).at(-1) === 'back', 'Alice to read Bob');
    expect(await sameEpoch([a1, a2, b1])).toBe(true);
  });

  it('[EC5] a third user is added, then removed, and cannot read what follows', async () => {
    const c1 = await open(s, carol, 'c1', { suite: 84 });
    // Carol must share a conversation with Alice for her devices to be claimable: adding her does that.
    expect(await a1.messenger.addMember(conv, carol.id)).toEqual([]);
    await waitFor(() => c1.log.joined.some((j) => j.conversationId === conv), 'Carol to join');
    await a1.messenger.send(conv, 'welcome Carol');
    await waitFor(() => c1.log.texts(conv).includes('welcome Carol'), 'Carol to read');
    await c1.messenger.send(conv, 'thanks');
    for (const d of [a1, a2, b1]) await waitFor(() => d.log.texts(conv).includes('thanks'), 'everyone to read Carol');

    // Her last state, as her key store held it before the removal.
    const record = decodeGroupRecord((await c1.store.get(`e2ee/group/${conv}`))!);
    await a1.messenger.removeMember(conv, carol.id);
    await waitFor(() => c1.log.removed.includes(conv), 'Carol to learn she was removed');
    expect(await c1.store.get(`e2ee/group/${conv}`)).toBeUndefined();
    expect((await a1.messenger.members(conv)).some((m) => m.userId === carol.id)).toBe(false);

    const secret = await a1.messenger.send(conv, 'not for Carol');
    for (const d of [a2, b1]) await waitFor(() => d.log.texts(conv).includes('not for Carol'), 'members to read');
    // Her client got nothing more...
    expect(c1.log.texts(conv)).not.toContain('not for Carol');
    expect(c1.log.messages.filter((m) => m.conversationId === conv).map((m) => m.text)).toEqual(['welcome Carol', 'thanks']);
    // ...and the ciphertext, fed to her last state directly, does not open.
    const crypto = createMlsCrypto();
    const state = crypto.decodeState(record.state);
    expect(secret.content.type).toBe('encrypted');
    const ciphertext = fromB64((secret.content as { ciphertext: string }).ciphertext);
    const refused = await crypto.process(state, ciphertext).then(() => null, (e: unknown) => e);
    expect(refused).toBeInstanceOf(CryptoError);
    expect((refused as CryptoError).code).toBe('wrong_epoch');
  });

  it('[EC4][EC5] after a member leaves, the next send commits her removal first (409 mls_commit_required) and goes through', async () => {
    const c1 = devices.find((d) => d.account === carol)!;
    await a1.messenger.addMember(conv, carol.id);
    await waitFor(() => c1.log.joined.filter((j) => j.conversationId === conv).length === 2, 'Carol to join again');
    // Carol follows her join with a path update ([EC9]); take the epoch once the server's has settled.
    let seen = -1;
    const epoch = await waitFor(async () => {
      const now = (await a1.client.mlsStatus(conv)).epoch;
      if (now === seen) return now;
      seen = now;
      await new Promise((r) => setTimeout(r, 400));
      return undefined;
    }, 'the group epoch to settle');
    await waitFor(async () => (await b1.messenger.epoch(conv)) === epoch, 'Bob to apply the add');
    // Carol leaves by herself: nobody has committed her removal yet, so the server holds sends back.
    await c1.messenger.removeMember(conv, carol.id);
    await waitFor(() => c1.log.removed.filter((c) => c === conv).length === 2, 'Carol to drop her state');
    const sent = await b1.messenger.send(conv, 'after Carol left');
    expect(sent.content.type).toBe('encrypted');
    expect(await b1.messenger.epoch(conv)).toBe(epoch + 1);
    expect((await b1.messenger.members(conv)).some((m) => m.userId === carol.id)).toBe(false);
    for (const d of [a1, a2]) await waitFor(() => d.log.texts(conv).includes('after Carol left'), 'Alice to read Bob');
    expect(c1.log.texts(conv)).not.toContain('after Carol left');
  });

  it('[EC6] two of Alice\'s devices commit in the same epoch: one wins, the other recovers, all end in the same group state', async () => {
    const start = await a1.messenger.epoch(conv);
    expect(await a2.messenger.epoch(conv)).toBe(start);
    // Both commits are built from the same epoch and reach the server together.
    const originals = [a1.client.mlsCommit.bind(a1.client), a2.client.mlsCommit.bind(a2.client)];
    const gate = barrier(2, async (i: number, c: string, body: Parameters<typeof a1.client.mlsCommit>[1]) => originals[i]!(c, body));
    a1.client.mlsCommit = (c, body) => gate(0, c, body);
    a2.client.mlsCommit = (c, body) => gate(1, c, body);
    const before = a1.conflicts.length + a2.conflicts.length;
    try {
      const [e1, e2] = await Promise.all([a1.messenger.updateKeys(conv), a2.messenger.updateKeys(conv)]);
      expect([e1, e2].sort((x, y) => x - y)).toEqual([start + 1, start + 2]);
    } finally {
      a1.client.mlsCommit = originals[0]!;
      a2.client.mlsCommit = originals[1]!;
    }
    expect(a1.conflicts.length + a2.conflicts.length - before).toBe(1);
    const loser = [...a1.conflicts, ...a2.conflicts].at(-1) as { details: { currentEpoch: number } };
    expect(loser.details.currentEpoch).toBe(start + 1);

    for (const d of [a1, a2, b1]) await waitFor(async () => (await d.messenger.epoch(conv)) === start + 2, 'every device at the final epoch');
    expect(await sameEpoch([a1, a2, b1])).toBe(true);
    // Same exporter secret everywhere, i.e. the same key schedule.
    const exported = await Promise.all(
      [a1, a2, b1].map(async (d) => {
        const record = decodeGroupRecord((await d.store.get(`e2ee/group/${conv}`))!);
        const crypto = createMlsCrypto();
        return Buffer.from(await crypto.exportSecret(crypto.decodeState(record.state), 'sc-test', new Uint8Array(), 32)).toString('hex');
      }),
    );
    expect(new Set(exported).size).toBe(1);
    await a2.messenger.send(conv, 'after the race');
    await waitFor(() => b1.log.texts(conv).at(-1) === 'after the race' && a1.log.texts(conv).at(-1) === 'after the race', 'the race to settle');
  });

  it('[EC7] Alice adds a new device: it joins her groups by external commit and reads new messages', async () => {
    const a3 = await open(s, alice, 'a3', { suite: 84 });
    const joined = await a3.messenger.addMyNewDevice();
    expect(joined.sort()).toEqual([conv, direct].sort());
    expect(a3.log.joined.map((j) => [j.conversationId, j.via]).sort()).toEqual([[conv, 'external'], [direct, 'external']].sort());
    // A message encrypted before the sender saw the join is for the old epoch, which a3 never had: wait for Bob to apply it.
    const joinedAt = await a3.messenger.epoch(conv);
    await waitFor(async () => (await b1.messenger.epoch(conv)) === joinedAt, 'Bob to apply the external commit');
    // Nothing from before it joined is shown (or reported).
    await b1.messenger.send(conv, 'hello a3');
    await waitFor(() => a3.log.texts(conv).includes('hello a3'), 'a3 to read Bob');
    expect(a3.log.texts(conv)).toEqual(['hello a3']);
    expect(a3.log.undecryptable).toEqual([]);
    await a3.messenger.send(conv, 'a3 here');
    for (const d of [a1, a2, b1]) await waitFor(() => d.log.messages.some((m) => m.text === 'a3 here' && m.senderDeviceId === a3.info.deviceId), 'a3 to be read');
    expect(await sameEpoch([a1, a2, a3, b1])).toBe(true);
    // Running it again joins nothing new.
    expect(await a3.messenger.addMyNewDevice()).toEqual([]);
  });

  it('[EC8] the safety number changes when Bob adds a device, with a devicesChanged event carrying both numbers', async () => {
    const before = await a1.messenger.safetyNumber(conv, bob.id);
    expect(before.digits).toMatch(/^\d{60}$/);
    // Both sides compute the same number.
    expect((await b1.messenger.safetyNumber(conv, alice.id)).digits).toBe(before.digits);
    const seen = a1.log.changes.length;

    const b2 = await open(s, bob, 'b2', { suite: 84 });
    const change = await waitFor(() => a1.log.changes.slice(seen).find((c) => c.userId === bob.id), 'devicesChanged at Alice');
    expect(change).toMatchObject({ cause: 'device.added', added: [b2.info.deviceId], removed: [] });
    expect(change.previousSafetyNumber?.digits).toBe(before.digits);
    const after = await a1.messenger.safetyNumber(conv, bob.id);
    expect(after.digits).not.toBe(before.digits);
    expect(change.currentSafetyNumber?.digits).toBe(after.digits);
    expect((await b2.messenger.safetyNumber(conv, alice.id)).digits).toBe(after.digits);

    // Bob's new device joins and talks; nothing is reported twice for the same device set.
    expect((await b2.messenger.addMyNewDevice()).sort()).toEqual([conv, direct].sort());
    await b2.messenger.send(conv, 'b2 here');
    await waitFor(() => a1.log.texts(conv).includes('b2 here'), 'Alice to read b2');
    expect(a1.log.changes.slice(seen).filter((c) => c.userId === bob.id)).toHaveLength(1);
    expect(a1.log.errors).toEqual([]);
  });

  it('[EC5] a revoked device is removed from the group by a member, and sending goes on', async () => {
    const epoch = await a1.messenger.epoch(conv);
    // a2's session dies with the device; Alice's other devices and Bob race to remove its leaf.
    await a1.client.revokeDevice(a2.info.deviceId);
    await waitFor(async () => !(await a1.messenger.members(conv)).some((m) => m.deviceId === a2.info.deviceId), 'the revoked leaf to go');
    expect(await a1.messenger.epoch(conv)).toBeGreaterThan(epoch);
    await a1.messenger.send(conv, 'after revocation');
    await waitFor(() => b1.log.texts(conv).includes('after revocation'), 'Bob to read');
    expect(b1.log.undecryptable).toEqual([]);
    // Bob knew Alice's devices (from her safety number): he is told one went, with the new number.
    const change = await waitFor(() => b1.log.changes.find((c) => c.cause === 'device.revoked'), 'devicesChanged at Bob');
    expect(change).toMatchObject({ userId: alice.id, added: [], removed: [a2.info.deviceId] });
    expect(change.currentSafetyNumber?.digits).toBe((await b1.messenger.safetyNumber(conv, alice.id)).digits);
  });
});
