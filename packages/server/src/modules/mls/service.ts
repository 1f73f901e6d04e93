import type { Content, MlsGroupStatus } from '@secureconnect/protocol';
import type { AppContext } from '../../context.js';
import { isUniqueViolation } from '../../infra/db/errors.js';
import type { MlsGroupsTable, MlsLeavesTable } from '../../infra/db/schema.js';
import { AppError, badRequest, forbidden, notFound } from '../../infra/errors.js';
import type { EventEntry } from '../../infra/eventlog.js';
import {
  APPLICATION_EPOCH_LAG, decodeCommit, groupIdOf, inspectApplicationMessage, inspectGroupInfo, inspectInitialGroupInfo, verifyCommit, welcomeForDevice,
  type InspectedGroupInfo, type LeafInfo, type VerifiedCommit,
} from '../../infra/mls/group.js';
import { fromB64 } from '../../infra/mls/suites.js';
import type { AuthContext, ConversationsService, DevicesService, MessagesService, MlsService } from '../../services.js';
import { MlsStore } from './store.js';

/** Conversations whose encryption this node remembers (it never changes). */
const ENCRYPTION_CACHE_MAX = 50_000;
/** Decoded GroupInfos of current epochs (a big group's tree is costly to decode on every commit); each may hold a large tree. */
const GROUP_INFO_CACHE_MAX = 16;

const invalid = (reason: string) => new AppError('invalid_mls_message', reason);

/** A Map kept in recency order and trimmed from the old end. */
class Lru<K, V> {
  private readonly map = new Map<K, V>();
  constructor(private readonly max: number) {}
  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }
  delete(key: K): void {
    this.map.delete(key);
  }
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
  }
}

export interface MlsDeps {
  conversations: ConversationsService;
  messages: MessagesService;
  devices: DevicesService;
}

/**
 * The MLS delivery service (docs/SPEC.md [DS1]–[DS9]). It keeps each
 * encrypted conversation's current epoch, GroupInfo and leaf owners, accepts
 * exactly one commit per epoch, sequences it in the conversation's log, routes
 * Welcomes to the devices they add, and makes sends wait while the group still
 * holds a removed member's or a revoked device's leaf. It never sees
 * application plaintext and never logs MLS bytes.
 */
