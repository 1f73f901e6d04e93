import { sql, type Kysely, type Selectable, type Transaction } from 'kysely';
import type { Database } from '../../infra/db/index.js';
import type { DB, DevicesTable, KeyPackagesTable, Millis } from '../../infra/db/schema.js';

export type DeviceRow = Selectable<DevicesTable>;
export type KeyPackageRow = Selectable<KeyPackagesTable>;

export interface StockRow {
  cipher_suite: number;
  available: number;
  last_resort: number;
}

/** SQL of the key directory: devices and key packages. */
export class DevicesStore {
  private readonly db: Kysely<DB>;
  constructor(private readonly database: Database) {
    this.db = database.db;
  }

  tx<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  /**
   * Serialises device registrations of one user, so the device limit holds
   * under concurrency. SQLite has one writer (and Kysely one connection), so
   * only PostgreSQL needs a lock; an advisory one, since the user's first
   * device has no row to lock.
   */
  async lockUserDevices(trx: Transaction<DB>, userId: string): Promise<void> {
    if (this.database.dialect === 'postgres') await sql`select pg_advisory_xact_lock(hashtextextended(${`devices:${userId}`}, 0))`.execute(trx);
  }

  /** The device row, locked until the transaction ends on PostgreSQL (revocation, binding and uploads serialise on it). */
  async lockDevice(trx: Transaction<DB>, id: string): Promise<DeviceRow | undefined> {
    const q = trx.selectFrom('devices').selectAll().where('id', '=', id);
    return (this.database.dialect === 'postgres' ? q.forUpdate() : q).executeTakeFirst();
  }

  async countActive(trx: Transaction<DB>, userId: string): Promise<number> {
    const row = await trx
      .selectFrom('devices')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('user_id', '=', userId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  async insertDevice(trx: Transaction<DB>, row: DeviceRow): Promise<void> {
    await trx.insertInto('devices').values(row).execute();
  }

  async get(id: string): Promise<DeviceRow | undefined> {
    return this.db.selectFrom('devices').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async activeOf(userIds: readonly string[]): Promise<DeviceRow[]> {
    if (userIds.length === 0) return [];
    return this.db
      .selectFrom('devices')
      .selectAll()
      .where('user_id', 'in', userIds)
      .where('revoked_at', 'is', null)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
  }

  async activeByIds(ids: readonly string[], trx?: Transaction<DB>): Promise<Pick<DeviceRow, 'id' | 'user_id' | 'signature_key'>[]> {
    if (ids.length === 0) return [];
    return (trx ?? this.db)
      .selectFrom('devices')
      .select(['id', 'user_id', 'signature_key'])
      .where('id', 'in', ids)
      .where('revoked_at', 'is', null)
      .execute();
  }

  async touch(id: string, now: Millis): Promise<void> {
    await this.db.updateTable('devices').set({ last_seen_at: now }).where('id', '=', id).execute();
  }

  /** Marks the device revoked unless it already is; false when it was. */
  async markRevoked(trx: Transaction<DB>, id: string, now: Millis): Promise<boolean> {
    const res = await trx.updateTable('devices').set({ revoked_at: now }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
    return Number(res.numUpdatedRows) === 1;
  }

  // ---- key packages ----

  async deleteKeyPackages(trx: Transaction<DB>, deviceId: string): Promise<void> {
    await trx.deleteFrom('key_packages').where('device_id', '=', deviceId).execute();
  }

  async deleteExpired(trx: Transaction<DB>, deviceId: string, now: Millis): Promise<void> {
    await trx.deleteFrom('key_packages').where('device_id', '=', deviceId).where('expires_at', '<=', now).execute();
  }

  async countUnclaimed(trx: Transaction<DB>, deviceId: string): Promise<number> {
    const row = await trx
      .selectFrom('key_packages')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('device_id', '=', deviceId)
      .where('last_resort', '=', 0)
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  /** A package uploaded twice (a retried request) is stored once. */
  async insertKeyPackages(trx: Transaction<DB>, rows: KeyPackageRow[]): Promise<void> {
    if (rows.length === 0) return;
    await trx.insertInto('key_packages').values(rows).onConflict((oc) => oc.column('ref').doNothing()).execute();
  }

  async replaceLastResort(trx: Transaction<DB>, row: KeyPackageRow): Promise<void> {
    await trx
      .deleteFrom('key_packages')
      .where((eb) => eb.or([eb.and([eb('device_id', '=', row.device_id), eb('cipher_suite', '=', row.cipher_suite), eb('last_resort', '=', 1)]), eb('ref', '=', row.ref)]))
      .execute();
    await trx.insertInto('key_packages').values(row).execute();
  }

  async stock(deviceId: string, now: Millis): Promise<StockRow[]> {
    const rows = await this.db
      .selectFrom('key_packages')
      .select(['cipher_suite', 'last_resort', (eb) => eb.fn.countAll<number>().as('n')])
      .where('device_id', '=', deviceId)
      .where('expires_at', '>', now)
      .groupBy(['cipher_suite', 'last_resort'])
      .execute();
    return rows.map((r) => ({ cipher_suite: r.cipher_suite, last_resort: r.last_resort, available: Number(r.n) }));
  }

  /**
   * Takes the oldest unexpired package of the device and suite, deleting it
   * ([K3]). On PostgreSQL the row is picked with FOR UPDATE SKIP LOCKED, so
   * concurrent claimers on any node each get a different row (or none), never
   * the same one; SQLite has a single writer.
   */
  async takeOne(trx: Transaction<DB>, deviceId: string, suite: number, now: Millis): Promise<string | undefined> {
    const pick = trx
      .selectFrom('key_packages')
      .select('ref')
      .where('device_id', '=', deviceId)
      .where('cipher_suite', '=', suite)
      .where('last_resort', '=', 0)
      .where('expires_at', '>', now)
      .orderBy('created_at')
      .limit(1);
    const row = await trx
      .deleteFrom('key_packages')
      .where('ref', '=', this.database.dialect === 'postgres' ? pick.forUpdate().skipLocked() : pick)
      .returning('data')
      .executeTakeFirst();
    return row?.data;
  }

  /** The last-resort package of the device and suite (not consumed). */
  async lastResort(trx: Transaction<DB>, deviceId: string, suite: number, now: Millis): Promise<string | undefined> {
    const row = await trx
      .selectFrom('key_packages')
      .select('data')
      .where('device_id', '=', deviceId)
      .where('cipher_suite', '=', suite)
      .where('last_resort', '=', 1)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    return row?.data;
  }

  async available(trx: Transaction<DB>, deviceId: string, suite: number, now: Millis): Promise<number> {
    const row = await trx
      .selectFrom('key_packages')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('device_id', '=', deviceId)
      .where('cipher_suite', '=', suite)
      .where('last_resort', '=', 0)
      .where('expires_at', '>', now)
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }
}
