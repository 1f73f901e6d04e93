/**
 * SecureConnect client SDK: a typed REST client, the realtime session, the
 * key store interface and typed errors mirroring the server's error
 * catalogue. Runs in Node 20+ and browsers; Node-only parts (file key store,
 * `ws`) are in `@secureconnect/sdk/node`.
 */
export {
  SecureConnectClient, MfaRequiredError, newClientMsgId, type ClientOptions, type SecondFactor, type CreateOptions, type HistoryOptions, type MlsCommitResult, type Tokens,
} from './client.js';
export {
  Session, SessionError, type CursorStore, type ServerEventOf, type SessionClosed, type SessionErrorEvent, type SessionEventName,
  type SessionEvents, type SessionHandler, type SessionOptions, type SessionReady, type SessionResync, type SessionState,
  type SessionStateChange, type TerminalReason, type WebSocketConstructor, type WebSocketLike,
} from './session.js';
export { KEY_MAX_BYTES, KeyStoreError, MemoryKeyStore, checkKey, keyStoreCursor, type KeyStore } from './keystore.js';
export * from './e2ee/index.js';
export * from './crypto/index.js';
export {
  SecureConnectError, ValidationError, AuthenticationError, ForbiddenError, NotFoundError, ConflictError,
  RateLimitedError, ServerError, errorFromResponse,
} from './errors.js';
export { ERRORS, PROTOCOL_VERSION, type ErrorCode } from '@secureconnect/protocol';
export type {
  AuthResult, CipherSuiteId, ClaimKeyPackagesResult, ClaimedKeyPackage, Content, Conversation, ConversationPage, Device,
  DurableEvent, KeyPackageStatus, Me, Member, Message, MlsGroupStatus, Presence, PublicUser, Role, ServerEvent,
  ServerEventType, Session as AuthSession,
} from '@secureconnect/protocol';
