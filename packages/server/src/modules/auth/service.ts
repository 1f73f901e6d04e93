import type { AuthResult, Jwks, LoginBody, LoginResult, RegisterBody, Session, TokenPair } from '@secureconnect/protocol';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import { uuidv7 } from 'uuidv7';
import type { AppContext } from '../../context.js';
import { AppError, notFound } from '../../infra/errors.js';
import { consumeOrThrow, lockOut } from '../../infra/ratelimit.js';
import type { Transaction } from 'kysely';
import type { DB } from '../../infra/db/schema.js';
import type { AuthContext, AuthService, ClientMeta, LoginGate, NewAccountInfo } from '../../services.js';
import { checkPasswordPolicy, hashPassword, makeDummyHash, verifyPassword } from './passwords.js';
import { isUniqueViolation } from '../../infra/db/errors.js';
import { AuthStore, type Credentials, type SessionRow } from './store.js';
import { TokenKeys, hashRefreshToken, newRefreshToken, publicJwks } from './tokens.js';

/** Bus channel announcing revoked sessions to every node ([S3]). */
export const SESSIONS_REVOKED_CHANNEL = 'sessions.revoked';
/** Bus channel announcing a session newly bound to a device ([K1]). */
export const SESSIONS_BOUND_CHANNEL = 'sessions.bound';
/**
 * How long a node trusts a session it has looked up. Below 1 s, so a
 * revocation takes effect everywhere within 1 s even when the bus message is
 * lost (or, on SQLite, when nodes share no bus) ([S3]).
 */
export const SESSION_CACHE_TTL_MS = 900;
const SESSION_CACHE_MAX = 100_000;
/** `last_seen_at` is written at most this often on access (refresh always writes it). */
const TOUCH_INTERVAL_MS = 60_000;
/** How long the lockout count behind growing lockouts is remembered. */
const LOCKOUT_MEMORY_SEC = 24 * 3600;
const SESSION_LIST_MAX = 200;
/** Ended sessions are kept this long (reuse detection, audit) before they are purged. */
const ENDED_SESSION_RETENTION_MS = 7 * 24 * 3600 * 1000;
const PURGE_INTERVAL_MS = 3600 * 1000;
const USER_AGENT_MAX = 512;

interface RevokedMessage {
  node: string;
  userId: string;
  sessionIds: string[];
}

interface BoundMessage {
  node: string;
  sessionId: string;
  deviceId: string;
}

interface CachedSession {
  userId: string;
  deviceId: string | null;
  /** Cached like the rest, so a fresh verification is seen within SESSION_CACHE_TTL_MS. */
  emailVerified: boolean;
  /** 0 when the session is known to be revoked: final, so it may be cached as long as tokens live. */
  validUntil: number;
  checkedAt: number;
}

function isBoundMessage(m: unknown): m is BoundMessage {
  const r = m as Partial<BoundMessage> | null;
  return typeof r?.node === 'string' && typeof r.sessionId === 'string' && typeof r.deviceId === 'string';
}

function isRevokedMessage(m: unknown): m is RevokedMessage {
  const r = m as Partial<RevokedMessage> | null;
  return typeof r?.node === 'string' && typeof r.userId === 'string' && Array.isArray(r.sessionIds) && r.sessionIds.every((s) => typeof s === 'string');
}

export class AuthServiceImpl implements AuthService {
  private readonly store: AuthStore;
  private keys: Promise<TokenKeys> | undefined;
  private dummyHash: Promise<string> | undefined;
  private readonly cache = new Map<string, CachedSession>();
  private readonly inflight = new Map<string, Promise<CachedSession>>();
  private readonly listeners = new Set<(sessionId: string, userId: string) => void>();
  private readonly boundListeners = new Set<(sessionId: string, deviceId: string) => void>();
  private readonly unsubscribes: (() => Promise<void>)[] = [];
  private purgeTimer: NodeJS.Timeout | undefined;
  private readonly registerLimiter: RateLimiterAbstract;
  private readonly refreshLimiter: RateLimiterAbstract;
  private readonly accountFailures: RateLimiterAbstract;
  private readonly ipFailures: RateLimiterAbstract;
  private readonly lockouts: RateLimiterAbstract;
  private readonly accountHooks: ((trx: Transaction<DB>, account: NewAccountInfo) => Promise<void>)[] = [];
  private loginGate: LoginGate | undefined;

