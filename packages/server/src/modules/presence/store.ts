import type { Redis } from 'ioredis';

export interface ConnRef {
  userId: string;
  connId: string;
}

export interface Expired {
  userId: string;
  /** When the connection that took the user offline stopped being refreshed. */
  expiredAt: number;
}

/**
 * Where connections live ([P2]). A user is online while they have at least one
 * connection entry; each entry carries an expiry that its node's heartbeat keeps
 * pushing forward, so a dead node's entries lapse and the sweeper removes them.
 *
 * Transitions are decided inside the store, atomically: exactly one call sees a
 * user's entry count go from zero to non-zero (`add`, `refresh`) or from
 * non-zero to zero (`remove`, `sweep`). The caller that sees it announces it, so
 * several nodes sweeping at once announce an offline exactly once.
 *
 * The two implementations (memory, Redis) pass one contract suite
 * (test/presence.test.ts). Time is always passed in, so tests drive the clock.
 */
export interface PresenceStore {
  /** Registers a connection valid until `expiresAt`. True when the user had no entry before (came online). */
  add(ref: ConnRef, now: number, expiresAt: number): Promise<boolean>;
  /** Removes a connection (and the user's lapsed ones). True when this call took the user offline. */
  remove(ref: ConnRef, now: number): Promise<boolean>;
  /** Extends a node's connections; returns the users that had no entry left (swept while the node stalled). */
  refresh(refs: readonly ConnRef[], expiresAt: number): Promise<string[]>;
  /** Removes lapsed connections; returns the users this call took offline. */
  sweep(now: number, limit?: number): Promise<Expired[]>;
  /** Live (unexpired) connections per user, cluster-wide. */
  counts(userIds: readonly string[], now: number): Promise<Map<string, number>>;
}

const SWEEP_BATCH = 1_000;

export class MemoryPresenceStore implements PresenceStore {
  private readonly users = new Map<string, Map<string, number>>();

  add(ref: ConnRef, now: number, expiresAt: number): Promise<boolean> {
    let conns = this.users.get(ref.userId);
    const before = conns?.size ?? 0;
    if (!conns) this.users.set(ref.userId, (conns = new Map<string, number>()));
    for (const [id, exp] of conns) if (exp <= now) conns.delete(id);
    conns.set(ref.connId, expiresAt);
    return Promise.resolve(before === 0);
  }

  remove(ref: ConnRef, now: number): Promise<boolean> {
    const conns = this.users.get(ref.userId);
    if (!conns || conns.size === 0) return Promise.resolve(false);
    conns.delete(ref.connId);
    for (const [id, exp] of conns) if (exp <= now) conns.delete(id);
    if (conns.size > 0) return Promise.resolve(false);
    this.users.delete(ref.userId);
    return Promise.resolve(true);
  }

  refresh(refs: readonly ConnRef[], expiresAt: number): Promise<string[]> {
    const back: string[] = [];
    for (const ref of refs) {
      let conns = this.users.get(ref.userId);
      if (!conns) this.users.set(ref.userId, (conns = new Map<string, number>()));
      if (conns.size === 0) back.push(ref.userId);
      conns.set(ref.connId, expiresAt);
    }
    return Promise.resolve(back);
  }

  sweep(now: number, limit = SWEEP_BATCH): Promise<Expired[]> {
    const off: Expired[] = [];
    let n = 0;
    for (const [userId, conns] of this.users) {
      for (const [id, exp] of conns) {
        if (exp > now) continue;
        conns.delete(id);
        if (conns.size === 0) {
          this.users.delete(userId);
          off.push({ userId, expiredAt: exp });
        }
        if (++n >= limit) return Promise.resolve(off);
      }
    }
    return Promise.resolve(off);
  }

  counts(userIds: readonly string[], now: number): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const id of userIds) {
      let n = 0;
      for (const exp of this.users.get(id)?.values() ?? []) if (exp > now) n++;
      out.set(id, n);
    }
    return Promise.resolve(out);
  }
}

/*
 * Redis layout (prefix = REDIS_PREFIX):
 *   <prefix>presence:u:<userId>  ZSET connId -> expiresAt
 *   <prefix>presence:exp         ZSET "<userId>|<connId>" -> expiresAt (what the sweeper scans)
 * Both are always written together inside one script, so their scores agree.
 * The sweep script derives per-user keys from members, which a Redis Cluster
 * would refuse; the deployment target is a single Redis (or a primary/replica pair).
 */

