/**
 * SecureConnect client SDK: a typed REST client and typed errors mirroring the
 * server's error catalogue. Runs in Node 20+ and browsers.
 */
export { SecureConnectClient, newClientMsgId, type ClientOptions, type HistoryOptions, type Tokens } from './client.js';
export {
  SecureConnectError, ValidationError, AuthenticationError, ForbiddenError, NotFoundError, ConflictError,
  RateLimitedError, ServerError, errorFromResponse,
} from './errors.js';
export { ERRORS, PROTOCOL_VERSION, type ErrorCode } from '@secureconnect/protocol';
