/**
 * The client side of end-to-end encryption (docs/SPEC.md [EC1]–[EC9]): one
 * device's MLS groups kept in step with the server's conversation logs.
 * Browser-safe: it talks to the server only through SecureConnectClient and a
 * Session, does MLS only through MlsCrypto, and keeps secrets only in a
 * KeyStore.
 */
import {
  E2EE_LIMITS, LIMITS, bindChallenge,
  type CipherSuiteId, type ClaimedKeyPackage, type Content, type Conversation, type Device, type Message, type MlsCommitContent,
  type ServerEvent,
} from '@secureconnect/protocol';
import { newClientMsgId, type SecureConnectClient } from '../client.js';
import { CryptoError } from '../crypto/errors.js';
import { createMlsCrypto } from '../crypto/mls.js';
import { diffDevices, fingerprint, safetyNumber, type DeviceChange, type DeviceKey, type Fingerprint, type SafetyNumber } from '../crypto/safety.js';
import type {
  CommitChanges, CryptoErrorCode, MlsCrypto, MlsCryptoOptions, MlsDeviceIdentity, MlsGroupState, MlsMember, SignatureKeyPair,
} from '../crypto/types.js';
import { NotFoundError, SecureConnectError } from '../errors.js';
import type { KeyStore } from '../keystore.js';
import type { SessionEventName, SessionHandler } from '../session.js';
import { E2eeError } from './errors.js';
import {
  PAYLOAD_MAX_BYTES, bytesEqual, decodeGroupRecord, decodePayload, encodeGroupRecord, encodePayload, fromB64, isPrivateMessage,
  isPublicMessage, packRecord, toB64, toB64url, unpackRecord, type GroupMeta,
} from './records.js';

/** The part of {@link Session} the messenger uses (a Session fits; tests may wrap one). */
export interface MessengerSession {
  on<K extends SessionEventName>(type: K, handler: SessionHandler<K>): () => void;
  send(conversationId: string, content: Content, clientMsgId?: string): Promise<Message>;
}

/** Options of {@link EncryptedMessenger}. */
export interface EncryptedMessengerOptions {
  /** REST client of the signed-in account (its session gets bound to this device). */
  client: SecureConnectClient;
  /** The account's realtime session; the messenger handles its MLS-related events. */
  session: MessengerSession;
  /** Where device keys, private key packages and group states live. Not encrypted at rest by the SDK (see KeyStore). */
  keyStore: KeyStore;
  /** MLS implementation factory; default createMlsCrypto. It gets the messenger's key-directory check. */
  crypto?: (options: MlsCryptoOptions) => MlsCrypto;
  /** Cipher suite for new devices and groups; default the implementation's default (X-Wing, 84). */
  cipherSuite?: CipherSuiteId;
  /** Key packages uploaded per batch (besides the last-resort one); default 30. */
  keyPackageBatch?: number;
  /** Attempts of a commit that keeps losing its epoch to others ([EC6]); default 5. */
  maxCommitAttempts?: number;
  /**
   * [EC9] Rejoining a conversation whose Welcome failed: `attempts` external joins (default 5), the first at
   * once, the next after min(maxMs, initialMs·2^n) halved plus up to the same again at random (defaults 1 s
   * and 30 s). After that, one more at each commit of the conversation and each session resync.
   */
  rejoinBackoff?: { initialMs?: number; maxMs?: number; attempts?: number };
}

/** This device, as setupDevice left it. */
export interface DeviceInfo {
  userId: string;
  deviceId: string;
  cipherSuite: CipherSuiteId;
  /** True when this run registered the device; false when it bound the session to the stored one. */
  created: boolean;
}

/** A decrypted application message ('message' event). */
export interface DecryptedMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  senderDeviceId: string;
  text: string;
  sentAt: string;
  /** Sent by this device (shown from what it sent: MLS cannot decrypt one's own messages). */
  own: boolean;
}

/** Why a message could not be read. */
export type UndecryptableReason = CryptoErrorCode | 'invalid_payload' | 'sender_mismatch' | 'missed_commit';

/** A log entry this device could not decrypt or apply ('undecryptable' event). Its group state is unchanged. */
export interface UndecryptableMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  /** `message` for an application message, `commit` for a handshake the group could not apply (the device then rejoins). */
  kind: 'message' | 'commit';
  reason: UndecryptableReason;
  error?: Error;
}

/** How this device got its group state ('joined' event). */
export interface JoinedGroup {
  conversationId: string;
  epoch: number;
  via: 'create' | 'welcome' | 'external' | 'resync';
}

/** A member's device set changed ('devicesChanged' event, [EC8]); for another user, with the safety numbers before and after. */
export type DevicesChanged = DeviceChange & { cause: 'device.added' | 'device.revoked' | 'tree' | 'refresh' };

/** A failure in background work (event handling, replenishing) that has no caller to throw to. */
export interface MessengerErrorEvent {
  context: string;
  error: Error;
}

/** Every event of {@link EncryptedMessenger}, by name. */
export interface MessengerEvents {
  message: DecryptedMessage;
  undecryptable: UndecryptableMessage;
  joined: JoinedGroup;
  /** This device left the group (removed, or the user left): its state is deleted. */
  removed: { conversationId: string };
  devicesChanged: DevicesChanged;
  error: MessengerErrorEvent;
}
/** Name of an event of {@link EncryptedMessenger}. */
export type MessengerEventName = keyof MessengerEvents;
/** A handler; a returned promise is awaited before the next event (and before the session's cursor moves on). */
export type MessengerHandler<K extends MessengerEventName> = (event: MessengerEvents[K]) => void | Promise<void>;

/** Result of {@link EncryptedMessenger.openConversation}. */
export interface OpenedConversation {
  conversation: Conversation;
  /** Devices that had no key package to claim: they are not in the group and can join later by external commit ([EC7]). */
  missing: { userId: string; deviceId: string }[];
}

interface StoredDevice {
  userId: string;
  deviceId: string;
  suite: CipherSuiteId;
  keys: SignatureKeyPair;
}

interface Entry extends GroupMeta {
  readonly conversationId: string;
  state: MlsGroupState;
  /** Set when this device left the group: nothing more is saved. */
  gone: boolean;
}

/** [EC9] A conversation whose Welcome this device could not join: it may hold a leaf there, but no state. */
interface Stranded {
  /** Failed rejoins since the Welcome failed. */
  failures: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  busy: boolean;
  /** A rejoin was asked for while one ran (e.g. a commit that may have repaired the tree arrived): run another. */
  again: boolean;
}

const DEVICE_KEY = 'e2ee/device';
const PENDING_DEVICE_KEY = 'e2ee/device-pending';
const KP_PREFIX = 'e2ee/kp/';
const GROUP_PREFIX = 'e2ee/group/';
/** Marks a stranded conversation ([EC9]) so that a restarted client goes on rejoining it. */
const STRANDED_PREFIX = 'e2ee/stranded/';
const HISTORY_PAGE = LIMITS.pageMax;
/** Commits seen for conversations this device is not (yet) in: enough to place a Welcome's commit in the log. */
const NOTED_EPOCHS_PER_CONVERSATION = 16;
const NOTED_CONVERSATIONS = 1_000;
const FINGERPRINT_MEMO = 256;

const groupKey = (conversationId: string) => `${GROUP_PREFIX}${conversationId}`;
const utf8 = (s: string) => new TextEncoder().encode(s);

