import { sql, type Kysely, type Transaction } from 'kysely';
import type { DurableEvent } from '@secureconnect/protocol';
import type { Bus } from './bus/index.js';
import type { Database } from './db/index.js';
import type { DB } from './db/schema.js';
import type { Logger } from './logger.js';

/** An event as stored in the log. `id` is the cursor position. */
export interface StoredEvent {
  id: number;
  conversationId: string | null;
  userId: string | null;
  /** When set, only sockets of this device receive the event. */
  deviceId: string | null;
  event: DurableEvent;
}

export interface EventEntry {
  /** Delivered to every member of this conversation. */
  conversationId: string | null;
  /** Also (or only) delivered to this user, member or not. */
  userId: string | null;
  /**
   * Narrows delivery to the sockets of this one device (sessions bound to it)
   * among the recipients above: a Welcome or a key package stock warning is
   * for one device, not for every device of the user.
   */
  deviceId?: string | null;
  event: DurableEvent;
}

const NOTIFY_CHANNEL = 'events';
/** PostgreSQL advisory lock key serialising event-log appends (see [E1] in docs/SPEC.md). */
const APPEND_LOCK_KEY = 0x5ec0_0001;
const PAGE = 1_000;
/** Rows per INSERT: 6 parameters each stays far below SQLite's 32,766 and PostgreSQL's 65,535. */
const APPEND_CHUNK = 1_000;

/**
 * The durable event log (docs/SPEC.md [E1]–[E4]).
 *
 * Every change a client must see is appended in the same transaction as the
 * change itself. Ids are assigned in commit order: on PostgreSQL each append
 * takes a transaction-scoped advisory lock, so a transaction holding a higher
 * id cannot commit before one holding a lower id; SQLite has one writer. That
 * makes "everything after cursor N" a gap-free query, which is what resume and
 * the per-node tailer rely on. The bus carries only a wake-up notification;
 * a lost notification delays delivery by at most the poll interval, never
 * loses an event.
 */
export class EventLog {
  private head = 0;
  private pulling = false;
  private dirty = false;
  private poll: NodeJS.Timeout | undefined;
  private unsubscribe: (() => Promise<void>) | undefined;
  private readonly listeners = new Set<(events: StoredEvent[]) => void>();

  constructor(private readonly database: Database, private readonly bus: Bus, private readonly log: Logger, private readonly pollMs = 1_000) {}

  /** Appends within the caller's transaction; call it last, just before commit, to keep the lock short. */
  async append(trx: Transaction<DB> | Kysely<DB>, entries: EventEntry[]): Promise<number[]> {
    if (entries.length === 0) return [];
    if (this.database.dialect === 'postgres') await sql`select pg_advisory_xact_lock(${APPEND_LOCK_KEY})`.execute(trx);
    const now = Date.now();
    const ids: number[] = [];
    // One event per peer (device.added) can mean thousands of rows: stay under the engines' bound-parameter limits.
    for (let i = 0; i < entries.length; i += APPEND_CHUNK) {
      const rows = await trx
        .insertInto('events')
        .values(entries.slice(i, i + APPEND_CHUNK).map((e) => ({ conversation_id: e.conversationId, user_id: e.userId, device_id: e.deviceId ?? null, type: e.event.type, payload: JSON.stringify(e.event), created_at: now })))
        .returning('id')
        .execute();
      for (const r of rows) ids.push(r.id);
    }
    return ids;
  }

  /** Wakes every node's tailer. Call after the appending transaction committed. */
  notify(): void {
    this.bus.publish(NOTIFY_CHANNEL, 1).catch((err: unknown) => this.log.warn({ err }, 'event notification failed; tailers will poll'));
    // This node need not wait for the bus round trip.
    this.schedulePull();
  }

