import type { Presence, PresenceEvent } from '@secureconnect/protocol';
import type { Static } from 'typebox';
import type { AppContext } from '../../context.js';
import type { RedisBus } from '../../infra/bus/index.js';
import { EPHEMERAL_CHANNEL, type AuthContext, type ConversationsService, type EphemeralMessage, type PresenceService, type UsersService } from '../../services.js';
import { MemoryPresenceStore, RedisPresenceStore, type ConnRef, type PresenceStore } from './store.js';

export interface PresenceOptions {
  store?: PresenceStore;
  /** Milliseconds since the epoch; tests drive it. */
  clock?: () => number;
  /** How long a connection stays online without a heartbeat from its node. */
  ttlMs?: number;
  /** Heartbeat and sweep period; a third of the TTL by default, so two beats can be missed. */
  tickMs?: number;
}

export interface PresenceServiceImpl extends PresenceService {
  /** One heartbeat + sweep round; runs on a timer after start(), callable directly by tests. */
  tick(): Promise<void>;
}

const iso = (ms: number | null | undefined) => (ms == null ? null : new Date(ms).toISOString());

export function createPresenceService(
  ctx: AppContext,
  deps: { conversations: ConversationsService; users: UsersService },
  opts: PresenceOptions = {},
): PresenceServiceImpl {
  const { log, bus, config } = ctx;
  const store = opts.store ?? (bus.kind === 'redis' ? new RedisPresenceStore((bus as RedisBus).client, config.redis.prefix) : new MemoryPresenceStore());
  const clock = opts.clock ?? Date.now;
  const ttlMs = opts.ttlMs ?? config.presenceTtlMs;
  const tickMs = opts.tickMs ?? Math.max(100, Math.floor(ttlMs / 3));
  /** This node's connections: the heartbeat refreshes exactly these. */
  const local = new Map<string, string>();
  const pending = new Set<Promise<unknown>>();
  let timer: NodeJS.Timeout | undefined;
  let ticking: Promise<void> | undefined;

  const track = <T>(p: Promise<T>): Promise<T> => {
    pending.add(p);
    const done = () => pending.delete(p);
    p.then(done, done);
    return p;
  };

  async function announce(userId: string, online: boolean, lastSeenAt: number): Promise<void> {
    if (!online) await deps.users.setLastSeen(userId, lastSeenAt);
    const peers = await deps.conversations.peersOf(userId);
    if (peers.length === 0) return;
    const event: Static<typeof PresenceEvent> = { type: 'presence', userId, online, lastSeenAt: iso(lastSeenAt) };
    const msg: EphemeralMessage = { userIds: peers, event };
    await bus.publish(EPHEMERAL_CHANNEL, msg);
  }

  const announceLogged = (userId: string, online: boolean, at: number) =>
    announce(userId, online, at).catch((err: unknown) => log.warn({ err, userId, online }, 'presence announcement failed'));

  async function tick(): Promise<void> {
    const now = clock();
    const refs: ConnRef[] = [...local].map(([connId, userId]) => ({ userId, connId }));
    if (refs.length > 0) {
      for (const userId of new Set(await store.refresh(refs, now + ttlMs))) await announceLogged(userId, true, now);
    }
    for (;;) {
      const off = await store.sweep(now);
      for (const o of off) await announceLogged(o.userId, false, Math.min(now, o.expiredAt - ttlMs));
      if (off.length === 0) break;
      // A full batch may mean more lapsed entries; an empty one means done.
      if (off.length < 1_000) break;
    }
  }

  const runTick = () => {
    ticking ??= track(tick())
      .catch((err: unknown) => log.warn({ err }, 'presence heartbeat failed'))
      .finally(() => {
        ticking = undefined;
      });
  };

  return {
    async connected(userId, connId) {
      local.set(connId, userId);
      const now = clock();
      if (await track(store.add({ userId, connId }, now, now + ttlMs))) await track(announceLogged(userId, true, now));
    },

    async disconnected(userId, connId) {
      if (!local.delete(connId)) return;
      const now = clock();
      if (await track(store.remove({ userId, connId }, now))) await track(announceLogged(userId, false, now));
    },

    async get(auth: AuthContext, userIds: readonly string[]): Promise<Presence[]> {
      // [P1] only people who share a conversation with the caller (and the caller) are visible.
      const peers = new Set(await deps.conversations.peersOf(auth.userId));
      const visible = [...new Set(userIds)].filter((id) => id === auth.userId || peers.has(id));
      if (visible.length === 0) return [];
      const now = clock();
      const [counts, lastSeen] = await Promise.all([store.counts(visible, now), deps.users.lastSeenMany(visible)]);
      return visible.map((userId) => {
        const online = (counts.get(userId) ?? 0) > 0;
        return { userId, online, lastSeenAt: online ? iso(now) : iso(lastSeen.get(userId)) };
      });
    },

    async connectionCount(userId) {
      return (await store.counts([userId], clock())).get(userId) ?? 0;
    },

    tick,

    start() {
      timer = setInterval(runTick, tickMs);
      timer.unref();
      return Promise.resolve();
    },

    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await Promise.allSettled([...pending]);
      // A clean stop takes this node's users offline now instead of after the TTL.
      const now = clock();
      for (const [connId, userId] of [...local]) {
        local.delete(connId);
        try {
          if (await store.remove({ userId, connId }, now)) await announceLogged(userId, false, now);
        } catch (err) {
          log.warn({ err, userId }, 'presence cleanup failed');
        }
      }
    },
  };
}
