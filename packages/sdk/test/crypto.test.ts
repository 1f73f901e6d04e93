import { describe, expect, it } from 'vitest';
import { bindChallenge, MLS_CIPHER_SUITES, type CipherSuiteId } from '@secureconnect/protocol';
import { ed25519 } from '@noble/curves/ed25519.js';
import { defaultCryptoProvider, getCiphersuiteFromName } from 'ts-mls';
import { createMlsCrypto, CryptoError, type MlsCrypto, type MlsGroupState, type SignatureKeyPair } from '../src/crypto/index.js';
import { nobleEd25519, sdkCryptoProvider } from '../src/crypto/provider.js';

/**
 * The SDK's MLS layer without a server: what two or three devices see when
 * they create, grow, shrink and talk in a group, and that every refusal leaves
 * the caller's state usable.
 */

const SUITE_1 = MLS_CIPHER_SUITES.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const SUITE_84 = MLS_CIPHER_SUITES.MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519;
const te = new TextEncoder();
const td = new TextDecoder();

interface Device {
  readonly name: string;
  readonly userId: string;
  readonly deviceId: string;
  readonly keys: SignatureKeyPair;
  /** The device's key store: private halves of its key packages by base64 ref. */
  readonly store: Map<string, Uint8Array>;
  state?: MlsGroupState;
}

const b64 = (b: Uint8Array) => btoa(String.fromCharCode(...b));

async function device(mls: MlsCrypto, suite: CipherSuiteId, name: string, userId: string = crypto.randomUUID()): Promise<Device> {
  return { name, userId, deviceId: crypto.randomUUID(), keys: await mls.generateSignatureKeys(suite), store: new Map() };
}

async function keyPackage(mls: MlsCrypto, d: Device, suite: CipherSuiteId): Promise<Uint8Array> {
  const [kp] = await mls.createKeyPackages(d, d.keys, suite, 1);
  d.store.set(b64(kp!.ref), kp!.privateState);
  return kp!.publicBytes;
}

async function join(mls: MlsCrypto, d: Device, welcome: Uint8Array): Promise<void> {
  const refs = await mls.welcomeKeyPackageRefs(welcome);
  const priv = refs.map((r) => d.store.get(b64(r))).find((x) => x !== undefined);
  if (!priv) throw new Error(`${d.name} holds none of the Welcome's key packages`);
  d.state = await mls.joinFromWelcome(welcome, priv, d.keys);
}

/** Creates a group of `ds[0]` and adds the others in one commit; everyone ends at epoch 1. */
async function group(mls: MlsCrypto, suite: CipherSuiteId, ds: Device[]): Promise<void> {
  const [creator, ...rest] = ds;
  creator!.state = (await mls.createGroup(te.encode(crypto.randomUUID()), creator!, creator!.keys, suite)).state;
  const kps = await Promise.all(rest.map((d) => keyPackage(mls, d, suite)));
  const c = await mls.commit(creator!.state, { add: kps });
  creator!.state = mls.acceptCommit(c.pendingState);
  for (const d of rest) await join(mls, d, c.welcome!);
}

async function send(mls: MlsCrypto, from: Device, text: string): Promise<Uint8Array> {
  const { ciphertext, state } = await mls.encrypt(from.state!, te.encode(text));
  from.state = state;
  return ciphertext;
}

async function receive(mls: MlsCrypto, to: Device, bytes: Uint8Array): Promise<string> {
  const r = await mls.process(to.state!, bytes);
  if (r.kind !== 'application') throw new Error('expected an application message');
  to.state = r.state;
  return td.decode(r.plaintext);
}

/** Commit by `by`, accepted by the (simulated) server, processed by `others`. */
async function commitAll(mls: MlsCrypto, by: Device, others: Device[], changes = {}) {
  const c = await mls.commit(by.state!, changes);
  by.state = mls.acceptCommit(c.pendingState);
  for (const o of others) {
    const r = await mls.process(o.state!, c.commit);
    if (r.kind !== 'commit') throw new Error('expected a commit');
    o.state = r.state;
  }
  return c;
}

