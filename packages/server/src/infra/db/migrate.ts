import { Migrator, type Kysely, type Migration, type MigrationResultSet } from 'kysely';
import type { Dialect } from './index.js';
import * as m0001 from './migrations/0001_core.js';

interface VersionedMigration {
  up(db: Kysely<unknown>, dialect: Dialect): Promise<void>;
  down?(db: Kysely<unknown>, dialect: Dialect): Promise<void>;
}

/** Forward migrations in order. Names never change once released. */
const MIGRATIONS: Record<string, VersionedMigration> = {
  '0001_core': m0001,
};

/**
 * Applies pending migrations. Kysely's migrator takes a lock (PostgreSQL:
 * `pg_advisory_xact_lock` inside the migration transaction), so nodes starting
 * together apply each migration exactly once (AF-D1).
 */
export async function migrateToLatest(db: Kysely<unknown>, dialect: Dialect): Promise<MigrationResultSet> {
  const migrations: Record<string, Migration> = {};
  for (const [name, m] of Object.entries(MIGRATIONS)) {
    migrations[name] = { up: (d) => m.up(d, dialect), ...(m.down ? { down: (d: Kysely<unknown>) => m.down!(d, dialect) } : {}) };
  }
  const migrator = new Migrator({ db, provider: { getMigrations: () => Promise.resolve(migrations) } });
  const result = await migrator.migrateToLatest();
  if (result.error) throw result.error instanceof Error ? result.error : new Error('migration failed', { cause: result.error });
  return result;
}

export const MIGRATION_NAMES = Object.keys(MIGRATIONS);
