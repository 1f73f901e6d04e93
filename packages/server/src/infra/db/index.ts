import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql, type LogEvent } from 'kysely';
import pg from 'pg';
import type { Config } from '../../config.js';
import type { Logger } from '../logger.js';
import { redactUrl } from '../logger.js';
import type { DB } from './schema.js';

export type Dialect = 'sqlite' | 'postgres';

export interface Database {
  db: Kysely<DB>;
  dialect: Dialect;
  /** Queries executed so far; tests use it to prove there is no N+1 (AF-D4). */
  stats: { queries: number };
  ping(timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

// int8 (bigint) as a JS number: ids and epoch-millis stay far below 2^53.
pg.types.setTypeParser(20, (v) => Number.parseInt(v, 10));

/**
 * Opens the configured engine: PostgreSQL when DATABASE_URL is set, else an
 * embedded SQLite file in the data dir. Pool size and every timeout come from
 * the config (AF-D3, AF-I6).
 */
export function openDatabase(config: Config, log: Logger): Database {
  const stats = { queries: 0 };
  const onLog = (event: LogEvent) => {
    stats.queries++;
    if (event.level === 'error') log.debug({ err: event.error, ms: event.queryDurationMillis }, 'query failed');
  };

  if (config.database.url) {
    const url = config.database.url;
    const pool = new pg.Pool({
      connectionString: config.database.sslCaFile ? withoutSslParams(url) : url,
      max: config.database.poolMax,
      connectionTimeoutMillis: config.database.connectTimeoutMs,
      idleTimeoutMillis: 30_000,
      statement_timeout: config.database.statementTimeoutMs,
      query_timeout: config.database.statementTimeoutMs + 1_000,
      idle_in_transaction_session_timeout: config.database.statementTimeoutMs * 2,
      application_name: `secureconnect-${config.nodeId}`,
      ...(config.database.sslCaFile ? { ssl: { ca: readFileSync(config.database.sslCaFile, 'utf8'), rejectUnauthorized: true } } : {}),
    });
    // An idle client losing its connection must not crash the process.
    pool.on('error', (err) => log.error({ err }, 'postgres pool client error'));
    log.info({ database: redactUrl(url), poolMax: config.database.poolMax }, 'using postgresql');
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }), log: onLog });
    return {
      db,
      dialect: 'postgres',
      stats,
      ping: (ms) => withTimeout(sql`select 1`.execute(db).then(() => undefined), ms, 'database'),
      close: () => db.destroy(),
    };
  }

  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const file = join(config.dataDir, 'secureconnect.db');
  const sqlite = new SQLite(file, { timeout: config.database.statementTimeoutMs });
  sqlite.pragma('journal_mode = WAL');
  // FULL: an acknowledged message survives power loss, not just a crash; group commit pays for it.
  sqlite.pragma('synchronous = FULL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma(`busy_timeout = ${config.database.statementTimeoutMs}`);
  log.info({ file }, 'using embedded sqlite');
  const db = new Kysely<DB>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }), log: onLog });
  return {
    db,
    dialect: 'sqlite',
    stats,
    ping: (ms) => withTimeout(sql`select 1`.execute(db).then(() => undefined), ms, 'database'),
    close: () => db.destroy(),
  };
}

/** Prepared statements kept per SQLite connection; beyond this the least recently used is dropped. */
const STATEMENT_CACHE_MAX = 500;

/**
 * Kysely's SQLite driver prepares every query anew; preparing cost 8% of server
 * CPU in the chat benchmark's profile. Kysely's SQL for a given query shape is
 * a stable string with `?` parameters, so a bounded LRU of statements keyed by
 * it is safe: better-sqlite3 statements are reusable, and SQLite re-prepares
 * one by itself if the schema changes underneath it.
 */
export function withStatementCache(sqlite: SQLite.Database): { prepare(sql: string): SQLite.Statement; close(): void } {
  const cache = new Map<string, SQLite.Statement>();
  return {
    prepare(sqlText: string) {
      let stmt = cache.get(sqlText);
      if (stmt) {
        cache.delete(sqlText);
      } else {
        stmt = sqlite.prepare(sqlText);
        if (cache.size >= STATEMENT_CACHE_MAX) cache.delete(cache.keys().next().value!);
      }
      cache.set(sqlText, stmt);
      return stmt;
    },
    close() {
      cache.clear();
      sqlite.close();
    },
  };
}

/**
 * pg lets `sslmode` in the URL override the `ssl` option, which would silently
 * drop our CA. With DATABASE_SSL_CA_FILE set, verification is explicit instead:
 * the server certificate must chain to that CA and match the host (verify-full).
 */
function withoutSslParams(url: string): string {
  const u = new URL(url);
  for (const p of ['sslmode', 'sslrootcert', 'ssl', 'uselibpqcompat']) u.searchParams.delete(p);
  return u.toString();
}

/** Rejects when `p` does not settle within `ms` (every dependency call has a bound, AF-I6). */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
