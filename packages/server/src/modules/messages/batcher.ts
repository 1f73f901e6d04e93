import type { Content, Message } from '@secureconnect/protocol';
import type { Transaction } from 'kysely';
import { uuidv7 } from 'uuidv7';
import { isUniqueViolation } from '../../infra/db/errors.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError, notFound } from '../../infra/errors.js';
import type { EventEntry, EventLog } from '../../infra/eventlog.js';
import type { Logger } from '../../infra/logger.js';
import { toMessage, type MessageRow } from './model.js';
import { keyOf, type ClientKey, type MessagesStore } from './store.js';

export interface SendItem extends ClientKey {
  content: Content;
}
export interface SendResult {
  message: Message;
  created: boolean;
}
type Outcome = SendResult | Error;

/** Which of these senders are members, read under the conversation row's lock (ConversationsService.membersAmong). */
export type MembershipCheck = (trx: Transaction<DB>, conversationId: string, userIds: readonly string[]) => Promise<Set<string>>;

interface Pending {
  item: SendItem;
  resolve(r: SendResult): void;
  reject(e: unknown): void;
}

export interface BatcherStats {
  flushes: number;
  /** Items written per flush, last flush. */
  lastBatchSize: number;
  maxBatchSize: number;
}

/**
 * Group commit for message sends ([M3]). Every send on this node, REST or
 * WebSocket, queues here. When no flush is running, one starts on the next
 * tick and takes everything queued (up to `maxBatch`); sends arriving while it
 * runs wait for the next one. A flush is one transaction, so one fsync
 * (SQLite synchronous=FULL) or one commit round trip (PostgreSQL) pays for the
 * whole batch; callers are answered only after that commit.
 */
export class SendBatcher {
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;
  private scheduled = false;
  private stopped = false;
  readonly stats: BatcherStats = { flushes: 0, lastBatchSize: 0, maxBatchSize: 0 };

  constructor(
    private readonly store: MessagesStore,
    private readonly events: EventLog,
    private readonly log: Logger,
    private readonly members: MembershipCheck,
    private readonly maxBatch = 256,
  ) {}

