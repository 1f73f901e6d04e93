import { Type, type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { Id, Obj, Timestamp } from './common.js';
import { ClientMsgId, Content, Conversation, Member, Message } from './api.js';
import { DeviceAddedEvent, DeviceRevokedEvent, KeyPackagesLowEvent, MlsWelcomeEvent } from './e2ee.js';

/**
 * Version of the WebSocket protocol. The server announces it in `ready`; a
 * client that sends a different `protocolVersion` in `auth` is refused.
 */
export const PROTOCOL_VERSION = 1;

export const WS_LIMITS = {
  /** Largest client frame in bytes. */
  maxFrameBytes: 96 * 1024,
  authTimeoutMs: 10_000,
  /** Server pings every interval; a connection silent for 2 intervals is closed. */
  heartbeatIntervalMs: 25_000,
} as const;

/** Opaque resume position; clients store it as given and send it back. */
export const Cursor = Type.String({ maxLength: 32, pattern: '^[0-9]+$' });
const ReqId = Type.String({ minLength: 1, maxLength: 64 });

// ---- client → server ----
export const AuthFrame = Obj({
  type: Type.Literal('auth'),
  token: Type.String({ minLength: 1, maxLength: 4096 }),
  cursor: Type.Optional(Cursor),
  protocolVersion: Type.Optional(Type.Integer()),
});
export const SendFrame = Obj({ type: Type.Literal('send'), reqId: ReqId, conversationId: Id, clientMsgId: ClientMsgId, content: Content });
export const TypingFrame = Obj({ type: Type.Literal('typing'), conversationId: Id });
export const ReadFrame = Obj({ type: Type.Literal('read'), conversationId: Id, seq: Type.Integer({ minimum: 0 }) });
export const PingFrame = Obj({ type: Type.Literal('ping') });
export const ClientFrame = Type.Union([AuthFrame, SendFrame, TypingFrame, ReadFrame, PingFrame]);
export type ClientFrame = Static<typeof ClientFrame>;
export type AuthFrame = Static<typeof AuthFrame>;
export type SendFrame = Static<typeof SendFrame>;

// ---- events (in `event` frames) ----
export const MessageCreatedEvent = Obj({ type: Type.Literal('message.created'), message: Message });
export const MessageUpdatedEvent = Obj({ type: Type.Literal('message.updated'), message: Message });
export const MessageDeletedEvent = Obj({ type: Type.Literal('message.deleted'), message: Message });
export const ConversationUpdatedEvent = Obj({ type: Type.Literal('conversation.updated'), conversation: Type.Omit(Conversation, ['readSeq', 'unreadCount', 'lastMessage']) });
export const MemberAddedEvent = Obj({ type: Type.Literal('member.added'), conversationId: Id, member: Member, by: Id });
export const MemberUpdatedEvent = Obj({ type: Type.Literal('member.updated'), conversationId: Id, member: Member, by: Id });
export const MemberRemovedEvent = Obj({ type: Type.Literal('member.removed'), conversationId: Id, userId: Id, by: Id });
export const ReadEvent = Obj({ type: Type.Literal('read'), conversationId: Id, userId: Id, seq: Type.Integer({ minimum: 0 }) });
export const TypingEvent = Obj({ type: Type.Literal('typing'), conversationId: Id, userId: Id });
export const PresenceEvent = Obj({ type: Type.Literal('presence'), userId: Id, online: Type.Boolean(), lastSeenAt: Type.Union([Timestamp, Type.Null()]) });
export const ServerEvent = Type.Union([
  MessageCreatedEvent, MessageUpdatedEvent, MessageDeletedEvent, ConversationUpdatedEvent,
  MemberAddedEvent, MemberUpdatedEvent, MemberRemovedEvent, ReadEvent, TypingEvent, PresenceEvent,
  DeviceAddedEvent, DeviceRevokedEvent, KeyPackagesLowEvent, MlsWelcomeEvent,
]);
export type ServerEvent = Static<typeof ServerEvent>;
export type ServerEventType = ServerEvent['type'];
/** Events that are stored in the log and replayed on resume; the others are ephemeral. */
export const DURABLE_EVENT_TYPES = [
  'message.created', 'message.updated', 'message.deleted', 'conversation.updated',
  'member.added', 'member.updated', 'member.removed', 'read',
  'device.added', 'device.revoked', 'key_packages.low', 'mls.welcome',
] as const satisfies readonly ServerEventType[];
export type DurableEvent = Extract<ServerEvent, { type: (typeof DURABLE_EVENT_TYPES)[number] }>;
export type EphemeralEvent = Exclude<ServerEvent, DurableEvent>;

// ---- server → client ----
const WireError = Obj({ code: Type.String(), message: Type.String(), requestId: Type.Optional(Type.String()) });
export const ReadyFrame = Obj({ type: Type.Literal('ready'), userId: Id, sessionId: Id, deviceId: Type.Union([Id, Type.Null()]), cursor: Cursor, protocolVersion: Type.Integer(), replayed: Type.Integer({ minimum: 0 }) });
export const AckFrame = Obj({ type: Type.Literal('ack'), reqId: ReqId, message: Message });
export const ErrorFrame = Obj({ type: Type.Literal('error'), reqId: Type.Optional(ReqId), error: WireError });
/** `cursor` is the position after this event; ephemeral events repeat the current one. */
export const EventFrame = Obj({ type: Type.Literal('event'), cursor: Cursor, event: ServerEvent });
export const PongFrame = Obj({ type: Type.Literal('pong') });
/** Sent before the server closes for shutdown: reconnect (any node) with your cursor. */
export const ReconnectFrame = Obj({ type: Type.Literal('reconnect'), afterMs: Type.Integer({ minimum: 0 }) });
export const ServerFrame = Type.Union([ReadyFrame, AckFrame, ErrorFrame, EventFrame, PongFrame, ReconnectFrame]);
export type ServerFrame = Static<typeof ServerFrame>;
export type EventFrame = Static<typeof EventFrame>;

/** Compiled validators, shared by server (edge validation) and SDK. */
export const ClientFrameValidator = Compile(ClientFrame);
export const ServerFrameValidator = Compile(ServerFrame);