/** Drops a user's lapsed entries from both sets. Expects KEYS[1]=user set, KEYS[2]=exp set, uid, now. */
const PRUNE_USER = `
local function prune(ukey, expkey, uid, now)
  local lapsed = redis.call('ZRANGEBYSCORE', ukey, '-inf', now)
  for _, c in ipairs(lapsed) do redis.call('ZREM', expkey, uid .. '|' .. c) end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', ukey, '-inf', now) end
end
`;

// KEYS: user set, exp set. ARGV: userId, connId, now, expiresAt. Returns 1 when the user came online.
const ADD = `${PRUNE_USER}
local before = redis.call('ZCARD', KEYS[1])
prune(KEYS[1], KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1] .. '|' .. ARGV[2])
if before == 0 then return 1 end
return 0`;

// KEYS: user set, exp set. ARGV: userId, connId, now. Returns 1 when this call took the user offline.
const REMOVE = `${PRUNE_USER}
if redis.call('ZCARD', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
prune(KEYS[1], KEYS[2], ARGV[1], ARGV[3])
if redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0`;

// KEYS: exp set, then one user set per ref. ARGV: expiresAt, then userId, connId per ref. Returns users back from zero.
const REFRESH = `
local back = {}
for i = 2, #KEYS do
  local uid = ARGV[(i - 2) * 2 + 2]
  local cid = ARGV[(i - 2) * 2 + 3]
  if redis.call('ZCARD', KEYS[i]) == 0 then table.insert(back, uid) end
  redis.call('ZADD', KEYS[i], ARGV[1], cid)
  redis.call('ZADD', KEYS[1], ARGV[1], uid .. '|' .. cid)
end
return back`;

// KEYS: exp set. ARGV: now, limit, user-key prefix. Returns a flat list userId, expiredAt for users taken offline.
const SWEEP = `
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local off = {}
for i = 1, #members, 2 do
  local m = members[i]
  local sep = string.find(m, '|', 1, true)
  local uid = string.sub(m, 1, sep - 1)
  local cid = string.sub(m, sep + 1)
  redis.call('ZREM', KEYS[1], m)
  local ukey = ARGV[3] .. uid
  if redis.call('ZREM', ukey, cid) == 1 and redis.call('ZCARD', ukey) == 0 then
    table.insert(off, uid)
    table.insert(off, members[i + 1])
  end
end
return off`;

export class RedisPresenceStore implements PresenceStore {
  private readonly expKey: string;
  private readonly userPrefix: string;

  constructor(private readonly redis: Redis, prefix: string) {
    this.expKey = `${prefix}presence:exp`;
    this.userPrefix = `${prefix}presence:u:`;
  }

  async add(ref: ConnRef, now: number, expiresAt: number): Promise<boolean> {
    const r = await this.redis.eval(ADD, 2, this.userPrefix + ref.userId, this.expKey, ref.userId, ref.connId, now, expiresAt);
    return r === 1;
  }

  async remove(ref: ConnRef, now: number): Promise<boolean> {
    const r = await this.redis.eval(REMOVE, 2, this.userPrefix + ref.userId, this.expKey, ref.userId, ref.connId, now);
    return r === 1;
  }

  async refresh(refs: readonly ConnRef[], expiresAt: number): Promise<string[]> {
    const back: string[] = [];
    // Bounded batches keep each script short: Redis runs scripts one at a time.
    for (let i = 0; i < refs.length; i += 500) {
      const batch = refs.slice(i, i + 500);
      const keys = [this.expKey, ...batch.map((r) => this.userPrefix + r.userId)];
      const args = [expiresAt, ...batch.flatMap((r) => [r.userId, r.connId])];
      const r = (await this.redis.eval(REFRESH, keys.length, ...keys, ...args)) as string[];
      back.push(...r);
    }
    return back;
  }

  async sweep(now: number, limit = SWEEP_BATCH): Promise<Expired[]> {
    const flat = (await this.redis.eval(SWEEP, 1, this.expKey, now, limit, this.userPrefix)) as string[];
    const out: Expired[] = [];
    for (let i = 0; i < flat.length; i += 2) out.push({ userId: flat[i]!, expiredAt: Number(flat[i + 1]) });
    return out;
  }

  async counts(userIds: readonly string[], now: number): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (userIds.length === 0) return out;
    const pipe = this.redis.pipeline();
    for (const id of userIds) pipe.zcount(this.userPrefix + id, `(${now}`, '+inf');
    const res = (await pipe.exec()) ?? [];
    userIds.forEach((id, i) => {
      const [err, n] = res[i] ?? [null, 0];
      if (err) throw err;
      out.set(id, Number(n));
    });
    return out;
  }
}
