import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { DB, Millis, SessionsTable } from '../../infra/db/schema.js';

/**
 * SQL of the auth module. It owns sessions, refresh tokens and the account
 * columns of `users` (email, password hash); profile columns belong to the
 * users module.
 */
export interface Credentials {
  id: string;
  username: string;
  display_name: string;
  password_hash: string;
}

export interface NewAccount {
  id: string;
  email: string;
  username: string;
  displayName: string;
  passwordHash: string;
  locale: string;
}

export interface NewSession {
  id: string;
  userId: string;
  device: string | null;
  userAgent: string | null;
  ip: string | null;
  refreshHash: string;
  now: Millis;
  expiresAt: Millis;
}

export type SessionRow = Pick<SessionsTable, 'id' | 'user_id' | 'device' | 'user_agent' | 'ip' | 'created_at' | 'last_seen_at' | 'expires_at' | 'revoked_at' | 'device_id'>;

export interface RefreshLookup {
  session_id: string;
  token_expires_at: Millis;
  used_at: Millis | null;
  user_id: string;
  session_expires_at: Millis;
  revoked_at: Millis | null;
}

export type RotateResult = 'rotated' | 'already_used' | 'session_gone';

export class AuthStore {
  private readonly db: Kysely<DB>;
  constructor(database: Database) {
    this.db = database.db;
  }

  async emailOrUsernameTaken(email: string, usernameLower: string): Promise<{ email: boolean; username: boolean }> {
    const rows = await this.db
      .selectFrom('users')
      .select(['email', 'username_lower'])
      .where((eb) => eb.or([eb('email', '=', email), eb('username_lower', '=', usernameLower)]))
      .limit(2)
      .execute();
    return { email: rows.some((r) => r.email === email), username: rows.some((r) => r.username_lower === usernameLower) };
  }

