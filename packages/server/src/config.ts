import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';

/** Thrown when the environment is invalid; lists every problem at once (AF-S4). */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export type NodeEnv = 'development' | 'production' | 'test';

export interface Config {
  nodeEnv: NodeEnv;
  host: string;
  port: number;
  dataDir: string;
  publicUrl: string | null;
  logLevel: string;
  corsOrigins: string[];
  trustedProxies: string[];
  bodyLimitBytes: number;
  httpRateLimitPerMinute: number;
  database: {
    /** null: embedded SQLite at `<dataDir>/secureconnect.db`. */
    url: string | null;
    poolMax: number;
    statementTimeoutMs: number;
    connectTimeoutMs: number;
    sslCaFile: string | null;
  };
  redis: { url: string | null; prefix: string; commandTimeoutMs: number };
  /** JWKs (private, Ed25519). The first signs; all verify (rotation). */
  jwtSigningKeys: JsonWebKeyWithKid[];
  accessTokenTtlSec: number;
  refreshTokenTtlSec: number;
  /** Abuse limits of the account endpoints (AF-A1, AF-A2). */
  authLimits: {
    registerPerIpPerHour: number;
    refreshPerIpPerMinute: number;
    /** Failed logins an account may have within the window before it is locked. */
    loginFailuresPerAccount: number;
    /** Failed logins one IP may have within the window (across accounts) before it is locked. */
    loginFailuresPerIp: number;
    loginWindowSec: number;
    /** The first lockout lasts this long; each further one within a day doubles it. */
    loginLockoutBaseSec: number;
    userSearchPerMinute: number;
  };
  ws: {
    maxConnectionsPerUser: number;
    maxConnectionsPerNode: number;
    framesPerSecond: number;
    frameBurst: number;
    maxBufferedBytes: number;
    heartbeatIntervalMs: number;
    /** Time a new socket has to send its auth frame ([G1]). */
    authTimeoutMs: number;
  };
  /** A node's connections count as online this long after its last presence heartbeat ([P2]). */
  presenceTtlMs: number;
  eventRetentionDays: number;
  shutdownGraceMs: number;
  /** Transactional mail ([AC1]). smtpUrl null: development/test only; mails are logged and kept in the outbox. */
  mail: {
    smtpUrl: string | null;
    from: string;
    connectTimeoutMs: number;
    socketTimeoutMs: number;
    maxAttempts: number;
    retryBaseMs: number;
    pollIntervalMs: number;
  };
  /** [AC3] required: unverified accounts may only sign in, read their profile and verify. */
  emailVerification: 'required' | 'optional';
  /** Token endpoints and resends ([AC3], [AC7]). */
  accountLimits: { verifyResendPerHour: number; forgotPerHour: number; tokenAttemptsPerIpPerHour: number };
  /** [MF1] 32-byte AES-256-GCM key that encrypts TOTP secrets at rest. */
  mfaEncryptionKey: Buffer;
  /** [MF5] How long a re-authentication lets a session change security settings. */
  reauthTtlSec: number;
  autoMigrate: boolean;
  nodeId: string;
}

export interface JsonWebKeyWithKid {
  kty: string; crv?: string; x?: string; d?: string; kid: string; alg?: string;
}

type Env = Record<string, string | undefined>;

/** Variables that hold secrets: each may also come from `<NAME>_FILE` (AF-S3). */
export const SECRET_VARS = ['JWT_SIGNING_KEYS', 'DATABASE_URL', 'REDIS_URL', 'MAIL_SMTP_URL', 'MFA_ENCRYPTION_KEY'] as const;

/**
 * Reads `NAME` or, when `NAME_FILE` is set, the file it points at. Both set is
 * an error: silently preferring one hides a deployment mistake.
 */
