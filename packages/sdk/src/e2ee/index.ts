/**
 * End-to-end encrypted messaging over MLS: {@link EncryptedMessenger} keeps
 * one device's groups in step with the server (docs/SPEC.md [EC1]–[EC9]).
 * Browser-safe.
 */
export {
  EncryptedMessenger,
  type DecryptedMessage, type DeviceInfo, type DevicesChanged, type EncryptedMessengerOptions, type JoinedGroup, type MessengerErrorEvent,
  type MessengerEventName, type MessengerEvents, type MessengerHandler, type MessengerSession, type OpenedConversation,
  type UndecryptableMessage, type UndecryptableReason,
} from './messenger.js';
export { E2eeError, type E2eeErrorCode } from './errors.js';