  submit(item: SendItem): Promise<SendResult> {
    if (this.stopped) return Promise.reject(new AppError('unavailable', 'The server is shutting down; retry on another node.'));
    return new Promise<SendResult>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.kick();
    });
  }

  /** Writes everything queued, then refuses new sends. */
  async stop(): Promise<void> {
    this.stopped = true;
    while (this.running || this.scheduled || this.queue.length > 0) {
      if (this.running) await this.running;
      else await new Promise<void>((r) => setImmediate(r));
    }
  }

  private kick(): void {
    if (this.scheduled || this.running) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.runNext();
    });
  }

  private runNext(): void {
    if (this.running || this.queue.length === 0) return;
    const batch = this.queue.splice(0, this.maxBatch);
    this.running = this.flush(batch)
      .catch((err: unknown) => {
        // flush() settles every caller itself; this only guards against a bug leaving them hanging.
        this.log.error({ err }, 'message flush failed unexpectedly');
        for (const p of batch) p.reject(err);
      })
      .finally(() => {
        this.running = undefined;
        if (this.queue.length > 0) this.kick();
      });
  }

  private async flush(batch: Pending[]): Promise<void> {
    this.stats.flushes++;
    this.stats.lastBatchSize = batch.length;
    this.stats.maxBatchSize = Math.max(this.stats.maxBatchSize, batch.length);
    let outcomes: Outcome[];
    if (batch.length === 1) {
      outcomes = [await this.writeAlone(batch[0]!.item)];
    } else {
      try {
        outcomes = await this.store.tx((trx) => this.write(trx, batch.map((p) => p.item)));
      } catch (err) {
        // One bad item (typically a duplicate committed by another node in between) aborts the
        // whole transaction; retry each alone so it cannot fail the others.
        this.log.debug({ err, size: batch.length }, 'batch failed; retrying items one by one');
        outcomes = [];
        for (const p of batch) outcomes.push(await this.writeAlone(p.item));
      }
    }
    if (outcomes.some((o) => !(o instanceof Error) && o.created)) this.events.notify();
    batch.forEach((p, i) => {
      const o = outcomes[i]!;
      if (o instanceof Error) p.reject(o);
      else p.resolve(o);
    });
  }

  private async writeAlone(item: SendItem): Promise<Outcome> {
    try {
      const [o] = await this.store.tx((trx) => this.write(trx, [item]));
      return o!;
    } catch (err) {
      // [M1] A concurrent identical send won the unique constraint: return its message.
      if (isUniqueViolation(err)) {
        const [existing] = await this.store.findByClientKeys([item]);
        if (existing) return { message: toMessage(existing), created: false };
      }
      return err instanceof Error ? err : new Error(String(err));
    }
  }

  /** One transaction: dedupe, allocate seqs per conversation, insert, append events last. */
  private async write(trx: Transaction<DB>, items: SendItem[]): Promise<Outcome[]> {
    const now = Date.now();
    const outcomes: (Outcome | undefined)[] = new Array<Outcome | undefined>(items.length);
    const stored = new Map((await this.store.findByClientKeys(items, trx)).map((r) => [keyOf({ conversationId: r.conversation_id, senderId: r.sender_id, clientMsgId: r.client_msg_id }), r]));
    const firstOfKey = new Map<string, number>();
    const aliases: [number, number][] = [];
    const byConversation = new Map<string, number[]>();
    items.forEach((item, i) => {
      const k = keyOf(item);
      const old = stored.get(k);
      if (old) {
        outcomes[i] = { message: toMessage(old), created: false };
        return;
      }
      const first = firstOfKey.get(k);
      if (first !== undefined) {
        aliases.push([i, first]);
        return;
      }
      firstOfKey.set(k, i);
      const list = byConversation.get(item.conversationId) ?? [];
      list.push(i);
      byConversation.set(item.conversationId, list);
    });

    // A fixed lock order (by conversation id) keeps two nodes' batches from deadlocking.
    const rows: MessageRow[] = [];
    const entries: EventEntry[] = [];
    for (const conversationId of [...byConversation.keys()].sort()) {
      const all = byConversation.get(conversationId)!;
      // Allocating takes the conversation row's lock, which membership changes take too.
      const last = await this.store.allocate(trx, conversationId, all.length, now);
      if (last === undefined) {
        for (const i of all) outcomes[i] = notFound('Conversation not found.');
        continue;
      }
      // The service checked membership before queueing; check again under the lock, so a
      // member removed in between cannot still post. Rejected items give their seqs back.
      const members = await this.members(trx, conversationId, [...new Set(all.map((i) => items[i]!.senderId))]);
      const idx = all.filter((i) => members.has(items[i]!.senderId));
      for (const i of all) if (!members.has(items[i]!.senderId)) outcomes[i] = notFound('Conversation not found.');
      const base = last - all.length;
      if (idx.length < all.length) await this.store.allocate(trx, conversationId, idx.length - all.length, now);
      idx.forEach((i, n) => {
        const item = items[i]!;
        const row: MessageRow = {
          id: uuidv7(),
          conversation_id: conversationId,
          seq: base + 1 + n,
          sender_id: item.senderId,
          client_msg_id: item.clientMsgId,
          content_type: item.content.type,
          body: item.content.type === 'text' ? item.content.text : item.content.ciphertext,
          created_at: now,
          edited_at: null,
          deleted_at: null,
        };
        const message = toMessage(row);
        rows.push(row);
        entries.push({ conversationId, userId: null, event: { type: 'message.created', message } });
        outcomes[i] = { message, created: true };
      });
    }
    await this.store.insert(trx, rows);
    await this.events.append(trx, entries);
    for (const [i, first] of aliases) {
      const o = outcomes[first]!;
      outcomes[i] = o instanceof Error ? o : { message: o.message, created: false };
    }
    return outcomes as Outcome[];
  }
}
