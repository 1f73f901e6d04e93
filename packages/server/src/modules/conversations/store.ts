import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { ConversationsTable, DB, MembersTable } from '../../infra/db/schema.js';
import type { MessageRow } from '../messages/model.js';

type Q = Kysely<DB> | Transaction<DB>;
export type ConversationRow = Omit<ConversationsTable, 'direct_key' | 'created_by'>;
export type MemberRow = Omit<MembersTable, 'read_seq'>;
export type Role = MembersTable['role'];

/** One conversation as the caller sees it: its row, their read position, unread count and last message. */
export interface ViewRow {
  conversation: ConversationRow;
  readSeq: number;
  unread: number;
  lastMessage: MessageRow | null;
}

export interface Membership {
  role: Role;
  readSeq: number;
  type: 'direct' | 'group';
}

export interface Keyset {
  updatedAt: number;
  id: string;
}

/** SQL for conversations and members. Messages are read only for the listing's last message and unread count. */
export class ConversationsStore {
  constructor(private readonly database: Database) {}

  tx<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.database.db.transaction().execute(fn);
  }

  async membership(conversationId: string, userId: string): Promise<Membership | undefined> {
    const row = await this.database.db
      .selectFrom('members as m')
      .innerJoin('conversations as c', 'c.id', 'm.conversation_id')
      .select(['m.role', 'm.read_seq', 'c.type'])
      .where('m.conversation_id', '=', conversationId)
      .where('m.user_id', '=', userId)
      .executeTakeFirst();
    return row ? { role: row.role, readSeq: Number(row.read_seq), type: row.type } : undefined;
  }

  async memberIds(conversationId: string): Promise<string[]> {
    const rows = await this.database.db.selectFrom('members').select('user_id').where('conversation_id', '=', conversationId).execute();
    return rows.map((r) => r.user_id);
  }

  async peersOf(userId: string): Promise<string[]> {
    const rows = await this.database.db
      .selectFrom('members')
      .select('user_id')
      .distinct()
      .where('conversation_id', 'in', (eb) => eb.selectFrom('members').select('conversation_id').where('user_id', '=', userId))
      .where('user_id', '<>', userId)
      .execute();
    return rows.map((r) => r.user_id);
  }

  /**
   * The caller's conversations with read position, unread count and last
   * message in ONE query (the last message is joined on last_seq, the unread
   * count is a correlated count over the (conversation_id, seq) index), so a
   * page costs the same number of queries at any size ([C4], AF-D4).
   */
  async views(userId: string, filter: { ids: string[] } | { after?: Keyset; limit: number }): Promise<ViewRow[]> {
    let q = this.database.db
      .selectFrom('members as me')
      .innerJoin('conversations as c', 'c.id', 'me.conversation_id')
      .leftJoin('messages as lm', (j) => j.onRef('lm.conversation_id', '=', 'c.id').onRef('lm.seq', '=', 'c.last_seq'))
      .select([
        'c.id', 'c.type', 'c.title', 'c.encryption', 'c.created_at', 'c.updated_at', 'c.last_seq', 'me.read_seq',
        'lm.id as lm_id', 'lm.sender_id as lm_sender_id', 'lm.client_msg_id as lm_client_msg_id', 'lm.content_type as lm_content_type',
        'lm.body as lm_body', 'lm.created_at as lm_created_at', 'lm.edited_at as lm_edited_at', 'lm.deleted_at as lm_deleted_at',
      ])
      .select((eb) =>
        eb
          .selectFrom('messages as u')
          .select(eb.fn.countAll<number>().as('n'))
          .whereRef('u.conversation_id', '=', 'c.id')
          .whereRef('u.seq', '>', 'me.read_seq')
          .where('u.sender_id', '<>', userId)
          .where('u.deleted_at', 'is', null)
          // An MLS commit is group bookkeeping, not something a person reads.
          .where('u.content_type', '<>', 'mls-commit')
          .as('unread'),
      )
      .where('me.user_id', '=', userId);
    if ('ids' in filter) {
      if (filter.ids.length === 0) return [];
      q = q.where('c.id', 'in', filter.ids);
    } else {
      const after = filter.after;
      if (after) {
        q = q.where((eb) =>
          eb.or([eb('c.updated_at', '<', after.updatedAt), eb.and([eb('c.updated_at', '=', after.updatedAt), eb('c.id', '<', after.id)])]),
        );
      }
      q = q.orderBy('c.updated_at', 'desc').orderBy('c.id', 'desc').limit(filter.limit);
    }
    const rows = await q.execute();
    return rows.map((r) => ({
      conversation: {
        id: r.id, type: r.type, title: r.title, encryption: r.encryption,
        created_at: Number(r.created_at), updated_at: Number(r.updated_at), last_seq: Number(r.last_seq),
      },
      readSeq: Number(r.read_seq),
      unread: Number(r.unread ?? 0),
      lastMessage:
        r.lm_id === null
          ? null
          : {
              id: r.lm_id, conversation_id: r.id, seq: Number(r.last_seq), sender_id: r.lm_sender_id!, client_msg_id: r.lm_client_msg_id!,
              content_type: r.lm_content_type!, body: r.lm_body, created_at: Number(r.lm_created_at),
              edited_at: r.lm_edited_at === null ? null : Number(r.lm_edited_at), deleted_at: r.lm_deleted_at === null ? null : Number(r.lm_deleted_at),
            },
    }));
  }

  /** Members of several conversations in one query, in join order. */
  async membersOf(conversationIds: string[], q: Q = this.database.db): Promise<Map<string, MemberRow[]>> {
    const out = new Map<string, MemberRow[]>(conversationIds.map((id) => [id, []]));
    if (conversationIds.length === 0) return out;
    const rows = await q
      .selectFrom('members')
      .select(['conversation_id', 'user_id', 'role', 'joined_at'])
      .where('conversation_id', 'in', conversationIds)
      .orderBy('conversation_id')
      .orderBy('joined_at')
      .orderBy('user_id')
      .execute();
    for (const r of rows) out.get(r.conversation_id)?.push({ ...r, joined_at: Number(r.joined_at) });
    return out;
  }

  async encryption(conversationId: string): Promise<ConversationRow['encryption'] | undefined> {
    const row = await this.database.db.selectFrom('conversations').select('encryption').where('id', '=', conversationId).executeTakeFirst();
    return row?.encryption;
  }

  async findDirect(directKey: string): Promise<string | undefined> {
    const row = await this.database.db.selectFrom('conversations').select('id').where('direct_key', '=', directKey).executeTakeFirst();
    return row?.id;
  }

  async insertConversation(trx: Transaction<DB>, c: ConversationsTable, members: MemberRow[]): Promise<void> {
    await trx.insertInto('conversations').values(c).execute();
    await trx
      .insertInto('members')
      .values(members.map((m) => ({ ...m, read_seq: 0 })))
      .execute();
  }

  /**
   * Locks the conversation row for the rest of the transaction, so membership
   * changes of one conversation are serialised (the last-owner rule cannot be
   * raced); SQLite has a single writer anyway. NO KEY UPDATE, the lock an
   * UPDATE takes, so foreign-key checks of inserts (messages, events) that
   * reference the row are not blocked. Returns undefined when gone.
   */
  async lock(trx: Transaction<DB>, conversationId: string): Promise<ConversationRow | undefined> {
    let q = trx
      .selectFrom('conversations')
      .select(['id', 'type', 'title', 'encryption', 'created_at', 'updated_at', 'last_seq'])
      .where('id', '=', conversationId);
    if (this.database.dialect === 'postgres') q = q.forNoKeyUpdate();
    const r = await q.executeTakeFirst();
    return r && { ...r, created_at: Number(r.created_at), updated_at: Number(r.updated_at), last_seq: Number(r.last_seq) };
  }

  /** Roles of the given users in a conversation (absent = not a member). */
  async roles(trx: Transaction<DB>, conversationId: string, userIds: string[]): Promise<Map<string, MemberRow>> {
    const rows = await trx
      .selectFrom('members')
      .select(['conversation_id', 'user_id', 'role', 'joined_at'])
      .where('conversation_id', '=', conversationId)
      .where('user_id', 'in', userIds)
      .execute();
    return new Map(rows.map((r) => [r.user_id, { ...r, joined_at: Number(r.joined_at) }]));
  }

  async counts(trx: Transaction<DB>, conversationId: string): Promise<{ members: number; owners: number }> {
    const r = await trx
      .selectFrom('members')
      .select((eb) => [
        eb.fn.countAll<number>().as('members'),
        eb.fn.sum<number>(sql<number>`case when role = 'owner' then 1 else 0 end`).as('owners'),
      ])
      .where('conversation_id', '=', conversationId)
      .executeTakeFirst();
    return { members: Number(r?.members ?? 0), owners: Number(r?.owners ?? 0) };
  }

  async insertMember(trx: Transaction<DB>, m: MemberRow): Promise<void> {
    await trx.insertInto('members').values({ ...m, read_seq: 0 }).execute();
  }

  async setRole(trx: Transaction<DB>, conversationId: string, userId: string, role: Role): Promise<void> {
    await trx.updateTable('members').set({ role }).where('conversation_id', '=', conversationId).where('user_id', '=', userId).execute();
  }

  async deleteMember(trx: Transaction<DB>, conversationId: string, userId: string): Promise<void> {
    await trx.deleteFrom('members').where('conversation_id', '=', conversationId).where('user_id', '=', userId).execute();
  }

  async lastSeq(trx: Transaction<DB>, conversationId: string): Promise<number> {
    const r = await trx.selectFrom('conversations').select('last_seq').where('id', '=', conversationId).executeTakeFirst();
    return Number(r?.last_seq ?? 0);
  }

  /** Moves the read position forward only; false when it was already at or past `seq` ([M5]). */
  async advanceRead(trx: Transaction<DB>, conversationId: string, userId: string, seq: number): Promise<boolean> {
    const r = await trx
      .updateTable('members')
      .set({ read_seq: seq })
      .where('conversation_id', '=', conversationId)
      .where('user_id', '=', userId)
      .where('read_seq', '<', seq)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  /** Records activity (orders the listing) and optionally a new title. */
  async touch(trx: Transaction<DB>, conversationId: string, at: number, title?: string): Promise<void> {
    await trx
      .updateTable('conversations')
      .set(title === undefined ? { updated_at: at } : { updated_at: at, title })
      .where('id', '=', conversationId)
      .execute();
  }
}
