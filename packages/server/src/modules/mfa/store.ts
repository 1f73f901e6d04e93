import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { DB, Millis } from '../../infra/db/schema.js';

/**
 * SQL of the MFA module: `mfa_totp`, `mfa_recovery_codes`, `mfa_challenges`
 * and `mfa_reauth` ([MF1]-[MF6]), plus the recipient columns of `users` its
 * notices need.
 */
export interface TotpRow {
  secret_enc: string;
  enabled_at: Millis | null;
  last_step: number | null;
}

export interface Recipient {
  email: string;
  display_name: string;
  locale: string;
}

export class MfaStore {
  private readonly db: Kysely<DB>;
  constructor(database: Database) {
    this.db = database.db;
  }

  transaction<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  async recipient(userId: string): Promise<Recipient | undefined> {
    return this.db.selectFrom('users').select(['email', 'display_name', 'locale']).where('id', '=', userId).executeTakeFirst();
  }

  async totp(userId: string): Promise<TotpRow | undefined> {
    const row = await this.db.selectFrom('mfa_totp').select(['secret_enc', 'enabled_at', 'last_step']).where('user_id', '=', userId).executeTakeFirst();
    return row && { ...row, enabled_at: row.enabled_at === null ? null : Number(row.enabled_at), last_step: row.last_step === null ? null : Number(row.last_step) };
  }

  async isEnabled(userId: string): Promise<boolean> {
    const row = await this.db.selectFrom('mfa_totp').select('user_id').where('user_id', '=', userId).where('enabled_at', 'is not', null).executeTakeFirst();
    return row !== undefined;
  }

  /** Stores a pending secret, replacing a pending one; false when 2FA is already enabled (never overwritten). */
  async putPending(userId: string, secretEnc: string, now: Millis): Promise<boolean> {
    const res = await this.db
      .insertInto('mfa_totp')
      .values({ user_id: userId, secret_enc: secretEnc, created_at: now, enabled_at: null, last_step: null })
      .onConflict((oc) => oc.column('user_id').doUpdateSet({ secret_enc: secretEnc, created_at: now, last_step: null }).where('mfa_totp.enabled_at', 'is', null))
      .executeTakeFirst();
    return Number(res.numInsertedOrUpdatedRows ?? 0n) > 0;
  }

  /**
   * [MF3] Records `step` as used; false when a code for this or a later step
   * was accepted before. The conditional UPDATE settles races between two
   * requests with the same code.
   */
  async useStep(userId: string, step: number): Promise<boolean> {
    const res = await this.db
      .updateTable('mfa_totp')
      .set({ last_step: step })
      .where('user_id', '=', userId)
      .where((eb) => eb.or([eb('last_step', 'is', null), eb('last_step', '<', step)]))
      .executeTakeFirst();
    return Number(res.numUpdatedRows) > 0;
  }

  /** Activates a pending secret; false when there is none (or it is already active). */
  async enable(trx: Transaction<DB>, userId: string, now: Millis): Promise<boolean> {
    const res = await trx.updateTable('mfa_totp').set({ enabled_at: now }).where('user_id', '=', userId).where('enabled_at', 'is', null).executeTakeFirst();
    return Number(res.numUpdatedRows) > 0;
  }

  async disable(trx: Transaction<DB>, userId: string): Promise<boolean> {
    const res = await trx.deleteFrom('mfa_totp').where('user_id', '=', userId).where('enabled_at', 'is not', null).executeTakeFirst();
    await trx.deleteFrom('mfa_recovery_codes').where('user_id', '=', userId).execute();
    await trx.deleteFrom('mfa_challenges').where('user_id', '=', userId).execute();
    return Number(res.numDeletedRows) > 0;
  }

  /** Replaces every recovery code of the user: old ones stop working ([MF4]). */
  async replaceRecoveryCodes(trx: Transaction<DB>, userId: string, hashes: string[], now: Millis): Promise<void> {
    await trx.deleteFrom('mfa_recovery_codes').where('user_id', '=', userId).execute();
    await trx.insertInto('mfa_recovery_codes').values(hashes.map((h) => ({ code_hash: h, user_id: userId, created_at: now, used_at: null }))).execute();
  }

  /** Uses a recovery code once ([MF4]); false when unknown, another user's or used. */
  async useRecoveryCode(userId: string, hash: string, now: Millis): Promise<boolean> {
    const res = await this.db
      .updateTable('mfa_recovery_codes')
      .set({ used_at: now })
      .where('code_hash', '=', hash)
      .where('user_id', '=', userId)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) > 0;
  }

  async recoveryCodesLeft(userId: string): Promise<number> {
    const row = await this.db
      .selectFrom('mfa_recovery_codes')
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .where('user_id', '=', userId)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  async createChallenge(c: { hash: string; userId: string; device: string | null; now: Millis; expiresAt: Millis }): Promise<void> {
    await this.db.insertInto('mfa_challenges').values({ token_hash: c.hash, user_id: c.userId, device: c.device, created_at: c.now, expires_at: c.expiresAt, used_at: null }).execute();
  }

  async peekChallenge(hash: string, now: Millis): Promise<{ user_id: string; device: string | null } | undefined> {
    return this.db
      .selectFrom('mfa_challenges')
      .select(['user_id', 'device'])
      .where('token_hash', '=', hash)
      .where('used_at', 'is', null)
      .where('expires_at', '>', now)
      .executeTakeFirst();
  }

  /** Single use even when two requests race: the conditional UPDATE lets one through. */
  async consumeChallenge(hash: string, now: Millis): Promise<boolean> {
    const res = await this.db
      .updateTable('mfa_challenges')
      .set({ used_at: now })
      .where('token_hash', '=', hash)
      .where('used_at', 'is', null)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) > 0;
  }

  async setReauth(sessionId: string, userId: string, until: Millis): Promise<void> {
    await this.db
      .insertInto('mfa_reauth')
      .values({ session_id: sessionId, user_id: userId, until })
      .onConflict((oc) => oc.column('session_id').doUpdateSet({ until, user_id: userId }))
      .execute();
  }

  async reauthUntil(sessionId: string, userId: string): Promise<Millis | undefined> {
    const row = await this.db.selectFrom('mfa_reauth').select('until').where('session_id', '=', sessionId).where('user_id', '=', userId).executeTakeFirst();
    return row === undefined ? undefined : Number(row.until);
  }

  async purge(now: Millis): Promise<void> {
    await this.db.deleteFrom('mfa_challenges').where('expires_at', '<', now).execute();
    await this.db.deleteFrom('mfa_reauth').where('until', '<', now).execute();
  }
}
