/**
 * Hot-path query cost on embedded SQLite, with and without the prepared
 * statement cache (infra/db withStatementCache), as a ratio measured in one run
 * with alternating rounds so machine noise hits both sides alike.
 *
 *   npx tsx bench/sqlite-statements.ts [--rounds 6] [--ops 20000]
 *
 * The queries are the ones every send runs: the membership check and the
 * event tailer's read.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import SQLite from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { withStatementCache } from '../packages/server/src/infra/db/index.js';
import { migrateToLatest } from '../packages/server/src/infra/db/migrate.js';
import type { DB } from '../packages/server/src/infra/db/schema.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '6' }, ops: { type: 'string', default: '20000' } } });
const rounds = Number(values.rounds);
const ops = Number(values.ops);

const dir = mkdtempSync(join(tmpdir(), 'sc-bench-stmt-'));
const sqlite = new SQLite(join(dir, 'b.db'));
sqlite.pragma('journal_mode = WAL');
const plain = new Kysely<DB>({ dialect: new SqliteDialect({ database: sqlite }) });
const cached = new Kysely<DB>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
await migrateToLatest(plain as never, 'sqlite');
const now = Date.now();
await plain.insertInto('users').values({ id: 'u1', email: 'u1@x', username: 'u1', username_lower: 'u1', display_name: 'u1', avatar_url: null, status_text: null, password_hash: 'x', created_at: now, updated_at: now, last_seen_at: null }).execute();
await plain.insertInto('conversations').values({ id: 'c1', type: 'group', title: 't', encryption: 'none', direct_key: null, created_by: 'u1', created_at: now, updated_at: now, last_seq: 0 }).execute();
await plain.insertInto('members').values({ conversation_id: 'c1', user_id: 'u1', role: 'owner', joined_at: now, read_seq: 0 }).execute();

async function workload(db: Kysely<DB>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) {
    await db.selectFrom('members').select(['role', 'read_seq']).where('conversation_id', '=', 'c1').where('user_id', '=', 'u1').executeTakeFirst();
    await db.selectFrom('events').select(['id', 'conversation_id', 'user_id', 'payload']).where('id', '>', i).orderBy('id').limit(1000).execute();
  }
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

await workload(plain); // warm-up (JIT)
await workload(cached);
const ms = { plain: [] as number[], cached: [] as number[] };
for (let r = 0; r < rounds; r++) {
  ms.plain.push(await workload(plain));
  ms.cached.push(await workload(cached));
}
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const perOp = (m: number) => (m * 1000) / (ops * 2);
const result = {
  machine: { node: process.version },
  opsPerRound: ops * 2,
  rounds,
  usPerQuery: { plain: +perOp(median(ms.plain)).toFixed(2), cached: +perOp(median(ms.cached)).toFixed(2) },
  ratioCachedToPlain: +(median(ms.cached) / median(ms.plain)).toFixed(3),
};
console.table(result.usPerQuery);
console.log(JSON.stringify(result));
await plain.destroy();
rmSync(dir, { recursive: true, force: true });
