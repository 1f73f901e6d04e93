import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import type { AuthResult, ConfirmTotpBody, DisableTotpBody, LoginMfaBody, MfaChallenge, MfaStatus, ReauthBody, ReauthResult, RecoveryCodes, TotpEnrolment } from '@secureconnect/protocol';
import { Secret, TOTP } from 'otpauth';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import type { Transaction } from 'kysely';
import type { AppContext } from '../../context.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError } from '../../infra/errors.js';
import { consumeOrThrow, lockOut } from '../../infra/ratelimit.js';
import type { AuthContext, AuthService, ClientMeta } from '../../services.js';
import type { MailService } from '../mail/service.js';
import type { MailTemplate } from '../mail/templates.js';
import { MfaStore } from './store.js';

/** [MF2] How long the first login step's challenge lives. */
export const MFA_CHALLENGE_TTL_MS = 5 * 60_000;
/** [MF1] */
export const RECOVERY_CODE_COUNT = 10;
const TOTP_PERIOD_SEC = 30;
/** [MF3] One step either side, for clock drift. */
const TOTP_WINDOW = 1;
const ISSUER = 'SecureConnect';
const LOCKOUT_MEMORY_SEC = 24 * 3600;
const PURGE_INTERVAL_MS = 3600_000;
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Case, spaces and dashes do not matter when a recovery code is typed. */
export function normalizeRecoveryCode(code: string): string {
  return code.replace(/[\s-]/g, '').toUpperCase();
}

/** 16 base32 characters (80 bits): SHA-256 alone is enough against guessing from a leaked hash ([MF1]). */
function newRecoveryCode(): string {
  const bytes = randomBytes(16);
  let out = '';
  for (const b of bytes) out += BASE32[b & 31];
  return out.match(/.{4}/g)!.join('-');
}

type Factor = { code?: string | undefined; recoveryCode?: string | undefined };

/**
 * TOTP two-factor authentication ([MF1]-[MF6]): enrolment, the second login
 * step, recovery codes and re-authentication. Second-factor failures are
 * throttled per account and per IP with growing lockouts, like passwords.
 */
