import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Paths pino removes from every log line (AF-I5). Tokens, passwords, cookies,
 * connection strings and encrypted payloads never reach the logs.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  '*.password', '*.newPassword', '*.currentPassword',
  '*.token', '*.accessToken', '*.refreshToken',
  '*.ciphertext', '*.secret', '*.databaseUrl', '*.redisUrl',
  'password', 'token', 'accessToken', 'refreshToken', 'ciphertext', 'secret',
  'databaseUrl', 'redisUrl', 'authorization', 'cookie',
  'headers.authorization', 'headers.cookie', '*.headers.authorization', '*.headers.cookie',
];

/** Strips credentials from a connection string before it is logged. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    if (u.username) u.username = '***';
    return u.toString();
  } catch {
    return '[unparseable url]';
  }
}

export function createLogger(opts: { level: string; nodeId: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      level: opts.level,
      base: { node: opts.nodeId },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination,
  );
}