  /** Account, first session and first refresh token in one transaction: no account without a way in. */
  async createAccount(a: NewAccount, s: NewSession, inTrx: (trx: Transaction<DB>) => Promise<void>): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx
        .insertInto('users')
        .values({
          id: a.id,
          email: a.email,
          username: a.username,
          username_lower: a.username.toLowerCase(),
          display_name: a.displayName,
          avatar_url: null,
          status_text: null,
          password_hash: a.passwordHash,
          created_at: s.now,
          updated_at: s.now,
          last_seen_at: null,
          locale: a.locale,
        })
        .execute();
      await insertSession(trx, s);
      await inTrx(trx);
    });
  }

  /** One query shape whether the login is an email or a username, so both cost the same. */
  async findCredentials(loginLower: string): Promise<Credentials | undefined> {
    return this.db
      .selectFrom('users')
      .select(['id', 'username', 'display_name', 'password_hash'])
      .where((eb) => eb.or([eb('email', '=', loginLower), eb('username_lower', '=', loginLower)]))
      .executeTakeFirst();
  }

  async findCredentialsById(userId: string): Promise<Credentials | undefined> {
    return this.db.selectFrom('users').select(['id', 'username', 'display_name', 'password_hash']).where('id', '=', userId).executeTakeFirst();
  }

  async contextWords(userId: string): Promise<{ email: string; username_lower: string } | undefined> {
    return this.db.selectFrom('users').select(['email', 'username_lower']).where('id', '=', userId).executeTakeFirst();
  }

  /**
   * New hash, sessions ended (all, or all but `keepId`) and the caller's
   * `inTrx` work in one transaction; returns the revoked session ids.
   */
  async setPassword(userId: string, passwordHash: string, keepId: string | null, now: Millis, reason: string, inTrx: (trx: Transaction<DB>) => Promise<void>): Promise<string[]> {
    return this.db.transaction().execute(async (trx) => {
      await trx.updateTable('users').set({ password_hash: passwordHash, updated_at: now }).where('id', '=', userId).execute();
      const rows = await trx
        .updateTable('sessions')
        .set({ revoked_at: now, revoked_reason: reason })
        .where('user_id', '=', userId)
        .$if(keepId !== null, (q) => q.where('id', '!=', keepId!))
        .where('revoked_at', 'is', null)
        .returning('id')
        .execute();
      await inTrx(trx);
      return rows.map((r) => r.id);
    });
  }

  async createSession(s: NewSession): Promise<void> {
    await this.db.transaction().execute((trx) => insertSession(trx, s));
  }

  /** With the owner's verification state, which the auth hook needs on every request ([AC3]). */
  async getSession(id: string): Promise<(SessionRow & { email_verified_at: Millis | null }) | undefined> {
    return this.db
      .selectFrom('sessions as s')
      .innerJoin('users as u', 'u.id', 's.user_id')
      .select(['s.id', 's.user_id', 's.device', 's.user_agent', 's.ip', 's.created_at', 's.last_seen_at', 's.expires_at', 's.revoked_at', 's.device_id', 'u.email_verified_at'])
      .where('s.id', '=', id)
      .executeTakeFirst();
  }

  async touchSession(id: string, now: Millis): Promise<void> {
    await this.db.updateTable('sessions').set({ last_seen_at: now }).where('id', '=', id).where('last_seen_at', '<', now).execute();
  }

  async findRefresh(tokenHash: string): Promise<RefreshLookup | undefined> {
    return this.db
      .selectFrom('refresh_tokens as r')
      .innerJoin('sessions as s', 's.id', 'r.session_id')
      .select([
        'r.session_id', 'r.expires_at as token_expires_at', 'r.used_at',
        's.user_id', 's.expires_at as session_expires_at', 's.revoked_at',
      ])
      .where('r.token_hash', '=', tokenHash)
      .executeTakeFirst();
  }

  /**
   * Marks the old token used and stores its successor atomically. The
   * conditional UPDATE is the arbiter: of two concurrent refreshes with the
   * same token exactly one sees a row change ([S2]).
   */
  async rotateRefresh(oldHash: string, next: { hash: string; sessionId: string; now: Millis; expiresAt: Millis; ip: string | null; userAgent: string | null }): Promise<RotateResult> {
    return this.db.transaction().execute(async (trx) => {
      const used = await trx
        .updateTable('refresh_tokens')
        .set({ used_at: next.now })
        .where('token_hash', '=', oldHash)
        .where('used_at', 'is', null)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) return 'already_used';
      const live = await trx
        .updateTable('sessions')
        .set({ last_seen_at: next.now, expires_at: next.expiresAt, ip: next.ip, user_agent: next.userAgent })
        .where('id', '=', next.sessionId)
        .where('revoked_at', 'is', null)
        .where('expires_at', '>', next.now)
        .executeTakeFirst();
      if (Number(live.numUpdatedRows) !== 1) return 'session_gone';
      await trx
        .insertInto('refresh_tokens')
        .values({ token_hash: next.hash, session_id: next.sessionId, created_at: next.now, expires_at: next.expiresAt, used_at: null })
        .execute();
      return 'rotated';
    });
  }

  /** Revokes one live session of `userId`; false when there is none. */
  async revokeSession(userId: string, sessionId: string, now: Millis, reason: string): Promise<boolean> {
    const res = await this.db
      .updateTable('sessions')
      .set({ revoked_at: now, revoked_reason: reason })
      .where('id', '=', sessionId)
      .where('user_id', '=', userId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  /** Revokes every live session of `userId` except `keepId`; returns the revoked ids. */
  async revokeOtherSessions(userId: string, keepId: string, now: Millis, reason: string): Promise<string[]> {
    const rows = await this.db
      .updateTable('sessions')
      .set({ revoked_at: now, revoked_reason: reason })
      .where('user_id', '=', userId)
      .where('id', '!=', keepId)
      .where('revoked_at', 'is', null)
      .returning('id')
      .execute();
    return rows.map((r) => r.id);
  }

  async listLiveSessions(userId: string, now: Millis, limit: number): Promise<SessionRow[]> {
    return this.db
      .selectFrom('sessions')
      .select(['id', 'user_id', 'device', 'user_agent', 'ip', 'created_at', 'last_seen_at', 'expires_at', 'revoked_at', 'device_id'])
      .where('user_id', '=', userId)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', now)
      .orderBy('last_seen_at', 'desc')
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
  }

  /**
   * Binds a live session to a device unless it is bound to another one. The
   * conditional UPDATE decides races between two bindings of one session.
   * Returns the device the session speaks for afterwards, or undefined when
   * the session is not live.
   */
  async bindDevice(sessionId: string, deviceId: string, trx?: Transaction<DB>): Promise<string | null | undefined> {
    const db = trx ?? this.db;
    const res = await db
      .updateTable('sessions')
      .set({ device_id: deviceId })
      .where('id', '=', sessionId)
      .where('revoked_at', 'is', null)
      .where((eb) => eb.or([eb('device_id', 'is', null), eb('device_id', '=', deviceId)]))
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 1) return deviceId;
    const row = await db.selectFrom('sessions').select(['device_id', 'revoked_at']).where('id', '=', sessionId).executeTakeFirst();
    return row && row.revoked_at === null ? row.device_id : undefined;
  }

  /** Revokes every live session bound to the device; returns their ids. */
  async revokeDeviceSessions(userId: string, deviceId: string, now: Millis, reason: string): Promise<string[]> {
    const rows = await this.db
      .updateTable('sessions')
      .set({ revoked_at: now, revoked_reason: reason })
      .where('user_id', '=', userId)
      .where('device_id', '=', deviceId)
      .where('revoked_at', 'is', null)
      .returning('id')
      .execute();
    return rows.map((r) => r.id);
  }

  /** Drops sessions (and, by cascade, their refresh tokens) that ended before `before`. */
  async purgeEnded(before: Millis): Promise<number> {
    const res = await this.db
      .deleteFrom('sessions')
      .where((eb) => eb.or([eb('expires_at', '<', before), eb('revoked_at', '<', before)]))
      .executeTakeFirst();
    return Number(res.numDeletedRows);
  }
}

async function insertSession(trx: Kysely<DB>, s: NewSession): Promise<void> {
  await trx
    .insertInto('sessions')
    .values({
      id: s.id,
      user_id: s.userId,
      device: s.device,
      user_agent: s.userAgent,
      ip: s.ip,
      created_at: s.now,
      last_seen_at: s.now,
      expires_at: s.expiresAt,
      revoked_at: null,
      revoked_reason: null,
    })
    .execute();
  await trx
    .insertInto('refresh_tokens')
    .values({ token_hash: s.refreshHash, session_id: s.id, created_at: s.now, expires_at: s.expiresAt, used_at: null })
    .execute();
}
