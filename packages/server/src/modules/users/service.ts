import type { Me, PublicUser, UpdateMeBody, UserSearchQuery, UserSearchResult } from '@secureconnect/protocol';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { AppContext } from '../../context.js';
import { AppError, notFound } from '../../infra/errors.js';
import { consumeOrThrow } from '../../infra/ratelimit.js';
import type { AuthContext, UsersService } from '../../services.js';
import { UsersStore, type ProfilePatch, type ProfileRow } from './store.js';

const SEARCH_LIMIT_DEFAULT = 20;
/** What a search cursor may decode to: a lower-cased username (protocol Username pattern). */
const CURSOR_VALUE = /^[a-z0-9_.]{1,32}$/;

export class UsersServiceImpl implements UsersService {
  private readonly store: UsersStore;
  private readonly searchLimiter: RateLimiterAbstract;

  constructor(ctx: AppContext) {
    this.store = new UsersStore(ctx.database);
    this.searchLimiter = ctx.limiters.create({ name: 'users-search', points: ctx.config.authLimits.userSearchPerMinute, durationSec: 60 });
  }

  /** The caller's own account; its session is live (checked by the auth hook), so a missing row means it was deleted. */
  async getMe(auth: AuthContext): Promise<Me> {
    const row = await this.store.getMe(auth.userId);
    if (!row) throw new AppError('unauthorized');
    return {
      ...toPublic(row),
      email: row.email,
      emailVerified: row.email_verified_at !== null,
      createdAt: new Date(row.created_at).toISOString(),
    };
  }

  /** Only the caller's own profile: the id comes from the token, never from the request. */
  async updateMe(auth: AuthContext, body: UpdateMeBody): Promise<Me> {
    const patch: ProfilePatch = {};
    if (body.displayName !== undefined) patch.display_name = body.displayName;
    if (body.avatarUrl !== undefined) patch.avatar_url = body.avatarUrl;
    if (body.statusText !== undefined) patch.status_text = body.statusText;
    if (Object.keys(patch).length > 0) await this.store.updateProfile(auth.userId, patch, Date.now());
    return this.getMe(auth);
  }

  /** Any signed-in user may read a public profile; it never carries the email. */
  async getPublic(_auth: AuthContext, userId: string): Promise<PublicUser> {
    const [row] = await this.store.profiles([userId]);
    if (!row) throw notFound('No such user.');
    return toPublic(row);
  }

  /** AF-F3: rate limited per caller, so the directory cannot be scraped fast. */
  async search(auth: AuthContext, query: UserSearchQuery): Promise<UserSearchResult> {
    await consumeOrThrow(this.searchLimiter, auth.userId);
    const prefix = query.query.trim().toLowerCase();
    if (prefix.length === 0) throw new AppError('validation_failed', 'The query must not be blank.');
    const limit = query.limit ?? SEARCH_LIMIT_DEFAULT;
    const after = query.cursor === undefined ? null : decodeCursor(query.cursor);
    const rows = await this.store.searchByPrefix(prefix, after, limit + 1);
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    const result: UserSearchResult = { items: page.map(toPublic) };
    if (rows.length > limit && last) result.nextCursor = Buffer.from(last.username.toLowerCase(), 'utf8').toString('base64url');
    return result;
  }

  async getPublicMany(ids: readonly string[]): Promise<Map<string, PublicUser>> {
    const unique = [...new Set(ids)];
    const map = new Map<string, PublicUser>();
    if (unique.length === 0) return map;
    for (const row of await this.store.profiles(unique)) map.set(row.id, toPublic(row));
    return map;
  }

  exists(userId: string): Promise<boolean> {
    return this.store.exists(userId);
  }

  setLastSeen(userId: string, at: number): Promise<void> {
    return this.store.setLastSeen(userId, at);
  }

  async lastSeenMany(ids: readonly string[]): Promise<Map<string, number | null>> {
    const unique = [...new Set(ids)];
    const map = new Map<string, number | null>();
    if (unique.length === 0) return map;
    for (const row of await this.store.lastSeen(unique)) map.set(row.id, row.last_seen_at);
    return map;
  }
}

function decodeCursor(cursor: string): string {
  const value = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!CURSOR_VALUE.test(value)) throw new AppError('bad_request', 'The cursor is not valid.');
  return value;
}

function toPublic(row: ProfileRow): PublicUser {
  return { id: row.id, username: row.username, displayName: row.display_name, avatarUrl: row.avatar_url, statusText: row.status_text };
}
