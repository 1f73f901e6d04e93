import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Bus } from './bus/index.js';
import { RedisBus } from './bus/index.js';
import { rateLimited } from './errors.js';

export interface LimiterOptions {
  /** Unique name; becomes part of the key. */
  name: string;
  points: number;
  durationSec: number;
  /** Once exhausted, block the key for this long. */
  blockSec?: number;
}

/**
 * Builds rate limiters on Redis when the deployment has it (limits hold across
 * nodes) or in memory on a single node. Same API either way.
 */
export class Limiters {
  constructor(private readonly bus: Bus, private readonly prefix: string) {}

  create(o: LimiterOptions): RateLimiterAbstract {
    const common = { keyPrefix: `${this.prefix}rl:${o.name}`, points: o.points, duration: o.durationSec, blockDuration: o.blockSec ?? 0 };
    if (this.bus instanceof RedisBus) {
      return new RateLimiterRedis({ ...common, storeClient: this.bus.client, useRedisPackage: false, rejectIfRedisNotReady: false });
    }
    return new RateLimiterMemory(common);
  }
}

/** Consumes a point or throws `rate_limited` with the right Retry-After; returns the points left. */
export async function consumeOrThrow(limiter: RateLimiterAbstract, key: string, points = 1): Promise<number> {
  try {
    return (await limiter.consume(key, points)).remainingPoints;
  } catch (err) {
    if (err instanceof RateLimiterRes) throw rateLimited(err.msBeforeNext / 1000);
    throw err;
  }
}

/** Longest lockout of a credential check, however many lockouts came before. */
export const LOCKOUT_MAX_SEC = 24 * 3600;

/**
 * Locks `key` on `limiter` after the failure that spent its budget: for
 * base * 2^(lockouts so far - 1) seconds, capped at LOCKOUT_MAX_SEC, so
 * repeated guessing (password or second factor, [S4], [MF2]) waits longer
 * each time. Returns the seconds locked.
 */
export async function lockOut(lockouts: RateLimiterAbstract, limiter: RateLimiterAbstract, key: string, baseSec: number): Promise<number> {
  const lockout = await lockouts.consume(key);
  const blockSec = Math.min(baseSec * 2 ** Math.min(lockout.consumedPoints - 1, 30), LOCKOUT_MAX_SEC);
  await limiter.block(key, blockSec);
  return blockSec;
}
