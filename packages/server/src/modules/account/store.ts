import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { AccountTokensTable, DB, Millis } from '../../infra/db/schema.js';

/**
 * SQL of the account module: `account_tokens` and the verification columns
 * of `users` (email_verified_at, locale). Passwords and sessions belong to
 * the auth module.
 */
export interface Recipient {
  id: string;
  email: string;
  display_name: string;
  locale: string;
  email_verified_at: Millis | null;
}

export type TokenPurpose = AccountTokensTable['purpose'];

export class AccountStore {
  private readonly db: Kysely<DB>;
  constructor(database: Database) {
    this.db = database.db;
  }

  transaction<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  async recipientById(id: string): Promise<Recipient | undefined> {
    return this.db.selectFrom('users').select(['id', 'email', 'display_name', 'locale', 'email_verified_at']).where('id', '=', id).executeTakeFirst();
  }

  async recipientByEmail(email: string): Promise<Recipient | undefined> {
    return this.db.selectFrom('users').select(['id', 'email', 'display_name', 'locale', 'email_verified_at']).where('email', '=', email).executeTakeFirst();
  }

  /** A new token replaces the user's outstanding ones of the same purpose: only the latest mail works. */
  async issueToken(trx: Transaction<DB>, t: { hash: string; userId: string; purpose: TokenPurpose; now: Millis; expiresAt: Millis }): Promise<void> {
    await this.retire(trx, t.userId, t.purpose, t.now);
    await trx.insertInto('account_tokens').values({ token_hash: t.hash, user_id: t.userId, purpose: t.purpose, created_at: t.now, expires_at: t.expiresAt, used_at: null }).execute();
  }

  /** The owner of a live token, without using it. */
  async peekToken(hash: string, purpose: TokenPurpose, now: Millis): Promise<string | undefined> {
    const row = await this.db
      .selectFrom('account_tokens')
      .select('user_id')
      .where('token_hash', '=', hash)
      .where('purpose', '=', purpose)
      .where('used_at', 'is', null)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    return row?.user_id;
  }

  /**
   * Uses a live token; returns its owner, or undefined when it is unknown,
   * expired or used. The conditional UPDATE makes it single-use even when
   * two requests race.
   */
  async consumeToken(trx: Transaction<DB>, hash: string, purpose: TokenPurpose, now: Millis): Promise<string | undefined> {
    const row = await trx
      .updateTable('account_tokens')
      .set({ used_at: now })
      .where('token_hash', '=', hash)
      .where('purpose', '=', purpose)
      .where('used_at', 'is', null)
      .where('expires_at', '>', now)
      .returning('user_id')
      .executeTakeFirst();
    return row?.user_id;
  }

  async retire(trx: Transaction<DB>, userId: string, purpose: TokenPurpose, now: Millis): Promise<void> {
    await trx.updateTable('account_tokens').set({ used_at: now }).where('user_id', '=', userId).where('purpose', '=', purpose).where('used_at', 'is', null).execute();
  }

  async markVerified(trx: Transaction<DB>, userId: string, now: Millis): Promise<void> {
    await trx.updateTable('users').set({ email_verified_at: now }).where('id', '=', userId).where('email_verified_at', 'is', null).execute();
  }

  /** Tokens are useless a day after they expire; keeps the table small. */
  async purgeTokens(before: Millis): Promise<number> {
    const res = await this.db.deleteFrom('account_tokens').where('expires_at', '<', before).executeTakeFirst();
    return Number(res.numDeletedRows);
  }
}
