import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { Database, Dialect } from '../../infra/db/index.js';
import type { DB, Millis, UsersTable } from '../../infra/db/schema.js';

export type ProfileRow = Pick<UsersTable, 'id' | 'username' | 'display_name' | 'avatar_url' | 'status_text'>;
export type MeRow = ProfileRow & Pick<UsersTable, 'email' | 'created_at'> & { email_verified_at: number | null };

export interface ProfilePatch {
  display_name?: string;
  avatar_url?: string | null;
  status_text?: string | null;
}

const PROFILE = ['id', 'username', 'display_name', 'avatar_url', 'status_text'] as const;
/** Well below both engines' bind-parameter limits (SQLite 32766, PostgreSQL 65535). */
const IN_LIST_MAX = 10_000;

/** `%`, `_` and the escape character itself match literally inside the LIKE pattern. */
export function likePrefix(prefix: string): string {
  return `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

/** SQL of the users module: profile columns of `users` (account columns belong to auth). */
export class UsersStore {
  private readonly db: Kysely<DB>;
  private readonly dialect: Dialect;
  constructor(database: Database) {
    this.db = database.db;
    this.dialect = database.dialect;
  }

  async getMe(id: string): Promise<MeRow | undefined> {
    return this.db.selectFrom('users').select([...PROFILE, 'email', 'created_at', 'email_verified_at']).where('id', '=', id).executeTakeFirst();
  }

  async updateProfile(id: string, patch: ProfilePatch, now: Millis): Promise<void> {
    await this.db.updateTable('users').set({ ...patch, updated_at: now }).where('id', '=', id).execute();
  }

  /** One query for the whole list (chunked only past IN_LIST_MAX ids). */
  async profiles(ids: readonly string[]): Promise<ProfileRow[]> {
    const out: ProfileRow[] = [];
    for (let i = 0; i < ids.length; i += IN_LIST_MAX) {
      const chunk = ids.slice(i, i + IN_LIST_MAX);
      out.push(...(await this.db.selectFrom('users').select(PROFILE).where('id', 'in', chunk).execute()));
    }
    return out;
  }

  async exists(id: string): Promise<boolean> {
    const row = await this.db.selectFrom('users').select('id').where('id', '=', id).executeTakeFirst();
    return row !== undefined;
  }

  /** Only moves forward: a late write from a slow node never turns last seen back. */
  async setLastSeen(id: string, at: Millis): Promise<void> {
    await this.db
      .updateTable('users')
      .set({ last_seen_at: at })
      .where('id', '=', id)
      .where((eb) => eb.or([eb('last_seen_at', 'is', null), eb('last_seen_at', '<', at)]))
      .execute();
  }

  async lastSeen(ids: readonly string[]): Promise<{ id: string; last_seen_at: Millis | null }[]> {
    const out: { id: string; last_seen_at: Millis | null }[] = [];
    for (let i = 0; i < ids.length; i += IN_LIST_MAX) {
      const chunk = ids.slice(i, i + IN_LIST_MAX);
      out.push(...(await this.db.selectFrom('users').select(['id', 'last_seen_at']).where('id', 'in', chunk).execute()));
    }
    return out;
  }

  /**
   * Usernames starting with `prefixLower`, in byte order of `username_lower`,
   * after `afterLower` (keyset). Byte order (COLLATE "C" on PostgreSQL, SQLite's
   * default BINARY) is the same on both engines and lets the prefix seek the
   * index; LIKE with escaping is the exact filter.
   */
  async searchByPrefix(prefixLower: string, afterLower: string | null, limit: number): Promise<ProfileRow[]> {
    const col = this.orderedUsername();
    let q = this.db
      .selectFrom('users')
      .select(PROFILE)
      .where(sql<boolean>`${col} >= ${prefixLower}`)
      .where(sql<boolean>`username_lower like ${likePrefix(prefixLower)} escape '\\'`);
    if (afterLower !== null) q = q.where(sql<boolean>`${col} > ${afterLower}`);
    return q.orderBy(col).limit(limit).execute();
  }

  private orderedUsername(): RawBuilder<string> {
    return this.dialect === 'postgres' ? sql<string>`username_lower collate "C"` : sql<string>`username_lower`;
  }
}
