/**
 * The one error catalogue. Every error the server returns, over HTTP or the
 * WebSocket, carries one of these codes. Codes are stable: clients switch on
 * them, so a code is never renamed or reused for another meaning.
 */
export const ERRORS = {
  bad_request: { status: 400, message: 'The request is malformed.' },
  validation_failed: { status: 400, message: 'The request does not match the schema.' },
  invalid_json: { status: 400, message: 'The request body is not valid JSON.' },
  weak_password: { status: 400, message: 'The password does not meet the policy.' },
  invalid_account_token: { status: 400, message: 'The verification or reset token is invalid, expired or already used.' },
  unauthorized: { status: 401, message: 'Authentication is required.' },
  invalid_token: { status: 401, message: 'The access token is invalid or expired.' },
  invalid_credentials: { status: 401, message: 'The login or password is wrong.' },
  invalid_refresh_token: { status: 401, message: 'The refresh token is invalid, expired or already used.' },
  invalid_mfa_code: { status: 401, message: 'The two-factor code is wrong or was already used.' },
  invalid_mfa_token: { status: 401, message: 'The two-factor sign-in challenge is invalid, expired or already used; sign in again.' },
  forbidden: { status: 403, message: 'You may not do this.' },
  email_unverified: { status: 403, message: 'Verify your email address first.' },
  reauth_required: { status: 403, message: 'Confirm your password (and two-factor code) again first: POST /v1/auth/reauth.' },
  origin_forbidden: { status: 403, message: 'This origin is not allowed.' },
  not_found: { status: 404, message: 'Not found.' },
  method_not_allowed: { status: 405, message: 'Method not allowed.' },
  conflict: { status: 409, message: 'The request conflicts with the current state.' },
  email_taken: { status: 409, message: 'This email is already registered.' },
  username_taken: { status: 409, message: 'This username is taken.' },
  last_owner: { status: 409, message: 'The last owner cannot leave or be demoted; promote another owner first.' },
  cursor_expired: { status: 410, message: 'The cursor is older than the retained event history; resynchronise.' },
  payload_too_large: { status: 413, message: 'The request is too large.' },
  unsupported_media_type: { status: 415, message: 'Unsupported content type.' },
  epoch_conflict: { status: 409, message: 'Another commit was accepted for this epoch; process it and retry. details.currentEpoch is the epoch now.' },
  mls_commit_required: { status: 409, message: 'The group still holds devices that must be removed (a removed member or a revoked device); commit their removal first.' },
  mls_not_initialized: { status: 409, message: 'The encrypted conversation has no MLS group yet.' },
  invalid_key_package: { status: 400, message: 'A key package was refused.' },
  invalid_mls_message: { status: 400, message: 'The MLS message was refused.' },
  device_required: { status: 403, message: 'This session is not bound to a device; register one first.' },
  device_limit: { status: 409, message: 'Too many devices; revoke one first.' },
  rate_limited: { status: 429, message: 'Too many requests; retry later.' },
  internal: { status: 500, message: 'Internal server error.' },
  unavailable: { status: 503, message: 'The service is temporarily unavailable.' },
} as const satisfies Record<string, { status: number; message: string }>;

/** A stable error code from the catalogue. */
export type ErrorCode = keyof typeof ERRORS;

/** The body of every error response: `{ error: { code, message, requestId } }`. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; requestId?: string; details?: unknown };
}

/** True when `code` is one of the catalogue's codes. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ERRORS, code);
}

/**
 * WebSocket close codes the gateway uses. 4xxx mirror HTTP statuses where one
 * fits, so a client can treat them alike.
 */
export const CLOSE_CODES = {
  /** Server restarting or shutting down: reconnect (to any node). */
  serviceRestart: 1012,
  /** Frame larger than the limit. */
  tooLarge: 1009,
  /** The server failed (database, Redis): reconnect with your cursor after a backoff. */
  internalError: 1011,
  /** A frame that is not valid JSON or does not match the protocol. */
  badFrame: 4400,
  /** No valid auth frame within the deadline, or an invalid/expired token. */
  unauthenticated: 4401,
  /** Origin not on the allowlist. */
  originForbidden: 4403,
  /** No traffic within the heartbeat window. */
  heartbeatTimeout: 4408,
  /** The account's email is not verified yet and verification is required (HTTP answers 403 email_unverified). */
  emailUnverified: 4412,
  /** The session was revoked (logout, revoke, password change). */
  sessionRevoked: 4409,
  /** The resume cursor is older than the retained history: resync from REST. */
  cursorExpired: 4410,
  /** Too many frames, or too many connections for this user. */
  rateLimited: 4429,
  /** The client does not read fast enough; its buffer passed the limit. */
  slowConsumer: 4508,
} as const;
