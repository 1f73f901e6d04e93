import { createHash, randomBytes } from 'node:crypto';
import type { Accepted, ChangePasswordBody, ForgotPasswordBody, ResetPasswordBody, VerifyEmailBody } from '@secureconnect/protocol';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Transaction } from 'kysely';
import type { AppContext } from '../../context.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError } from '../../infra/errors.js';
import { consumeOrThrow } from '../../infra/ratelimit.js';
import type { AuthContext, AuthService, ClientMeta } from '../../services.js';
import type { MailService } from '../mail/service.js';
import type { MailTemplate } from '../mail/templates.js';
import { AccountStore, type Recipient, type TokenPurpose } from './store.js';

/** [AC3] */
export const VERIFY_TOKEN_TTL_MS = 24 * 3600_000;
/** [AC4] */
export const RESET_TOKEN_TTL_MS = 3600_000;
const PURGE_INTERVAL_MS = 3600_000;

export function hashAccountToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/**
 * Email verification, password reset and password change ([AC3]-[AC5]).
 * Every mail is enqueued in the transaction of the change that causes it.
 */
export class AccountService {
  private readonly store: AccountStore;
  private readonly resendLimiter: RateLimiterAbstract;
  private readonly forgotLimiter: RateLimiterAbstract;
  private readonly tokenIpLimiter: RateLimiterAbstract;
  /** Reset requests finishing after their 202 was sent; awaited on shutdown. */
  private readonly background = new Set<Promise<void>>();
  private purgeTimer: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: AppContext, private readonly deps: { auth: AuthService; mail: MailService }) {
    this.store = new AccountStore(ctx.database);
    const l = ctx.config.accountLimits;
    this.resendLimiter = ctx.limiters.create({ name: 'account-verify-resend', points: l.verifyResendPerHour, durationSec: 3600 });
    this.forgotLimiter = ctx.limiters.create({ name: 'account-forgot-email', points: l.forgotPerHour, durationSec: 3600 });
    this.tokenIpLimiter = ctx.limiters.create({ name: 'account-token-ip', points: l.tokenAttemptsPerIpPerHour, durationSec: 3600 });
    // The verification mail commits with the account or not at all ([AC1]).
    deps.auth.onAccountCreated(async (trx, a) => {
      await this.issueAndMail(trx, { id: a.id, email: a.email, display_name: a.displayName, locale: a.locale, email_verified_at: null }, 'verify');
    });
  }

  start(): void {
    this.purgeTimer = setInterval(() => {
      this.store.purgeTokens(Date.now() - 24 * 3600_000).catch((err: unknown) => this.ctx.log.warn({ err }, 'purging account tokens failed'));
    }, PURGE_INTERVAL_MS);
    this.purgeTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.purgeTimer) clearInterval(this.purgeTimer);
    await Promise.allSettled([...this.background]);
  }

  /** [AC3] Public: the token is the credential. Throttled per IP ([AC7]). */
  async verifyEmail(body: VerifyEmailBody, meta: ClientMeta): Promise<void> {
    await consumeOrThrow(this.tokenIpLimiter, meta.ip);
    const hash = hashAccountToken(body.token);
    await this.store.transaction(async (trx) => {
      const userId = await this.store.consumeToken(trx, hash, 'verify', Date.now());
      if (!userId) throw new AppError('invalid_account_token');
      await this.store.markVerified(trx, userId, Date.now());
    });
  }

  /** [AC3] A fresh link for the caller; the previous one stops working. No-op once verified. */
  async resendVerification(auth: AuthContext): Promise<void> {
    await consumeOrThrow(this.resendLimiter, auth.userId);
    const user = await this.store.recipientById(auth.userId);
    if (!user) throw new AppError('unauthorized');
    if (user.email_verified_at !== null) return;
    await this.store.transaction((trx) => this.issueAndMail(trx, user, 'verify'));
    this.deps.mail.kick();
  }

  /**
   * [AC4] Public. The answer and its timing are the same whether or not the
   * address has an account: the limits are keyed by IP and by the address as
   * given, and the lookup, token and mail happen after the 202 is decided.
   */
  async forgotPassword(body: ForgotPasswordBody, meta: ClientMeta): Promise<Accepted> {
    const email = body.email.trim().toLowerCase();
    await consumeOrThrow(this.tokenIpLimiter, meta.ip);
    await consumeOrThrow(this.forgotLimiter, email);
    // After the answer is on the wire: with SQLite the lookup and the commit run on this thread and would delay it.
    const work = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.sendReset(email))
      .catch((err: unknown) => this.ctx.log.error({ err }, 'password reset request failed'));
    this.background.add(work);
    void work.finally(() => this.background.delete(work));
    return { status: 'accepted' };
  }

  /** [AC4] Public. Sets the password, ends every session, sends a notice; the token works once. */
  async resetPassword(body: ResetPasswordBody, meta: ClientMeta): Promise<void> {
    await consumeOrThrow(this.tokenIpLimiter, meta.ip);
    const hash = hashAccountToken(body.token);
    const userId = await this.store.peekToken(hash, 'reset', Date.now());
    if (!userId) throw new AppError('invalid_account_token');
    const user = await this.store.recipientById(userId);
    if (!user) throw new AppError('invalid_account_token');
    // The policy is checked before the token is used, so a refused password does not burn the link.
    await this.deps.auth.setPassword(userId, body.newPassword, null, async (trx) => {
      if ((await this.store.consumeToken(trx, hash, 'reset', Date.now())) !== userId) throw new AppError('invalid_account_token');
      // The reset link reached the mailbox: that proves the address as well as a verification link would.
      await this.store.markVerified(trx, userId, Date.now());
      await this.mail(trx, user, 'password_changed');
    });
    this.deps.mail.kick();
  }

  /** [AC5] The caller's own password; the current one is checked with login throttling. */
  async changePassword(auth: AuthContext, body: ChangePasswordBody, meta: ClientMeta): Promise<void> {
    await this.deps.auth.checkPassword(auth.userId, body.currentPassword, meta);
    const user = await this.store.recipientById(auth.userId);
    if (!user) throw new AppError('unauthorized');
    await this.deps.auth.setPassword(auth.userId, body.newPassword, auth.sessionId, async (trx) => {
      // Outstanding reset links would undo this change.
      await this.store.retire(trx, auth.userId, 'reset', Date.now());
      await this.mail(trx, user, 'password_changed');
    });
    this.deps.mail.kick();
  }

  private async sendReset(email: string): Promise<void> {
    const user = await this.store.recipientByEmail(email);
    if (!user) return;
    await this.store.transaction((trx) => this.issueAndMail(trx, user, 'reset'));
    this.deps.mail.kick();
  }

  private async issueAndMail(trx: Transaction<DB>, user: Recipient, purpose: TokenPurpose): Promise<void> {
    const token = randomBytes(32).toString('base64url');
    const now = Date.now();
    await this.store.issueToken(trx, { hash: hashAccountToken(token), userId: user.id, purpose, now, expiresAt: now + (purpose === 'verify' ? VERIFY_TOKEN_TTL_MS : RESET_TOKEN_TTL_MS) });
    const path = purpose === 'verify' ? '/account/verify' : '/account/reset';
    // In the fragment, so the token never reaches a server log or a Referer header.
    const link = `${this.baseUrl()}${path}#token=${token}`;
    await this.mail(trx, user, purpose === 'verify' ? 'verify_email' : 'password_reset', { link, token });
  }

  private async mail(trx: Transaction<DB>, user: Recipient, template: MailTemplate, extra: { link?: string; token?: string } = {}): Promise<void> {
    await this.deps.mail.enqueue(trx, { to: user.email, template, locale: user.locale, vars: { name: user.display_name, ...extra } });
  }

  private baseUrl(): string {
    const c = this.ctx.config;
    return (c.publicUrl ?? `http://${c.host === '0.0.0.0' ? 'localhost' : c.host}:${c.port}`).replace(/\/+$/, '');
  }
}
