import { LIMITS, type Conversation, type ConversationPage, type CreateConversationBody, type DurableEvent, type Member, type PageQuery, type Role } from '@secureconnect/protocol';
import type { Transaction } from 'kysely';
import { uuidv7 } from 'uuidv7';
import type { AppContext } from '../../context.js';
import { isUniqueViolation } from '../../infra/db/errors.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError, badRequest, forbidden, notFound } from '../../infra/errors.js';
import type { AuthContext, ConversationsService, MemberInfo, UsersService } from '../../services.js';
import { toMessage } from '../messages/model.js';
import { ConversationsStore, type ConversationRow, type Keyset, type MemberRow, type Membership, type ViewRow } from './store.js';

type Snapshot = Extract<DurableEvent, { type: 'conversation.updated' }>['conversation'];
type Encryption = ConversationRow['encryption'];
type MemberRemovedHook = Parameters<ConversationsService['onMemberRemoved']>[0];

const iso = (ms: number) => new Date(ms).toISOString();
const NOT_FOUND = 'Conversation not found.';

function toMember(m: MemberRow): Member {
  return { userId: m.user_id, role: m.role, joinedAt: iso(m.joined_at) };
}

function snapshot(c: ConversationRow, members: MemberRow[]): Snapshot {
  return { id: c.id, type: c.type, title: c.title, encryption: c.encryption, createdAt: iso(c.created_at), members: members.map(toMember), lastSeq: c.last_seq };
}

function toConversation(v: ViewRow, members: MemberRow[]): Conversation {
  return {
    ...snapshot(v.conversation, members),
    readSeq: v.readSeq,
    unreadCount: v.unread,
    lastMessage: v.lastMessage ? toMessage(v.lastMessage) : null,
  };
}

/** Opaque to clients; "<updatedAt>.<id>" of the last item of the previous page. */
function encodeCursor(c: ConversationRow): string {
  return `${c.updated_at}.${c.id}`;
}
function decodeCursor(cursor: string | undefined): Keyset | undefined {
  if (cursor === undefined) return undefined;
  const m = /^(\d{1,15})\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/.exec(cursor);
  if (!m) throw badRequest('Invalid cursor.');
  return { updatedAt: Number(m[1]), id: m[2]! };
}

/** PostgreSQL text cannot hold NUL; refusing it here keeps bad input a 400 on both engines. */
export function assertStorableText(s: string, field: string): void {
  if (s.includes('\u0000')) throw badRequest(`${field} must not contain NUL characters.`);
}

