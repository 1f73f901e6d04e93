/**
 * Contract tests for the infrastructure twins: each suite runs against the
 * embedded adapter and, when the engine is configured, the real one.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { MemoryBus, RedisBus, type Bus } from '../src/infra/bus/index.js';
import { openDatabase, type Database } from '../src/infra/db/index.js';
import { migrateToLatest, MIGRATION_NAMES } from '../src/infra/db/migrate.js';
import { EventLog, type StoredEvent } from '../src/infra/eventlog.js';
import { createLogger } from '../src/infra/logger.js';
import { Limiters, consumeOrThrow } from '../src/infra/ratelimit.js';
import { AppError } from '../src/infra/errors.js';
import { testConfig, uid } from './helpers.js';

const log = createLogger({ level: 'silent', nodeId: 'test' });

const busKinds: [string, () => Bus][] = [['memory', () => new MemoryBus(log)]];
if (process.env.REDIS_URL) {
  busKinds.push(['redis', () => new RedisBus(process.env.REDIS_URL!, `${process.env.REDIS_PREFIX ?? 'sc-test:'}${uid(4)}:`, 2_000, log)]);
}

describe.each(busKinds)('bus contract (%s)', (_kind, make) => {
  it('delivers a published message to every subscriber as a copy', async () => {
    const bus = make();
    try {
      const got: unknown[][] = [[], []];
      await bus.subscribe('ch', (m) => got[0]!.push(m));
      await bus.subscribe('ch', (m) => got[1]!.push(m));
      const msg = { a: 1, nested: { b: [1, 2] } };
      await bus.publish('ch', msg);
      await expect.poll(() => got[1]!.length).toBe(1);
      expect(got[0]).toEqual([msg]);
      expect(got[0]![0]).not.toBe(msg);
    } finally {
      await bus.close();
    }
  });

  it('stops delivering after unsubscribe and keeps channels apart', async () => {
    const bus = make();
    try {
      const a: unknown[] = [];
      const b: unknown[] = [];
      const off = await bus.subscribe('a', (m) => a.push(m));
      await bus.subscribe('b', (m) => b.push(m));
      await bus.publish('a', 1);
      await expect.poll(() => a.length).toBe(1);
      await off();
      await bus.publish('a', 2);
      await bus.publish('b', 3);
      await expect.poll(() => b.length).toBe(1);
      expect(a).toEqual([1]);
      await bus.ping(1_000);
    } finally {
      await bus.close();
    }
  });

  it('a throwing handler does not stop the others', async () => {
    const bus = make();
    try {
      const got: unknown[] = [];
      await bus.subscribe('x', () => {
        throw new Error('boom');
      });
      await bus.subscribe('x', (m) => got.push(m));
      await bus.publish('x', 'ok');
      await expect.poll(() => got).toEqual(['ok']);
    } finally {
      await bus.close();
    }
  });
});

describe('database and event log', () => {
  let database: Database;
  let bus: Bus;
  let events: EventLog;

  beforeAll(async () => {
    const config = await testConfig();
    database = openDatabase(config, log);
    await migrateToLatest(database.db as never, database.dialect);
    bus = new MemoryBus(log);
    events = new EventLog(database, bus, log, 50);
    await events.start();
    const now = Date.now();
    await database.db.insertInto('users').values({ id: 'u1', email: 'u1@x.test', username: 'u1', username_lower: 'u1', display_name: 'u1', avatar_url: null, status_text: null, password_hash: 'x', created_at: now, updated_at: now, last_seen_at: null }).execute();
    await database.db.insertInto('users').values({ id: 'u2', email: 'u2@x.test', username: 'u2', username_lower: 'u2', display_name: 'u2', avatar_url: null, status_text: null, password_hash: 'x', created_at: now, updated_at: now, last_seen_at: null }).execute();
    await database.db.insertInto('conversations').values({ id: 'c1', type: 'group', title: 't', encryption: 'none', direct_key: null, created_by: 'u1', created_at: now, updated_at: now, last_seq: 0 }).execute();
    await database.db.insertInto('members').values({ conversation_id: 'c1', user_id: 'u1', role: 'owner', joined_at: now, read_seq: 0 }).execute();
  });
  afterAll(async () => {
    await events.stop();
    await bus.close();
    await database.close();
  });

  it('[AF-D1] migrations are versioned and re-running them is a no-op', async () => {
    const again = await migrateToLatest(database.db as never, database.dialect);
    expect(again.results).toEqual([]);
    const applied = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(database.db);
    expect(applied.rows.map((r) => r.name)).toEqual(MIGRATION_NAMES);
  });

  it('[E1] the tailer sees every committed event exactly once, in id order, under concurrent appends', async () => {
    const seen: StoredEvent[] = [];
    const off = events.onEvents((batch) => seen.push(...batch));
    const before = events.position;
    const appended: number[] = [];
    // Concurrent transactions that hold their append open for a random while: on
    // PostgreSQL this is where a plain sequence would commit out of id order.
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        database.db.transaction().execute(async (trx) => {
          const ids = await events.append(trx, [{ conversationId: 'c1', userId: null, event: { type: 'read', conversationId: 'c1', userId: 'u1', seq: i } }]);
          await sleep(Math.random() * 10);
          appended.push(...ids);
        }).then(() => events.notify()),
      ),
    );
    await expect.poll(() => seen.filter((e) => e.id > before).length, { timeout: 5_000 }).toBe(40);
    off();
    const got = seen.filter((e) => e.id > before).map((e) => e.id);
    expect(got).toEqual([...appended].sort((a, b) => a - b));
    for (let i = 1; i < got.length; i++) expect(got[i]!).toBeGreaterThan(got[i - 1]!);
  });

  it('[E3] readForUser returns events of the user\'s conversations and those addressed to them, in order', async () => {
    const start = await events.maxId();
    await database.db.transaction().execute(async (trx) => {
      await events.append(trx, [
        { conversationId: 'c1', userId: null, event: { type: 'read', conversationId: 'c1', userId: 'u1', seq: 100 } },
        { conversationId: null, userId: 'u2', event: { type: 'read', conversationId: 'c9', userId: 'u2', seq: 1 } },
        { conversationId: null, userId: 'u1', event: { type: 'member.removed', conversationId: 'c9', userId: 'u1', by: 'x' } },
      ]);
    });
    const got = await events.readForUser('u1', null, start);
    expect(got.map((e) => e.event.type)).toEqual(['read', 'member.removed']);
    expect((await events.readForUser('u1', null, start, 1)).length).toBe(1);
  });

  it('[E4][AF-R6] retention prunes old events and raises the floor', async () => {
    const top = await events.maxId();
    const removed = await events.prune(Date.now() + 1);
    expect(removed).toBeGreaterThan(0);
    expect(await events.floor()).toBe(top);
    expect(await events.readForUser('u1', null, 0)).toEqual([]);
    // The floor never moves back.
    await events.prune(0);
    expect(await events.floor()).toBe(top);
  });
});

describe.runIf(process.env.DATABASE_URL)('[AF-D1] concurrent migrations on PostgreSQL', () => {
  it('two nodes migrating at once apply each migration exactly once', async () => {
    const config = await testConfig();
    const a = openDatabase(config, log);
    const b = openDatabase(config, log);
    try {
      const [ra, rb] = await Promise.all([migrateToLatest(a.db as never, a.dialect), migrateToLatest(b.db as never, b.dialect)]);
      const applied = [...(ra.results ?? []), ...(rb.results ?? [])].filter((r) => r.status === 'Success').map((r) => r.migrationName);
      expect(applied.sort()).toEqual([...MIGRATION_NAMES].sort());
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe.each(busKinds)('rate limiter twins (%s)', (_kind, make) => {
  it('[AF-A1] blocks after the allowed points with a Retry-After', async () => {
    const bus = make();
    try {
      const limiter = new Limiters(bus, `t${uid(3)}:`).create({ name: 'x', points: 3, durationSec: 60 });
      for (let i = 0; i < 3; i++) await consumeOrThrow(limiter, 'k');
      const err = await consumeOrThrow(limiter, 'k').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AppError);
      expect((err as AppError).code).toBe('rate_limited');
      expect(Number((err as AppError).headers?.['retry-after'])).toBeGreaterThan(0);
      await consumeOrThrow(limiter, 'other-key');
    } finally {
      await bus.close();
    }
  });
});