function readSecret(env: Env, name: string, problems: string[]): string | undefined {
  const direct = env[name];
  const file = env[`${name}_FILE`];
  if (direct !== undefined && direct !== '' && file) {
    problems.push(`${name} and ${name}_FILE are both set; set one`);
    return undefined;
  }
  if (file) {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch (err) {
      problems.push(`${name}_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      return undefined;
    }
  }
  return direct === '' ? undefined : direct;
}

function int(env: Env, name: string, def: number, problems: string[], min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    problems.push(`${name} must be an integer between ${min} and ${max} (got "${raw}")`);
    return def;
  }
  return n;
}

function list(raw: string | undefined): string[] {
  return (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

function passwordOf(url: string): string {
  try {
    return decodeURIComponent(new URL(url).password);
  } catch {
    return '';
  }
}

const MIN_SECRET_CHARS = 16;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
/** Names proxy-addr (Fastify's trustProxy) understands besides addresses and CIDRs. */
const PROXY_KEYWORDS = ['loopback', 'linklocal', 'uniquelocal'];

function isProxySpec(s: string): boolean {
  if (PROXY_KEYWORDS.includes(s) || isIP(s) !== 0) return true;
  const [addr, bits, extra] = s.split('/');
  if (extra !== undefined || addr === undefined || bits === undefined || !/^[0-9]{1,3}$/.test(bits)) return false;
  const family = isIP(addr);
  return family !== 0 && Number(bits) <= (family === 4 ? 32 : 128);
}

function bool(env: Env, name: string, def: boolean, problems: string[]): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  problems.push(`${name} must be true or false (got "${raw}")`);
  return def;
}

/**
 * Builds the typed configuration from the environment. Development and test
 * generate missing signing keys once into the data dir (mode 0600); production
 * refuses to start without them (AF-S2).
 */
export async function loadConfig(env: Env = process.env): Promise<Config> {
  const problems: string[] = [];
  const nodeEnvRaw = env.NODE_ENV ?? 'development';
  if (!['development', 'production', 'test'].includes(nodeEnvRaw)) problems.push(`NODE_ENV must be development, production or test (got "${nodeEnvRaw}")`);
  const nodeEnv = (['development', 'production', 'test'].includes(nodeEnvRaw) ? nodeEnvRaw : 'development') as NodeEnv;
  const prod = nodeEnv === 'production';

  const dataDir = resolve(env.DATA_DIR ?? './data');
  const publicUrl = env.PUBLIC_URL ?? null;
  if (publicUrl !== null) {
    try {
      const u = new URL(publicUrl);
      if (prod && u.protocol !== 'https:') problems.push('PUBLIC_URL must use https in production (AF-S7)');
    } catch {
      problems.push(`PUBLIC_URL is not a URL (got "${publicUrl}")`);
    }
  } else if (prod) {
    problems.push('PUBLIC_URL is required in production (an https URL)');
  }

  const corsOrigins = list(env.CORS_ORIGINS);
  for (const o of corsOrigins) {
    if (o === '*' || o.includes('*')) {
      if (prod) problems.push('CORS_ORIGINS must not contain a wildcard in production (AF-S5)');
      else problems.push('CORS_ORIGINS must list exact origins; wildcards are not supported');
    } else {
      try {
        const u = new URL(o);
        if (u.origin !== o) problems.push(`CORS_ORIGINS entry "${o}" must be an origin like https://app.example.com`);
        else if (prod && u.protocol !== 'https:') problems.push(`CORS_ORIGINS entry "${o}" must be https in production`);
      } catch {
        problems.push(`CORS_ORIGINS entry "${o}" is not an origin`);
      }
    }
  }

  const databaseUrl = readSecret(env, 'DATABASE_URL', problems) ?? null;
  if (databaseUrl !== null) {
    if (!/^postgres(ql)?:\/\//.test(databaseUrl)) problems.push('DATABASE_URL must be a postgres:// URL (leave it unset for embedded SQLite)');
    else if (prod && passwordOf(databaseUrl).length < MIN_SECRET_CHARS) problems.push(`DATABASE_URL must carry a password of at least ${MIN_SECRET_CHARS} characters in production`);
  }
  const redisUrl = readSecret(env, 'REDIS_URL', problems) ?? null;
  if (redisUrl !== null) {
    if (!/^rediss?:\/\//.test(redisUrl)) problems.push('REDIS_URL must be a redis:// or rediss:// URL');
    else if (prod && passwordOf(redisUrl).length < MIN_SECRET_CHARS) problems.push(`REDIS_URL must carry a password of at least ${MIN_SECRET_CHARS} characters in production`);
  }

  let jwtSigningKeys: JsonWebKeyWithKid[] = [];
  const jwtRaw = readSecret(env, 'JWT_SIGNING_KEYS', problems);
  if (jwtRaw !== undefined) {
    jwtSigningKeys = parseSigningKeys(jwtRaw, problems);
  } else if (prod) {
    problems.push('JWT_SIGNING_KEYS (or JWT_SIGNING_KEYS_FILE) is required in production: a JSON array of Ed25519 private JWKs with kid');
  }

  // A typo here would silently disable logging or trust every client's X-Forwarded-For.
  const logLevel = env.LOG_LEVEL ?? (nodeEnv === 'test' ? 'warn' : 'info');
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')} (got "${logLevel}")`);
  const trustedProxies = list(env.TRUSTED_PROXIES);
  for (const p of trustedProxies) {
    if (!isProxySpec(p)) problems.push(`TRUSTED_PROXIES entry "${p}" must be an IP address, a CIDR range or one of ${PROXY_KEYWORDS.join(', ')} (AF-S6)`);
  }
  const sslCaFile = env.DATABASE_SSL_CA_FILE ?? null;
  if (sslCaFile !== null && !existsSync(sslCaFile)) problems.push(`DATABASE_SSL_CA_FILE: ${sslCaFile} does not exist`);

  const smtpUrl = readSecret(env, 'MAIL_SMTP_URL', problems) ?? null;
  if (smtpUrl !== null) {
    if (!/^smtps?:\/\//.test(smtpUrl)) problems.push('MAIL_SMTP_URL must be an smtp:// or smtps:// URL');
  } else if (prod) {
    problems.push('MAIL_SMTP_URL (or MAIL_SMTP_URL_FILE) is required in production: verification and password reset mails must be delivered');
  }
  const mailFrom = env.MAIL_FROM ?? (prod ? '' : 'SecureConnect <no-reply@localhost>');
  if (mailFrom === '') problems.push('MAIL_FROM is required in production (e.g. "SecureConnect <no-reply@example.com>")');
  const emailVerification = env.EMAIL_VERIFICATION ?? (prod ? 'required' : 'optional');
  if (emailVerification !== 'required' && emailVerification !== 'optional') problems.push(`EMAIL_VERIFICATION must be required or optional (got "${emailVerification}")`);
  else if (prod && emailVerification !== 'required') problems.push('EMAIL_VERIFICATION must be required in production');

  let mfaEncryptionKey: Buffer | null = null;
  const mfaRaw = readSecret(env, 'MFA_ENCRYPTION_KEY', problems);
  if (mfaRaw !== undefined) {
    const key = Buffer.from(mfaRaw, 'base64');
    if (key.length !== 32 || !/^[A-Za-z0-9+/]+={0,2}$/.test(mfaRaw)) problems.push('MFA_ENCRYPTION_KEY must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)');
    else mfaEncryptionKey = key;
  } else if (prod) {
    problems.push('MFA_ENCRYPTION_KEY (or MFA_ENCRYPTION_KEY_FILE) is required in production: 32 bytes in base64 that encrypt TOTP secrets');
  }

  const port = int(env, 'PORT', 8080, problems, 0, 65535);
  const config: Config = {
    nodeEnv,
    host: env.HOST ?? (prod ? '0.0.0.0' : '127.0.0.1'),
    port,
    dataDir,
    publicUrl,
    logLevel,
    corsOrigins,
    trustedProxies,
    bodyLimitBytes: int(env, 'BODY_LIMIT_BYTES', 256 * 1024, problems, 1024, 50 * 1024 * 1024),
    httpRateLimitPerMinute: int(env, 'HTTP_RATE_LIMIT_PER_MINUTE', 3_000, problems, 1, 10_000_000),
    database: {
      url: databaseUrl,
      poolMax: int(env, 'DATABASE_POOL_MAX', 10, problems, 1, 500),
      statementTimeoutMs: int(env, 'DATABASE_STATEMENT_TIMEOUT_MS', 5_000, problems, 100, 600_000),
      connectTimeoutMs: int(env, 'DATABASE_CONNECT_TIMEOUT_MS', 5_000, problems, 100, 120_000),
      sslCaFile,
    },
    redis: { url: redisUrl, prefix: env.REDIS_PREFIX ?? 'sc:', commandTimeoutMs: int(env, 'REDIS_COMMAND_TIMEOUT_MS', 2_000, problems, 50, 60_000) },
    jwtSigningKeys,
    accessTokenTtlSec: int(env, 'ACCESS_TOKEN_TTL_SEC', 900, problems, 30, 3600),
    refreshTokenTtlSec: int(env, 'REFRESH_TOKEN_TTL_SEC', 30 * 24 * 3600, problems, 3600, 365 * 24 * 3600),
    authLimits: {
      registerPerIpPerHour: int(env, 'AUTH_REGISTER_PER_IP_PER_HOUR', 20, problems, 1, 10_000_000),
      refreshPerIpPerMinute: int(env, 'AUTH_REFRESH_PER_IP_PER_MINUTE', 120, problems, 1, 10_000_000),
      loginFailuresPerAccount: int(env, 'AUTH_LOGIN_FAILURES_PER_ACCOUNT', 5, problems, 1, 1_000),
      loginFailuresPerIp: int(env, 'AUTH_LOGIN_FAILURES_PER_IP', 50, problems, 1, 10_000_000),
      loginWindowSec: int(env, 'AUTH_LOGIN_WINDOW_SEC', 15 * 60, problems, 1, 24 * 3600),
      loginLockoutBaseSec: int(env, 'AUTH_LOGIN_LOCKOUT_BASE_SEC', 60, problems, 1, 24 * 3600),
      userSearchPerMinute: int(env, 'USER_SEARCH_PER_MINUTE', 60, problems, 1, 10_000_000),
    },
    ws: {
      maxConnectionsPerUser: int(env, 'WS_MAX_CONNECTIONS_PER_USER', 16, problems, 1, 1000),
      maxConnectionsPerNode: int(env, 'WS_MAX_CONNECTIONS_PER_NODE', 100_000, problems, 1, 10_000_000),
      framesPerSecond: int(env, 'WS_FRAMES_PER_SECOND', 50, problems, 1, 100_000),
      frameBurst: int(env, 'WS_FRAME_BURST', 100, problems, 1, 100_000),
      maxBufferedBytes: int(env, 'WS_MAX_BUFFERED_BYTES', 4 * 1024 * 1024, problems, 16 * 1024, 1024 * 1024 * 1024),
      heartbeatIntervalMs: int(env, 'WS_HEARTBEAT_INTERVAL_MS', 25_000, problems, 200, 600_000),
      authTimeoutMs: int(env, 'WS_AUTH_TIMEOUT_MS', 10_000, problems, 100, 60_000),
    },
    presenceTtlMs: int(env, 'PRESENCE_TTL_MS', 30_000, problems, 300, 600_000),
    eventRetentionDays: int(env, 'EVENT_RETENTION_DAYS', 30, problems, 1, 3650),
    shutdownGraceMs: int(env, 'SHUTDOWN_GRACE_MS', 10_000, problems, 0, 300_000),
    mail: {
      smtpUrl,
      from: mailFrom,
      connectTimeoutMs: int(env, 'MAIL_CONNECT_TIMEOUT_MS', 10_000, problems, 100, 120_000),
      socketTimeoutMs: int(env, 'MAIL_SOCKET_TIMEOUT_MS', 30_000, problems, 100, 600_000),
      maxAttempts: int(env, 'MAIL_MAX_ATTEMPTS', 8, problems, 1, 100),
      retryBaseMs: int(env, 'MAIL_RETRY_BASE_MS', 30_000, problems, 10, 3_600_000),
      pollIntervalMs: int(env, 'MAIL_POLL_INTERVAL_MS', 2_000, problems, 10, 600_000),
    },
    emailVerification: emailVerification === 'required' ? 'required' : 'optional',
    accountLimits: {
      verifyResendPerHour: int(env, 'ACCOUNT_VERIFY_RESEND_PER_HOUR', 5, problems, 1, 10_000_000),
      forgotPerHour: int(env, 'ACCOUNT_FORGOT_PER_HOUR', 5, problems, 1, 10_000_000),
      tokenAttemptsPerIpPerHour: int(env, 'ACCOUNT_TOKEN_ATTEMPTS_PER_IP_PER_HOUR', 30, problems, 1, 10_000_000),
    },
    mfaEncryptionKey: mfaEncryptionKey ?? Buffer.alloc(0),
    reauthTtlSec: int(env, 'REAUTH_TTL_SEC', 300, problems, 1, 3600),
    autoMigrate: bool(env, 'AUTO_MIGRATE', !prod, problems),
    nodeId: env.NODE_ID ?? `node-${randomBytes(4).toString('hex')}`,
  };
  if (problems.length > 0) throw new ConfigError(problems);

  if (config.jwtSigningKeys.length === 0) config.jwtSigningKeys = [await devSigningKey(dataDir)];
  if (config.mfaEncryptionKey.length === 0) config.mfaEncryptionKey = devMfaKey(dataDir);
  return config;
}

function parseSigningKeys(raw: string, problems: string[]): JsonWebKeyWithKid[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    problems.push('JWT_SIGNING_KEYS must be JSON: an array of Ed25519 private JWKs');
    return [];
  }
  const arr = Array.isArray(parsed) ? parsed : [parsed];
  const keys: JsonWebKeyWithKid[] = [];
  for (const [i, k] of arr.entries()) {
    const key = k as Partial<JsonWebKeyWithKid>;
    if (key?.kty !== 'OKP' || key.crv !== 'Ed25519' || typeof key.d !== 'string' || typeof key.x !== 'string' || typeof key.kid !== 'string' || key.kid.length === 0) {
      problems.push(`JWT_SIGNING_KEYS[${i}] must be an Ed25519 private JWK (kty OKP, crv Ed25519, x, d, kid)`);
      continue;
    }
    // A truncated or hand-made `d` is a weak key; Ed25519 private keys are exactly 32 bytes.
    if (Buffer.from(key.d, 'base64url').length !== 32 || Buffer.from(key.x, 'base64url').length !== 32) {
      problems.push(`JWT_SIGNING_KEYS[${i}] (kid "${key.kid}") is not a 32-byte Ed25519 key`);
      continue;
    }
    if (keys.some((k) => k.kid === key.kid)) {
      problems.push(`JWT_SIGNING_KEYS[${i}]: kid "${key.kid}" is used twice`);
      continue;
    }
    keys.push(key as JsonWebKeyWithKid);
  }
  if (arr.length === 0) problems.push('JWT_SIGNING_KEYS must hold at least one key');
  return keys;
}

/** Development only: a signing key generated once and kept in the data dir with mode 0600. */
async function devSigningKey(dataDir: string): Promise<JsonWebKeyWithKid> {
  const dir = join(dataDir, 'secrets');
  const file = join(dir, 'jwt-signing-key.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as JsonWebKeyWithKid;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: `dev-${randomBytes(6).toString('hex')}`, alg: 'EdDSA' } as JsonWebKeyWithKid;
  try {
    writeFileSync(file, JSON.stringify(jwk), { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another process sharing the data dir won the race: use its key.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return JSON.parse(readFileSync(file, 'utf8')) as JsonWebKeyWithKid;
    throw err;
  }
  chmodSync(file, 0o600);
  return jwk;
}

/** Development only: the TOTP secret key, generated once and kept in the data dir with mode 0600 ([MF1]). */
function devMfaKey(dataDir: string): Buffer {
  const dir = join(dataDir, 'secrets');
  const file = join(dir, 'mfa-encryption-key');
  if (existsSync(file)) return Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  try {
    writeFileSync(file, key.toString('base64'), { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another process sharing the data dir won the race: use its key.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
    throw err;
  }
  chmodSync(file, 0o600);
  return key;
}
