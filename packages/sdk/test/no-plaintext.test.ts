/**
 * [AF-F10] (issue 3, item 5): the server never holds what people say. Random
 * marker strings go through two E2EE clients; then every row of every table
 * (SQLite: also the raw database file and its WAL; PostgreSQL: row_to_json
 * over every table of the test schema) and every log line the server wrote at
 * trace level are searched for the markers, as text, hex and base64.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../../server/src/app.js';
import { createLogger } from '../../server/src/infra/logger.js';
import { testConfig, uid } from '../../server/test/helpers.js';
import { openDevice, signUp, waitFor, type Account, type TestDevice } from './e2ee-helpers.js';

/** Every way a marker could show up in a dump: UTF-8 text, hex, and base64 at each of the three byte alignments. */
function forms(marker: string): string[] {
  const bytes = Buffer.from(marker, 'utf8');
  const out = [marker, bytes.toString('hex')];
  for (let shift = 0; shift < 3; shift++) {
    const b64 = Buffer.concat([Buffer.alloc(shift), bytes]).toString('base64');
    // Drop the characters that mix in the bytes before and after the marker inside a longer blob.
    out.push(b64.slice(shift === 0 ? 0 : 4, -4));
  }
  return out;
}

function findIn(haystack: Buffer, needles: string[]): string[] {
  return needles.filter((n) => haystack.includes(Buffer.from(n, 'utf8')));
}

describe('[AF-F10] no plaintext on the server', () => {
  let app: App;
  let dataDir: string;
  const lines: string[] = [];
  let alice: Account;
  let bob: Account;
  const devices: TestDevice[] = [];
  let conv: string;
  // Random, so that nothing but our messages can contain them; some not ASCII.
  const markers = Array.from({ length: 10 }, (_, i) => (i % 3 === 0 ? `Grüße-${uid(8)}-ß` : `mk${uid(10)}`));

  beforeAll(async () => {
    const config = await testConfig({ LOG_LEVEL: 'trace' });
    dataDir = config.dataDir;
    app = await buildApp(config, { logger: createLogger({ level: 'trace', nodeId: 'no-plaintext', destination: { write: (s: string) => void lines.push(s) } }) });
    const url = await app.listen();
    [alice, bob] = await Promise.all([signUp({ url }, 'al'), signUp({ url }, 'bo')]);
    // The default suite (X-Wing) as deployed.
    const a1 = await openDevice({ url }, alice, 'a1', { suite: 84 });
    const b1 = await openDevice({ url }, bob, 'b1', { suite: 84 });
    devices.push(a1, b1);
    conv = (await a1.messenger.openConversation([bob.id])).conversation.id;
    await waitFor(() => b1.log.joined.some((j) => j.conversationId === conv), 'Bob to join');
    for (const [i, marker] of markers.entries()) await (i % 2 === 0 ? a1 : b1).messenger.send(conv, `message ${i}: ${marker}`);
    // Both clients read every marker: they really went through the server.
    for (const d of devices) await waitFor(() => markers.every((m) => d.log.texts(conv).some((t) => t.includes(m))), 'every marker to arrive');
  }, 120_000);

  afterAll(async () => {
    for (const d of devices) await d.stop();
    await app?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const needles = () => markers.flatMap(forms);

  it('[AF-F10] no table row holds a marker (text, hex or base64)', async () => {
    const db = app.ctx.database.db;
    const dumps: Buffer[] = [];
    if (app.ctx.database.dialect === 'postgres') {
      const tables = await sql<{ name: string }>`select table_name as name from information_schema.tables where table_schema = current_schema() and table_type = 'BASE TABLE'`.execute(db);
      expect(tables.rows.map((t) => t.name)).toEqual(expect.arrayContaining(['messages', 'events', 'key_packages', 'mls_groups']));
      for (const { name } of tables.rows) {
        const rows = await sql<{ j: string }>`select row_to_json(t)::text as j from ${sql.table(name)} t`.execute(db);
        dumps.push(Buffer.from(rows.rows.map((r) => r.j).join('\n'), 'utf8'));
      }
    } else {
      const tables = await sql<{ name: string }>`select name from sqlite_master where type = 'table'`.execute(db);
      expect(tables.rows.map((t) => t.name)).toEqual(expect.arrayContaining(['messages', 'events', 'key_packages', 'mls_groups']));
      for (const { name } of tables.rows) {
        const rows = await sql<Record<string, unknown>>`select * from ${sql.table(name)}`.execute(db);
        for (const row of rows.rows) {
          for (const v of Object.values(row)) dumps.push(v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v), 'utf8'));
        }
      }
    }
    const all = Buffer.concat(dumps);
    // The dump really covers the data: a username and the encrypted messages are in it.
    expect(findIn(all, [alice.username, bob.username, conv])).toHaveLength(3);
    expect(all.includes(Buffer.from('mls-commit'))).toBe(true);
    expect(findIn(all, needles())).toEqual([]);
  });

  it('[AF-F10] the raw SQLite database file and its WAL hold no marker', () => {
    if (app.ctx.database.dialect !== 'sqlite') return;
    const file = join(dataDir, 'secureconnect.db');
    const raw = Buffer.concat([file, `${file}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)));
    expect(findIn(raw, [alice.username, bob.username])).toHaveLength(2);
    expect(findIn(raw, needles())).toEqual([]);
  });

  it('[AF-F10] no server log line holds a marker (text, hex or base64)', () => {
    const text = Buffer.from(lines.join(''), 'utf8');
    // The log really is at trace level and covers the traffic: the conversation's request URLs are in it.
    expect(lines.length).toBeGreaterThan(20);
    expect(findIn(text, [conv])).toEqual([conv]);
    expect(findIn(text, needles())).toEqual([]);
  });
});