export function createMlsService(ctx: AppContext, deps: MlsDeps): MlsService {
  const store = new MlsStore(ctx.database);
  const { events } = ctx;
  const encryptions = new Lru<string, 'none' | 'mls'>(ENCRYPTION_CACHE_MAX);
  const groupInfos = new Lru<string, Promise<InspectedGroupInfo>>(GROUP_INFO_CACHE_MAX);

  async function encryptionOf(conversationId: string): Promise<'none' | 'mls' | undefined> {
    const cached = encryptions.get(conversationId);
    if (cached) return cached;
    const e = await deps.conversations.encryptionOf(conversationId);
    if (e) encryptions.set(conversationId, e);
    return e;
  }

  /** The group of an encrypted conversation; the caller has passed the membership check. */
  async function requireGroup(conversationId: string): Promise<MlsGroupsTable> {
    const group = await store.group(conversationId);
    if (group) return group;
    if ((await encryptionOf(conversationId)) !== 'mls') throw badRequest('The conversation is not end-to-end encrypted.');
    throw new AppError('mls_not_initialized');
  }

  function requireDevice(auth: AuthContext): string {
    if (auth.deviceId === null) throw new AppError('device_required');
    return auth.deviceId;
  }

  /** The stored GroupInfo decoded; it was verified when accepted, so failing here is a server fault. */
  function currentGroupInfo(group: MlsGroupsTable): Promise<InspectedGroupInfo> {
    const key = `${group.conversation_id}:${group.epoch}`;
    let p = groupInfos.get(key);
    if (!p) {
      p = inspectGroupInfo(fromB64(group.group_info), groupIdOf(group.conversation_id)).then((gi) => {
        if (!gi.ok) throw new Error(`stored GroupInfo of ${group.conversation_id} no longer verifies: ${gi.reason}`);
        return gi;
      });
      groupInfos.set(key, p);
      // A failure is not cached: the next commit tries again.
      void p.catch(() => groupInfos.delete(key));
    }
    return p;
  }

  async function toStatus(group: MlsGroupsTable): Promise<MlsGroupStatus> {
    const leaves = await store.leaves(group.conversation_id);
    return {
      conversationId: group.conversation_id,
      cipherSuite: group.cipher_suite as MlsGroupStatus['cipherSuite'],
      epoch: group.epoch,
      groupInfo: group.group_info,
      leaves: leaves.map((l) => ({ leafIndex: l.leaf_index, userId: l.user_id, deviceId: l.device_id })),
    };
  }

  const leafRow = (conversationId: string) => (l: LeafInfo): MlsLeavesTable => ({ conversation_id: conversationId, leaf_index: l.leafIndex, user_id: l.userId, device_id: l.deviceId });

  /**
   * [DS4] [DS8] Membership, devices and rights, read under the conversation
   * row lock: every leaf of the new tree is an active device of a current
   * member with its registered key; removals are the caller's own devices,
   * devices of non-members, revoked devices, or anyone's when the caller is an
   * owner or admin.
   */
  async function checkUnderLock(trx: Parameters<MessagesService['appendCommit']>[0], auth: AuthContext, conversationId: string, v: VerifiedCommit): Promise<void> {
    const next = v.next.leaves;
    const userIds = new Set([auth.userId, ...next.map((l) => l.userId), ...v.removed.map((l) => l.userId)]);
    const roles = await deps.conversations.rolesAmong(trx, conversationId, [...userIds]);
    const myRole = roles.get(auth.userId);
    if (!myRole) throw notFound('Conversation not found.');
    const devices = await deps.devices.activeDevices([...next.map((l) => l.deviceId), ...v.removed.map((l) => l.deviceId)], trx);
    const current = (l: LeafInfo) => {
      const d = devices.get(l.deviceId);
      return d !== undefined && d.userId === l.userId && d.signatureKey === l.signatureKey && roles.has(l.userId);
    };
    for (const r of v.removed) {
      const mayRemove = r.userId === auth.userId || !current(r) || myRole === 'owner' || myRole === 'admin';
      if (!mayRemove) throw forbidden(`Only owners and admins remove a current member's device (leaf ${r.leafIndex}).`);
    }
    for (const l of next) {
      const kind = v.added.some((a) => a.leafIndex === l.leafIndex) ? 'an added' : 'a';
      if (!roles.has(l.userId)) throw invalid(`leaf ${l.leafIndex} is ${kind} device of a user who is not a member; a removed member's devices must be removed`);
      const d = devices.get(l.deviceId);
      if (!d || d.userId !== l.userId) throw invalid(`leaf ${l.leafIndex} is not an active device; revoked devices must be removed`);
      if (d.signatureKey !== l.signatureKey) throw invalid(`leaf ${l.leafIndex} does not carry its device's registered signature key`);
    }
  }

  return {
    async init(auth, conversationId, body) {
      await deps.conversations.requireMember(auth, conversationId);
      const deviceId = requireDevice(auth);
      if ((await encryptionOf(conversationId)) !== 'mls') throw badRequest('The conversation is not end-to-end encrypted.');
      if (await store.group(conversationId)) throw new AppError('conflict', 'The MLS group is already initialised.');
      const gi = await inspectInitialGroupInfo(fromB64(body.groupInfo), groupIdOf(conversationId), body.cipherSuite);
      if (!gi.ok) throw invalid(gi.reason);
      if (gi.creator.userId !== auth.userId || gi.creator.deviceId !== deviceId) throw invalid("the new group's only leaf must be the calling device");
      const device = (await deps.devices.activeDevices([deviceId])).get(deviceId);
      if (!device || device.userId !== auth.userId) throw new AppError('device_required', "This session's device has been revoked.");
      if (device.signatureKey !== gi.creator.signatureKey) throw invalid("the leaf does not carry the device's registered signature key");
      const group: MlsGroupsTable = { conversation_id: conversationId, cipher_suite: gi.cipherSuite, epoch: 0, group_info: body.groupInfo, pending_removal: 0, updated_at: Date.now() };
      try {
        await store.tx((trx) => store.insertGroup(trx, group, gi.leaves.map(leafRow(conversationId))));
      } catch (err) {
        if (isUniqueViolation(err)) throw new AppError('conflict', 'The MLS group is already initialised.');
        throw err;
      }
      return toStatus(group);
    },

    async status(auth, conversationId) {
      await deps.conversations.requireMember(auth, conversationId);
      return toStatus(await requireGroup(conversationId));
    },

    async commit(auth, conversationId, body) {
      await deps.conversations.requireMember(auth, conversationId);
      const deviceId = requireDevice(auth);
      const group = await requireGroup(conversationId);
      const groupId = groupIdOf(conversationId);
      const decoded = decodeCommit(fromB64(body.commit), groupId);
      if (!decoded.ok) throw invalid(decoded.reason);
      const epoch = decoded.epoch;
      if (epoch < group.epoch) {
        // A retry of the caller's own accepted commit answers with it (nothing doubled).
        const mine = await deps.messages.findCommit(conversationId, auth.userId, epoch);
        if (mine && mine.content.type === 'mls-commit' && mine.content.commit === body.commit) return { message: mine, epoch: epoch + 1 };
        throw new AppError('epoch_conflict', undefined, { currentEpoch: group.epoch });
      }
      if (epoch > group.epoch) throw invalid(`the commit is based on epoch ${epoch}, but the group is at epoch ${group.epoch}`);

      const welcome = body.welcome === undefined ? undefined : fromB64(body.welcome);
      // The heavy part (decoding, signatures, tree hashes) runs before the transaction.
      const v = await verifyCommit(
        await currentGroupInfo(group),
        decoded,
        fromB64(body.groupInfo),
        welcome,
        Date.now(),
      );
      if (!v.ok) throw invalid(v.reason);
      if (v.committer.userId !== auth.userId || v.committer.deviceId !== deviceId) {
        throw forbidden(v.kind === 'member' ? "The commit's sender leaf is not the calling device." : 'An external join adds the calling device only.');
      }
      if (v.kind === 'external' && v.removed.some((r) => r.deviceId !== deviceId)) throw forbidden("An external join may remove only the calling device's own old leaf.");

      const nextEpoch = epoch + 1;
      const message = await store.tx((trx) =>
        deps.messages.appendCommit(trx, { conversationId, senderId: auth.userId, epoch, commit: body.commit }, async () => {
          // Re-checked under the lock the seq allocation took: the first commit for an epoch wins.
          const locked = await store.lockGroup(trx, conversationId);
          if (!locked) throw new AppError('mls_not_initialized');
          if (locked.epoch !== epoch) throw new AppError('epoch_conflict', undefined, { currentEpoch: locked.epoch });
          await checkUnderLock(trx, auth, conversationId, v);
          await store.advance(trx, conversationId, { epoch: nextEpoch, groupInfo: body.groupInfo, at: Date.now() });
          const changed = [...v.added, ...(v.kind === 'external' ? [v.committer] : [])];
          await store.replaceLeaves(trx, conversationId, [...v.removed, ...changed].map((l) => l.leafIndex), changed.map(leafRow(conversationId)));
          return v.added.map((a): EventEntry => ({
            conversationId: null,
            userId: a.userId,
            deviceId: a.deviceId,
            event: { type: 'mls.welcome', conversationId, epoch: nextEpoch, welcome: welcomeForDevice(welcome!, a.ref) },
          }));
        }),
      );
      events.notify();
      // The next commit is verified against this GroupInfo: keep it decoded.
      groupInfos.set(`${conversationId}:${nextEpoch}`, Promise.resolve(v.next));
      if (v.added.length > 0) await recheckAdded(conversationId, v);
      return { message, epoch: nextEpoch };
    },

    async checkContent(auth, conversationId, content: Content) {
      // Runs inside MessagesService.send/edit, right after their membership check for `auth`.
      if ((await encryptionOf(conversationId)) !== 'mls') return;
      if (content.type !== 'encrypted') throw invalid('an encrypted conversation only takes MLS application messages (content type encrypted)');
      const group = await store.group(conversationId);
      if (!group) throw new AppError('mls_not_initialized');
      const msg = inspectApplicationMessage(fromB64(content.ciphertext), groupIdOf(conversationId));
      if (!msg.ok) throw invalid(msg.reason);
      if (msg.epoch > group.epoch) throw invalid(`the message is for epoch ${msg.epoch}, but the group is at epoch ${group.epoch}`);
      if (msg.epoch < group.epoch - APPLICATION_EPOCH_LAG) throw invalid('stale epoch');
      if (group.pending_removal !== 0) throw new AppError('mls_commit_required');
    },

    async markPendingRemoval(trx, where) {
      if ('deviceId' in where) await store.markPendingForDevice(trx, where.deviceId);
      else await store.markPendingForMember(trx, where.conversationId, where.userId);
    },
  };

  /**
   * A device revoked while a commit added it: if the revocation's marking ran
   * before the commit was visible, the group would hold the revoked leaf
   * unmarked. Checking again after commit closes that window to the
   * revocation's own commit latency; the next commit is refused until the
   * leaf is removed in any case ([DS4]).
   */
  async function recheckAdded(conversationId: string, v: VerifiedCommit): Promise<void> {
    const active = await deps.devices.activeDevices(v.added.map((a) => a.deviceId));
    const gone = v.added.filter((a) => !active.has(a.deviceId));
    for (const a of gone) await store.tx((trx) => store.markPendingForDevice(trx, a.deviceId));
    if (gone.length > 0) ctx.log.info({ conversationId, devices: gone.length }, 'devices revoked while being added; group marked for removal');
  }
}
