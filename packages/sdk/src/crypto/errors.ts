import type { CryptoErrorCode } from './types.js';

/**
 * An MLS operation was refused. The state passed in is unchanged and still
 * usable; `code` says why (see {@link CryptoErrorCode}).
 */
export class CryptoError extends Error {
  /** Stable reason code. */
  readonly code: CryptoErrorCode;

  constructor(code: CryptoErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CryptoError';
    this.code = code;
  }
}
