import { Redis } from 'ioredis';
import { withTimeout } from '../db/index.js';
import type { Logger } from '../logger.js';
import type { Bus } from './types.js';

/** Options shared by every Redis connection the server opens (AF-I6, AF-S8: rediss:// gives TLS). */
export function redisOptions(commandTimeoutMs: number) {
  return {
    commandTimeout: commandTimeoutMs,
    connectTimeout: 5_000,
    maxRetriesPerRequest: 2,
    enableOfflineQueue: true,
    retryStrategy: (times: number) => Math.min(times * 200, 2_000),
  };
}

/** Redis pub/sub bus. Channel names carry the deployment's prefix (pub/sub ignores the db index). */
export class RedisBus implements Bus {
  readonly kind = 'redis' as const;
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly handlers = new Map<string, Set<(m: unknown) => void>>();

  constructor(url: string, private readonly prefix: string, commandTimeoutMs: number, private readonly log: Logger) {
    this.pub = new Redis(url, { ...redisOptions(commandTimeoutMs), lazyConnect: false });
    // The subscriber connection has no command timeout: it waits for messages by design.
    this.sub = new Redis(url, { ...redisOptions(commandTimeoutMs), commandTimeout: undefined });
    for (const [name, conn] of [['pub', this.pub], ['sub', this.sub]] as const) {
      conn.on('error', (err) => log.warn({ err, conn: name }, 'redis connection error'));
    }
    this.sub.on('messageBuffer', (channelBuf: Buffer, data: Buffer) => {
      const channel = channelBuf.toString().slice(this.prefix.length);
      const set = this.handlers.get(channel);
      if (!set) return;
      let msg: unknown;
      try {
        msg = JSON.parse(data.toString());
      } catch (err) {
        this.log.error({ err, channel }, 'undecodable bus message');
        return;
      }
      for (const h of set) {
        try {
          h(msg);
        } catch (err) {
          this.log.error({ err, channel }, 'bus handler failed');
        }
      }
    });
  }

  /** The shared command connection, for presence and rate limits. */
  get client(): Redis {
    return this.pub;
  }

  async publish(channel: string, message: unknown): Promise<void> {
    await this.pub.publish(this.prefix + channel, JSON.stringify(message));
  }

  async subscribe(channel: string, handler: (message: unknown) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(channel);
    if (!set) {
      this.handlers.set(channel, (set = new Set()));
      await this.sub.subscribe(this.prefix + channel);
    }
    set.add(handler);
    return async () => {
      set.delete(handler);
      if (set.size === 0) {
        this.handlers.delete(channel);
        await this.sub.unsubscribe(this.prefix + channel);
      }
    };
  }

  async ping(timeoutMs: number): Promise<void> {
    await withTimeout(this.pub.ping(), timeoutMs, 'redis');
  }

  async close(): Promise<void> {
    // QUIT waits for the server's answer; an unresponsive Redis must not hang shutdown (AF-I6, AF-O4).
    await Promise.allSettled(
      [this.sub, this.pub].map((conn) => withTimeout(conn.quit(), 1_000, 'redis quit').catch(() => conn.disconnect())),
    );
  }
}
