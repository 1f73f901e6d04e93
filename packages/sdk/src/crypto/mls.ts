import {
  createCommit,
  createGroup as tsCreateGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  decodeGroupState,
  decodeMlsMessage,
  defaultCapabilities,
  defaultKeyPackageEqualityConfig,
  defaultKeyRetentionConfig,
  defaultPaddingConfig,
  emptyPskIndex,
  encodeGroupState,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  makePskIndex,
  mlsExporter,
  processPublicMessage,
  createApplicationMessage,
  zeroOutUint8Array,
  type AuthenticationService,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type ClientConfig,
  type ClientState,
  type EpochReceiverData,
  type Credential,
  type Extension,
  type GroupInfo,
  type KeyPackage,
  type MLSMessage,
  type PrivateKeyPackage,
  type Proposal,
  type RatchetTree,
} from 'ts-mls';
import { makeKeyPackageRef } from 'ts-mls/keyPackage.js';
import { unprotectPrivateMessage } from 'ts-mls/messageProtection.js';
import { ratchetTreeFromExtension } from 'ts-mls/groupInfo.js';
import {
  CodecError,
  CryptoError as MlsLibCryptoError,
  CryptoVerificationError,
  MlsError,
  UsageError,
} from 'ts-mls/mlsError.js';
import { DEFAULT_MLS_CIPHER_SUITE, MLS_CIPHER_SUITES, mlsIdentity, parseMlsIdentity, type CipherSuiteId } from '@secureconnect/protocol';
import { CryptoError } from './errors.js';
import { sdkCryptoProvider } from './provider.js';
import type {
  CommitChanges,
  CreatedCommit,
  CreatedGroup,
  CryptoErrorCode,
  Encrypted,
  ExternalJoin,
  ExternalJoinOptions,
  GeneratedKeyPackage,
  KeyPackageOptions,
  MlsCrypto,
  MlsCryptoOptions,
  MlsDeviceIdentity,
  MlsGroupState,
  MlsMember,
  MlsPendingCommit,
  Processed,
  SignatureKeyPair,
} from './types.js';

/** RFC 9420 §17.3 extension type of a last-resort KeyPackage. */
const LAST_RESORT_EXTENSION = 10;
const DEFAULT_KEY_PACKAGE_LIFETIME_SEC = 60 * 86_400;
/** Lets peers with a slightly fast clock accept a fresh package. */
const NOT_BEFORE_SKEW_SEC = 3_600;
const STATE_MAGIC = [0x53, 0x43, 0x47, 0x01] as const; // "SCG" v1
const KEY_PACKAGE_MAGIC = [0x53, 0x43, 0x4b, 0x01] as const; // "SCK" v1

const nameById = new Map<number, CiphersuiteName>(
  Object.entries(MLS_CIPHER_SUITES).map(([name, id]) => [id, name as CiphersuiteName]),
);
const idByName = new Map<string, CipherSuiteId>(Object.entries(MLS_CIPHER_SUITES).map(([name, id]) => [name, id]));
const impls = new Map<number, Promise<CiphersuiteImpl>>();

/** Building a suite loads HPKE modules; do it once per suite and process. */
function suiteImpl(id: CipherSuiteId): Promise<CiphersuiteImpl> {
  const name = nameById.get(id);
  if (name === undefined) return Promise.reject(new CryptoError('unsupported_suite', `cipher suite ${String(id)} is not supported`));
  let impl = impls.get(id);
  if (!impl) {
    impl = getCiphersuiteImpl(getCiphersuiteFromName(name), sdkCryptoProvider);
    // A failed load (missing optional module) must not poison the cache for a retry.
    impl.catch(() => impls.delete(id));
    impls.set(id, impl);
  }
  return impl;
}

function suiteIdOf(name: CiphersuiteName): CipherSuiteId {
  const id = idByName.get(name);
  if (id === undefined) throw new CryptoError('unsupported_suite', `cipher suite ${name} is not supported`);
  return id;
}

/** Carries an exception thrown by the caller's directory check through ts-mls so it reaches the caller unchanged. */
class DirectoryCheckFailure extends Error {
  constructor(readonly original: unknown) {
    super('directory check failed');
  }
}

class GroupHandle {
  constructor(
    readonly inner: ClientState,
    readonly suite: CipherSuiteId,
  ) {}
}

