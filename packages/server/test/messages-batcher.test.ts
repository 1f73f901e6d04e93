/**
 * Unit tests of the group-commit batcher against the configured engine
 * (SQLite, or PostgreSQL when DATABASE_URL is set), without the HTTP app.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Transaction } from 'kysely';
import { MemoryBus } from '../src/infra/bus/index.js';
import { openDatabase, type Database } from '../src/infra/db/index.js';
import { migrateToLatest } from '../src/infra/db/migrate.js';
import type { DB } from '../src/infra/db/schema.js';
import { EventLog } from '../src/infra/eventlog.js';
import { createLogger } from '../src/infra/logger.js';
import { SendBatcher, type MembershipCheck, type SendItem } from '../src/modules/messages/batcher.js';
import { MessagesStore, type ClientKey } from '../src/modules/messages/store.js';
import type { Config } from '../src/config.js';
import { testConfig, uid, usingPostgres } from './helpers.js';

const log = createLogger({ level: 'silent', nodeId: 'test' });
/** These unit tests' conversations have no member rows: every sender counts as a member unless a test says otherwise. */
const everyone: MembershipCheck = (_trx, _conversationId, ids) => Promise.resolve(new Set(ids));

let config: Config;
let database: Database;
let bus: MemoryBus;
let events: EventLog;

beforeAll(async () => {
  config = await testConfig();
  database = openDatabase(config, log);
  await migrateToLatest(database.db as never, database.dialect);
  bus = new MemoryBus(log);
  events = new EventLog(database, bus, log);
  const now = Date.now();
  for (const id of ['u1', 'u2']) {
    await database.db.insertInto('users').values({ id, email: `${id}@x.test`, username: id, username_lower: id, display_name: id, avatar_url: null, status_text: null, password_hash: 'x', created_at: now, updated_at: now, last_seen_at: null }).execute();
  }
});
afterAll(async () => {
  await events.stop();
  await bus.close();
  await database.close();
});

async function conversation(): Promise<string> {
  const id = `c-${uid(6)}`;
  const now = Date.now();
  await database.db.insertInto('conversations').values({ id, type: 'group', title: 't', encryption: 'none', direct_key: null, created_by: 'u1', created_at: now, updated_at: now, last_seq: 0 }).execute();
  return id;
}

const item = (conversationId: string, senderId = 'u1', clientMsgId = uid(6)): SendItem => ({ conversationId, senderId, clientMsgId, content: { type: 'text', text: clientMsgId } });
const seqsOf = async (conversationId: string) =>
  (await database.db.selectFrom('messages').select('seq').where('conversation_id', '=', conversationId).orderBy('seq').execute()).map((r) => Number(r.seq));
const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

/** A store that misses existing messages inside a batch: what a duplicate committed by another node in between looks like. */
class BlindStore extends MessagesStore {
  blind = true;
  override async findByClientKeys(keys: ClientKey[], q?: Transaction<DB>) {
    if (this.blind && q) return [];
    return super.findByClientKeys(keys, q);
  }
}

