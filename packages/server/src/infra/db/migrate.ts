import { Migrator, sql, type Kysely, type Migration, type MigrationResultSet } from 'kysely';
import type { Dialect } from './index.js';
import * as m0001 from './migrations/0001_core.js';
import * as m0002 from './migrations/0002_e2ee.js';
import * as m0003 from './migrations/0003_account_mail.js';
import * as m0004 from './migrations/0004_mfa.js';

interface VersionedMigration {
  up(db: Kysely<unknown>, dialect: Dialect): Promise<void>;
  down?(db: Kysely<unknown>, dialect: Dialect): Promise<void>;
}

/** Forward migrations in order. Names never change once released. */
const MIGRATIONS: Record<string, VersionedMigration> = {
  '0001_core': m0001,
  '0002_e2ee': m0002,
  '0003_account_mail': m0003,
  '0004_mfa': m0004,
};

/** Session-level advisory lock key held for a whole migration run on PostgreSQL. */
const MIGRATION_LOCK_KEY = 0x5ec0_0000;

/**
 * Applies pending migrations, each in its own transaction, exactly once even
 * when several nodes start together (AF-D1). Kysely's own lock is taken only
 * after it creates its bookkeeping tables, and two nodes racing on that create
 * fail (seen in the concurrent-migration test), so on PostgreSQL the whole run
 * holds our session-level advisory lock on one dedicated connection. SQLite is
 * single-node by design and serialises writers itself.
 */
export async function migrateToLatest(db: Kysely<unknown>, dialect: Dialect): Promise<MigrationResultSet> {
  const migrations: Record<string, Migration> = {};
  for (const [name, m] of Object.entries(MIGRATIONS)) {
    migrations[name] = { up: (d) => m.up(d, dialect), ...(m.down ? { down: (d: Kysely<unknown>) => m.down!(d, dialect) } : {}) };
  }
  const run = async (conn: Kysely<unknown>, schema?: string) => {
    // Kysely looks for its bookkeeping tables in every schema; pin it to ours so
    // a deployment (or test) using its own schema never mistakes another's for it.
    const migrator = new Migrator({ db: conn, provider: { getMigrations: () => Promise.resolve(migrations) }, ...(schema ? { migrationTableSchema: schema } : {}) });
    const result = await migrator.migrateToLatest();
    if (result.error) throw result.error instanceof Error ? result.error : new Error('migration failed', { cause: result.error });
    return result;
  };
  if (dialect !== 'postgres') return run(db);
  return db.connection().execute(async (conn) => {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK_KEY})`.execute(conn);
    try {
      const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(conn);
      return await run(conn, rows[0]?.schema);
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK_KEY})`.execute(conn);
    }
  });
}

export const MIGRATION_NAMES = Object.keys(MIGRATIONS);
