/**
 * Why the E2EE layer refused or could not finish an operation (server
 * answers keep their own typed errors, MLS refusals are CryptoError).
 * - `no_device`: setupDevice has not run (or its key store record is gone);
 * - `device_mismatch`: the key store belongs to another account;
 * - `device_revoked`: the stored device was revoked: start over with a new key store;
 * - `not_joined`: this device holds no MLS state for the conversation (yet);
 * - `not_encrypted`: the conversation is not an MLS conversation;
 * - `commit_failed`: the group kept moving: a commit lost every retry;
 * - `join_failed`: this device could not join a conversation it was added to (Welcome and rejoins failed); it keeps trying;
 * - `invalid_argument`: the call itself is wrong (e.g. text too long).
 */
export type E2eeErrorCode =
  | 'no_device'
  | 'device_mismatch'
  | 'device_revoked'
  | 'not_joined'
  | 'not_encrypted'
  | 'commit_failed'
  | 'join_failed'
  | 'invalid_argument';

/** An operation of {@link EncryptedMessenger} failed; `code` says why. */
export class E2eeError extends Error {
  /** Stable reason code. */
  readonly code: E2eeErrorCode;

  constructor(code: E2eeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'E2eeError';
    this.code = code;
  }
}
