import type { Kysely, Transaction } from 'kysely';
import type { Database, Dialect } from '../../infra/db/index.js';
import type { DB, MailOutboxTable, Millis } from '../../infra/db/schema.js';

/** SQL of the mail module: the `mail_outbox` table only. */
export type OutboxRow = MailOutboxTable;

export type NewMail = Pick<MailOutboxTable, 'id' | 'to_addr' | 'template' | 'locale' | 'subject' | 'text_body' | 'html_body' | 'created_at'>;

const ERROR_MAX = 1_000;

export class MailStore {
  private readonly db: Kysely<DB>;
  private readonly dialect: Dialect;
  constructor(database: Database) {
    this.db = database.db;
    this.dialect = database.dialect;
  }

  /** Inside the caller's transaction: the mail exists exactly when the change that causes it commits ([AC1]). */
  async enqueue(trx: Transaction<DB>, m: NewMail): Promise<void> {
    await trx
      .insertInto('mail_outbox')
      .values({ ...m, status: 'pending', attempts: 0, next_attempt_at: m.created_at, locked_until: null, last_error: null, sent_at: null })
      .execute();
  }

  /**
   * Claims up to `limit` due mails for `leaseMs`: pending ones whose time has
   * come and claimed ones whose worker let the lease run out. On PostgreSQL
   * FOR UPDATE SKIP LOCKED lets every node's worker claim concurrently without
   * taking the same row; SQLite has one writer, so the UPDATE is the lock.
   */
  async claim(now: Millis, limit: number, leaseMs: number): Promise<OutboxRow[]> {
    return this.db.transaction().execute(async (trx) => {
      let q = trx
        .selectFrom('mail_outbox')
        .select('id')
        .where((eb) => eb.or([
          eb.and([eb('status', '=', 'pending'), eb('next_attempt_at', '<=', now)]),
          eb.and([eb('status', '=', 'sending'), eb('locked_until', '<', now)]),
        ]))
        .orderBy('next_attempt_at')
        .limit(limit);
      if (this.dialect === 'postgres') q = q.forUpdate().skipLocked();
      const ids = (await q.execute()).map((r) => r.id);
      if (ids.length === 0) return [];
      return trx
        .updateTable('mail_outbox')
        .set({ status: 'sending', locked_until: now + leaseMs })
        .where('id', 'in', ids)
        .returningAll()
        .execute();
    });
  }

  /** The bodies carry single-use tokens; once delivered they are not kept. */
  async markSent(id: string, now: Millis, keepBodies: boolean): Promise<void> {
    await this.db
      .updateTable('mail_outbox')
      .set({ status: 'sent', sent_at: now, locked_until: null, last_error: null, attempts: (eb) => eb('attempts', '+', 1), ...(keepBodies ? {} : { text_body: '', html_body: '' }) })
      .where('id', '=', id)
      .execute();
  }

  async markFailed(id: string, attempts: number, nextAttemptAt: Millis | null, error: string): Promise<void> {
    await this.db
      .updateTable('mail_outbox')
      .set({
        status: nextAttemptAt === null ? 'dead' : 'pending',
        attempts,
        next_attempt_at: nextAttemptAt ?? 0,
        locked_until: null,
        last_error: error.slice(0, ERROR_MAX),
      })
      .where('id', '=', id)
      .execute();
  }

  async get(id: string): Promise<OutboxRow | undefined> {
    return this.db.selectFrom('mail_outbox').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async list(status: OutboxRow['status'] | null, limit: number): Promise<OutboxRow[]> {
    return this.db
      .selectFrom('mail_outbox')
      .selectAll()
      .$if(status !== null, (q) => q.where('status', '=', status!))
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
  }
}