class PendingHandle {
  outcome: 'accepted' | 'discarded' | undefined;
  constructor(
    public state: GroupHandle,
    readonly consumed: Uint8Array[],
    readonly epoch: number,
    /** Epoch of the state the commit was made from; undefined for an external join. */
    readonly baseEpoch: bigint | undefined,
  ) {}
}

const asState = (h: GroupHandle): MlsGroupState => h as unknown as MlsGroupState;
const asPending = (p: PendingHandle): MlsPendingCommit => p as unknown as MlsPendingCommit;

function unwrap(state: MlsGroupState): GroupHandle {
  if (!((state as unknown) instanceof GroupHandle)) throw new CryptoError('invalid_operation', 'not a group state of this SDK');
  return state as unknown as GroupHandle;
}
function unwrapPending(pending: MlsPendingCommit): PendingHandle {
  if (!((pending as unknown) instanceof PendingHandle)) throw new CryptoError('invalid_operation', 'not a pending commit of this SDK');
  return pending as unknown as PendingHandle;
}

function wipe(secrets: readonly Uint8Array[]): void {
  for (const s of secrets) zeroOutUint8Array(s);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/**
 * Translates a ts-mls failure into our codes. `fallback` is the code for the
 * stage that failed when the library error itself says nothing more precise.
 */
function toCryptoError(e: unknown, fallback: CryptoErrorCode): unknown {
  if (e instanceof CryptoError) return e;
  if (e instanceof DirectoryCheckFailure) return e.original;
  const message = e instanceof Error ? e.message : String(e);
  const make = (code: CryptoErrorCode) => new CryptoError(code, message, { cause: e });
  if (/Desired gen in the past/.test(message)) return make('replay');
  if (/epoch/i.test(message)) return make('wrong_epoch');
  if (/credential/i.test(message)) return make('untrusted_credential');
  if (/removed from group/.test(message)) return make('inactive');
  if (e instanceof CryptoVerificationError) return make('invalid_signature');
  if (e instanceof MlsLibCryptoError) return make('decrypt_failed');
  if (e instanceof CodecError) return make(fallback === 'decrypt_failed' ? 'decrypt_failed' : 'invalid_message');
  if (e instanceof UsageError) return make('invalid_operation');
  if (e instanceof MlsError) return make(fallback);
  // AEAD implementations (WebCrypto, noble) throw their own errors on a bad tag.
  if (fallback === 'decrypt_failed') return make('decrypt_failed');
  return e;
}

async function guard<T>(fallback: CryptoErrorCode, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw toCryptoError(e, fallback);
  }
}

function decodeMessage(bytes: Uint8Array): MLSMessage {
  let decoded: [MLSMessage, number] | undefined;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch (e) {
    throw new CryptoError('invalid_message', 'undecodable MLS message', { cause: e });
  }
  if (decoded === undefined || decoded[1] !== bytes.length) throw new CryptoError('invalid_message', 'undecodable MLS message');
  return decoded[0];
}

function decodeKeyPackageMessage(bytes: Uint8Array): KeyPackage {
  const m = decodeMessage(bytes);
  if (m.wireformat !== 'mls_key_package') throw new CryptoError('invalid_message', `expected a key package, got ${m.wireformat}`);
  return m.keyPackage;
}

function decodeGroupInfoMessage(bytes: Uint8Array): GroupInfo {
  const m = decodeMessage(bytes);
  if (m.wireformat !== 'mls_group_info') throw new CryptoError('invalid_message', `expected a GroupInfo, got ${m.wireformat}`);
  return m.groupInfo;
}

function encodeGroupInfo(groupInfo: GroupInfo): Uint8Array {
  return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_group_info', groupInfo });
}