  constructor(private readonly ctx: AppContext) {
    this.store = new AuthStore(ctx.database);
    const l = ctx.config.authLimits;
    this.registerLimiter = ctx.limiters.create({ name: 'auth-register-ip', points: l.registerPerIpPerHour, durationSec: 3600 });
    this.refreshLimiter = ctx.limiters.create({ name: 'auth-refresh-ip', points: l.refreshPerIpPerMinute, durationSec: 60 });
    this.accountFailures = ctx.limiters.create({ name: 'auth-login-account', points: l.loginFailuresPerAccount, durationSec: l.loginWindowSec });
    this.ipFailures = ctx.limiters.create({ name: 'auth-login-ip', points: l.loginFailuresPerIp, durationSec: l.loginWindowSec });
    this.lockouts = ctx.limiters.create({ name: 'auth-login-lockouts', points: 1_000_000, durationSec: LOCKOUT_MEMORY_SEC });
  }

  async start(): Promise<void> {
    await this.tokenKeys();
    await this.dummy();
    this.unsubscribes.push(await this.ctx.bus.subscribe(SESSIONS_REVOKED_CHANNEL, (m) => this.onBusRevoked(m)));
    this.unsubscribes.push(await this.ctx.bus.subscribe(SESSIONS_BOUND_CHANNEL, (m) => this.onBusBound(m)));
    this.purgeTimer = setInterval(() => {
      this.store.purgeEnded(Date.now() - ENDED_SESSION_RETENTION_MS).then(
        (n) => { if (n > 0) this.ctx.log.info({ sessions: n }, 'purged ended sessions'); },
        (err: unknown) => this.ctx.log.warn({ err }, 'purging ended sessions failed'),
      );
    }, PURGE_INTERVAL_MS);
    this.purgeTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.purgeTimer) clearInterval(this.purgeTimer);
    for (const unsub of this.unsubscribes.splice(0)) await unsub();
    this.cache.clear();
  }

  jwks(): Jwks {
    return publicJwks(this.ctx.config.jwtSigningKeys);
  }

  // ---- accounts ----

  async register(body: RegisterBody, meta: ClientMeta): Promise<AuthResult> {
    await consumeOrThrow(this.registerLimiter, meta.ip);
    const email = body.email.trim().toLowerCase();
    const usernameLower = body.username.toLowerCase();
    checkPasswordPolicy(body.password, [email, usernameLower]);
    await this.throwIfTaken(email, usernameLower);

    const passwordHash = await hashPassword(body.password);
    const userId = uuidv7();
    const displayName = body.displayName ?? body.username;
    const { session, refreshToken } = this.newSession(userId, body.device, meta);
    try {
      const locale = meta.locale ?? 'en';
      await this.store.createAccount({ id: userId, email, username: body.username, displayName, passwordHash, locale }, session, async (trx) => {
        for (const hook of this.accountHooks) await hook(trx, { id: userId, email, displayName, locale });
      });
    } catch (err) {
      // Two registrations raced past the check: the constraint decides, with the same answer.
      if (isUniqueViolation(err)) await this.throwIfTaken(email, usernameLower);
      throw err;
    }
    return { user: { id: userId, username: body.username, displayName }, ...(await this.tokens(userId, session.id, refreshToken)) };
  }

  /**
   * [S4]/AF-A2. Every attempt consumes a point per account and per IP before
   * the password is checked (so parallel guesses cannot slip past the
   * limit); success clears the account's count and refunds the IP's. Running
   * out locks the key for a time that doubles with each lockout in a day.
   * Unknown logins go through the same steps, the same argon2 work (a dummy
   * hash) and get the same answer as wrong passwords.
   */
  async login(body: LoginBody, meta: ClientMeta): Promise<LoginResult> {
    const loginLower = body.login.trim().toLowerCase();
    const user = await this.throttledVerify(meta, loginLower, () => this.store.findCredentials(loginLower), body.password);
    // [MF2] A second factor, when the account has one, is asked for before any session exists.
    const challenge = this.loginGate ? await this.loginGate(user.id, body.device ?? null) : null;
    if (challenge) return challenge;
    return this.sessionFor(user, body.device ?? null, meta);
  }

  setLoginGate(gate: LoginGate): void {
    this.loginGate = gate;
  }

  /** [MF2] For the second login step, after the caller has checked every factor. */
  async openSession(userId: string, device: string | null, meta: ClientMeta): Promise<AuthResult> {
    const user = await this.store.findCredentialsById(userId);
    if (!user) throw new AppError('invalid_credentials');
    return this.sessionFor(user, device, meta);
  }

  private async sessionFor(user: Credentials, device: string | null, meta: ClientMeta): Promise<AuthResult> {
    const { session, refreshToken } = this.newSession(user.id, device ?? undefined, meta);
    await this.store.createSession(session);
    return { user: { id: user.id, username: user.username, displayName: user.display_name }, ...(await this.tokens(user.id, session.id, refreshToken)) };
  }

  onAccountCreated(hook: (trx: Transaction<DB>, account: NewAccountInfo) => Promise<void>): void {
    this.accountHooks.push(hook);
  }

  /** [AC5] The current password is checked against the same budgets and lockouts as a login. */
  async checkPassword(userId: string, password: string, meta: ClientMeta): Promise<void> {
    await this.throttledVerify(meta, `id:${userId}`, () => this.store.findCredentialsById(userId), password);
  }

  /** [AC4]/[AC5] */
  async setPassword(userId: string, newPassword: string, keepSessionId: string | null, inTrx: (trx: Transaction<DB>) => Promise<void>): Promise<void> {
    const ids = await this.store.contextWords(userId);
    if (!ids) throw new AppError('unauthorized');
    checkPasswordPolicy(newPassword, [ids.email, ids.username_lower]);
    const passwordHash = await hashPassword(newPassword);
    const reason = keepSessionId === null ? 'password_reset' : 'password_changed';
    const revoked = await this.store.setPassword(userId, passwordHash, keepSessionId, Date.now(), reason, inTrx);
    await this.announceRevoked(userId, revoked);
  }

  /**
   * [S4]/AF-A2. Every attempt consumes a point per account and per IP before
   * the password is checked (so parallel guesses cannot slip past the
   * limit); success clears the account's count and refunds the IP's. Running
   * out locks the key for a time that doubles with each lockout in a day.
   * Unknown logins go through the same steps, the same argon2 work (a dummy
   * hash) and get the same answer as wrong passwords.
   */
  private async throttledVerify(meta: ClientMeta, fallbackKey: string, find: () => Promise<Credentials | undefined>, password: string): Promise<Credentials> {
    const ipKey = `ip:${meta.ip}`;
    const ipLeft = await consumeOrThrow(this.ipFailures, ipKey);
    const user = await find();
    // The account key is the user id when the login names one, so email and username share one budget.
    const accountKey = user ? `u:${user.id}` : `l:${fallbackKey}`;
    let accountLeft: number;
    try {
      accountLeft = await consumeOrThrow(this.accountFailures, accountKey);
    } catch (err) {
      await this.ipFailures.reward(ipKey, 1);
      throw err;
    }

    const ok = await verifyPassword(user?.password_hash ?? (await this.dummy()), password);
    if (!user || !ok) {
      this.ctx.log.info({ ip: meta.ip }, 'login failed');
      if (ipLeft === 0) await this.lockOut(this.ipFailures, ipKey);
      if (accountLeft === 0) await this.lockOut(this.accountFailures, accountKey);
      throw new AppError('invalid_credentials');
    }
    await this.accountFailures.delete(accountKey);
    await this.ipFailures.reward(ipKey, 1);
    return user;
  }

  /** [S2] */
  async refresh(refreshToken: string, meta: ClientMeta): Promise<TokenPair> {
    await consumeOrThrow(this.refreshLimiter, meta.ip);
    const oldHash = hashRefreshToken(refreshToken);
    const found = await this.store.findRefresh(oldHash);
    const now = Date.now();
    if (!found) throw new AppError('invalid_refresh_token');
    if (found.used_at !== null) return this.refreshReused(found.user_id, found.session_id);
    if (found.revoked_at !== null || found.session_expires_at <= now || found.token_expires_at <= now) throw new AppError('invalid_refresh_token');

    const next = newRefreshToken();
    const result = await this.store.rotateRefresh(oldHash, {
      hash: hashRefreshToken(next),
      sessionId: found.session_id,
      now,
      expiresAt: now + this.ctx.config.refreshTokenTtlSec * 1000,
      ip: meta.ip,
      userAgent: clip(meta.userAgent, USER_AGENT_MAX),
    });
    // Lost a race with another use of the same token: one of the two holders is not the owner.
    if (result === 'already_used') return this.refreshReused(found.user_id, found.session_id);
    if (result === 'session_gone') throw new AppError('invalid_refresh_token');
    return this.tokens(found.user_id, found.session_id, next);
  }

  private async refreshReused(userId: string, sessionId: string): Promise<never> {
    this.ctx.log.warn({ userId, sessionId }, 'refresh token reused: revoking the session');
    await this.revoke(userId, [sessionId], 'refresh_token_reuse');
    throw new AppError('invalid_refresh_token');
  }

  // ---- sessions ----

  async logout(auth: AuthContext): Promise<void> {
    await this.revoke(auth.userId, [auth.sessionId], 'logout');
  }

  async listSessions(auth: AuthContext): Promise<Session[]> {
    const rows = await this.store.listLiveSessions(auth.userId, Date.now(), SESSION_LIST_MAX);
    return rows.map((r) => toSession(r, auth.sessionId));
  }

  async revokeSession(auth: AuthContext, sessionId: string): Promise<void> {
    const revoked = await this.revoke(auth.userId, [sessionId], 'revoked_by_user');
    if (revoked.length === 0) throw notFound('No such session.');
  }

  async revokeOtherSessions(auth: AuthContext): Promise<void> {
    const ids = await this.store.revokeOtherSessions(auth.userId, auth.sessionId, Date.now(), 'revoked_by_user');
    await this.announceRevoked(auth.userId, ids);
  }

  async revokeDeviceSessions(userId: string, deviceId: string): Promise<void> {
    const ids = await this.store.revokeDeviceSessions(userId, deviceId, Date.now(), 'device_revoked');
    await this.announceRevoked(userId, ids);
  }

  // ---- devices ([K1]) ----

  async bindDevice(sessionId: string, deviceId: string, trx?: Transaction<DB>): Promise<void> {
    const bound = await this.store.bindDevice(sessionId, deviceId, trx);
    if (bound === undefined) throw new AppError('invalid_token', 'The session has ended.');
    if (bound !== deviceId) throw new AppError('conflict', 'This session is already bound to another device.');
    // Inside a transaction nothing is visible yet: the caller calls again after commit.
    if (trx) return;
    this.applyBound(sessionId, deviceId);
    const msg: BoundMessage = { node: this.ctx.config.nodeId, sessionId, deviceId };
    try {
      await this.ctx.bus.publish(SESSIONS_BOUND_CHANNEL, msg);
    } catch (err) {
      // Still effective: other nodes re-read the session within SESSION_CACHE_TTL_MS.
      this.ctx.log.warn({ err, sessionId }, 'could not publish session binding');
    }
  }

  private onBusBound(m: unknown): void {
    if (!isBoundMessage(m)) {
      this.ctx.log.warn('malformed session binding message');
      return;
    }
    if (m.node === this.ctx.config.nodeId) return;
    this.applyBound(m.sessionId, m.deviceId);
  }

  private applyBound(sessionId: string, deviceId: string): void {
    const cached = this.cache.get(sessionId);
    if (cached) {
      // A binding never outlives its session: a revoked entry stays revoked.
      if (cached.validUntil !== 0) cached.deviceId = deviceId;
    } else {
      // Stale on purpose (checkedAt 0): the next use reads the session, and a
      // read that was already under way cannot put back the unbound state.
      this.cacheSet(sessionId, { userId: '', deviceId, emailVerified: false, validUntil: 1, checkedAt: 0 });
    }
    for (const l of this.boundListeners) {
      try {
        l(sessionId, deviceId);
      } catch (err) {
        this.ctx.log.error({ err }, 'session binding listener failed');
      }
    }
  }

  onSessionBound(listener: (sessionId: string, deviceId: string) => void): () => void {
    this.boundListeners.add(listener);
    return () => {
      this.boundListeners.delete(listener);
    };
  }

  /** Revokes the sessions of `userId` among `ids` that are live; returns those. */
  private async revoke(userId: string, ids: string[], reason: string): Promise<string[]> {
    const now = Date.now();
    const revoked: string[] = [];
    for (const id of ids) if (await this.store.revokeSession(userId, id, now, reason)) revoked.push(id);
    await this.announceRevoked(userId, revoked);
    return revoked;
  }

  /** Applies a revocation on this node at once, then tells the others through the bus. */
  private async announceRevoked(userId: string, sessionIds: string[]): Promise<void> {
    if (sessionIds.length === 0) return;
    this.applyRevoked(userId, sessionIds);
    const msg: RevokedMessage = { node: this.ctx.config.nodeId, userId, sessionIds };
    try {
      await this.ctx.bus.publish(SESSIONS_REVOKED_CHANNEL, msg);
    } catch (err) {
      // Still effective: other nodes stop trusting their cached copy within SESSION_CACHE_TTL_MS.
      this.ctx.log.warn({ err, userId }, 'could not publish session revocation');
    }
  }

  private onBusRevoked(m: unknown): void {
    if (!isRevokedMessage(m)) {
      this.ctx.log.warn('malformed session revocation message');
      return;
    }
    if (m.node === this.ctx.config.nodeId) return;
    this.applyRevoked(m.userId, m.sessionIds);
  }

  private applyRevoked(userId: string, sessionIds: string[]): void {
    const now = Date.now();
    for (const id of sessionIds) {
      this.cacheSet(id, { userId, deviceId: null, emailVerified: false, validUntil: 0, checkedAt: now });
      for (const l of this.listeners) {
        try {
          l(id, userId);
        } catch (err) {
          this.ctx.log.error({ err }, 'session revocation listener failed');
        }
      }
    }
  }

  onSessionRevoked(listener: (sessionId: string, userId: string) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  // ---- access tokens ----

  /** [S1] token, then [S3] session: live, owned by `sub`, not expired. */
  async verifyAccessToken(token: string): Promise<AuthContext> {
    const claims = await (await this.tokenKeys()).verify(token);
    const s = await this.sessionState(claims.sessionId);
    if (s.userId !== claims.userId || s.validUntil <= Date.now()) throw new AppError('invalid_token');
    return { userId: claims.userId, sessionId: claims.sessionId, deviceId: s.deviceId, emailVerified: s.emailVerified };
  }

  private async sessionState(sessionId: string): Promise<CachedSession> {
    const now = Date.now();
    const cached = this.cache.get(sessionId);
    if (cached && (cached.validUntil === 0 || now - cached.checkedAt < SESSION_CACHE_TTL_MS)) return cached;
    // One lookup per session at a time, however many requests arrive together.
    let p = this.inflight.get(sessionId);
    if (!p) {
      p = this.loadSession(sessionId).finally(() => this.inflight.delete(sessionId));
      this.inflight.set(sessionId, p);
    }
    return p;
  }

  private async loadSession(sessionId: string): Promise<CachedSession> {
    const checkedAt = Date.now();
    const row = await this.store.getSession(sessionId);
    if (!row) return { userId: '', deviceId: null, emailVerified: false, validUntil: 0, checkedAt };
    const entry: CachedSession = { userId: row.user_id, deviceId: row.device_id, emailVerified: row.email_verified_at !== null, validUntil: row.revoked_at === null ? row.expires_at : 0, checkedAt };
    const prev = this.cache.get(sessionId);
    // Bindings only ever go from none to one device, so one announced while we read wins over what we read.
    if (entry.deviceId === null && prev?.deviceId) entry.deviceId = prev.deviceId;
    // A revocation that arrived over the bus while we read wins over what we read.
    if (prev?.validUntil !== 0) this.cacheSet(sessionId, entry);
    if (entry.validUntil > checkedAt && checkedAt - row.last_seen_at >= TOUCH_INTERVAL_MS) await this.store.touchSession(sessionId, checkedAt);
    return this.cache.get(sessionId) ?? entry;
  }

  private cacheSet(id: string, entry: CachedSession): void {
    this.cache.delete(id);
    this.cache.set(id, entry);
    // Bounded (AF-R6): drop the oldest entries; they are re-read on the next use.
    while (this.cache.size > SESSION_CACHE_MAX) {
      const oldest = this.cache.keys().next();
      if (oldest.done) break;
      this.cache.delete(oldest.value);
    }
  }

  // ---- helpers ----

  private tokenKeys(): Promise<TokenKeys> {
    this.keys ??= TokenKeys.load(this.ctx.config.jwtSigningKeys);
    return this.keys;
  }

  private dummy(): Promise<string> {
    this.dummyHash ??= makeDummyHash();
    return this.dummyHash;
  }

  private async tokens(userId: string, sessionId: string, refreshToken: string): Promise<TokenPair> {
    const ttl = this.ctx.config.accessTokenTtlSec;
    const accessToken = await (await this.tokenKeys()).sign({ userId, sessionId }, ttl);
    return { accessToken, refreshToken, expiresIn: ttl };
  }

  private newSession(userId: string, device: string | undefined, meta: ClientMeta) {
    const now = Date.now();
    const refreshToken = newRefreshToken();
    const session = {
      id: uuidv7(),
      userId,
      device: device ?? null,
      userAgent: clip(meta.userAgent, USER_AGENT_MAX),
      ip: meta.ip,
      refreshHash: hashRefreshToken(refreshToken),
      now,
      expiresAt: now + this.ctx.config.refreshTokenTtlSec * 1000,
    };
    return { session, refreshToken };
  }

  private async throwIfTaken(email: string, usernameLower: string): Promise<void> {
    const taken = await this.store.emailOrUsernameTaken(email, usernameLower);
    if (taken.email) throw new AppError('email_taken');
    if (taken.username) throw new AppError('username_taken');
  }


  private async lockOut(limiter: RateLimiterAbstract, key: string): Promise<void> {
    const blockSec = await lockOut(this.lockouts, limiter, key, this.ctx.config.authLimits.loginLockoutBaseSec);
    this.ctx.log.warn({ scope: key.startsWith('ip:') ? key : 'account', blockSec }, 'login locked out');
  }
}

function clip(s: string | null, max: number): string | null {
  return s === null ? null : s.slice(0, max);
}

function toSession(r: SessionRow, currentId: string): Session {
  return {
    id: r.id,
    device: r.device ?? (r.user_agent ? r.user_agent.slice(0, 64) : null),
    ip: r.ip,
    createdAt: new Date(r.created_at).toISOString(),
    lastSeenAt: new Date(r.last_seen_at).toISOString(),
    current: r.id === currentId,
  };
}
