/**
 * Configuration: validated at startup, every problem at once, strict in
 * production, secrets from files, no secret defaults (AF-S2–S8).
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, SECRET_VARS, loadConfig, type Config } from '../src/config.js';
import { openBus } from '../src/infra/bus/index.js';
import { openDatabase } from '../src/infra/db/index.js';
import { createLogger } from '../src/infra/logger.js';
import { client, startApp } from './helpers.js';

const log = createLogger({ level: 'silent', nodeId: 'config-test' });
const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'sc-config-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A real Ed25519 private JWK, as an operator would generate one. */
function signingKeys(kid = 'k1'): string {
  const { privateKey } = generateKeyPairSync('ed25519');
  return JSON.stringify([{ ...privateKey.export({ format: 'jwk' }), kid, alg: 'EdDSA' }]);
}

const STRONG = 'Zq8v0Lx3Rr2mW9kT5yH1'; // 20 characters: passes the 16-character floor.

/** The smallest environment production accepts. */
function prodEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    NODE_ENV: 'production',
    DATA_DIR: tempDir(),
    PUBLIC_URL: 'https://chat.example.com',
    JWT_SIGNING_KEYS: signingKeys(),
    MAIL_SMTP_URL: `smtps://mailer:${STRONG}@smtp.example.com:465`,
    MAIL_FROM: 'SecureConnect <no-reply@example.com>',
    MFA_ENCRYPTION_KEY: Buffer.alloc(32, 7).toString('base64'),
    ...extra,
  };
}