// ---- length-prefixed framing for our own opaque blobs ----
function frame(magic: readonly number[], parts: readonly Uint8Array[]): Uint8Array {
  const size = magic.length + parts.reduce((n, p) => n + 4 + p.length, 0);
  const out = new Uint8Array(size);
  out.set(magic, 0);
  const view = new DataView(out.buffer);
  let at = magic.length;
  for (const p of parts) {
    view.setUint32(at, p.length);
    out.set(p, at + 4);
    at += 4 + p.length;
  }
  return out;
}
function unframe(magic: readonly number[], bytes: Uint8Array, count: number, what: string): Uint8Array[] {
  const bad = () => new CryptoError('invalid_message', `not a serialised ${what}`);
  if (bytes.length < magic.length || magic.some((b, i) => bytes[i] !== b)) throw bad();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts: Uint8Array[] = [];
  let at = magic.length;
  while (parts.length < count) {
    if (at + 4 > bytes.length) throw bad();
    const len = view.getUint32(at);
    if (at + 4 + len > bytes.length) throw bad();
    parts.push(bytes.slice(at + 4, at + 4 + len));
    at += 4 + len;
  }
  if (at !== bytes.length) throw bad();
  return parts;
}

/** WebCrypto exports Ed25519 private keys as PKCS#8; we keep the 32-byte seed so keys move between environments. */
function normaliseSigningKey(key: Uint8Array): Uint8Array {
  if (key.length === 32) return key;
  if (key.length === 48) return key.slice(16);
  throw new CryptoError('invalid_operation', 'unexpected Ed25519 private key format');
}

function leafIdentity(tree: RatchetTree, leafIndex: number): { identity: MlsDeviceIdentity; signatureKey: Uint8Array } | undefined {
  const node = tree[leafIndex * 2];
  if (node?.nodeType !== 'leaf') return undefined;
  const cred = node.leaf.credential;
  if (cred.credentialType !== 'basic') return undefined;
  const identity = parseMlsIdentity(cred.identity);
  return identity ? { identity, signatureKey: node.leaf.signaturePublicKey } : undefined;
}

/**
 * Creates the SDK's MLS implementation (ts-mls). `verifyDeviceKey` ties
 * every credential MLS validates (joiners, committers, trees) to the key
 * directory; without it a credential only has to name a device.
 */