export class MfaService {
  private readonly store: MfaStore;
  private readonly accountFailures: RateLimiterAbstract;
  private readonly ipFailures: RateLimiterAbstract;
  private readonly lockouts: RateLimiterAbstract;
  private purgeTimer: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: AppContext, private readonly deps: { auth: AuthService; mail: MailService }) {
    this.store = new MfaStore(ctx.database);
    const l = ctx.config.authLimits;
    this.accountFailures = ctx.limiters.create({ name: 'mfa-code-account', points: l.loginFailuresPerAccount, durationSec: l.loginWindowSec });
    this.ipFailures = ctx.limiters.create({ name: 'mfa-code-ip', points: l.loginFailuresPerIp, durationSec: l.loginWindowSec });
    this.lockouts = ctx.limiters.create({ name: 'mfa-code-lockouts', points: 1_000_000, durationSec: LOCKOUT_MEMORY_SEC });
    deps.auth.setLoginGate((userId, device) => this.challengeIfEnabled(userId, device));
  }

  start(): void {
    this.purgeTimer = setInterval(() => {
      this.store.purge(Date.now()).catch((err: unknown) => this.ctx.log.warn({ err }, 'purging MFA challenges failed'));
    }, PURGE_INTERVAL_MS);
    this.purgeTimer.unref();
  }

  stop(): void {
    if (this.purgeTimer) clearInterval(this.purgeTimer);
  }

  /** [MF4] The caller's own state. */
  async status(auth: AuthContext): Promise<MfaStatus> {
    const enabled = await this.store.isEnabled(auth.userId);
    return { totp: enabled, recoveryCodesRemaining: enabled ? await this.store.recoveryCodesLeft(auth.userId) : 0 };
  }

  /** [MF1] A new pending secret (replacing a pending one); active only once confirmed. */
  async enrol(auth: AuthContext): Promise<TotpEnrolment> {
    await this.requireReauth(auth);
    const recipient = await this.store.recipient(auth.userId);
    if (!recipient) throw new AppError('unauthorized');
    const secret = new Secret({ size: 20 });
    if (!(await this.store.putPending(auth.userId, this.encrypt(secret.base32), Date.now()))) {
      throw new AppError('conflict', 'Two-factor authentication is already enabled; disable it first.');
    }
    const totp = new TOTP({ issuer: ISSUER, label: recipient.email, secret, period: TOTP_PERIOD_SEC });
    return { secret: secret.base32, otpauthUri: totp.toString() };
  }

  /** [MF1] The first code activates the pending secret; the recovery codes are shown this once. */
  async confirm(auth: AuthContext, body: ConfirmTotpBody, meta: ClientMeta): Promise<RecoveryCodes> {
    const row = await this.store.totp(auth.userId);
    if (!row || row.enabled_at !== null) throw new AppError('conflict', 'No pending enrolment: start one with POST /v1/account/mfa/totp.');
    await this.throttled(meta, auth.userId, () => this.checkTotp(auth.userId, row.secret_enc, body.code));
    const recipient = await this.store.recipient(auth.userId);
    if (!recipient) throw new AppError('unauthorized');
    const codes = await this.store.transaction(async (trx) => {
      if (!(await this.store.enable(trx, auth.userId, Date.now()))) throw new AppError('conflict', 'Two-factor authentication is already enabled.');
      const issued = await this.issueRecoveryCodes(trx, auth.userId);
      await this.notify(trx, recipient, 'mfa_enabled');
      return issued;
    });
    this.deps.mail.kick();
    return { recoveryCodes: codes };
  }

  /** [MF4] New recovery codes; every earlier one stops working. */
  async regenerateRecoveryCodes(auth: AuthContext): Promise<RecoveryCodes> {
    await this.requireReauth(auth);
    if (!(await this.store.isEnabled(auth.userId))) throw new AppError('conflict', 'Two-factor authentication is not enabled.');
    const codes = await this.store.transaction((trx) => this.issueRecoveryCodes(trx, auth.userId));
    return { recoveryCodes: codes };
  }

  /** [MF6] Needs a recent re-authentication and a current code; ends the caller's other sessions. */
  async disable(auth: AuthContext, body: DisableTotpBody, meta: ClientMeta): Promise<void> {
    await this.requireReauth(auth);
    const row = await this.store.totp(auth.userId);
    if (!row || row.enabled_at === null) throw new AppError('conflict', 'Two-factor authentication is not enabled.');
    await this.throttled(meta, auth.userId, this.factorCheck(auth.userId, row.secret_enc, body));
    const recipient = await this.store.recipient(auth.userId);
    if (!recipient) throw new AppError('unauthorized');
    await this.store.transaction(async (trx) => {
      if (!(await this.store.disable(trx, auth.userId))) throw new AppError('conflict', 'Two-factor authentication is not enabled.');
      await this.notify(trx, recipient, 'mfa_disabled');
    });
    this.deps.mail.kick();
    await this.deps.auth.revokeOtherSessions(auth);
  }

  /** [MF5] Password (with login throttling) and, when 2FA is on, a code: the session may change security settings for a while. */
  async reauth(auth: AuthContext, body: ReauthBody, meta: ClientMeta): Promise<ReauthResult> {
    await this.deps.auth.checkPassword(auth.userId, body.password, meta);
    const row = await this.store.totp(auth.userId);
    if (row && row.enabled_at !== null) await this.throttled(meta, auth.userId, this.factorCheck(auth.userId, row.secret_enc, body));
    const until = Date.now() + this.ctx.config.reauthTtlSec * 1000;
    await this.store.setReauth(auth.sessionId, auth.userId, until);
    return { reauthUntil: new Date(until).toISOString() };
  }

  /** [MF2] Public: the challenge token is the credential of the first step. */
  async loginMfa(body: LoginMfaBody, meta: ClientMeta): Promise<AuthResult> {
    const hash = sha256(body.mfaToken);
    const challenge = await this.store.peekChallenge(hash, Date.now());
    if (!challenge) throw new AppError('invalid_mfa_token');
    const row = await this.store.totp(challenge.user_id);
    if (!row || row.enabled_at === null) throw new AppError('invalid_mfa_token');
    await this.throttled(meta, challenge.user_id, this.factorCheck(challenge.user_id, row.secret_enc, body));
    if (!(await this.store.consumeChallenge(hash, Date.now()))) throw new AppError('invalid_mfa_token');
    return this.deps.auth.openSession(challenge.user_id, challenge.device, meta);
  }

  /** 403 reauth_required unless this session re-authenticated within REAUTH_TTL_SEC ([MF5]). */
  private async requireReauth(auth: AuthContext): Promise<void> {
    const until = await this.store.reauthUntil(auth.sessionId, auth.userId);
    if (until === undefined || until <= Date.now()) throw new AppError('reauth_required');
  }

  private async challengeIfEnabled(userId: string, device: string | null): Promise<MfaChallenge | null> {
    if (!(await this.store.isEnabled(userId))) return null;
    const token = randomBytes(32).toString('base64url');
    const now = Date.now();
    await this.store.createChallenge({ hash: sha256(token), userId, device, now, expiresAt: now + MFA_CHALLENGE_TTL_MS });
    return { mfaRequired: true, mfaToken: token, expiresIn: MFA_CHALLENGE_TTL_MS / 1000 };
  }

  /** The check of a code or a recovery code; a request with neither or both is refused before it spends any budget. */
  private factorCheck(userId: string, secretEnc: string, f: Factor): () => Promise<boolean> {
    const { code, recoveryCode } = f;
    if (code !== undefined && recoveryCode === undefined) return () => this.checkTotp(userId, secretEnc, code);
    if (recoveryCode !== undefined && code === undefined) return () => this.store.useRecoveryCode(userId, sha256(normalizeRecoveryCode(recoveryCode)), Date.now());
    throw new AppError('validation_failed', 'Send exactly one of code and recoveryCode.');
  }

  /** [MF3] Valid within ±1 step, and only for a step later than the last accepted one. */
  private async checkTotp(userId: string, secretEnc: string, code: string): Promise<boolean> {
    const now = Date.now();
    const secret = Secret.fromBase32(this.decrypt(secretEnc));
    const delta = TOTP.validate({ token: code, secret, period: TOTP_PERIOD_SEC, timestamp: now, window: TOTP_WINDOW });
    if (delta === null) return false;
    return this.store.useStep(userId, TOTP.counter({ period: TOTP_PERIOD_SEC, timestamp: now }) + delta);
  }

  /**
   * Like the password check ([S4]): a point per account and per IP is taken
   * before the code is checked; success clears the account's count; running
   * out locks the key for a time that doubles with each lockout in a day.
   */
  private async throttled(meta: ClientMeta, userId: string, check: () => Promise<boolean>): Promise<void> {
    const ipKey = `ip:${meta.ip}`;
    const accountKey = `u:${userId}`;
    const ipLeft = await consumeOrThrow(this.ipFailures, ipKey);
    let accountLeft: number;
    try {
      accountLeft = await consumeOrThrow(this.accountFailures, accountKey);
    } catch (err) {
      await this.ipFailures.reward(ipKey, 1);
      throw err;
    }
    if (!(await check())) {
      this.ctx.log.info({ ip: meta.ip }, 'second factor failed');
      if (ipLeft === 0) await this.lockOut(this.ipFailures, ipKey);
      if (accountLeft === 0) await this.lockOut(this.accountFailures, accountKey);
      throw new AppError('invalid_mfa_code');
    }
    await this.accountFailures.delete(accountKey);
    await this.ipFailures.reward(ipKey, 1);
  }


  private async lockOut(limiter: RateLimiterAbstract, key: string): Promise<void> {
    const blockSec = await lockOut(this.lockouts, limiter, key, this.ctx.config.authLimits.loginLockoutBaseSec);
    this.ctx.log.warn({ scope: key.startsWith('ip:') ? key : 'account', blockSec }, 'second factor locked out');
  }

  private async issueRecoveryCodes(trx: Transaction<DB>, userId: string): Promise<string[]> {
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, newRecoveryCode);
    await this.store.replaceRecoveryCodes(trx, userId, codes.map((c) => sha256(normalizeRecoveryCode(c))), Date.now());
    return codes;
  }

  private async notify(trx: Transaction<DB>, r: { email: string; display_name: string; locale: string }, template: MailTemplate): Promise<void> {
    await this.deps.mail.enqueue(trx, { to: r.email, template, locale: r.locale, vars: { name: r.display_name } });
  }

  /** AES-256-GCM under MFA_ENCRYPTION_KEY, bound to nothing else: base64(iv | ciphertext | tag). */
  private encrypt(plain: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.ctx.config.mfaEncryptionKey, iv);
    const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return Buffer.concat([iv, ct, cipher.getAuthTag()]).toString('base64');
  }

  private decrypt(enc: string): string {
    const buf = Buffer.from(enc, 'base64');
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.ctx.config.mfaEncryptionKey, buf.subarray(0, 12));
      decipher.setAuthTag(buf.subarray(buf.length - 16));
      return Buffer.concat([decipher.update(buf.subarray(12, buf.length - 16)), decipher.final()]).toString('utf8');
    } catch (err) {
      // A changed MFA_ENCRYPTION_KEY: fail loudly rather than lock users out silently.
      this.ctx.log.error({ err }, 'cannot decrypt a TOTP secret: was MFA_ENCRYPTION_KEY changed?');
      throw new AppError('internal');
    }
  }
}