async function refused(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected CryptoError ${code}`).toBeInstanceOf(CryptoError);
  expect((err as CryptoError).code).toBe(code);
}

const mls = createMlsCrypto();

describe.each([
  ['suite 1', SUITE_1],
  ['suite 84 (X-Wing)', SUITE_84],
] as const)('MLS crypto, %s', (_label, suite) => {
  it('three devices create, add, talk, remove; the removed one cannot read the next epoch', async () => {
    const [a, b, c] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b'), device(mls, suite, 'c')]);
    await group(mls, suite, [a, b]);
    expect(mls.epoch(a.state!)).toBe(1);
    expect(mls.epoch(b.state!)).toBe(1);
    expect(await receive(mls, b, await send(mls, a, 'hi b'))).toBe('hi b');
    expect(await receive(mls, a, await send(mls, b, 'hi a'))).toBe('hi a');

    // b adds c.
    const cAdd = await mls.commit(b.state!, { add: [await keyPackage(mls, c, suite)] });
    b.state = mls.acceptCommit(cAdd.pendingState);
    const ra = await mls.process(a.state!, cAdd.commit);
    expect(ra).toMatchObject({ kind: 'commit', epoch: 2, active: true, senderLeaf: mls.ownLeaf(b.state) });
    a.state = ra.state;
    await join(mls, c, cAdd.welcome!);
    expect(mls.members(c.state!).map((m) => m.deviceId).sort()).toEqual([a.deviceId, b.deviceId, c.deviceId].sort());
    const fromC = await send(mls, c, 'hello all');
    expect(await receive(mls, a, fromC)).toBe('hello all');
    const rb = await mls.process(b.state, fromC);
    expect(rb).toMatchObject({ kind: 'application', senderIdentity: { userId: c.userId, deviceId: c.deviceId }, senderLeaf: mls.ownLeaf(c.state!) });
    b.state = rb.state;

    // a removes b.
    const bLeaf = mls.members(a.state).find((m) => m.deviceId === b.deviceId)!.leafIndex;
    const rm = await commitAll(mls, a, [c], { removeLeaves: [bLeaf] });
    const rbRemoved = await mls.process(b.state, rm.commit);
    expect(rbRemoved).toMatchObject({ kind: 'commit', active: false });
    expect(mls.members(a.state).map((m) => m.deviceId)).not.toContain(b.deviceId);

    const secret = await send(mls, a, 'b must not read this');
    expect(await receive(mls, c, secret)).toBe('b must not read this');
    // Neither the removed state nor the state b had before the removal opens the new epoch.
    await refused(mls.process(rbRemoved.state, secret), 'inactive');
    await refused(mls.process(b.state, secret), 'wrong_epoch');
    await refused(mls.encrypt(rbRemoved.state, te.encode('x')), 'inactive');
  });
});

describe('MLS crypto refusals leave the state usable (suite 1)', () => {
  const suite = SUITE_1;

  it('a ciphertext with any one byte flipped is refused and the state is unchanged: the original still decrypts', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const good = await send(mls, a, 'first');
    const before = mls.encodeState(b.state!);
    const codes = new Set<string>();
    for (let at = 0; at < good.length; at++) {
      const bad = good.slice();
      bad[at]! ^= 0x01;
      const err = await mls.process(b.state!, bad).then(() => undefined, (e: unknown) => e);
      expect(err, `byte ${at}`).toBeInstanceOf(CryptoError);
      codes.add((err as CryptoError).code);
      // The AEAD-protected tail can only fail authentication.
      if (at >= good.length - 64) expect((err as CryptoError).code).toBe('decrypt_failed');
    }
    expect([...codes].sort()).toEqual(['decrypt_failed', 'invalid_message', 'wrong_epoch', 'wrong_group']);
    expect(mls.encodeState(b.state!)).toEqual(before);
    expect(await receive(mls, b, good)).toBe('first');
    expect(await receive(mls, b, await send(mls, a, 'second'))).toBe('second');
  });

  it('a tampered commit is refused, the state is unchanged and the genuine commit then applies', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const c = await mls.commit(a.state!, {});
    const before = mls.encodeState(b.state!);
    for (const at of [c.commit.length - 1, c.commit.length - 40, Math.floor(c.commit.length / 2), 40]) {
      const bad = c.commit.slice();
      bad[at]! ^= 0x01;
      await expect(mls.process(b.state!, bad)).rejects.toBeInstanceOf(CryptoError);
    }
    expect(mls.encodeState(b.state!)).toEqual(before);
    a.state = mls.acceptCommit(c.pendingState);
    b.state = (await mls.process(b.state!, c.commit)).state;
    expect(mls.epochAuthenticator(b.state)).toEqual(mls.epochAuthenticator(a.state));
  });

  it('messages processed while a commit is pending stay consumed after acceptCommit(pending, latest)', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const m1 = await send(mls, b, 'while pending');
    const m2 = await send(mls, b, 'late, old epoch');
    const c = await mls.commit(a.state!, {});
    // a keeps reading with its current state while the server decides.
    expect(await receive(mls, a, m1)).toBe('while pending');
    const accepted = mls.acceptCommit(c.pendingState, a.state);
    a.state = accepted;
    expect(mls.epoch(a.state)).toBe(2);
    await refused(mls.process(a.state, m1), 'replay');
    expect(await receive(mls, a, m2)).toBe('late, old epoch');
    // The latest state must be of the commit's base epoch.
    const other = await mls.commit(a.state, {});
    expect(() => mls.acceptCommit(other.pendingState, b.state)).toThrow(expect.objectContaining({ code: 'invalid_operation' }) as Error);
  });

  it('a replayed message is refused', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const m1 = await send(mls, a, 'once');
    const m2 = await send(mls, a, 'twice');
    expect(await receive(mls, b, m1)).toBe('once');
    await refused(mls.process(b.state!, m1), 'replay');
    // Out of order is fine, but each generation opens once.
    expect(await receive(mls, b, m2)).toBe('twice');
    await refused(mls.process(b.state!, m2), 'replay');
  });

  it('messages of the previous epoch still decrypt after a commit (key retention), commits of an old epoch do not apply', async () => {
    const [a, b, c] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b'), device(mls, suite, 'c')]);
    await group(mls, suite, [a, b, c]);
    const late = await send(mls, c, 'sent at epoch 1');
    const first = await commitAll(mls, a, [b, c]);
    expect(mls.epoch(b.state!)).toBe(2);
    expect(await receive(mls, b, late)).toBe('sent at epoch 1');
    // Replaying the epoch-1 commit at epoch 2.
    await refused(mls.process(b.state!, first.commit), 'wrong_epoch');
    // A commit from epoch 2 reaching a state still at epoch 1 is also refused.
    const bStale = b.state!;
    await commitAll(mls, a, [b, c]);
    const third = await mls.commit(a.state!, {});
    await refused(mls.process(bStale, third.commit), 'wrong_epoch');
  });

  it('a Welcome for another device is refused', async () => {
    const [a, b, c] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b'), device(mls, suite, 'c')]);
    a.state = (await mls.createGroup(te.encode('g-welcome'), a, a.keys, suite)).state;
    const kp = await keyPackage(mls, b, suite);
    const [cKp] = await mls.createKeyPackages(c, c.keys, suite, 1);
    const cm = await mls.commit(a.state, { add: [kp] });
    expect(await mls.welcomeKeyPackageRefs(cm.welcome!)).toEqual([await mls.keyPackageRef(kp)]);
    await refused(mls.joinFromWelcome(cm.welcome!, cKp!.privateState, c.keys), 'not_for_us');
    // And b's private package with c's signature key is not a way in either.
    await refused(mls.joinFromWelcome(cm.welcome!, b.store.values().next().value!, c.keys), 'invalid_operation');
  });

  it('a message for another group is refused', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const [x, y] = await Promise.all([device(mls, suite, 'x'), device(mls, suite, 'y')]);
    await group(mls, suite, [x, y]);
    await refused(mls.process(b.state!, await send(mls, x, 'elsewhere')), 'wrong_group');
    await refused(mls.process(b.state!, (await mls.commit(x.state!, {})).commit), 'wrong_group');
    await refused(mls.process(b.state!, new Uint8Array([0, 1, 2, 3])), 'invalid_message');
  });

  it('concurrent commits on one epoch: the loser discards, processes the winner and recommits; both agree', async () => {
    const [a, b, c] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b'), device(mls, suite, 'c')]);
    await group(mls, suite, [a, b]);
    const d = await device(mls, suite, 'd');
    const winner = await mls.commit(a.state!, {});
    const loser = await mls.commit(b.state!, { add: [await keyPackage(mls, c, suite)] });
    expect(winner.pendingState.epoch).toBe(2);
    expect(loser.pendingState.epoch).toBe(2);

    // Server: a's commit is first; b gets 409.
    a.state = mls.acceptCommit(winner.pendingState);
    mls.discardCommit(loser.pendingState);
    expect(() => mls.acceptCommit(loser.pendingState)).toThrow(CryptoError);
    // Settling twice is harmless: the accepted state is kept, not wiped.
    mls.discardCommit(winner.pendingState);
    expect(mls.acceptCommit(winner.pendingState)).toBe(a.state);
    const rb = await mls.process(b.state!, winner.commit);
    b.state = rb.state;
    expect(mls.epoch(b.state)).toBe(2);
    // b's discarded commit can no longer be applied by anyone.
    await refused(mls.process(a.state, loser.commit), 'wrong_epoch');

    const retry = await commitAll(mls, b, [a], { add: [await keyPackage(mls, d, suite)] });
    await join(mls, d, retry.welcome!);
    expect(mls.epoch(a.state)).toBe(3);
    expect(mls.epoch(b.state)).toBe(3);
    expect(mls.epoch(d.state!)).toBe(3);
    expect(b64(mls.epochAuthenticator(a.state))).toBe(b64(mls.epochAuthenticator(b.state)));
    expect(b64(mls.epochAuthenticator(a.state))).toBe(b64(mls.epochAuthenticator(d.state!)));
    const label = 'sc test';
    expect(await mls.exportSecret(a.state, label, new Uint8Array(), 32)).toEqual(await mls.exportSecret(d.state!, label, new Uint8Array(), 32));
    expect(await receive(mls, d, await send(mls, b, 'after the race'))).toBe('after the race');
  });

  it('state encode/decode round trip keeps the group usable', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const stored = mls.encodeState(b.state!);
    const restored = mls.decodeState(stored);
    expect(mls.epoch(restored)).toBe(mls.epoch(b.state!));
    expect(mls.members(restored)).toEqual(mls.members(b.state!));
    expect(mls.encodeState(restored)).toEqual(stored);
    b.state = restored;
    expect(await receive(mls, b, await send(mls, a, 'after restore'))).toBe('after restore');
    expect(await receive(mls, a, await send(mls, b, 'from restored'))).toBe('from restored');
    expect(() => mls.decodeState(stored.slice(0, stored.length - 1))).toThrow(CryptoError);
  });

  it('a new device of a member joins by external commit (and resyncs after losing its state)', async () => {
    const [a, b] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b')]);
    await group(mls, suite, [a, b]);
    const status = (await mls.commit(a.state!, {}));
    a.state = mls.acceptCommit(status.pendingState);
    b.state = (await mls.process(b.state!, status.commit)).state;
    const a2 = await device(mls, suite, 'a2', a.userId);
    const ext = await mls.joinExternal(status.groupInfo, a2, a2.keys);
    a2.state = mls.acceptCommit(ext.pendingState);
    for (const o of [a, b]) {
      const r = await mls.process(o.state!, ext.commit);
      expect(r).toMatchObject({ kind: 'commit', senderLeaf: mls.ownLeaf(a2.state) });
      o.state = r.state;
    }
    expect(await receive(mls, b, await send(mls, a2, 'from my laptop'))).toBe('from my laptop');
    // b lost its state: it rejoins with its own device's key, replacing its old leaf.
    await refused(mls.joinExternal(ext.groupInfo, b, b.keys), 'invalid_operation');
    const resync = await mls.joinExternal(ext.groupInfo, b, b.keys, { resync: true });
    const nb = mls.acceptCommit(resync.pendingState);
    for (const o of [a, a2]) o.state = (await mls.process(o.state!, resync.commit)).state;
    expect(mls.members(nb).filter((m) => m.deviceId === b.deviceId)).toHaveLength(1);
    b.state = nb;
    expect(await receive(mls, a, await send(mls, b, 'back'))).toBe('back');
  });

  it('the directory check refuses a member whose key the directory does not list', async () => {
    const [a, b, c] = await Promise.all([device(mls, suite, 'a'), device(mls, suite, 'b'), device(mls, suite, 'c')]);
    const directory = new Map([a, b].map((d) => [d.deviceId, b64(d.keys.publicKey)]));
    const strict = createMlsCrypto({ verifyDeviceKey: (id, key) => directory.get(id.deviceId) === b64(key) });
    await group(strict, suite, [a, b]);
    // c's key package names c, but the directory does not know c's key: adding it is refused.
    await refused(strict.commit(a.state!, { add: [await keyPackage(mls, c, suite)] }), 'untrusted_credential');
    // An impostor: b's identity with another key.
    const impostor = { ...c, userId: b.userId, deviceId: b.deviceId };
    await refused(strict.commit(a.state!, { add: [await keyPackage(mls, impostor, suite)] }), 'untrusted_credential');
    // The refused commits did not change a's state.
    expect(await receive(strict, b, await send(strict, a, 'still fine'))).toBe('still fine');
    // A directory failure reaches the caller as its own error.
    const broken = createMlsCrypto({ verifyDeviceKey: () => { throw new Error('directory offline'); } });
    const x = await device(mls, suite, 'x');
    const g = await broken.createGroup(te.encode('g'), x, x.keys, suite);
    await expect(broken.commit(g.state, { add: [await keyPackage(mls, c, suite)] })).rejects.toThrow('directory offline');
  });

  it('signBindChallenge produces a plain Ed25519 signature over the challenge', async () => {
    const keys = await mls.generateSignatureKeys(suite);
    expect(keys.privateKey).toHaveLength(32);
    const challenge = bindChallenge(crypto.randomUUID());
    const sig = await mls.signBindChallenge(keys.privateKey, challenge);
    expect(ed25519.verify(sig, challenge, keys.publicKey)).toBe(true);
    expect(ed25519.verify(sig, bindChallenge(crypto.randomUUID()), keys.publicKey)).toBe(false);
  });

  it('key packages carry the device identity, a lifetime and last_resort when asked', async () => {
    const d = await device(mls, suite, 'd');
    const kps = await mls.createKeyPackages(d, d.keys, suite, 3);
    const [lr] = await mls.createKeyPackages(d, d.keys, suite, 1, { lastResort: true, lifetimeSec: 3600 });
    expect(new Set(kps.map((k) => b64(k.ref))).size).toBe(3);
    for (const k of kps) expect(await mls.keyPackageRef(k.publicBytes)).toEqual(k.ref);
    expect(lr!.lastResort).toBe(true);
    expect(lr!.notAfter - Math.floor(Date.now() / 1000)).toBeLessThanOrEqual(3600);
    const { decodeMlsMessage } = await import('ts-mls');
    const m = decodeMlsMessage(lr!.publicBytes, 0)![0];
    if (m.wireformat !== 'mls_key_package') throw new Error('not a key package');
    expect(m.keyPackage.extensions.map((e) => e.extensionType)).toContain(10);
    expect(td.decode((m.keyPackage.leafNode.credential as { identity: Uint8Array }).identity)).toBe(`sc1:${d.userId}:${d.deviceId}`);
  });
});

describe('the SDK crypto provider computes what ts-mls\'s default provider computes', () => {
  it.each([
    ['suite 1', 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519'],
    ['suite 84', 'MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519'],
  ] as const)('%s: hash, HMAC, HKDF, AEAD and Ed25519 agree both ways', async (_label, name) => {
    const suite = getCiphersuiteFromName(name);
    const ours = await sdkCryptoProvider.getCiphersuiteImpl(suite);
    const ref = await defaultCryptoProvider.getCiphersuiteImpl(suite);
    const rnd = (n: number) => crypto.getRandomValues(new Uint8Array(n));
    for (const len of [0, 1, 64, 1000]) {
      const data = rnd(len);
      const key = rnd(ours.kdf.size);
      expect(await ours.hash.digest(data)).toEqual(await ref.hash.digest(data));
      const mac = await ours.hash.mac(key, data);
      expect(mac).toEqual(await ref.hash.mac(key, data));
      expect(await ours.hash.verifyMac(key, mac, data)).toBe(true);
      mac[0]! ^= 1;
      expect(await ours.hash.verifyMac(key, mac, data)).toBe(false);
      const prk = await ours.kdf.extract(key, data);
      expect(prk).toEqual(await ref.kdf.extract(key, data));
      expect(await ours.kdf.expand(prk, data, 42)).toEqual(await ref.kdf.expand(prk, data, 42));
      const aeadKey = rnd(ours.hpke.keyLength);
      const nonce = rnd(ours.hpke.nonceLength);
      const aad = rnd(13);
      const ct = await ours.hpke.encryptAead(aeadKey, nonce, aad, data);
      expect(await ref.hpke.decryptAead(aeadKey, nonce, aad, ct)).toEqual(data);
      expect(await ours.hpke.decryptAead(aeadKey, nonce, aad, await ref.hpke.encryptAead(aeadKey, nonce, aad, data))).toEqual(data);
      ct[ct.length - 1]! ^= 1;
      await expect(ours.hpke.decryptAead(aeadKey, nonce, aad, ct)).rejects.toThrow();
    }
    for (const signer of [ours.signature, nobleEd25519]) {
      const { signKey, publicKey } = await signer.keygen();
      const msg = rnd(100);
      const sig = await signer.sign(signKey, msg);
      for (const verifier of [ref.signature, ours.signature, nobleEd25519]) {
        expect(await verifier.verify(publicKey, msg, sig)).toBe(true);
        expect(await verifier.verify(publicKey, rnd(100), sig)).toBe(false);
      }
    }
    expect(await ours.signature.verify(new Uint8Array(5), new Uint8Array(1), new Uint8Array(64))).toBe(false);
  });
});
