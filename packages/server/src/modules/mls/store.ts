import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { DB, MlsGroupsTable, MlsLeavesTable } from '../../infra/db/schema.js';

type Q = Kysely<DB> | Transaction<DB>;

/** Rows per INSERT: far below SQLite's and PostgreSQL's bound-parameter limits. */
const INSERT_CHUNK = 500;

function norm(r: MlsGroupsTable): MlsGroupsTable {
  return { ...r, cipher_suite: Number(r.cipher_suite), epoch: Number(r.epoch), pending_removal: Number(r.pending_removal), updated_at: Number(r.updated_at) };
}

/** SQL for the delivery service's tables: mls_groups and mls_leaves. */
export class MlsStore {
  constructor(private readonly database: Database) {}

  tx<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.database.db.transaction().execute(fn);
  }

  /** One primary-key read. */
  async group(conversationId: string, q: Q = this.database.db): Promise<MlsGroupsTable | undefined> {
    const r = await q.selectFrom('mls_groups').selectAll().where('conversation_id', '=', conversationId).executeTakeFirst();
    return r && norm(r);
  }

  /**
   * Reads the group and locks its row for the rest of the transaction. A
   * device revocation marks groups through this row too, so it either commits
   * before the caller reads the devices (which then see the revocation) or
   * waits until the caller has committed ([DS6]).
   */
  async lockGroup(trx: Transaction<DB>, conversationId: string): Promise<MlsGroupsTable | undefined> {
    let q = trx.selectFrom('mls_groups').selectAll().where('conversation_id', '=', conversationId);
    if (this.database.dialect === 'postgres') q = q.forUpdate();
    const r = await q.executeTakeFirst();
    return r && norm(r);
  }

  async leaves(conversationId: string): Promise<MlsLeavesTable[]> {
    const rows = await this.database.db.selectFrom('mls_leaves').selectAll().where('conversation_id', '=', conversationId).orderBy('leaf_index').execute();
    return rows.map((r) => ({ ...r, leaf_index: Number(r.leaf_index) }));
  }

  /** Throws a unique violation when the group exists already. */
  async insertGroup(trx: Transaction<DB>, group: MlsGroupsTable, leaves: MlsLeavesTable[]): Promise<void> {
    await trx.insertInto('mls_groups').values(group).execute();
    await this.insertLeaves(trx, leaves);
  }

  /** The epoch a commit created; every leaf is now an active device of a member, so nothing is pending ([DS6]). */
  async advance(trx: Transaction<DB>, conversationId: string, next: { epoch: number; groupInfo: string; at: number }): Promise<void> {
    await trx
      .updateTable('mls_groups')
      .set({ epoch: next.epoch, group_info: next.groupInfo, pending_removal: 0, updated_at: next.at })
      .where('conversation_id', '=', conversationId)
      .execute();
  }

  /** Leaves change only where a commit removed or added one: delete those indexes, then insert the new occupants. */
  async replaceLeaves(trx: Transaction<DB>, conversationId: string, vacated: number[], occupied: MlsLeavesTable[]): Promise<void> {
    for (let i = 0; i < vacated.length; i += INSERT_CHUNK) {
      await trx
        .deleteFrom('mls_leaves')
        .where('conversation_id', '=', conversationId)
        .where('leaf_index', 'in', vacated.slice(i, i + INSERT_CHUNK))
        .execute();
    }
    await this.insertLeaves(trx, occupied);
  }

  private async insertLeaves(trx: Transaction<DB>, leaves: MlsLeavesTable[]): Promise<void> {
    for (let i = 0; i < leaves.length; i += INSERT_CHUNK) await trx.insertInto('mls_leaves').values(leaves.slice(i, i + INSERT_CHUNK)).execute();
  }

  /** A member left or was removed: their conversation's group is pending if it holds a leaf of theirs. */
  async markPendingForMember(trx: Transaction<DB>, conversationId: string, userId: string): Promise<void> {
    await trx
      .updateTable('mls_groups')
      .set({ pending_removal: 1 })
      .where('conversation_id', '=', conversationId)
      .where((eb) => eb.exists(eb.selectFrom('mls_leaves').select('leaf_index').where('conversation_id', '=', conversationId).where('user_id', '=', userId)))
      .execute();
  }

  /**
   * A device was revoked: every group holding a leaf of it is pending. The
   * groups are locked first and the leaves read again after the lock, so a
   * commit that was changing them is seen as committed (on PostgreSQL a new
   * statement sees what committed while it waited).
   */
  async markPendingForDevice(trx: Transaction<DB>, deviceId: string): Promise<void> {
    if (this.database.dialect === 'postgres') {
      await trx
        .selectFrom('mls_groups')
        .select('conversation_id')
        .where('conversation_id', 'in', (eb) => eb.selectFrom('mls_leaves').select('conversation_id').where('device_id', '=', deviceId))
        // One order for every locker of several groups, so two revocations cannot deadlock.
        .orderBy('conversation_id')
        .forUpdate()
        .execute();
    }
    await trx
      .updateTable('mls_groups')
      .set({ pending_removal: 1 })
      .where('conversation_id', 'in', (eb) => eb.selectFrom('mls_leaves').select('conversation_id').where('device_id', '=', deviceId))
      .execute();
  }
}
