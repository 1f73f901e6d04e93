import { ERRORS, type ErrorCode } from '@secureconnect/protocol';

/**
 * The one way the server reports an expected failure (AF-Q2). The HTTP error
 * handler and the WebSocket gateway both turn it into the catalogue's shape.
 */
export class AppError extends Error {
  readonly status: number;
  constructor(readonly code: ErrorCode, message?: string, readonly details?: unknown, readonly headers?: Record<string, string>) {
    super(message ?? ERRORS[code].message);
    this.name = 'AppError';
    this.status = ERRORS[code].status;
  }
}

export const notFound = (what = 'Not found.') => new AppError('not_found', what);
export const forbidden = (why?: string) => new AppError('forbidden', why);
export const badRequest = (why: string, details?: unknown) => new AppError('bad_request', why, details);
export const rateLimited = (retryAfterSec: number) =>
  new AppError('rate_limited', undefined, { retryAfterSec }, { 'retry-after': String(Math.max(1, Math.ceil(retryAfterSec))) });