async function problemsOf(env: Record<string, string | undefined>): Promise<string[]> {
  try {
    await loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('loadConfig accepted the environment');
}

describe('configuration', () => {
  it('a valid production environment is accepted', async () => {
    const config = await loadConfig(prodEnv({ CORS_ORIGINS: 'https://app.example.com' }));
    expect(config.nodeEnv).toBe('production');
    expect(config.host).toBe('0.0.0.0');
    expect(config.autoMigrate).toBe(false);
    expect(config.jwtSigningKeys).toHaveLength(1);
    expect(config.corsOrigins).toEqual(['https://app.example.com']);
  });

  it('[AF-S4] lists every problem at once in one ConfigError', async () => {
    const env = {
      NODE_ENV: 'test',
      DATA_DIR: tempDir(),
      PORT: 'eighty',
      LOG_LEVEL: 'loud',
      BODY_LIMIT_BYTES: '-1',
      DATABASE_URL: 'mysql://x@y/z',
      REDIS_URL: 'http://nope',
      AUTO_MIGRATE: 'yes',
      TRUSTED_PROXIES: 'everyone',
    };
    const err = await loadConfig(env).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems;
    const joined = problems.join('\n');
    for (const name of ['PORT', 'LOG_LEVEL', 'BODY_LIMIT_BYTES', 'DATABASE_URL', 'REDIS_URL', 'AUTO_MIGRATE', 'TRUSTED_PROXIES']) {
      expect(joined).toContain(name);
    }
    expect(problems.length).toBeGreaterThanOrEqual(7);
    // The message an operator sees names each problem on its own line.
    expect((err as ConfigError).message.split('\n').filter((l) => l.startsWith('  - '))).toHaveLength(problems.length);
  });

  it('[AF-S4] NODE_ENV must be explicit and known', async () => {
    expect(await problemsOf({ NODE_ENV: 'release', DATA_DIR: tempDir() })).toEqual([expect.stringContaining('NODE_ENV')]);
  });

  it('[AF-S2] production refuses to start without JWT_SIGNING_KEYS or PUBLIC_URL', async () => {
    const problems = await problemsOf(prodEnv({ JWT_SIGNING_KEYS: undefined, PUBLIC_URL: undefined }));
    expect(problems).toEqual(expect.arrayContaining([expect.stringContaining('JWT_SIGNING_KEYS'), expect.stringContaining('PUBLIC_URL')]));
  });

  it('[AF-S2] production refuses malformed or truncated signing keys', async () => {
    const good = JSON.parse(signingKeys()) as { d: string }[];
    const truncated = JSON.stringify([{ ...good[0], d: good[0]!.d.slice(0, 20) }]);
    expect(await problemsOf(prodEnv({ JWT_SIGNING_KEYS: truncated }))).toEqual([expect.stringContaining('32-byte')]);
    expect(await problemsOf(prodEnv({ JWT_SIGNING_KEYS: 'secret' }))).toEqual([expect.stringContaining('JSON')]);
    expect(await problemsOf(prodEnv({ JWT_SIGNING_KEYS: '[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]' }))).toEqual([expect.stringContaining('Ed25519')]);
  });

  it('[AF-S2] production refuses DATABASE_URL and REDIS_URL without a strong password', async () => {
    const problems = await problemsOf(
      prodEnv({ DATABASE_URL: 'postgres://app:short@db.internal:5432/app', REDIS_URL: 'redis://redis.internal:6379' }),
    );
    expect(problems).toHaveLength(2);
    expect(problems).toEqual(expect.arrayContaining([expect.stringContaining('DATABASE_URL'), expect.stringContaining('REDIS_URL')]));
    // The refusal never echoes the credential it refused.
    expect(problems.join('\n')).not.toContain('short');

    await expect(
      loadConfig(prodEnv({ DATABASE_URL: `postgres://app:${STRONG}@db.internal:5432/app`, REDIS_URL: `redis://:${STRONG}@redis.internal:6379` })),
    ).resolves.toBeTruthy();
  });

  it('[AF-S2] development accepts the same weak URLs (local engines), so the rule is production-only by design', async () => {
    const config = await loadConfig({ NODE_ENV: 'development', DATA_DIR: tempDir(), DATABASE_URL: 'postgres://app:short@localhost/app', REDIS_URL: 'redis://localhost:6379' });
    expect(config.database.url).toContain('localhost');
  });

  it('[AF-S5] a wildcard CORS origin is refused, in production and elsewhere', async () => {
    expect(await problemsOf(prodEnv({ CORS_ORIGINS: '*' }))).toEqual([expect.stringContaining('wildcard')]);
    expect(await problemsOf(prodEnv({ CORS_ORIGINS: 'https://*.example.com' }))).toEqual([expect.stringContaining('wildcard')]);
    expect(await problemsOf({ NODE_ENV: 'development', DATA_DIR: tempDir(), CORS_ORIGINS: '*' })).toEqual([expect.stringContaining('wildcard')]);
    expect(await problemsOf(prodEnv({ CORS_ORIGINS: 'http://app.example.com' }))).toEqual([expect.stringContaining('https')]);
    expect(await problemsOf(prodEnv({ CORS_ORIGINS: 'https://app.example.com/path' }))).toEqual([expect.stringContaining('origin')]);
  });

  it('[AF-S7] production refuses a PUBLIC_URL without https', async () => {
    expect(await problemsOf(prodEnv({ PUBLIC_URL: 'http://chat.example.com' }))).toEqual([expect.stringContaining('https')]);
    const dev = await loadConfig({ NODE_ENV: 'development', DATA_DIR: tempDir(), PUBLIC_URL: 'http://localhost:8080' });
    expect(dev.publicUrl).toBe('http://localhost:8080');
  });

  it('[AF-S3] every secret can be read from NAME_FILE', async () => {
    const dir = tempDir();
    const values: Record<string, string> = {
      JWT_SIGNING_KEYS: signingKeys('from-file'),
      DATABASE_URL: `postgres://app:${STRONG}@db.internal:5432/app`,
      REDIS_URL: `rediss://:${STRONG}@redis.internal:6380`,
      MAIL_SMTP_URL: `smtps://mailer:${STRONG}@smtp.example.com:465`,
      MFA_ENCRYPTION_KEY: Buffer.alloc(32, 9).toString('base64'),
    };
    expect([...SECRET_VARS].sort()).toEqual(Object.keys(values).sort());
    const env = prodEnv({ JWT_SIGNING_KEYS: undefined, MAIL_SMTP_URL: undefined, MFA_ENCRYPTION_KEY: undefined });
    for (const name of SECRET_VARS) {
      const file = join(dir, name.toLowerCase());
      // Mounted secrets usually end with a newline.
      writeFileSync(file, `${values[name]}\n`, { mode: 0o600 });
      env[`${name}_FILE`] = file;
    }
    const config = await loadConfig(env);
    expect(config.jwtSigningKeys[0]!.kid).toBe('from-file');
    expect(config.database.url).toBe(values.DATABASE_URL);
    expect(config.redis.url).toBe(values.REDIS_URL);
    expect(config.mail.smtpUrl).toBe(values.MAIL_SMTP_URL);
    expect(config.mfaEncryptionKey.equals(Buffer.alloc(32, 9))).toBe(true);
  });

  it('[AF-S3] NAME and NAME_FILE both set is an error, and an unreadable file is reported', async () => {
    const dir = tempDir();
    const file = join(dir, 'db');
    writeFileSync(file, `postgres://app:${STRONG}@db/app`);
    const problems = await problemsOf(
      prodEnv({ DATABASE_URL: `postgres://app:${STRONG}@db/app`, DATABASE_URL_FILE: file, REDIS_URL_FILE: join(dir, 'missing') }),
    );
    expect(problems).toEqual([expect.stringContaining('both set'), expect.stringContaining('REDIS_URL_FILE')]);
  });

  it('[AF-S3] development generates the signing key once into DATA_DIR/secrets (0600) and reuses it', async () => {
    const dataDir = tempDir();
    const first = await loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    const file = join(dataDir, 'secrets', 'jwt-signing-key.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(dataDir, 'secrets')).mode & 0o077).toBe(0);
    const second = await loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    expect(second.jwtSigningKeys).toEqual(first.jwtSigningKeys);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual(first.jwtSigningKeys[0]);
    // No key is baked into the code: another data dir gets another key.
    const other = await loadConfig({ NODE_ENV: 'development', DATA_DIR: tempDir() });
    expect(other.jwtSigningKeys[0]!.d).not.toBe(first.jwtSigningKeys[0]!.d);
  });

  it('[AF-S2] no secret has a default: without them config holds none besides the generated dev key', async () => {
    const config = await loadConfig({ NODE_ENV: 'development', DATA_DIR: tempDir() });
    expect(config.database.url).toBeNull();
    expect(config.redis.url).toBeNull();
  });

  it('[AF-S6] TRUSTED_PROXIES accepts addresses, CIDRs and keywords and nothing else', async () => {
    const config = await loadConfig({ NODE_ENV: 'test', DATA_DIR: tempDir(), TRUSTED_PROXIES: '10.0.0.1, 10.1.0.0/16, ::1, fd00::/8, loopback' });
    expect(config.trustedProxies).toEqual(['10.0.0.1', '10.1.0.0/16', '::1', 'fd00::/8', 'loopback']);
    expect(await problemsOf({ NODE_ENV: 'test', DATA_DIR: tempDir(), TRUSTED_PROXIES: '*' })).toEqual([expect.stringContaining('TRUSTED_PROXIES')]);
    expect(await problemsOf({ NODE_ENV: 'test', DATA_DIR: tempDir(), TRUSTED_PROXIES: '10.0.0.0/33' })).toEqual([expect.stringContaining('TRUSTED_PROXIES')]);
  });
});

describe('[AF-S8] TLS to PostgreSQL and Redis', () => {
  it('[AF-S8] DATABASE_URL with sslmode=require/verify-full and rediss:// REDIS_URL are accepted in production', async () => {
    const config = await loadConfig(
      prodEnv({
        DATABASE_URL: `postgres://app:${STRONG}@db.internal:5432/app?sslmode=verify-full`,
        REDIS_URL: `rediss://:${STRONG}@redis.internal:6380/0`,
      }),
    );
    expect(config.database.url).toContain('sslmode=verify-full');
    expect(config.redis.url).toMatch(/^rediss:/);
    await expect(loadConfig(prodEnv({ DATABASE_URL: `postgres://app:${STRONG}@db.internal/app?sslmode=require` }))).resolves.toBeTruthy();
  });

  it('[AF-S8] ioredis turns rediss:// into a TLS connection', () => {
    const redis = new Redis(`rediss://:${STRONG}@redis.internal:6380`, { lazyConnect: true });
    expect(redis.options.tls).toBeTruthy();
    redis.disconnect();
  });

  describe('against a server that only speaks plaintext', () => {
    let server: Server;
    let port = 0;
    const firstBytes: Buffer[] = [];
    const sockets = new Set<Socket>();
    beforeAll(async () => {
      server = createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        socket.on('error', () => socket.destroy());
        socket.once('data', (chunk) => {
          firstBytes.push(chunk);
          // PostgreSQL's answer to an SSLRequest when TLS is off: a single 'N'.
          socket.write('N');
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      port = (server.address() as { port: number }).port;
    });
    afterAll(async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    it('[AF-S8] sslmode=require never falls back to plaintext', async () => {
      const config: Config = await loadConfig({
        NODE_ENV: 'test',
        DATA_DIR: tempDir(),
        DATABASE_URL: `postgres://app:pw@127.0.0.1:${port}/app?sslmode=verify-full`,
        DATABASE_CONNECT_TIMEOUT_MS: '2000',
      });
      const database = openDatabase(config, log);
      try {
        await expect(database.ping(3_000)).rejects.toThrow(/ssl/i);
      } finally {
        await database.close();
      }
      // The first thing the driver sent was an SSLRequest (length 8, code 80877103).
      const sslRequest = firstBytes.find((b) => b.length === 8 && b.readInt32BE(4) === 80877103);
      expect(sslRequest).toBeDefined();
    });

    it('[AF-S8] rediss:// opens with a TLS handshake', async () => {
      const before = firstBytes.length;
      const config = await loadConfig({ NODE_ENV: 'test', DATA_DIR: tempDir(), REDIS_URL: `rediss://127.0.0.1:${port}/0` });
      const bus = openBus(config, log);
      try {
        await expect.poll(() => firstBytes.length, { timeout: 5_000 }).toBeGreaterThan(before);
        // 0x16 is a TLS handshake record (ClientHello); plaintext Redis would start with '*' (RESP).
        expect(firstBytes[before]![0]).toBe(0x16);
      } finally {
        await bus.close();
      }
    });
  });
});

describe('[AF-S6] trusted proxies', () => {
  // The per-IP HTTP limit keys on the client address Fastify derives, so it shows
  // which address the server believed: two allowed requests per "client".
  async function requestsFrom(env: Record<string, string>, forwardedFor: string[]): Promise<number[]> {
    const s = await startApp({ HTTP_RATE_LIMIT_PER_MINUTE: '2', ...env });
    try {
      const req = client(s.url);
      const statuses: number[] = [];
      for (const ip of forwardedFor) statuses.push((await req('GET', '/openapi.json', { headers: { 'x-forwarded-for': ip } })).status);
      return statuses;
    } finally {
      await s.close();
    }
  }

  const spoofed = ['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.4'];

  it('[AF-S6] X-Forwarded-For is ignored when TRUSTED_PROXIES is empty', async () => {
    // Every request counts against the real peer (127.0.0.1), whatever the header claims.
    expect(await requestsFrom({}, spoofed)).toEqual([200, 200, 429, 429]);
  });

  it('[AF-S6] X-Forwarded-For is ignored when the peer is not a listed proxy', async () => {
    expect(await requestsFrom({ TRUSTED_PROXIES: '10.9.9.9' }, spoofed)).toEqual([200, 200, 429, 429]);
  });

  it('[AF-S6] X-Forwarded-For is honoured when the peer is a listed proxy', async () => {
    // Distinct clients behind the proxy each get their own budget ...
    expect(await requestsFrom({ TRUSTED_PROXIES: '127.0.0.1' }, spoofed)).toEqual([200, 200, 200, 200]);
    // ... and the same client is still limited.
    expect(await requestsFrom({ TRUSTED_PROXIES: '127.0.0.1' }, ['198.51.100.7', '198.51.100.7', '198.51.100.7'])).toEqual([200, 200, 429]);
  });
});