  /**
   * Events after `afterId` that `userId` may see: in their conversations, or
   * addressed to them; of those addressed to one device, only `deviceId`'s
   * (none when the reader speaks for no device).
   */
  async readForUser(userId: string, deviceId: string | null, afterId: number, limit = PAGE): Promise<StoredEvent[]> {
    const db = this.database.db;
    const rows = await db
      .selectFrom('events')
      .select(['id', 'conversation_id', 'user_id', 'device_id', 'payload'])
      .where('id', '>', afterId)
      .where((eb) =>
        eb.or([
          eb('user_id', '=', userId),
          eb('conversation_id', 'in', eb.selectFrom('members').select('conversation_id').where('user_id', '=', userId)),
        ]),
      )
      .where((eb) => (deviceId === null ? eb('device_id', 'is', null) : eb.or([eb('device_id', 'is', null), eb('device_id', '=', deviceId)])))
      .orderBy('id')
      .limit(limit)
      .execute();
    return rows.map(toStored);
  }

  /** Highest id in the log (0 when empty). */
  async maxId(): Promise<number> {
    const row = await this.database.db.selectFrom('events').select((eb) => eb.fn.max('id').as('max')).executeTakeFirst();
    return Number(row?.max ?? 0);
  }

  /** Highest id removed by retention; a cursor below it cannot be resumed. */
  async floor(): Promise<number> {
    const row = await this.database.db.selectFrom('meta').select('value').where('key', '=', 'event_floor').executeTakeFirst();
    return row ? Number(row.value) : 0;
  }

  /** Retention (AF-R6): drops events older than `olderThan` and raises the floor. */
  async prune(olderThan: number): Promise<number> {
    return this.database.db.transaction().execute(async (trx) => {
      const top = await trx.selectFrom('events').select((eb) => eb.fn.max('id').as('max')).where('created_at', '<', olderThan).executeTakeFirst();
      const floor = Number(top?.max ?? 0);
      if (floor === 0) return 0;
      const res = await trx.deleteFrom('events').where('id', '<=', floor).executeTakeFirst();
      const current = await trx.selectFrom('meta').select('value').where('key', '=', 'event_floor').executeTakeFirst();
      if (current) await trx.updateTable('meta').set({ value: String(Math.max(floor, Number(current.value))) }).where('key', '=', 'event_floor').execute();
      else await trx.insertInto('meta').values({ key: 'event_floor', value: String(floor) }).execute();
      return Number(res.numDeletedRows);
    });
  }

  /** The last id this node's tailer has dispatched. */
  get position(): number {
    return this.head;
  }

  /** Receives every new event, in id order, exactly once per node. */
  onEvents(listener: (events: StoredEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async start(): Promise<void> {
    this.head = await this.maxId();
    this.unsubscribe = await this.bus.subscribe(NOTIFY_CHANNEL, () => this.schedulePull());
    this.poll = setInterval(() => this.schedulePull(), this.pollMs);
    this.poll.unref();
  }

  async stop(): Promise<void> {
    if (this.poll) clearInterval(this.poll);
    this.poll = undefined;
    await this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  private schedulePull(): void {
    if (this.pulling) {
      this.dirty = true;
      return;
    }
    this.pulling = true;
    this.pullAll()
      .catch((err: unknown) => this.log.error({ err }, 'event tailer failed; retrying on next poll'))
      .finally(() => {
        this.pulling = false;
        if (this.dirty) {
          this.dirty = false;
          this.schedulePull();
        }
      });
  }

  private async pullAll(): Promise<void> {
    for (;;) {
      const rows = await this.database.db
        .selectFrom('events')
        .select(['id', 'conversation_id', 'user_id', 'device_id', 'payload'])
        .where('id', '>', this.head)
        .orderBy('id')
        .limit(PAGE)
        .execute();
      if (rows.length === 0) return;
      const events = rows.map(toStored);
      this.head = events[events.length - 1]!.id;
      for (const l of this.listeners) {
        try {
          l(events);
        } catch (err) {
          this.log.error({ err }, 'event listener failed');
        }
      }
      if (rows.length < PAGE) return;
    }
  }
}

function toStored(r: { id: number; conversation_id: string | null; user_id: string | null; device_id: string | null; payload: string }): StoredEvent {
  return { id: Number(r.id), conversationId: r.conversation_id, userId: r.user_id, deviceId: r.device_id, event: JSON.parse(r.payload) as DurableEvent };
}
