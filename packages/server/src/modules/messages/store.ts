import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { DB } from '../../infra/db/schema.js';
import type { MessageRow } from './model.js';

type Q = Kysely<DB> | Transaction<DB>;

export interface ClientKey {
  conversationId: string;
  senderId: string;
  clientMsgId: string;
}

const COLUMNS = ['id', 'conversation_id', 'seq', 'sender_id', 'client_msg_id', 'content_type', 'body', 'created_at', 'edited_at', 'deleted_at'] as const;

function norm(r: MessageRow): MessageRow {
  return {
    ...r,
    seq: Number(r.seq),
    created_at: Number(r.created_at),
    edited_at: r.edited_at === null ? null : Number(r.edited_at),
    deleted_at: r.deleted_at === null ? null : Number(r.deleted_at),
  };
}

/**
 * SQL for messages. Sequencing lives on the conversation's row
 * (conversations.last_seq) because a seq must be allocated in the same
 * transaction as the message that takes it; that allocation is the only
 * statement outside the conversations module that touches its tables.
 */
export class MessagesStore {
  constructor(private readonly database: Database) {}

  tx<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.database.db.transaction().execute(fn);
  }

  /** Messages already stored under any of these idempotency keys (one indexed query). */
  async findByClientKeys(keys: ClientKey[], q: Q = this.database.db): Promise<MessageRow[]> {
    if (keys.length === 0) return [];
    const rows = await q
      .selectFrom('messages')
      .select(COLUMNS)
      .where('conversation_id', 'in', [...new Set(keys.map((k) => k.conversationId))])
      .where('sender_id', 'in', [...new Set(keys.map((k) => k.senderId))])
      .where('client_msg_id', 'in', [...new Set(keys.map((k) => k.clientMsgId))])
      .execute();
    const wanted = new Set(keys.map(keyOf));
    return rows.map(norm).filter((r) => wanted.has(keyOf({ conversationId: r.conversation_id, senderId: r.sender_id, clientMsgId: r.client_msg_id })));
  }

  /**
   * Reserves `n` consecutive seqs. The UPDATE takes the row lock on
   * PostgreSQL, so allocation is serialised per conversation across nodes and
   * a rolled-back batch gives its seqs back (no gaps, [M2]). Returns the new
   * last_seq, or undefined when the conversation is gone.
   */
  async allocate(trx: Transaction<DB>, conversationId: string, n: number, now: number): Promise<number | undefined> {
    const row = await trx
      .updateTable('conversations')
      .set((eb) => ({ last_seq: eb('last_seq', '+', n), updated_at: now }))
      .where('id', '=', conversationId)
      .returning('last_seq')
      .executeTakeFirst();
    return row ? Number(row.last_seq) : undefined;
  }

  async insert(trx: Transaction<DB>, rows: MessageRow[]): Promise<void> {
    if (rows.length > 0) await trx.insertInto('messages').values(rows).execute();
  }

  async byId(conversationId: string, messageId: string, q: Q = this.database.db): Promise<MessageRow | undefined> {
    const r = await q.selectFrom('messages').select(COLUMNS).where('id', '=', messageId).where('conversation_id', '=', conversationId).executeTakeFirst();
    return r && norm(r);
  }

  async update(trx: Transaction<DB>, messageId: string, patch: Pick<MessageRow, 'content_type' | 'body' | 'edited_at' | 'deleted_at'>): Promise<void> {
    await trx.updateTable('messages').set(patch).where('id', '=', messageId).execute();
  }

  /** One page, ascending by seq. Without afterSeq the page ends at beforeSeq (or the newest message). */
  async history(conversationId: string, o: { beforeSeq?: number; afterSeq?: number; limit: number }): Promise<MessageRow[]> {
    let q = this.database.db.selectFrom('messages').select(COLUMNS).where('conversation_id', '=', conversationId);
    if (o.beforeSeq !== undefined) q = q.where('seq', '<', o.beforeSeq);
    if (o.afterSeq !== undefined) {
      const rows = await q.where('seq', '>', o.afterSeq).orderBy('seq', 'asc').limit(o.limit).execute();
      return rows.map(norm);
    }
    const rows = await q.orderBy('seq', 'desc').limit(o.limit).execute();
    return rows.map(norm).reverse();
  }

}

export function keyOf(k: ClientKey): string {
  return `${k.conversationId}\n${k.senderId}\n${k.clientMsgId}`;
}