describe('[M3] group commit', () => {
  it('[C3][M2] a sender who is no longer a member is refused inside the commit, and seqs stay gap-free', async () => {
    const c = await conversation();
    const onlyU1: MembershipCheck = (_trx, _conversationId, ids) => Promise.resolve(new Set(ids.filter((id) => id === 'u1')));
    const b = new SendBatcher(new MessagesStore(database), events, log, onlyU1);
    const results = await Promise.allSettled([item(c, 'u1'), item(c, 'u2'), item(c, 'u1'), item(c, 'u2'), item(c, 'u1')].map((i) => b.submit(i)));
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ code: 'not_found' });
    expect(await seqsOf(c)).toEqual([1, 2, 3]);
    const row = await database.db.selectFrom('conversations').select('last_seq').where('id', '=', c).executeTakeFirstOrThrow();
    expect(Number(row.last_seq)).toBe(3);
  });

  it('commits many queued sends in few transactions, capped per flush, seqs gap-free [M2]', async () => {
    const conv = await conversation();
    const b = new SendBatcher(new MessagesStore(database), events, log, everyone, 64);
    const results = await Promise.all(Array.from({ length: 300 }, (_, i) => b.submit(item(conv, i % 2 ? 'u1' : 'u2'))));
    expect(results.every((r) => r.created)).toBe(true);
    expect(results.map((r) => r.message.seq)).toEqual(range(300));
    expect(b.stats.maxBatchSize).toBe(64);
    expect(b.stats.flushes).toBeLessThanOrEqual(10);
    expect(await seqsOf(conv)).toEqual(range(300));
  });

  it('an item that fails on its own does not fail the others', async () => {
    const conv = await conversation();
    const b = new SendBatcher(new MessagesStore(database), events, log, everyone);
    const out = await Promise.allSettled([
      b.submit(item(conv)),
      b.submit(item('no-such-conversation')),
      b.submit(item(conv, 'ghost-user')), // violates the sender foreign key: the whole batch fails, then each item is retried alone
      b.submit(item(conv)),
    ]);
    expect(out.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'fulfilled']);
    expect((out[1] as PromiseRejectedResult).reason).toMatchObject({ code: 'not_found' });
    expect(await seqsOf(conv)).toEqual([1, 2]);
    const created = (await database.db.selectFrom('events').select('payload').where('conversation_id', '=', conv).orderBy('id').execute()).map((r) => JSON.parse(r.payload).message.seq);
    expect(created).toEqual([1, 2]);
  });

  it('[M1] duplicates within one batch resolve to one message; a duplicate the batch missed is answered from the constraint', async () => {
    const conv = await conversation();
    const b = new SendBatcher(new MessagesStore(database), events, log, everyone);
    const same = await Promise.all([b.submit(item(conv, 'u1', 'dup')), b.submit(item(conv, 'u1', 'dup')), b.submit(item(conv, 'u2', 'dup'))]);
    expect(same.map((r) => r.created)).toEqual([true, false, true]);
    expect(same[1].message).toEqual(same[0].message);

    const blind = new BlindStore(database);
    const b2 = new SendBatcher(blind, events, log, everyone);
    const again = await Promise.all([b2.submit(item(conv, 'u1', 'dup')), b2.submit(item(conv, 'u1', 'fresh'))]);
    expect(again[0]).toEqual({ message: same[0].message, created: false });
    expect(again[1].created).toBe(true);
    expect(again[1].message.seq).toBe(3);
    expect(await seqsOf(conv)).toEqual([1, 2, 3]);
  });

  it('stop() writes what is queued and then refuses', async () => {
    const conv = await conversation();
    const b = new SendBatcher(new MessagesStore(database), events, log, everyone);
    const queued = Array.from({ length: 20 }, () => b.submit(item(conv)));
    await b.stop();
    expect((await Promise.all(queued)).map((r) => r.message.seq)).toEqual(range(20));
    await expect(b.submit(item(conv))).rejects.toMatchObject({ code: 'unavailable' });
  });

  it.skipIf(!usingPostgres)('[M2] [M1] two nodes sending to one conversation on PostgreSQL: no gaps, no duplicates', async () => {
    const conv = await conversation();
    const other = openDatabase(config, log);
    try {
      const nodes = [new SendBatcher(new MessagesStore(database), events, log, everyone), new SendBatcher(new MessagesStore(other), new EventLog(other, bus, log), log, everyone)];
      const sends = [];
      for (let i = 0; i < 200; i++) {
        // Every tenth client id is sent by both nodes at once, as a client retrying on another node would.
        const key = i % 10 === 0 ? `both-${i}` : `n-${i}`;
        sends.push(nodes[i % 2]!.submit(item(conv, 'u1', key)));
        if (i % 10 === 0) sends.push(nodes[(i + 1) % 2]!.submit(item(conv, 'u1', key)));
      }
      const out = await Promise.all(sends);
      const ids = new Map<string, string>();
      for (const r of out) {
        const prev = ids.get(r.message.clientMsgId);
        if (prev) expect(r.message.id).toBe(prev);
        ids.set(r.message.clientMsgId, r.message.id);
      }
      expect(ids.size).toBe(200);
      expect(await seqsOf(conv)).toEqual(range(200));
    } finally {
      await other.close();
    }
  });
});
