import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { openDatabase, type Database } from '../src/infra/db/index.js';
import { migrateToLatest } from '../src/infra/db/migrate.js';
import { createLogger } from '../src/infra/logger.js';
import { testConfig } from './helpers.js';

const log = createLogger({ level: 'silent', nodeId: 'test' });

interface ForeignKey {
  table: string;
  columns: string[];
}

/** Foreign keys and, per table, the column lists of every index (primary keys and unique constraints included). */
async function inspect(database: Database): Promise<{ fks: ForeignKey[]; indexes: Map<string, string[][]> }> {
  const db = database.db;
  const fks: ForeignKey[] = [];
  const indexes = new Map<string, string[][]>();
  if (database.dialect === 'sqlite') {
    const tables = await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name not like 'sqlite_%'`.execute(db);
    for (const { name } of tables.rows) {
      const fkRows = await sql<{ id: number; seq: number; from: string }>`select * from pragma_foreign_key_list(${name})`.execute(db);
      const byId = new Map<number, { seq: number; from: string }[]>();
      for (const r of fkRows.rows) byId.set(r.id, [...(byId.get(r.id) ?? []), r]);
      for (const cols of byId.values()) fks.push({ table: name, columns: cols.sort((a, b) => a.seq - b.seq).map((c) => c.from) });
      const list = await sql<{ name: string }>`select name from pragma_index_list(${name})`.execute(db);
      const idx: string[][] = [];
      for (const i of list.rows) {
        const info = await sql<{ seqno: number; name: string }>`select seqno, name from pragma_index_info(${i.name})`.execute(db);
        idx.push(info.rows.sort((a, b) => a.seqno - b.seqno).map((c) => c.name));
      }
      // A rowid table's INTEGER PRIMARY KEY is the rowid itself: indexed without an index entry.
      const pk = await sql<{ name: string; pk: number; type: string }>`select name, pk, type from pragma_table_info(${name}) where pk > 0`.execute(db);
      if (pk.rows.length === 1 && pk.rows[0]!.type.toLowerCase() === 'integer') idx.push([pk.rows[0]!.name]);
      indexes.set(name, idx);
    }
  } else {
    const fkRows = await sql<{ table: string; columns: string[] }>`
      select c.conrelid::regclass::text as table,
             array(select a.attname from unnest(c.conkey) with ordinality k(attnum, ord)
                   join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum order by k.ord)::text[] as columns
      from pg_constraint c join pg_namespace n on n.oid = c.connamespace
      where c.contype = 'f' and n.nspname = current_schema()`.execute(db);
    fks.push(...fkRows.rows);
    const idxRows = await sql<{ table: string; columns: string[] }>`
      select i.indrelid::regclass::text as table,
             array(select a.attname from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
                   join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum order by k.ord)::text[] as columns
      from pg_index i join pg_class t on t.oid = i.indrelid join pg_namespace n on n.oid = t.relnamespace
      where n.nspname = current_schema()`.execute(db);
    for (const r of idxRows.rows) indexes.set(r.table, [...(indexes.get(r.table) ?? []), r.columns]);
  }
  return { fks, indexes };
}

describe('[AF-D5] schema', () => {
  let database: Database;
  beforeAll(async () => {
    database = openDatabase(await testConfig(), log);
    await migrateToLatest(database.db as never, database.dialect);
  });
  afterAll(async () => database.close());

  it('[AF-D5] every foreign key is the leading column(s) of some index', async () => {
    const { fks, indexes } = await inspect(database);
    expect(fks.length).toBeGreaterThanOrEqual(8);
    const missing = fks.filter((fk) => !(indexes.get(fk.table) ?? []).some((cols) => fk.columns.every((c, i) => cols[i] === c)));
    expect(missing).toEqual([]);
  });

  it('[AF-D5] the hot lookups have their indexes: seq per conversation, idempotency key, direct pair, my memberships', async () => {
    const { indexes } = await inspect(database);
    const has = (table: string, cols: string[]) => (indexes.get(table) ?? []).some((ix) => cols.every((c, i) => ix[i] === c));
    expect(has('messages', ['conversation_id', 'seq'])).toBe(true);
    expect(has('messages', ['conversation_id', 'sender_id', 'client_msg_id'])).toBe(true);
    expect(has('conversations', ['direct_key'])).toBe(true);
    expect(has('members', ['user_id', 'conversation_id'])).toBe(true);
    expect(has('members', ['conversation_id', 'user_id'])).toBe(true);
    expect(has('events', ['conversation_id', 'id'])).toBe(true);
    expect(has('events', ['user_id', 'id'])).toBe(true);
  });
});
