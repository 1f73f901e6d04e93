import { ERRORS, isErrorCode, type ErrorCode } from '@secureconnect/protocol';

/**
 * Base class of every error the SDK throws for a server answer. `code` is the
 * stable catalogue code (docs/API.md); switch on it, or on the subclass.
 */
export class SecureConnectError extends Error {
  /** Catalogue code, e.g. `invalid_credentials`. */
  readonly code: ErrorCode;
  /** HTTP status of the answer (0 when the request never got one). */
  readonly status: number;
  /** The server's request id, for support and log correlation. */
  readonly requestId: string | undefined;
  /** Structured details the server attached (validation paths, retry delay). */
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, status: number, requestId?: string, details?: unknown) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.requestId = requestId;
    this.details = details;
  }
}

/** The request was malformed or failed validation (400, 413, 415). */
export class ValidationError extends SecureConnectError {}
/** Not signed in, wrong credentials, or an invalid/expired token (401). */
export class AuthenticationError extends SecureConnectError {}
/** Signed in but not allowed (403). */
export class ForbiddenError extends SecureConnectError {}
/** Does not exist, or is not visible to you (404). */
export class NotFoundError extends SecureConnectError {}
/** Conflicts with the current state: taken email/username, last owner, already deleted (409, 410). */
export class ConflictError extends SecureConnectError {}
/** Too many requests; retry after `retryAfterSec`. */
export class RateLimitedError extends SecureConnectError {
  /** Seconds to wait before retrying, from the `Retry-After` header. */
  readonly retryAfterSec: number;
  constructor(code: ErrorCode, message: string, status: number, retryAfterSec: number, requestId?: string, details?: unknown) {
    super(code, message, status, requestId, details);
    this.retryAfterSec = retryAfterSec;
  }
}
/** The server failed or is unavailable (5xx), or the network did. */
export class ServerError extends SecureConnectError {}

/** Builds the typed error for an error response body and status. */
export function errorFromResponse(status: number, body: unknown, retryAfter: string | null): SecureConnectError {
  const err = (body as { error?: { code?: unknown; message?: unknown; requestId?: unknown; details?: unknown } } | null)?.error;
  const code: ErrorCode = isErrorCode(err?.code) ? err.code : status >= 500 ? 'internal' : 'bad_request';
  const message = typeof err?.message === 'string' ? err.message : ERRORS[code].message;
  const requestId = typeof err?.requestId === 'string' ? err.requestId : undefined;
  const details = err?.details;
  if (status === 429) return new RateLimitedError(code, message, status, Number(retryAfter ?? '1') || 1, requestId, details);
  if (status === 401) return new AuthenticationError(code, message, status, requestId, details);
  if (status === 403) return new ForbiddenError(code, message, status, requestId, details);
  if (status === 404) return new NotFoundError(code, message, status, requestId, details);
  if (status === 409 || status === 410) return new ConflictError(code, message, status, requestId, details);
  if (status >= 500) return new ServerError(code, message, status, requestId, details);
  return new ValidationError(code, message, status, requestId, details);
}