export function createConversationsService(ctx: AppContext, deps: { users: UsersService }): ConversationsService {
  const store = new ConversationsStore(ctx.database);
  const { events } = ctx;
  const removalHooks: MemberRemovedHook[] = [];

  /** Every public entry point starts here: non-members learn nothing ([C3]). */
  async function membership(auth: AuthContext, conversationId: string): Promise<Membership> {
    const m = await store.membership(conversationId, auth.userId);
    if (!m) throw notFound(NOT_FOUND);
    return m;
  }

  async function view(userId: string, conversationId: string): Promise<Conversation> {
    const [v] = await store.views(userId, { ids: [conversationId] });
    if (!v) throw notFound(NOT_FOUND);
    const members = await store.membersOf([conversationId]);
    return toConversation(v, members.get(conversationId) ?? []);
  }

  function requireGroup(m: Membership): void {
    if (m.type !== 'group') throw forbidden('A direct conversation has fixed membership.');
  }

  /** Locks the conversation and reads the caller's current role inside the transaction (it may have changed since the access check). */
  async function lockAsMember(trx: Transaction<DB>, conversationId: string, userId: string, others: string[] = []) {
    const conv = await store.lock(trx, conversationId);
    if (!conv) throw notFound(NOT_FOUND);
    const roles = await store.roles(trx, conversationId, [userId, ...others]);
    const me = roles.get(userId);
    if (!me) throw notFound(NOT_FOUND);
    return { conv, me, roles };
  }

  async function createDirect(auth: AuthContext, userId: string, encryption: Encryption): Promise<{ conversation: Conversation; created: boolean }> {
    if (userId === auth.userId) throw badRequest('A direct conversation needs another user.');
    if (!(await deps.users.exists(userId))) throw notFound('User not found.');
    // A pair may have one plaintext and one encrypted conversation: the key tells them apart.
    const pair = [auth.userId, userId].sort().join(':');
    const key = encryption === 'mls' ? `mls:${pair}` : pair;
    const existing = await store.findDirect(key);
    if (existing) return { conversation: await view(auth.userId, existing), created: false };
    const now = Date.now();
    const row = { id: uuidv7(), type: 'direct' as const, title: null, encryption, direct_key: key, created_by: auth.userId, created_at: now, updated_at: now, last_seq: 0 };
    const members: MemberRow[] = [auth.userId, userId].map((u) => ({ conversation_id: row.id, user_id: u, role: 'member' as const, joined_at: now }));
    try {
      await store.tx(async (trx) => {
        await store.insertConversation(trx, row, members);
        await events.append(trx, [{ conversationId: row.id, userId: null, event: { type: 'conversation.updated', conversation: snapshot(row, members) } }]);
      });
    } catch (err) {
      // [C1] A concurrent request created the pair first: the unique direct_key decided; answer with theirs.
      if (!isUniqueViolation(err)) throw err;
      const winner = await store.findDirect(key);
      if (!winner) throw err;
      return { conversation: await view(auth.userId, winner), created: false };
    }
    events.notify();
    return { conversation: await view(auth.userId, row.id), created: true };
  }

  async function createGroup(auth: AuthContext, title: string, memberIds: string[], encryption: Encryption): Promise<{ conversation: Conversation; created: boolean }> {
    assertStorableText(title, 'title');
    const others = [...new Set(memberIds)].filter((id) => id !== auth.userId);
    if (others.length + 1 > LIMITS.groupCreateMaxMembers) throw badRequest(`A group starts with at most ${LIMITS.groupCreateMaxMembers} members.`);
    const found = others.length > 0 ? await deps.users.getPublicMany(others) : new Map<string, unknown>();
    const unknown = others.filter((id) => !found.has(id));
    if (unknown.length > 0) throw notFound('Unknown member ids.');
    const now = Date.now();
    const row = { id: uuidv7(), type: 'group' as const, title, encryption, direct_key: null, created_by: auth.userId, created_at: now, updated_at: now, last_seq: 0 };
    const members: MemberRow[] = [
      { conversation_id: row.id, user_id: auth.userId, role: 'owner', joined_at: now },
      ...others.map((u) => ({ conversation_id: row.id, user_id: u, role: 'member' as const, joined_at: now })),
    ];
    await store.tx(async (trx) => {
      await store.insertConversation(trx, row, members);
      await events.append(trx, [{ conversationId: row.id, userId: null, event: { type: 'conversation.updated', conversation: snapshot(row, members) } }]);
    });
    events.notify();
    return { conversation: await view(auth.userId, row.id), created: true };
  }

  return {
    async requireMember(auth, conversationId): Promise<MemberInfo> {
      const m = await membership(auth, conversationId);
      return { userId: auth.userId, role: m.role, readSeq: m.readSeq };
    },

    async markRead(auth, conversationId, seq) {
      await membership(auth, conversationId);
      const moved = await store.tx(async (trx) => {
        const target = Math.min(seq, await store.lastSeq(trx, conversationId));
        if (!(await store.advanceRead(trx, conversationId, auth.userId, target))) return false;
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'read', conversationId, userId: auth.userId, seq: target } }]);
        return true;
      });
      if (moved) events.notify();
    },

    async membersAmong(trx, conversationId, userIds) {
      return new Set((await store.roles(trx, conversationId, [...userIds])).keys());
    },

    async rolesAmong(trx, conversationId, userIds) {
      const roles = await store.roles(trx, conversationId, [...userIds]);
      return new Map([...roles].map(([id, m]) => [id, m.role]));
    },

    encryptionOf: (conversationId) => store.encryption(conversationId),

    onMemberRemoved(hook) {
      removalHooks.push(hook);
    },

    memberIds: (conversationId) => store.memberIds(conversationId),
    peersOf: (userId) => store.peersOf(userId),

    async get(auth, conversationId) {
      await membership(auth, conversationId);
      return view(auth.userId, conversationId);
    },

    async create(auth, body: CreateConversationBody) {
      // No conversation to be a member of yet: each kind checks the users it is started with.
      const encryption = body.encryption ?? 'none';
      return body.type === 'direct' ? createDirect(auth, body.userId, encryption) : createGroup(auth, body.title, body.memberIds, encryption);
    },

    async list(auth, query: PageQuery): Promise<ConversationPage> {
      // Access is the query itself: only rows where the caller is a member.
      const userId = auth.userId;
      const limit = query.limit ?? LIMITS.pageDefault;
      const rows = await store.views(userId, { after: decodeCursor(query.cursor), limit: limit + 1 });
      const page = rows.slice(0, limit);
      const members = await store.membersOf(page.map((v) => v.conversation.id));
      const items = page.map((v) => toConversation(v, members.get(v.conversation.id) ?? []));
      const last = page[page.length - 1];
      return rows.length > limit && last ? { items, nextCursor: encodeCursor(last.conversation) } : { items };
    },

    async update(auth, conversationId, body) {
      const m = await membership(auth, conversationId);
      requireGroup(m);
      assertStorableText(body.title, 'title');
      await store.tx(async (trx) => {
        const { conv, me } = await lockAsMember(trx, conversationId, auth.userId);
        if (me.role === 'member') throw forbidden('Only owners and admins change the title.');
        const now = Date.now();
        await store.touch(trx, conversationId, now, body.title);
        const members = (await store.membersOf([conversationId], trx)).get(conversationId) ?? [];
        const updated = { ...conv, title: body.title, updated_at: now };
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'conversation.updated', conversation: snapshot(updated, members) } }]);
      });
      events.notify();
      return view(auth.userId, conversationId);
    },

    async addMember(auth, conversationId, userId, role: Role = 'member') {
      const m = await membership(auth, conversationId);
      requireGroup(m);
      if (!(await deps.users.exists(userId))) throw notFound('User not found.');
      const member = await store.tx(async (trx) => {
        const { me, roles } = await lockAsMember(trx, conversationId, auth.userId, [userId]);
        if (me.role === 'member') throw forbidden('Only owners and admins add members.');
        if (role !== 'member' && me.role !== 'owner') throw forbidden('Only owners grant the admin or owner role.');
        if (roles.has(userId)) throw new AppError('conflict', 'Already a member.');
        const { members } = await store.counts(trx, conversationId);
        if (members >= LIMITS.groupMaxMembers) throw new AppError('conflict', `A group has at most ${LIMITS.groupMaxMembers} members.`);
        const now = Date.now();
        const row: MemberRow = { conversation_id: conversationId, user_id: userId, role, joined_at: now };
        await store.insertMember(trx, row);
        await store.touch(trx, conversationId, now);
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'member.added', conversationId, member: toMember(row), by: auth.userId } }]);
        return toMember(row);
      });
      events.notify();
      return member;
    },

    async setRole(auth, conversationId, userId, role: Role) {
      const m = await membership(auth, conversationId);
      requireGroup(m);
      const member = await store.tx(async (trx) => {
        const { me, roles } = await lockAsMember(trx, conversationId, auth.userId, [userId]);
        if (me.role !== 'owner') throw forbidden('Only owners change roles.');
        const target = roles.get(userId);
        if (!target) throw notFound('Member not found.');
        if (target.role === 'owner' && role !== 'owner' && (await store.counts(trx, conversationId)).owners <= 1) throw new AppError('last_owner');
        const now = Date.now();
        await store.setRole(trx, conversationId, userId, role);
        await store.touch(trx, conversationId, now);
        const updated = toMember({ ...target, role });
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'member.updated', conversationId, member: updated, by: auth.userId } }]);
        return updated;
      });
      events.notify();
      return member;
    },

    async removeMember(auth, conversationId, userId) {
      const m = await membership(auth, conversationId);
      requireGroup(m);
      const leaving = userId === auth.userId;
      await store.tx(async (trx) => {
        const { me, roles } = await lockAsMember(trx, conversationId, auth.userId, [userId]);
        const target = roles.get(userId);
        if (!target) throw notFound('Member not found.');
        if (leaving) {
          // The last owner may not walk away from others; a group's only member may leave it.
          if (me.role === 'owner') {
            const c = await store.counts(trx, conversationId);
            if (c.owners <= 1 && c.members > 1) throw new AppError('last_owner');
          }
        } else {
          if (me.role === 'member') throw forbidden('Only owners and admins remove members.');
          if (me.role === 'admin' && target.role !== 'member') throw forbidden('Admins cannot remove owners or admins.');
        }
        await store.deleteMember(trx, conversationId, userId);
        await store.touch(trx, conversationId, Date.now());
        // Under the same lock: an MLS group still holding the user's devices must remove them before the next send ([DS6]).
        for (const hook of removalHooks) await hook(trx, conversationId, userId);
        // user_id too: the removed user is no longer a member but must learn of it.
        await events.append(trx, [{ conversationId, userId, event: { type: 'member.removed', conversationId, userId, by: auth.userId } }]);
      });
      events.notify();
    },
  };
}