function hasCode(err: unknown, code: string): err is SecureConnectError {
  return err instanceof SecureConnectError && err.code === code;
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * End-to-end encrypted messaging for one device over MLS (RFC 9420).
 *
 * - [EC1] {@link setupDevice}: device keys, registration or binding, key packages (replenished on `key_packages.low`).
 * - [EC2] {@link openConversation}: an MLS conversation with every device of every member.
 * - [EC3] Log entries are handled strictly in server order; messages come out as `message` or `undecryptable` events.
 * - [EC4] {@link send}: padded `{v:1, text}` payloads; removals the server demands are committed first.
 * - [EC5] {@link addMember} / {@link removeMember}; revoked devices are removed from every group.
 * - [EC6] A commit that loses its epoch catches up with the winner and is rebuilt.
 * - [EC7] {@link addMyNewDevice}: a new device joins the user's groups by external commit.
 * - [EC8] {@link safetyNumber} and `devicesChanged` events.
 * - [EC9] Around a ts-mls 1.6.4 defect: a device added by Welcome commits a path update when its leaf is
 *   unmerged, and a device whose Welcome fails rejoins by external commit (with backoff, then at each commit).
 *
 * @example
 * const messenger = new EncryptedMessenger({ client, session, keyStore });
 * await messenger.setupDevice('laptop');
 * messenger.on('message', (m) => render(m));
 * await session.start();
 * const { conversation } = await messenger.openConversation([bobId]);
 * await messenger.send(conversation.id, 'hi');
 */
export class EncryptedMessenger {
  private readonly client: SecureConnectClient;
  private readonly session: MessengerSession;
  private readonly store: KeyStore;
  private readonly crypto: MlsCrypto;
  private readonly suite: CipherSuiteId;
  private readonly batch: number;
  private readonly maxCommitAttempts: number;
  private readonly rejoinInitialMs: number;
  private readonly rejoinMaxMs: number;
  private readonly rejoinAttempts: number;

  private device: StoredDevice | null = null;
  private readonly entries = new Map<string, Entry>();
  private readonly locks = new Map<string, Promise<void>>();
  private readonly noted = new Map<string, Map<number, number>>();
  /** Texts this device sent, by clientMsgId, until their log entry comes back. */
  private readonly sent = new Map<string, { conversationId: string; text: string }>();
  /** Key directory cache for credential checks: userId → deviceId → base64 key. */
  private readonly directory = new Map<string, Map<string, string>>();
  /** Last device sets reported per user, the "before" of devicesChanged. */
  private readonly baselines = new Map<string, DeviceKey[]>();
  private readonly fingerprints = new Map<string, Promise<Fingerprint>>();
  private readonly handlers = new Map<MessengerEventName, ((e: unknown) => void | Promise<void>)[]>();
  private readonly jobs: (() => Promise<void>)[] = [];
  private draining: Promise<void> | null = null;
  private replenishing: Promise<void> | null = null;
  private readonly unsubscribe: (() => void)[] = [];
  private readonly stranded = new Map<string, Stranded>();
  /** Conversations where a path update of an unmerged leaf is under way ([EC9]). */
  private readonly merging = new Set<string>();
  private closed = false;

  constructor(options: EncryptedMessengerOptions) {
    this.client = options.client;
    this.session = options.session;
    this.store = options.keyStore;
    this.crypto = (options.crypto ?? createMlsCrypto)({ verifyDeviceKey: (identity, key) => this.verifyDeviceKey(identity, key) });
    this.suite = options.cipherSuite ?? this.crypto.defaultSuite;
    if (!this.crypto.suites.includes(this.suite)) throw new E2eeError('invalid_argument', `cipher suite ${this.suite} is not supported`);
    this.batch = options.keyPackageBatch ?? 30;
    this.maxCommitAttempts = options.maxCommitAttempts ?? 5;
    this.rejoinInitialMs = options.rejoinBackoff?.initialMs ?? 1_000;
    this.rejoinMaxMs = options.rejoinBackoff?.maxMs ?? 30_000;
    this.rejoinAttempts = Math.max(1, options.rejoinBackoff?.attempts ?? 5);
    // Registered at once so that no event of a session started before setupDevice is missed.
    const s = this.session;
    this.unsubscribe.push(
      s.on('message.created', (e) => this.onMessageCreated(e.message)),
      s.on('mls.welcome', (e) => this.onWelcome(e)),
      s.on('member.removed', (e) => this.onMemberRemoved(e.conversationId, e.userId)),
      s.on('device.added', (e) => this.onDeviceEvent(e)),
      s.on('device.revoked', (e) => this.onDeviceEvent(e)),
      s.on('key_packages.low', (e) => this.onKeyPackagesLow(e.deviceId)),
      s.on('resync', async () => {
        await this.syncNow(true);
        await this.drain();
      }),
    );
  }

  /** Registers a handler; returns a function that removes it. Handlers run one at a time, in log order. */
  on<K extends MessengerEventName>(type: K, handler: MessengerHandler<K>): () => void {
    const list = this.handlers.get(type) ?? [];
    const h = handler as (e: unknown) => void | Promise<void>;
    list.push(h);
    this.handlers.set(type, list);
    return () => {
      const i = list.indexOf(h);
      if (i >= 0) list.splice(i, 1);
    };
  }

  /** Stops handling session events and retrying joins (the session itself stays open). */
  close(): void {
    this.closed = true;
    for (const off of this.unsubscribe.splice(0)) off();
    for (const s of this.stranded.values()) clearTimeout(s.timer);
  }

  // ---- [EC1] device ----

  /**
   * First run: generates the device's signature keys, registers the device
   * (binding the session to it) and uploads key packages (a batch plus a
   * last-resort one). Later runs bind the session to the stored device by
   * signing the server's bind challenge, and top the key packages up. Call
   * it before `session.start()` so device-addressed events reach it.
   */
  async setupDevice(name: string): Promise<DeviceInfo> {
    const me = await this.client.me();
    let device = await this.loadDevice();
    let created = false;
    if (device) {
      if (device.userId !== me.id) throw new E2eeError('device_mismatch', 'The key store holds a device of another account.');
      await this.bind(device);
    } else {
      const adopted = await this.registerDevice(me.id, name);
      device = adopted.device;
      created = adopted.created;
    }
    this.device = device;
    await this.ensureKeyPackages();
    // Welcomes that failed before a restart: their rejoins go on in the background.
    for (const key of await this.store.list(STRANDED_PREFIX)) {
      const conversationId = key.slice(STRANDED_PREFIX.length);
      if (this.stranded.has(conversationId)) continue;
      this.stranded.set(conversationId, { failures: 0, timer: undefined, busy: false, again: false });
      this.rejoinLater(conversationId);
    }
    return { userId: device.userId, deviceId: device.deviceId, cipherSuite: device.suite, created };
  }

  private async registerDevice(userId: string, name: string): Promise<{ device: StoredDevice; created: boolean }> {
    const pendingBytes = await this.store.get(PENDING_DEVICE_KEY);
    const pending = pendingBytes ? decodeDevice(pendingBytes) : undefined;
    const keys = pending?.keys ?? (await this.crypto.generateSignatureKeys(this.suite));
    const suite = pending?.suite ?? this.suite;
    // Kept before registering: a crash after the server registered the key must not lose it.
    if (!pending) await this.store.put(PENDING_DEVICE_KEY, encodeDevice({ userId, deviceId: '', suite, keys }));
    let registered: Device;
    let created = true;
    try {
      registered = await this.client.registerDevice({ name, signatureKey: toB64(keys.publicKey) });
    } catch (err) {
      // The key is already registered: an earlier run got this far and stopped; adopt that device.
      const mine = hasCode(err, 'conflict') ? (await this.client.devices(userId)).find((d) => bytesEqual(fromB64(d.signatureKey), keys.publicKey)) : undefined;
      if (!mine) throw err;
      registered = mine;
      created = false;
    }
    const device: StoredDevice = { userId, deviceId: registered.id, suite, keys };
    if (!created) await this.bind(device);
    await this.store.put(DEVICE_KEY, encodeDevice(device));
    await this.store.delete(PENDING_DEVICE_KEY);
    return { device, created };
  }

  private async bind(device: StoredDevice): Promise<void> {
    const sessionId = this.client.sessionId;
    if (!sessionId) throw new E2eeError('no_device', 'The client is not signed in.');
    const signature = await this.crypto.signBindChallenge(device.keys.privateKey, bindChallenge(sessionId));
    try {
      await this.client.bindDevice(device.deviceId, toB64(signature));
    } catch (err) {
      if (err instanceof NotFoundError) throw new E2eeError('device_revoked', 'The stored device was revoked; set up a new one with a fresh key store.', { cause: err });
      throw err;
    }
  }

  private async loadDevice(): Promise<StoredDevice | null> {
    if (this.device) return this.device;
    const bytes = await this.store.get(DEVICE_KEY);
    if (!bytes) return null;
    this.device = decodeDevice(bytes);
    return this.device;
  }

  private async requireDevice(): Promise<StoredDevice> {
    const d = await this.loadDevice();
    if (!d) throw new E2eeError('no_device', 'Call setupDevice first.');
    return d;
  }

  private identity(d: StoredDevice): MlsDeviceIdentity {
    return { userId: d.userId, deviceId: d.deviceId };
  }

  /** Tops up this device's key packages: a batch when the stock is below the low-water mark, a last-resort one when missing. */
  private ensureKeyPackages(): Promise<void> {
    this.replenishing ??= (async () => {
      const device = await this.requireDevice();
      const status = await this.client.keyPackageStatus();
      const stock = status.stock.find((s) => s.cipherSuite === device.suite);
      const needBatch = (stock?.available ?? 0) < E2EE_LIMITS.keyPackagesLowWater;
      const needLastResort = !stock?.lastResort;
      await this.pruneKeyPackages();
      if (needBatch || needLastResort) await this.uploadKeyPackages(device, needBatch ? this.batch : 0, needLastResort);
    })().finally(() => {
      this.replenishing = null;
    });
    return this.replenishing;
  }

  private async uploadKeyPackages(device: StoredDevice, count: number, lastResort: boolean): Promise<void> {
    const identity = this.identity(device);
    const fresh = await this.crypto.createKeyPackages(identity, device.keys, device.suite, count);
    const spare = lastResort ? (await this.crypto.createKeyPackages(identity, device.keys, device.suite, 1, { lastResort: true }))[0] : undefined;
    // Private halves first: a package the server hands out must always be openable here.
    for (const kp of spare ? [...fresh, spare] : fresh) {
      await this.store.put(KP_PREFIX + toB64url(kp.ref), packRecord({ kind: 'kp', lastResort: kp.lastResort, notAfter: kp.notAfter }, kp.privateState));
    }
    await this.client.uploadKeyPackages({ keyPackages: fresh.map((k) => toB64(k.publicBytes)), ...(spare ? { lastResort: toB64(spare.publicBytes) } : {}) });
  }

  /** Deletes private key packages past their lifetime (no peer can use them any more). */
  private async pruneKeyPackages(): Promise<void> {
    const now = Date.now() / 1000;
    for (const key of await this.store.list(KP_PREFIX)) {
      const bytes = await this.store.get(key);
      if (!bytes) continue;
      const notAfter = unpackRecord(bytes, 'kp').meta.notAfter;
      if (typeof notAfter === 'number' && notAfter < now) await this.store.delete(key);
    }
  }

  private async onKeyPackagesLow(deviceId: string): Promise<void> {
    const device = await this.loadDevice();
    if (device?.deviceId === deviceId) await this.ensureKeyPackages();
  }

  // ---- [EC2] conversations ----

  /**
   * Creates an encrypted conversation (direct for one other user without a
   * title, else a group with `title`), initialises its MLS group and adds
   * every device of every member, this user's other devices included. An
   * existing direct conversation this device already holds is returned as
   * is; one another device initialised is joined by external commit unless
   * a Welcome for this device is on its way.
   */
  async openConversation(userIds: readonly string[], opts: { title?: string } = {}): Promise<OpenedConversation> {
    const device = await this.requireDevice();
    const others = [...new Set(userIds)].filter((u) => u !== device.userId);
    if (others.length === 0) throw new E2eeError('invalid_argument', 'An encrypted conversation needs at least one other user.');
    if (others.length > 1 && opts.title === undefined) throw new E2eeError('invalid_argument', 'A group needs a title.');
    const conversation =
      others.length === 1 && opts.title === undefined
        ? await this.client.direct(others[0]!, { encryption: 'mls' })
        : await this.client.createGroup(opts.title!, others, { encryption: 'mls' });
    if (conversation.encryption !== 'mls') throw new E2eeError('not_encrypted', 'The server returned a conversation without end-to-end encryption.');
    const outcome = await this.withLock(conversation.id, async () => {
      if (await this.loadEntry(conversation.id)) return 'exists' as const;
      const group = await this.crypto.createGroup(utf8(conversation.id), this.identity(device), device.keys, device.suite);
      try {
        await this.client.mlsInit(conversation.id, { cipherSuite: device.suite, groupInfo: toB64(group.groupInfo) });
      } catch (err) {
        if (hasCode(err, 'conflict')) return 'taken' as const;
        throw err;
      }
      const entry = this.newEntry(conversation.id, group.state, { processedSeq: conversation.lastSeq, joinSeq: conversation.lastSeq, joinEpoch: 0 });
      await this.saveEntry(entry);
      this.queueEmit('joined', { conversationId: conversation.id, epoch: 0, via: 'create' });
      return 'created' as const;
    });
    let missing: OpenedConversation['missing'] = [];
    if (outcome === 'taken') await this.joinExternal(conversation.id, false);
    else if (outcome === 'created') missing = await this.addDevices(conversation.id, [device.userId, ...others]);
    this.kick();
    return { conversation, missing };
  }

  // ---- [EC5] membership ----

  /** Adds a member (REST) and commits the addition of all their devices, with the Welcome. */
  async addMember(conversationId: string, userId: string): Promise<OpenedConversation['missing']> {
    await this.requireEntry(conversationId);
    try {
      await this.client.addMember(conversationId, userId);
    } catch (err) {
      // Already a member (e.g. a retry after a failed commit): only the MLS part is left to do.
      if (!hasCode(err, 'conflict')) throw err;
    }
    const missing = await this.addDevices(conversationId, [userId]);
    this.kick();
    return missing;
  }

  /** Removes a member (REST; your own id leaves) and commits the removal of all their leaves. */
  async removeMember(conversationId: string, userId: string): Promise<void> {
    const device = await this.requireDevice();
    await this.client.removeMember(conversationId, userId);
    if (userId === device.userId) {
      // Left: the remaining members commit our removal (the server makes them, [DS6]).
      await this.withLock(conversationId, () => this.leaveLocked(conversationId));
    } else {
      await this.removeStaleDevices(conversationId);
    }
    this.kick();
  }

  /**
   * Commits the removal of every leaf that no longer belongs in the group:
   * devices of users who are no longer members and revoked devices. Does
   * nothing when there are none. Returns the group's epoch afterwards.
   */
  async removeStaleDevices(conversationId: string): Promise<number> {
    const epoch = await this.commitLoop(conversationId, async (state) => {
      const removeLeaves = await this.staleLeaves(conversationId, state);
      return removeLeaves.length ? { removeLeaves } : null;
    });
    this.kick();
    return epoch;
  }

  /** Commits a path update (fresh keys for this device: post-compromise security). Returns the new epoch. */
  async updateKeys(conversationId: string): Promise<number> {
    const epoch = await this.commitLoop(conversationId, async (state) => ({ removeLeaves: await this.staleLeaves(conversationId, state) }));
    this.kick();
    return epoch;
  }

  /** Claims key packages of every device of `userIds` and commits their addition (skipping devices already in the tree). */
  private async addDevices(conversationId: string, userIds: readonly string[]): Promise<OpenedConversation['missing']> {
    // Packages must be of the group's suite, whatever this device's default is.
    const suite = await this.withLock(conversationId, async () => this.crypto.suite((await this.requireEntry(conversationId)).state));
    const claimed: ClaimedKeyPackage[] = [];
    const missing: OpenedConversation['missing'] = [];
    for (let i = 0; i < userIds.length; i += E2EE_LIMITS.claimMaxUsers) {
      const r = await this.client.claimKeyPackages({ userIds: userIds.slice(i, i + E2EE_LIMITS.claimMaxUsers), cipherSuite: suite });
      claimed.push(...r.keyPackages);
      missing.push(...r.missing);
    }
    await this.commitLoop(conversationId, async (state) => {
      const inTree = new Set(this.crypto.members(state).map((m) => m.deviceId));
      const add = claimed.filter((k) => !inTree.has(k.deviceId)).map((k) => fromB64(k.keyPackage));
      const removeLeaves = await this.staleLeaves(conversationId, state);
      return add.length || removeLeaves.length ? { add, removeLeaves } : null;
    });
    return missing;
  }

  /** Leaves of non-members and of revoked devices (never this device's own leaf). */
  private async staleLeaves(conversationId: string, state: MlsGroupState): Promise<number[]> {
    const own = this.crypto.ownLeaf(state);
    const leaves = this.crypto.members(state).filter((m) => m.leafIndex !== own);
    if (leaves.length === 0) return [];
    const members = new Set((await this.client.conversation(conversationId)).members.map((m) => m.userId));
    const active = new Map<string, Set<string>>();
    for (const userId of new Set(leaves.filter((l) => members.has(l.userId)).map((l) => l.userId))) {
      active.set(userId, new Set((await this.client.devices(userId)).map((d) => d.id)));
    }
    return leaves.filter((l) => !members.has(l.userId) || !active.get(l.userId)?.has(l.deviceId)).map((l) => l.leafIndex);
  }

  /**
   * [EC6] Builds a commit from the current state, submits it and applies it
   * once accepted. On 409 epoch_conflict it discards it, processes what the
   * server accepted meanwhile and rebuilds (bounded). `build` returning null
   * means nothing to commit. Returns the group's epoch afterwards.
   */
  private async commitLoop(conversationId: string, build: (state: MlsGroupState) => Promise<CommitChanges | null>): Promise<number> {
    for (let attempt = 0; attempt < this.maxCommitAttempts; attempt++) {
      const result = await this.withLock(conversationId, async () => {
        const entry = await this.requireEntry(conversationId);
        const changes = await build(entry.state);
        if (!changes) return { epoch: this.crypto.epoch(entry.state) };
        const created = await this.crypto.commit(entry.state, changes);
        try {
          await this.client.mlsCommit(conversationId, {
            commit: toB64(created.commit),
            groupInfo: toB64(created.groupInfo),
            ...(created.welcome ? { welcome: toB64(created.welcome) } : {}),
          });
        } catch (err) {
          this.crypto.discardCommit(created.pendingState);
          if (!hasCode(err, 'epoch_conflict')) throw err;
          await this.catchUpLocked(entry);
          await this.saveEntry(entry);
          if (entry.gone) throw new E2eeError('not_joined', 'This device was removed from the group.', { cause: err });
          return null;
        }
        const before = this.crypto.members(entry.state);
        entry.state = this.crypto.acceptCommit(created.pendingState);
        await this.saveEntry(entry);
        this.noteTreeChange(before, this.crypto.members(entry.state));
        // Our own commit's log entry is skipped when it arrives: its epoch is below ours by then.
        return { epoch: this.crypto.epoch(entry.state) };
      });
      if (result) return result.epoch;
    }
    throw new E2eeError('commit_failed', `The group kept moving: the commit lost ${this.maxCommitAttempts} epochs in a row.`);
  }

  // ---- [EC4] sending ----

  /**
   * Encrypts `text` as a padded `{v:1, text}` payload and sends it through
   * the session. When the server demands removals first (409
   * mls_commit_required) it commits them and retries; when its epoch is too
   * old, it catches up and retries. Resolves with the stored (encrypted)
   * message; the `message` event for it comes when its log entry does.
   */
  async send(conversationId: string, text: string): Promise<Message> {
    if (text.length === 0 || text.length > LIMITS.textMaxChars) throw new E2eeError('invalid_argument', `Text must have 1 to ${LIMITS.textMaxChars} characters.`);
    const payload = encodePayload(text);
    if (payload.length > PAYLOAD_MAX_BYTES) throw new E2eeError('invalid_argument', 'Text is too long once encoded.');
    const clientMsgId = newClientMsgId();
    for (let attempt = 0; ; attempt++) {
      const ciphertext = await this.withLock(conversationId, async () => {
        const entry = await this.requireEntry(conversationId);
        const out = await this.crypto.encrypt(entry.state, payload);
        entry.state = out.state;
        await this.saveEntry(entry);
        return out.ciphertext;
      });
      this.sent.set(clientMsgId, { conversationId, text });
      try {
        // The same clientMsgId on a retry: a refused send stored nothing, so there is nothing to collide with.
        return await this.session.send(conversationId, { type: 'encrypted', ciphertext: toB64(ciphertext) }, clientMsgId);
      } catch (err) {
        this.sent.delete(clientMsgId);
        if (attempt >= this.maxCommitAttempts - 1) throw err;
        if (hasCode(err, 'mls_commit_required')) await this.removeStaleDevices(conversationId);
        else if (hasCode(err, 'invalid_mls_message')) await this.catchUp(conversationId);
        else throw err;
      }
    }
  }

  // ---- [EC7] new device ----

  /**
   * Joins, by external commit from the server's GroupInfo, every MLS
   * conversation of this user that this device holds no state for. Returns
   * the ids of the conversations joined.
   */
  async addMyNewDevice(): Promise<string[]> {
    await this.requireDevice();
    const joined: string[] = [];
    for (const conversation of await this.allConversations()) {
      if (conversation.encryption !== 'mls') continue;
      if (await this.joinExternal(conversation.id, false)) joined.push(conversation.id);
    }
    this.kick();
    return joined;
  }

  private async allConversations(): Promise<Conversation[]> {
    const out: Conversation[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.client.conversations({ limit: LIMITS.pageMax, ...(cursor ? { cursor } : {}) });
      out.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
    return out;
  }

  /**
   * External commit into a conversation's group. Without `resync` it does
   * nothing if this device has state, or a leaf already (its Welcome is on
   * the way). With `resync` it replaces this device's leaf and state.
   */
  private joinExternal(conversationId: string, resync: boolean): Promise<boolean> {
    return this.withLock(conversationId, async () => {
      const existing = await this.loadEntry(conversationId);
      if (existing && !resync) return false;
      return this.joinExternalLocked(conversationId, existing, resync);
    });
  }

  private async joinExternalLocked(conversationId: string, existing: Entry | undefined, resync: boolean): Promise<boolean> {
    const device = await this.requireDevice();
    for (let attempt = 0; attempt < this.maxCommitAttempts; attempt++) {
      let status;
      try {
        status = await this.client.mlsStatus(conversationId);
      } catch (err) {
        if (hasCode(err, 'mls_not_initialized')) return false;
        throw err;
      }
      if (!resync && status.leaves.some((l) => l.deviceId === device.deviceId)) return false;
      const join = await this.crypto.joinExternal(fromB64(status.groupInfo), this.identity(device), device.keys, { resync });
      let result;
      try {
        result = await this.client.mlsCommit(conversationId, { commit: toB64(join.commit), groupInfo: toB64(join.groupInfo) });
      } catch (err) {
        this.crypto.discardCommit(join.pendingState);
        if (hasCode(err, 'epoch_conflict')) continue;
        throw err;
      }
      const state = this.crypto.acceptCommit(join.pendingState);
      const epoch = this.crypto.epoch(state);
      const seq = result.message.seq;
      const entry = existing ?? this.newEntry(conversationId, state, { processedSeq: seq, joinSeq: seq, joinEpoch: epoch });
      Object.assign(entry, { state, processedSeq: seq, joinSeq: seq, joinEpoch: epoch, gone: false });
      this.entries.set(conversationId, entry);
      await this.saveEntry(entry);
      this.queueEmit('joined', { conversationId, epoch, via: resync ? 'resync' : 'external' });
      return true;
    }
    throw new E2eeError('commit_failed', `The group kept moving: the external join lost ${this.maxCommitAttempts} epochs in a row.`);
  }

  // ---- [EC3] processing in log order ----

  /**
   * Processes every log entry of every group this device holds that it has
   * not handled yet (e.g. at start-up without a stored session cursor).
   * With `joinMissing`, also joins by external commit the MLS conversations
   * it holds no state for (after events were lost, Welcomes may be too).
   */
  async sync(opts: { joinMissing?: boolean } = {}): Promise<void> {
    await this.syncNow(opts.joinMissing === true);
    this.kick();
  }

  private async syncNow(joinMissing: boolean): Promise<void> {
    const device = await this.loadDevice();
    if (!device) return;
    for (const key of await this.store.list(GROUP_PREFIX)) await this.catchUp(key.slice(GROUP_PREFIX.length));
    if (joinMissing) await this.addMyNewDevice();
    // Events may have been lost, commits that repaired a tree among them.
    for (const conversationId of [...this.stranded.keys()]) await this.rejoin(conversationId);
  }

  /** Processes the conversation's log entries after the last handled one. */
  private async catchUp(conversationId: string): Promise<void> {
    await this.withLock(conversationId, async () => {
      const entry = await this.loadEntry(conversationId);
      if (!entry) return;
      await this.catchUpLocked(entry);
      await this.saveEntry(entry);
    });
  }

  private async catchUpLocked(entry: Entry): Promise<void> {
    for (;;) {
      const page = await this.client.history(entry.conversationId, { afterSeq: entry.processedSeq, limit: HISTORY_PAGE });
      for (const m of page) {
        if (m.seq <= entry.processedSeq) continue;
        await this.processLocked(entry, m);
        if (entry.gone) return;
      }
      if (page.length < HISTORY_PAGE) return;
    }
  }

  private async onMessageCreated(message: Message): Promise<void> {
    const type = message.content.type;
    if (type !== 'encrypted' && type !== 'mls-commit') return;
    if (!(await this.loadDevice())) return;
    const conversationId = message.conversationId;
    const next = await this.withLock(conversationId, async (): Promise<'rejoin' | 'merge' | null> => {
      const entry = await this.loadEntry(conversationId);
      if (!entry) {
        if (message.content.type !== 'mls-commit') return null;
        this.noteCommit(conversationId, message.content.epoch, message.seq);
        // [EC9] The commit may have made the tree joinable again.
        return this.stranded.has(conversationId) ? 'rejoin' : null;
      }
      if (message.seq <= entry.processedSeq) return null;
      // Entries in between were missed (no cursor, lost events): the log has them.
      if (message.seq > entry.processedSeq + 1) await this.catchUpLocked(entry);
      if (!entry.gone && message.seq > entry.processedSeq) await this.processLocked(entry, message);
      await this.saveEntry(entry);
      return type === 'mls-commit' ? 'merge' : null;
    });
    if (next === 'rejoin') await this.rejoin(conversationId);
    else if (next === 'merge') await this.mergeOwnLeaf(conversationId);
    await this.drain();
  }

  /**
   * Handles one log entry. Definitive refusals (CryptoError) are reported
   * and the entry counts as handled; anything else (network, key store)
   * propagates with the entry unhandled, so the session delivers it again.
   */
  private async processLocked(entry: Entry, message: Message): Promise<void> {
    const c = message.content;
    if (c.type === 'mls-commit') await this.applyCommitLocked(entry, message, c);
    else if (c.type === 'encrypted') await this.decryptLocked(entry, message, c.ciphertext);
    // Text cannot occur in an MLS conversation; tombstones carry nothing.
    entry.processedSeq = Math.max(entry.processedSeq, message.seq);
  }

  private async applyCommitLocked(entry: Entry, message: Message, c: MlsCommitContent): Promise<void> {
    const epoch = this.crypto.epoch(entry.state);
    if (c.epoch < epoch) {
      // Already applied (our own commit) or from before we joined; the one that made us a member marks where our log begins.
      if (entry.joinSeq === null && c.epoch === entry.joinEpoch - 1) entry.joinSeq = message.seq;
      return;
    }
    const report = (reason: UndecryptableReason, error?: Error) =>
      this.queueEmit('undecryptable', {
        conversationId: entry.conversationId, seq: message.seq, messageId: message.id, senderId: message.senderId, kind: 'commit', reason, ...(error ? { error } : {}),
      });
    if (c.epoch > epoch) {
      // A commit of a later epoch means one was lost on our side: our state cannot follow the group any more.
      report('missed_commit');
      await this.resyncLocked(entry);
      return;
    }
    const bytes = fromB64(c.commit);
    const before = this.crypto.members(entry.state);
    let processed;
    try {
      if (!isPublicMessage(bytes)) throw new CryptoError('invalid_message', 'a commit must be a PublicMessage');
      processed = await this.crypto.process(entry.state, bytes);
    } catch (err) {
      if (!(err instanceof CryptoError)) throw err;
      report(err.code, err);
      await this.resyncLocked(entry);
      return;
    }
    if (processed.kind !== 'commit') {
      report('invalid_message');
      await this.resyncLocked(entry);
      return;
    }
    entry.state = processed.state;
    if (!processed.active) {
      await this.leaveLocked(entry.conversationId);
      return;
    }
    this.noteTreeChange(before, this.crypto.members(entry.state));
  }

  private async decryptLocked(entry: Entry, message: Message, ciphertext: string): Promise<void> {
    // Before this device joined: not meant for it.
    if (entry.joinSeq === null || message.seq <= entry.joinSeq) return;
    const device = await this.requireDevice();
    const base = { conversationId: entry.conversationId, seq: message.seq, messageId: message.id, senderId: message.senderId };
    const own = message.senderId === device.userId ? this.sent.get(message.clientMsgId) : undefined;
    if (own?.conversationId === entry.conversationId) {
      this.sent.delete(message.clientMsgId);
      this.queueEmit('message', { ...base, senderDeviceId: device.deviceId, text: own.text, sentAt: message.createdAt, own: true });
      return;
    }
    const report = (reason: UndecryptableReason, error?: Error) => this.queueEmit('undecryptable', { ...base, kind: 'message', reason, ...(error ? { error } : {}) });
    let bytes: Uint8Array;
    try {
      bytes = fromB64(ciphertext);
    } catch (err) {
      return report('invalid_message', toError(err));
    }
    if (!isPrivateMessage(bytes)) return report('invalid_message');
    let processed;
    try {
      processed = await this.crypto.process(entry.state, bytes);
    } catch (err) {
      if (!(err instanceof CryptoError)) throw err;
      return report(err.code, err);
    }
    if (processed.kind !== 'application') return report('invalid_message');
    entry.state = processed.state;
    // The server vouches for who sent it, MLS for which device: they must agree.
    if (processed.senderIdentity.userId !== message.senderId) return report('sender_mismatch');
    const payload = decodePayload(processed.plaintext);
    if (!payload) return report('invalid_payload');
    this.queueEmit('message', { ...base, senderDeviceId: processed.senderIdentity.deviceId, text: payload.text, sentAt: message.createdAt, own: false });
  }

  /** A group we cannot follow any more: rejoin by external commit, replacing our leaf. */
  private async resyncLocked(entry: Entry): Promise<void> {
    try {
      await this.joinExternalLocked(entry.conversationId, entry, true);
    } catch (err) {
      // Retried at the next log entry of this conversation; the state is unchanged meanwhile.
      this.queueEmit('error', { context: `rejoining conversation ${entry.conversationId}`, error: toError(err) });
    }
  }

  private async onWelcome(e: Extract<ServerEvent, { type: 'mls.welcome' }>): Promise<void> {
    const device = await this.loadDevice();
    if (!device) return;
    const conversationId = e.conversationId;
    const outcome = await this.withLock(conversationId, async (): Promise<'joined' | 'failed' | null> => {
      if (await this.loadEntry(conversationId)) return null;
      const fail = (error: unknown) => {
        this.queueEmit('error', { context: `joining conversation ${conversationId} from a Welcome`, error: toError(error) });
        return 'failed' as const;
      };
      let state: MlsGroupState;
      try {
        const welcome = fromB64(e.welcome);
        const refs = await this.crypto.welcomeKeyPackageRefs(welcome);
        let found: { key: string; lastResort: boolean; privateState: Uint8Array } | undefined;
        for (const ref of refs) {
          const key = KP_PREFIX + toB64url(ref);
          const bytes = await this.store.get(key);
          if (!bytes) continue;
          const { meta, blob } = unpackRecord(bytes, 'kp');
          found = { key, lastResort: meta.lastResort === true, privateState: blob };
          break;
        }
        if (!found) return fail(new CryptoError('not_for_us', 'The Welcome names none of this device\'s key packages.'));
        state = await this.crypto.joinFromWelcome(welcome, found.privateState, device.keys);
        if (!bytesEqual(this.crypto.groupId(state), utf8(conversationId))) return fail(new CryptoError('wrong_group', 'The Welcome is for another group.'));
        // A one-time package is spent; the last-resort one stays for the next claimer.
        if (!found.lastResort) await this.store.delete(found.key);
      } catch (err) {
        if (!(err instanceof CryptoError)) throw err;
        return fail(err);
      }
      const joinEpoch = this.crypto.epoch(state);
      const commitSeq = this.noted.get(conversationId)?.get(joinEpoch - 1);
      this.noted.delete(conversationId);
      const entry = this.newEntry(conversationId, state, { processedSeq: commitSeq ?? 0, joinSeq: commitSeq ?? null, joinEpoch });
      this.queueEmit('joined', { conversationId, epoch: joinEpoch, via: 'welcome' });
      // Without the adding commit's place in the log, read the log to find it (and everything after it).
      if (commitSeq === undefined) await this.catchUpLocked(entry);
      await this.saveEntry(entry);
      return 'joined';
    });
    if (outcome === 'failed') {
      // [EC9] Our leaf (if the add stands) would stay without a state: rejoin from the server's GroupInfo.
      await this.strand(conversationId);
    } else if (outcome === 'joined') {
      if (this.stranded.has(conversationId)) await this.unstrand(conversationId);
      await this.drain();
      await this.mergeOwnLeaf(conversationId);
    }
    await this.drain();
  }

  private async onMemberRemoved(conversationId: string, userId: string): Promise<void> {
    const device = await this.loadDevice();
    if (device?.userId !== userId) return;
    await this.withLock(conversationId, () => this.leaveLocked(conversationId));
    await this.drain();
  }

  private async leaveLocked(conversationId: string): Promise<void> {
    const entry = this.entries.get(conversationId);
    if (entry) entry.gone = true;
    this.entries.delete(conversationId);
    this.noted.delete(conversationId);
    const had = entry !== undefined || (await this.store.get(groupKey(conversationId))) !== undefined;
    await this.store.delete(groupKey(conversationId));
    if (this.stranded.has(conversationId)) await this.unstrand(conversationId);
    if (had) this.queueEmit('removed', { conversationId });
  }

  // ---- [EC9] around ts-mls 1.6.4's tree validation ----
  // Joining (by Welcome or external commit) runs ts-mls validateRatchetTree, which wants every non-blank node
  // on an unmerged leaf's path to list exactly the same unmerged leaves; RFC 9420 §12.4.3.1 asks that only up
  // to the node listing it. A path update above a lower node still listing a leaf, or two adds under a shared
  // node, make trees every member processes but no new device can join.

  /**
   * Commits a path update while this device's leaf is unmerged somewhere (it was added by a commit without
   * an UpdatePath), so that no later tree lists it at one node and not at another. A lost epoch is handled
   * as in [EC6]; the winner's path may have made ours needless, which the rebuild sees.
   */
  private async mergeOwnLeaf(conversationId: string): Promise<void> {
    const entry = this.entries.get(conversationId);
    if (!entry || entry.gone || this.merging.has(conversationId) || !this.crypto.isUnmerged(entry.state)) return;
    this.merging.add(conversationId);
    try {
      await this.commitLoop(conversationId, async (state) => (this.crypto.isUnmerged(state) ? { removeLeaves: await this.staleLeaves(conversationId, state) } : null));
    } catch (err) {
      // Removed or left meanwhile: nothing to update. Otherwise the next commit of the conversation tries again.
      if (!(err instanceof NotFoundError || (err instanceof E2eeError && err.code === 'not_joined'))) {
        this.queueEmit('error', { context: `committing a path update after joining conversation ${conversationId}`, error: toError(err) });
      }
    } finally {
      this.merging.delete(conversationId);
    }
  }

  /** Marks a conversation whose Welcome failed (persistently) and makes the first rejoin attempt. */
  private async strand(conversationId: string): Promise<void> {
    if (!this.stranded.has(conversationId)) {
      await this.store.put(STRANDED_PREFIX + conversationId, packRecord({ kind: 'stranded' }));
      this.stranded.set(conversationId, { failures: 0, timer: undefined, busy: false, again: false });
    }
    await this.rejoin(conversationId);
  }

  private async unstrand(conversationId: string): Promise<void> {
    clearTimeout(this.stranded.get(conversationId)?.timer);
    this.stranded.delete(conversationId);
    await this.store.delete(STRANDED_PREFIX + conversationId);
  }

  /**
   * One external join in resync mode (it replaces this device's leaf) of a stranded conversation. A failure
   * schedules the next attempt with backoff; once the timed attempts are spent, each failure is reported as
   * `join_failed` and the next attempt waits for a commit of the conversation or a session resync.
   */
  private async rejoin(conversationId: string): Promise<void> {
    const s = this.stranded.get(conversationId);
    if (!s || this.closed) return;
    if (s.busy) {
      s.again = true;
      return;
    }
    s.busy = true;
    clearTimeout(s.timer);
    s.timer = undefined;
    let failure: unknown;
    try {
      do {
        s.again = false;
        failure = undefined;
        try {
          await this.withLock(conversationId, async () => {
            // A later Welcome may have joined us meanwhile; an uninitialised group (false) has nothing to join.
            if (!(await this.loadEntry(conversationId))) await this.joinExternalLocked(conversationId, undefined, true);
          });
        } catch (err) {
          // No longer a member: there is nothing to rejoin.
          if (!(err instanceof NotFoundError)) failure = err;
        }
      } while (failure !== undefined && s.again && !this.closed);
    } finally {
      s.busy = false;
    }
    if (this.stranded.get(conversationId) !== s) return;
    if (failure === undefined) return this.unstrand(conversationId);
    s.failures++;
    if (s.failures < this.rejoinAttempts) {
      s.timer = setTimeout(() => this.rejoinLater(conversationId), this.rejoinDelay(s.failures));
      return;
    }
    const error = new E2eeError(
      'join_failed',
      `This device holds no group state for conversation ${conversationId}: its Welcome and ${s.failures} external joins failed. It tries again at the conversation's next commit.`,
      { cause: failure },
    );
    this.queueEmit('error', { context: `rejoining conversation ${conversationId}`, error });
  }

  /** A rejoin started from a timer: nobody awaits it, so every failure becomes an event. */
  private rejoinLater(conversationId: string): void {
    const run = async () => {
      try {
        await this.rejoin(conversationId);
      } catch (err) {
        this.queueEmit('error', { context: `rejoining conversation ${conversationId}`, error: toError(err) });
      }
      await this.drain();
    };
    void run();
  }

  /** Half the exponential delay plus up to as much at random: stranded devices of one commit do not retry in step. */
  private rejoinDelay(failures: number): number {
    const d = Math.min(this.rejoinMaxMs, this.rejoinInitialMs * 2 ** (failures - 1));
    return d / 2 + Math.random() * (d / 2);
  }

  private noteCommit(conversationId: string, epoch: number, seq: number): void {
    let m = this.noted.get(conversationId);
    if (!m) {
      if (this.noted.size >= NOTED_CONVERSATIONS) this.noted.delete(this.noted.keys().next().value!);
      m = new Map();
      this.noted.set(conversationId, m);
    }
    m.set(epoch, seq);
    if (m.size > NOTED_EPOCHS_PER_CONVERSATION) m.delete(m.keys().next().value!);
  }

  // ---- [EC5] revoked devices, [EC8] device sets ----

  private async onDeviceEvent(e: Extract<ServerEvent, { type: 'device.added' | 'device.revoked' }>): Promise<void> {
    const userId = e.type === 'device.added' ? e.device.userId : e.userId;
    this.directory.delete(userId);
    const device = await this.loadDevice();
    if (!device) return;
    await this.refreshDevices(userId, e.type, e.type === 'device.added' ? e.device : undefined);
    if (e.type === 'device.revoked' && e.deviceId !== device.deviceId) {
      // Every member races to remove the leaf; losers find it gone after catching up ([EC6]).
      for (const key of await this.store.list(GROUP_PREFIX)) {
        const conversationId = key.slice(GROUP_PREFIX.length);
        const entry = await this.withLock(conversationId, () => this.loadEntry(conversationId));
        if (!entry || !this.crypto.members(entry.state).some((m) => m.deviceId === e.deviceId)) continue;
        try {
          await this.removeStaleDevices(conversationId);
        } catch (err) {
          // One group failing (e.g. we were removed meanwhile) must not keep the others from being cleaned.
          this.queueEmit('error', { context: `removing revoked device from conversation ${conversationId}`, error: toError(err) });
        }
      }
    }
    await this.drain();
  }

  /**
   * [EC8] The safety number between this user and `userId`, a member of the
   * conversation, over both users' device keys as the key directory lists
   * them. Compare it out of band (or its QR payload with compareQr).
   */
  async safetyNumber(conversationId: string, userId: string): Promise<SafetyNumber> {
    const device = await this.requireDevice();
    if (userId === device.userId) throw new E2eeError('invalid_argument', 'A safety number is between two different users.');
    const conversation = await this.client.conversation(conversationId);
    if (!conversation.members.some((m) => m.userId === userId)) throw new E2eeError('invalid_argument', 'That user is not a member of the conversation.');
    await this.refreshDevices(device.userId, 'refresh');
    await this.refreshDevices(userId, 'refresh');
    const [mine, theirs] = await Promise.all([this.fingerprintOf(device.userId), this.fingerprintOf(userId)]);
    this.kick();
    return safetyNumber(mine, theirs);
  }

  /** Fingerprint of a user's last known device set; memoised (5,200 SHA-512 rounds each). */
  private fingerprintOf(userId: string): Promise<Fingerprint> {
    const keys = this.baselines.get(userId)!.map((d) => d.signatureKey);
    const id = `${userId}:${keys.map(toB64).sort().join(',')}`;
    let fp = this.fingerprints.get(id);
    if (!fp) {
      if (this.fingerprints.size >= FINGERPRINT_MEMO) this.fingerprints.delete(this.fingerprints.keys().next().value!);
      fp = fingerprint(userId, keys);
      // A failure is not remembered: the next call computes again.
      void fp.catch(() => this.fingerprints.delete(id));
      this.fingerprints.set(id, fp);
    }
    return fp;
  }

  /**
   * Reloads a user's devices and reports a change against the last known
   * set. Without a known set there is nothing to compare, except for an
   * added device (the set before is the current one without it).
   */
  private async refreshDevices(userId: string, cause: DevicesChanged['cause'], added?: Device): Promise<void> {
    const device = await this.requireDevice();
    const current = (await this.client.devices(userId)).map((d): DeviceKey => ({ userId, deviceId: d.id, signatureKey: fromB64(d.signatureKey) }));
    this.directory.set(userId, new Map(current.map((d) => [d.deviceId, toB64(d.signatureKey)])));
    const previous = this.baselines.get(userId) ?? (added ? current.filter((d) => d.deviceId !== added.id) : undefined);
    this.baselines.set(userId, current);
    if (!previous) return;
    let self;
    if (userId !== device.userId) {
      if (!this.baselines.has(device.userId)) await this.refreshDevices(device.userId, cause);
      self = await this.fingerprintOf(device.userId);
    }
    for (const change of await diffDevices(previous, current, self)) this.queueEmit('devicesChanged', { ...change, cause });
  }

  /** After a commit: users whose leaves changed get their device set rechecked (reported if we knew it). */
  private noteTreeChange(before: MlsMember[], after: MlsMember[]): void {
    const key = (m: MlsMember) => `${m.userId}/${m.deviceId}`;
    const a = new Set(after.map(key));
    const b = new Set(before.map(key));
    const users = new Set([...before.filter((m) => !a.has(key(m))), ...after.filter((m) => !b.has(key(m)))].map((m) => m.userId));
    for (const userId of users) {
      if (!this.baselines.has(userId)) continue;
      this.jobs.push(async () => {
        try {
          await this.refreshDevices(userId, 'tree');
        } catch (err) {
          await this.dispatch('error', { context: `reloading the devices of ${userId}`, error: toError(err) });
        }
      });
    }
  }

  /**
   * The key-directory check every credential MLS validates goes through:
   * the leaf's signature key must be the one the directory lists for that
   * (user, device). Reloads a user's devices once when the device is unknown.
   */
  private async verifyDeviceKey(identity: MlsDeviceIdentity, key: Uint8Array): Promise<boolean> {
    const lookup = async (reload: boolean) => {
      let devices = this.directory.get(identity.userId);
      if (!devices || reload) {
        try {
          devices = new Map((await this.client.devices(identity.userId)).map((d) => [d.id, d.signatureKey]));
        } catch (err) {
          if (err instanceof NotFoundError) devices = new Map();
          else throw err;
        }
        this.directory.set(identity.userId, devices);
      }
      return devices.get(identity.deviceId);
    };
    const known = (await lookup(false)) ?? (await lookup(true));
    return known !== undefined && bytesEqual(fromB64(known), key);
  }

  // ---- inspection ----

  /** Whether this device holds the MLS state of the conversation. */
  async hasGroup(conversationId: string): Promise<boolean> {
    return (await this.loadEntry(conversationId)) !== undefined;
  }

  /** The epoch this device's group state is at. */
  async epoch(conversationId: string): Promise<number> {
    return this.withLock(conversationId, async () => this.crypto.epoch((await this.requireEntry(conversationId)).state));
  }

  /** RFC 9420 epoch_authenticator of this device's current epoch: equal on every member at the same epoch (a consistency check). */
  async epochAuthenticator(conversationId: string): Promise<Uint8Array> {
    return this.withLock(conversationId, async () => this.crypto.epochAuthenticator((await this.requireEntry(conversationId)).state));
  }

  /** The group's members as this device's ratchet tree has them. */
  async members(conversationId: string): Promise<MlsMember[]> {
    return this.withLock(conversationId, async () => this.crypto.members((await this.requireEntry(conversationId)).state));
  }

  // ---- state ----

  private newEntry(conversationId: string, state: MlsGroupState, meta: GroupMeta): Entry {
    const entry: Entry = { conversationId, state, ...meta, gone: false };
    this.entries.set(conversationId, entry);
    return entry;
  }

  private async loadEntry(conversationId: string): Promise<Entry | undefined> {
    const cached = this.entries.get(conversationId);
    if (cached) return cached;
    const bytes = await this.store.get(groupKey(conversationId));
    if (!bytes) return undefined;
    const { meta, state } = decodeGroupRecord(bytes);
    // Another call may have loaded it while we read.
    return this.entries.get(conversationId) ?? this.newEntry(conversationId, this.crypto.decodeState(state), meta);
  }

  private async requireEntry(conversationId: string): Promise<Entry> {
    await this.requireDevice();
    const entry = await this.loadEntry(conversationId);
    if (!entry) throw new E2eeError('not_joined', 'This device holds no MLS state for the conversation (not encrypted, or not joined yet).');
    return entry;
  }

  private async saveEntry(entry: Entry): Promise<void> {
    if (entry.gone) return;
    const meta: GroupMeta = { processedSeq: entry.processedSeq, joinSeq: entry.joinSeq, joinEpoch: entry.joinEpoch };
    await this.store.put(groupKey(entry.conversationId), encodeGroupRecord(meta, this.crypto.encodeState(entry.state)));
  }

  /** Runs `fn` after every earlier operation on the same conversation (MLS states are used one at a time). */
  private withLock<T>(conversationId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(conversationId) ?? Promise.resolve();
    const run = previous.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(conversationId, tail);
    void tail.then(() => {
      if (this.locks.get(conversationId) === tail) this.locks.delete(conversationId);
    });
    return run;
  }

  // ---- events to the app ----

  /**
   * Events are queued while a conversation is locked and dispatched after,
   * so an app handler may call send() without waiting on itself.
   */
  private queueEmit<K extends MessengerEventName>(type: K, event: MessengerEvents[K]): void {
    this.jobs.push(() => this.dispatch(type, event));
  }

  private async dispatch<K extends MessengerEventName>(type: K, event: MessengerEvents[K]): Promise<void> {
    for (const h of [...(this.handlers.get(type) ?? [])]) {
      try {
        await h(event);
      } catch (err) {
        // A failing app handler cannot undo a decryption (MLS keys are single-use): report it and go on.
        if (type !== 'error') await this.dispatch('error', { context: `a '${type}' handler threw`, error: toError(err) });
      }
    }
  }

  /**
   * Dispatches queued events one at a time, in the order they were queued;
   * resolves when the queue is empty (whoever started the dispatching).
   */
  private async drain(): Promise<void> {
    while (this.jobs.length > 0) {
      if (!this.draining) {
        const run = async () => {
          for (let job = this.jobs.shift(); job; job = this.jobs.shift()) await job();
        };
        this.draining = run().finally(() => {
          this.draining = null;
        });
      }
      await this.draining;
    }
  }

  /** Starts dispatching without waiting (from app-called methods: an app handler may be the caller). */
  private kick(): void {
    void this.drain();
  }
}

function encodeDevice(d: StoredDevice): Uint8Array {
  return packRecord({ kind: 'device', userId: d.userId, deviceId: d.deviceId, suite: d.suite, publicKey: toB64(d.keys.publicKey), privateKey: toB64(d.keys.privateKey) });
}

function decodeDevice(bytes: Uint8Array): StoredDevice {
  const { meta } = unpackRecord(bytes, 'device');
  const { userId, deviceId, suite, publicKey, privateKey } = meta;
  if (typeof userId !== 'string' || typeof deviceId !== 'string' || (suite !== 1 && suite !== 84) || typeof publicKey !== 'string' || typeof privateKey !== 'string') {
    throw new E2eeError('no_device', 'The key store holds a malformed device record.');
  }
  return { userId, deviceId, suite, keys: { publicKey: fromB64(publicKey), privateKey: fromB64(privateKey) } };
}