export function createMlsCrypto(options: MlsCryptoOptions = {}): MlsCrypto {
  const authService: AuthenticationService = {
    async validateCredential(credential: Credential, signaturePublicKey: Uint8Array): Promise<boolean> {
      if (credential.credentialType !== 'basic') return false;
      const identity = parseMlsIdentity(credential.identity);
      if (!identity) return false;
      if (!options.verifyDeviceKey) return true;
      try {
        return await options.verifyDeviceKey(identity, signaturePublicKey);
      } catch (e) {
        throw new DirectoryCheckFailure(e);
      }
    },
  };
  const clientConfig: ClientConfig = {
    keyRetentionConfig: defaultKeyRetentionConfig,
    // Lifetimes are checked when a package is added (sentByClient); members' old leaves stay valid until updated.
    lifetimeConfig: { maximumTotalLifetime: BigInt(90 * 86_400), validateLifetimeOnReceive: false },
    keyPackageEqualityConfig: defaultKeyPackageEqualityConfig,
    paddingConfig: defaultPaddingConfig,
    authService,
  };

  async function makeKeyPackage(identity: MlsDeviceIdentity, keys: SignatureKeyPair, cs: CiphersuiteImpl, opts: KeyPackageOptions = {}) {
    const now = Math.floor(Date.now() / 1000);
    const notAfter = now + (opts.lifetimeSec ?? DEFAULT_KEY_PACKAGE_LIFETIME_SEC);
    const caps = defaultCapabilities();
    const capabilities = { ...caps, credentials: ['basic' as const], extensions: [...caps.extensions, LAST_RESORT_EXTENSION] };
    const extensions: Extension[] = opts.lastResort ? [{ extensionType: LAST_RESORT_EXTENSION, extensionData: new Uint8Array() }] : [];
    const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
      { credentialType: 'basic', identity: mlsIdentity(identity.userId, identity.deviceId) },
      capabilities,
      { notBefore: BigInt(now - NOT_BEFORE_SKEW_SEC), notAfter: BigInt(notAfter) },
      extensions,
      { signKey: keys.privateKey, publicKey: keys.publicKey },
      cs,
    );
    return { publicPackage, privatePackage, notAfter };
  }

  function commitGroupInfo(state: ClientState, cs: CiphersuiteImpl): Promise<Uint8Array> {
    return createGroupInfoWithExternalPubAndRatchetTree(state, [], cs).then(encodeGroupInfo);
  }

  function requireActive(h: GroupHandle): void {
    if (h.inner.groupActiveState.kind !== 'active') throw new CryptoError('inactive', 'this device is no longer a member of the group');
  }

  async function processApplication(h: GroupHandle, cs: CiphersuiteImpl, msg: MLSMessage & { wireformat: 'mls_private_message' }): Promise<Processed> {
    const pm = msg.privateMessage;
    const s = h.inner;
    if (pm.contentType !== 'application') {
      // Our delivery service only relays handshake messages as PublicMessage, which it can check.
      throw new CryptoError('invalid_message', 'handshake messages must be PublicMessage');
    }
    const current = s.groupContext.epoch;
    const historic = pm.epoch < current ? s.historicalReceiverData.get(pm.epoch) : undefined;
    if (pm.epoch > current || (pm.epoch < current && historic === undefined)) {
      throw new CryptoError('wrong_epoch', `message for epoch ${pm.epoch}, state at ${current}`);
    }
    const src = historic ?? { senderDataSecret: s.keySchedule.senderDataSecret, secretTree: s.secretTree, ratchetTree: s.ratchetTree, groupContext: s.groupContext };
    const result = await guard('decrypt_failed', () =>
      unprotectPrivateMessage(src.senderDataSecret, pm, src.secretTree, src.ratchetTree, src.groupContext, s.clientConfig.keyRetentionConfig, cs),
    );
    const content = result.content.content;
    if (content.contentType !== 'application' || content.sender.senderType !== 'member') {
      throw new CryptoError('invalid_message', 'not an application message from a member');
    }
    const sender = leafIdentity(src.ratchetTree, content.sender.leafIndex);
    if (!sender) throw new CryptoError('untrusted_credential', 'sender leaf has no SecureConnect identity');
    let next: ClientState;
    if (historic) {
      const map = new Map(s.historicalReceiverData);
      map.set(pm.epoch, { ...historic, secretTree: result.tree });
      next = { ...s, historicalReceiverData: map };
    } else {
      next = { ...s, secretTree: result.tree };
    }
    wipe(result.consumed);
    return {
      kind: 'application',
      plaintext: content.applicationData,
      senderLeaf: content.sender.leafIndex,
      senderIdentity: sender.identity,
      epoch: Number(pm.epoch),
      state: asState(new GroupHandle(next, h.suite)),
    };
  }

  async function processCommit(h: GroupHandle, cs: CiphersuiteImpl, msg: MLSMessage & { wireformat: 'mls_public_message' }): Promise<Processed> {
    const pm = msg.publicMessage;
    const s = h.inner;
    if (pm.content.contentType !== 'commit') throw new CryptoError('invalid_message', 'only commits are accepted as PublicMessage');
    if (pm.content.epoch !== s.groupContext.epoch) {
      throw new CryptoError('wrong_epoch', `commit for epoch ${pm.content.epoch}, state at ${s.groupContext.epoch}`);
    }
    const sender = pm.content.sender;
    if (sender.senderType !== 'member' && sender.senderType !== 'new_member_commit') {
      throw new CryptoError('invalid_message', `unexpected commit sender ${sender.senderType}`);
    }
    const result = await guard('invalid_message', () => processPublicMessage(s, pm, makePskIndex(s, {}), cs));
    if (result.actionTaken !== 'accept') throw new CryptoError('invalid_message', 'commit rejected');
    const next = result.newState;
    let senderLeaf: number;
    if (sender.senderType === 'member') {
      senderLeaf = sender.leafIndex;
    } else {
      const leafNode = pm.content.commit.path?.leafNode;
      const at = leafNode ? next.ratchetTree.findIndex((n) => n?.nodeType === 'leaf' && bytesEqual(n.leaf.signaturePublicKey, leafNode.signaturePublicKey)) : -1;
      senderLeaf = at < 0 ? -1 : at / 2;
    }
    wipe(result.consumed);
    return {
      kind: 'commit',
      epoch: Number(next.groupContext.epoch),
      senderLeaf,
      active: next.groupActiveState.kind === 'active',
      state: asState(new GroupHandle(next, h.suite)),
    };
  }

  const api: MlsCrypto = {
    suites: [MLS_CIPHER_SUITES[DEFAULT_MLS_CIPHER_SUITE], MLS_CIPHER_SUITES.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519],
    defaultSuite: MLS_CIPHER_SUITES[DEFAULT_MLS_CIPHER_SUITE],

    async generateSignatureKeys(suite) {
      const cs = await suiteImpl(suite);
      const { publicKey, signKey } = await cs.signature.keygen();
      return { publicKey, privateKey: normaliseSigningKey(signKey) };
    },

    async signBindChallenge(privateKey, challenge) {
      const cs = await suiteImpl(MLS_CIPHER_SUITES.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519);
      return cs.signature.sign(normaliseSigningKey(privateKey), challenge);
    },

    async createKeyPackages(identity, keys, suite, count, opts = {}) {
      if (!Number.isInteger(count) || count < 0) throw new CryptoError('invalid_operation', 'count must be a non-negative integer');
      const cs = await suiteImpl(suite);
      const out: GeneratedKeyPackage[] = [];
      for (let i = 0; i < count; i++) {
        const { publicPackage, privatePackage, notAfter } = await makeKeyPackage(identity, keys, cs, opts);
        const publicBytes = encodeMlsMessage({ version: 'mls10', wireformat: 'mls_key_package', keyPackage: publicPackage });
        out.push({
          ref: await makeKeyPackageRef(publicPackage, cs.hash),
          publicBytes,
          privateState: frame(KEY_PACKAGE_MAGIC, [publicBytes, privatePackage.initPrivateKey, privatePackage.hpkePrivateKey]),
          lastResort: opts.lastResort === true,
          notAfter,
        });
      }
      return out;
    },

    async keyPackageRef(publicBytes) {
      const kp = decodeKeyPackageMessage(publicBytes);
      const cs = await suiteImpl(suiteIdOf(kp.cipherSuite));
      return makeKeyPackageRef(kp, cs.hash);
    },

    async createGroup(groupId, identity, keys, suite) {
      const cs = await suiteImpl(suite);
      const { publicPackage, privatePackage } = await makeKeyPackage(identity, keys, cs);
      const state = await guard('invalid_operation', () => tsCreateGroup(groupId, publicPackage, privatePackage, [], cs, clientConfig));
      zeroOutUint8Array(privatePackage.initPrivateKey);
      return { state: asState(new GroupHandle(state, suite)), groupInfo: await commitGroupInfo(state, cs) } satisfies CreatedGroup;
    },

    async commit(state, changes: CommitChanges = {}) {
      const h = unwrap(state);
      requireActive(h);
      const proposals: Proposal[] = [];
      for (const bytes of changes.add ?? []) {
        const keyPackage = decodeKeyPackageMessage(bytes);
        if (keyPackage.cipherSuite !== h.inner.groupContext.cipherSuite) throw new CryptoError('unsupported_suite', 'key package is for another cipher suite');
        proposals.push({ proposalType: 'add', add: { keyPackage } });
      }
      const own = h.inner.privatePath.leafIndex;
      for (const leaf of new Set(changes.removeLeaves ?? [])) {
        if (leaf === own) throw new CryptoError('invalid_operation', 'a member cannot remove its own leaf by commit');
        if (h.inner.ratchetTree[leaf * 2]?.nodeType !== 'leaf') throw new CryptoError('invalid_operation', `leaf ${leaf} is empty`);
        proposals.push({ proposalType: 'remove', remove: { removed: leaf } });
      }
      const cs = await suiteImpl(h.suite);
      const res = await guard('invalid_operation', () =>
        createCommit({ state: h.inner, cipherSuite: cs }, { wireAsPublicMessage: true, ratchetTreeExtension: true, extraProposals: proposals }),
      );
      const next = new GroupHandle(res.newState, h.suite);
      const result: CreatedCommit = {
        commit: encodeMlsMessage(res.commit),
        groupInfo: await commitGroupInfo(res.newState, cs),
        pendingState: asPending(new PendingHandle(next, res.consumed, Number(res.newState.groupContext.epoch), h.inner.groupContext.epoch)),
        ...(res.welcome ? { welcome: encodeMlsMessage({ version: 'mls10', wireformat: 'mls_welcome', welcome: res.welcome }) } : {}),
      };
      return result;
    },

    acceptCommit(pending, latest) {
      const p = unwrapPending(pending);
      if (p.outcome === 'accepted') return asState(p.state);
      if (p.outcome === 'discarded') throw new CryptoError('invalid_operation', 'this commit was discarded');
      if (latest !== undefined) {
        const l = unwrap(latest).inner;
        const next = p.state.inner;
        if (p.baseEpoch === undefined || l.groupContext.epoch !== p.baseEpoch || !bytesEqual(l.groupContext.groupId, next.groupContext.groupId)) {
          throw new CryptoError('invalid_operation', 'latest is not a state of the epoch this commit was made from');
        }
        // Messages of the old epoch processed after commit() advanced `latest`'s ratchets; the new state must keep
        // receiving late old-epoch messages from there, or it would reopen consumed generations and hit wiped secrets.
        const history = new Map<bigint, EpochReceiverData>();
        for (const [ep, data] of next.historicalReceiverData) {
          history.set(ep, ep === p.baseEpoch ? { ...data, secretTree: l.secretTree } : (l.historicalReceiverData.get(ep) ?? data));
        }
        p.state = new GroupHandle({ ...next, historicalReceiverData: history }, p.state.suite);
      }
      p.outcome = 'accepted';
      wipe(p.consumed);
      return asState(p.state);
    },

    discardCommit(pending) {
      const p = unwrapPending(pending);
      if (p.outcome !== undefined) return;
      p.outcome = 'discarded';
      // Only secrets born with the new epoch: the rest of the pending state is shared with the still-valid old one.
      wipe(Object.values(p.state.inner.keySchedule));
    },

    welcomeKeyPackageRefs(welcome) {
      try {
        const m = decodeMessage(welcome);
        if (m.wireformat !== 'mls_welcome') throw new CryptoError('invalid_message', `expected a Welcome, got ${m.wireformat}`);
        return Promise.resolve(m.welcome.secrets.map((s) => s.newMember));
      } catch (e) {
        return Promise.reject(e instanceof Error ? e : new CryptoError('invalid_message', String(e)));
      }
    },

    async joinFromWelcome(welcomeBytes, keyPackagePrivateState, keys, groupInfoBytes) {
      const m = decodeMessage(welcomeBytes);
      if (m.wireformat !== 'mls_welcome') throw new CryptoError('invalid_message', `expected a Welcome, got ${m.wireformat}`);
      const [publicBytes, initPrivateKey, hpkePrivateKey] = unframe(KEY_PACKAGE_MAGIC, keyPackagePrivateState, 3, 'key package');
      const keyPackage = decodeKeyPackageMessage(publicBytes!);
      if (!bytesEqual(keyPackage.leafNode.signaturePublicKey, keys.publicKey)) {
        throw new CryptoError('invalid_operation', 'key package was made with another signature key');
      }
      if (m.welcome.cipherSuite !== keyPackage.cipherSuite) throw new CryptoError('not_for_us', 'Welcome is for another cipher suite');
      const suite = suiteIdOf(keyPackage.cipherSuite);
      const cs = await suiteImpl(suite);
      const ref = await makeKeyPackageRef(keyPackage, cs.hash);
      if (!m.welcome.secrets.some((s) => bytesEqual(s.newMember, ref))) throw new CryptoError('not_for_us', 'Welcome does not name this key package');
      const tree = groupInfoBytes ? ratchetTreeFromExtension(decodeGroupInfoMessage(groupInfoBytes)) : undefined;
      const privateKeys: PrivateKeyPackage = { initPrivateKey: initPrivateKey!, hpkePrivateKey: hpkePrivateKey!, signaturePrivateKey: keys.privateKey };
      const state = await guard('decrypt_failed', () => joinGroup(m.welcome, keyPackage, privateKeys, emptyPskIndex, cs, tree, undefined, clientConfig));
      // Our copy only: the caller decides when the key package leaves its store (a last-resort one stays).
      zeroOutUint8Array(privateKeys.initPrivateKey);
      return asState(new GroupHandle(state, suite));
    },

    async joinExternal(groupInfoBytes, identity, keys, opts: ExternalJoinOptions = {}) {
      const groupInfo = decodeGroupInfoMessage(groupInfoBytes);
      const suite = suiteIdOf(groupInfo.groupContext.cipherSuite);
      const cs = await suiteImpl(suite);
      const { publicPackage, privatePackage } = await makeKeyPackage(identity, keys, cs);
      // ts-mls finds the old leaf by signature key and misbehaves when there is none: only resync when one exists.
      const tree = ratchetTreeFromExtension(groupInfo);
      const hasOldLeaf = tree?.some((n) => n?.nodeType === 'leaf' && bytesEqual(n.leaf.signaturePublicKey, keys.publicKey)) ?? false;
      if (!opts.resync && hasOldLeaf) throw new CryptoError('invalid_operation', 'this device already has a leaf; join with resync');
      const { publicMessage, newState } = await guard('invalid_message', () =>
        joinGroupExternal(groupInfo, publicPackage, privatePackage, opts.resync === true && hasOldLeaf, cs, undefined, clientConfig),
      );
      const commit = encodeMlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage });
      return {
        commit,
        groupInfo: await commitGroupInfo(newState, cs),
        pendingState: asPending(new PendingHandle(new GroupHandle(newState, suite), [privatePackage.initPrivateKey], Number(newState.groupContext.epoch), undefined)),
      } satisfies ExternalJoin;
    },

    async encrypt(state, plaintext) {
      const h = unwrap(state);
      requireActive(h);
      const cs = await suiteImpl(h.suite);
      const res = await guard('invalid_operation', () => createApplicationMessage(h.inner, plaintext, cs));
      const ciphertext = encodeMlsMessage({ version: 'mls10', wireformat: 'mls_private_message', privateMessage: res.privateMessage });
      wipe(res.consumed);
      return { ciphertext, state: asState(new GroupHandle(res.newState, h.suite)) } satisfies Encrypted;
    },

    async process(state, bytes) {
      const h = unwrap(state);
      if (h.inner.groupActiveState.kind !== 'active') throw new CryptoError('inactive', 'this device is no longer a member of the group');
      const m = decodeMessage(bytes);
      if (m.wireformat === 'mls_private_message') {
        if (!bytesEqual(m.privateMessage.groupId, h.inner.groupContext.groupId)) throw new CryptoError('wrong_group', 'message is for another group');
        return processApplication(h, await suiteImpl(h.suite), m);
      }
      if (m.wireformat === 'mls_public_message') {
        if (!bytesEqual(m.publicMessage.content.groupId, h.inner.groupContext.groupId)) throw new CryptoError('wrong_group', 'message is for another group');
        return processCommit(h, await suiteImpl(h.suite), m);
      }
      throw new CryptoError('invalid_message', `cannot process ${m.wireformat}`);
    },

    members(state) {
      const tree = unwrap(state).inner.ratchetTree;
      const out: MlsMember[] = [];
      for (let i = 0; i < tree.length; i += 2) {
        const leaf = leafIdentity(tree, i / 2);
        if (leaf) out.push({ leafIndex: i / 2, ...leaf.identity, signatureKey: leaf.signatureKey });
      }
      return out;
    },

    epoch: (state) => Number(unwrap(state).inner.groupContext.epoch),
    groupId: (state) => unwrap(state).inner.groupContext.groupId.slice(),
    suite: (state) => suiteIdOf(unwrap(state).inner.groupContext.cipherSuite),
    ownLeaf: (state) => unwrap(state).inner.privatePath.leafIndex,

    isUnmerged(state) {
      const { ratchetTree, privatePath } = unwrap(state).inner;
      return ratchetTree.some((n) => n?.nodeType === 'parent' && n.parent.unmergedLeaves.includes(privatePath.leafIndex));
    },
    epochAuthenticator: (state) => unwrap(state).inner.keySchedule.epochAuthenticator.slice(),

    async exportSecret(state, label, context, length) {
      const h = unwrap(state);
      return mlsExporter(h.inner.keySchedule.exporterSecret, label, context, length, await suiteImpl(h.suite));
    },

    encodeState(state) {
      return frame(STATE_MAGIC, [encodeGroupState(unwrap(state).inner)]);
    },

    decodeState(bytes) {
      const [body] = unframe(STATE_MAGIC, bytes, 1, 'group state');
      const decoded = decodeGroupState(body!, 0);
      if (decoded === undefined || decoded[1] !== body!.length) throw new CryptoError('invalid_message', 'not a serialised group state');
      const inner: ClientState = { ...decoded[0], clientConfig };
      return asState(new GroupHandle(inner, suiteIdOf(inner.groupContext.cipherSuite)));
    },
  };
  return api;
}
