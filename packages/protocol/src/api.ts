import { Type, type Static } from 'typebox';
import { DisplayName, Email, Id, Obj, Password, Timestamp, Username } from './common.js';
import { MlsCommitContent } from './e2ee.js';

// ---- limits shared by server and clients ----
export const LIMITS = {
  textMaxChars: 8_000,
  /** base64 characters of an encrypted payload (48 KiB of ciphertext). */
  ciphertextMaxChars: 65_536,
  clientMsgIdMaxChars: 64,
  titleMaxChars: 128,
  groupMaxMembers: 10_000,
  groupCreateMaxMembers: 256,
  pageMax: 200,
  pageDefault: 50,
} as const;

// ---- users & auth ----
export const PublicUser = Obj({
  id: Id,
  username: Username,
  displayName: DisplayName,
  avatarUrl: Type.Union([Type.String({ maxLength: 2048 }), Type.Null()]),
  statusText: Type.Union([Type.String({ maxLength: 140 }), Type.Null()]),
});
export type PublicUser = Static<typeof PublicUser>;

export const Me = Obj({
  id: Id,
  username: Username,
  displayName: DisplayName,
  email: Email,
  emailVerified: Type.Boolean(),
  avatarUrl: Type.Union([Type.String({ maxLength: 2048 }), Type.Null()]),
  statusText: Type.Union([Type.String({ maxLength: 140 }), Type.Null()]),
  createdAt: Timestamp,
});
export type Me = Static<typeof Me>;

/** A label the client gives its session ("Firefox on laptop"); shown in the session list. */
export const DeviceLabel = Type.String({ minLength: 1, maxLength: 64 });
export const RegisterBody = Obj({ email: Email, username: Username, password: Password, displayName: Type.Optional(DisplayName), device: Type.Optional(DeviceLabel) });
export type RegisterBody = Static<typeof RegisterBody>;
export const LoginBody = Obj({
  login: Type.String({ minLength: 1, maxLength: 254, description: 'email or username' }),
  password: Type.String({ minLength: 1, maxLength: 128 }),
  device: Type.Optional(DeviceLabel),
});
export type LoginBody = Static<typeof LoginBody>;
export const RefreshBody = Obj({ refreshToken: Type.String({ minLength: 16, maxLength: 256 }) });
export type RefreshBody = Static<typeof RefreshBody>;

export const TokenPair = Obj({
  accessToken: Type.String(),
  refreshToken: Type.String(),
  expiresIn: Type.Integer({ description: 'access token lifetime in seconds' }),
});
export type TokenPair = Static<typeof TokenPair>;
export const AuthResult = Obj({
  user: Obj({ id: Id, username: Username, displayName: DisplayName }),
  accessToken: Type.String(),
  refreshToken: Type.String(),
  expiresIn: Type.Integer(),
});
export type AuthResult = Static<typeof AuthResult>;

export const Session = Obj({
  id: Id,
  device: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  createdAt: Timestamp,
  lastSeenAt: Timestamp,
  current: Type.Boolean(),
});
export type Session = Static<typeof Session>;
export const SessionList = Obj({ items: Type.Array(Session) });
export type SessionList = Static<typeof SessionList>;

/** Public half of the token signing keys (RFC 7517); never carries `d`. */
export const Jwks = Obj({
  keys: Type.Array(Obj({ kty: Type.String(), crv: Type.String(), x: Type.String(), kid: Type.String(), alg: Type.String(), use: Type.String() })),
});
export type Jwks = Static<typeof Jwks>;

export const UpdateMeBody = Obj({
  displayName: Type.Optional(DisplayName),
  avatarUrl: Type.Optional(Type.Union([Type.String({ maxLength: 2048, pattern: '^https://' }), Type.Null()])),
  statusText: Type.Optional(Type.Union([Type.String({ maxLength: 140 }), Type.Null()])),
});
export type UpdateMeBody = Static<typeof UpdateMeBody>;

export const UserSearchQuery = Obj({
  query: Type.String({ minLength: 1, maxLength: 32 }),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 50 })),
  cursor: Type.Optional(Type.String({ maxLength: 64 })),
});
export type UserSearchQuery = Static<typeof UserSearchQuery>;
export const UserSearchResult = Obj({ items: Type.Array(PublicUser), nextCursor: Type.Optional(Type.String()) });
export type UserSearchResult = Static<typeof UserSearchResult>;

// ---- conversations ----
export const Role = Type.Union([Type.Literal('owner'), Type.Literal('admin'), Type.Literal('member')]);
export type Role = Static<typeof Role>;
export const Member = Obj({ userId: Id, role: Role, joinedAt: Timestamp });
export type Member = Static<typeof Member>;

export const TextContent = Obj({ type: Type.Literal('text'), text: Type.String({ minLength: 1, maxLength: LIMITS.textMaxChars }) });
export const EncryptedContent = Obj({
  type: Type.Literal('encrypted'),
  ciphertext: Type.String({ minLength: 4, maxLength: LIMITS.ciphertextMaxChars, pattern: '^[A-Za-z0-9+/]+={0,2}$' }),
});
export const Content = Type.Union([TextContent, EncryptedContent]);
export type Content = Static<typeof Content>;
/** What a deleted message shows in place of its content. */
export const DeletedContent = Obj({ type: Type.Literal('deleted') });

export const Message = Obj({
  id: Id,
  conversationId: Id,
  seq: Type.Integer({ minimum: 1 }),
  senderId: Id,
  clientMsgId: Type.String(),
  content: Type.Union([TextContent, EncryptedContent, DeletedContent, MlsCommitContent]),
  createdAt: Timestamp,
  editedAt: Type.Union([Timestamp, Type.Null()]),
  deletedAt: Type.Union([Timestamp, Type.Null()]),
});
export type Message = Static<typeof Message>;

export const Conversation = Obj({
  id: Id,
  type: Type.Union([Type.Literal('direct'), Type.Literal('group')]),
  title: Type.Union([Type.String(), Type.Null()]),
  encryption: Type.Union([Type.Literal('none'), Type.Literal('mls')]),
  createdAt: Timestamp,
  members: Type.Array(Member),
  lastSeq: Type.Integer({ minimum: 0 }),
  readSeq: Type.Integer({ minimum: 0, description: "the caller's read position" }),
  unreadCount: Type.Integer({ minimum: 0 }),
  lastMessage: Type.Union([Message, Type.Null()]),
});
export type Conversation = Static<typeof Conversation>;

/** `mls`: end-to-end encrypted; the creator then initialises the MLS group ([DS1]). */
export const Encryption = Type.Union([Type.Literal('none'), Type.Literal('mls')]);
export const CreateConversationBody = Type.Union([
  Obj({ type: Type.Literal('direct'), userId: Id, encryption: Type.Optional(Encryption) }),
  Obj({
    type: Type.Literal('group'),
    title: Type.String({ minLength: 1, maxLength: LIMITS.titleMaxChars }),
    memberIds: Type.Array(Id, { maxItems: LIMITS.groupCreateMaxMembers, uniqueItems: true }),
    encryption: Type.Optional(Encryption),
  }),
]);
export type CreateConversationBody = Static<typeof CreateConversationBody>;
export const UpdateConversationBody = Obj({ title: Type.String({ minLength: 1, maxLength: LIMITS.titleMaxChars }) });
export const AddMemberBody = Obj({ userId: Id, role: Type.Optional(Role) });
export const UpdateMemberBody = Obj({ role: Role });

export const ClientMsgId = Type.String({ minLength: 1, maxLength: LIMITS.clientMsgIdMaxChars, pattern: '^[A-Za-z0-9_.:-]+$' });
export const SendMessageBody = Obj({ clientMsgId: ClientMsgId, content: Content });
export type SendMessageBody = Static<typeof SendMessageBody>;
export const EditMessageBody = Obj({ content: Content });
export const ReadBody = Obj({ seq: Type.Integer({ minimum: 0 }) });
export const HistoryQuery = Obj({
  beforeSeq: Type.Optional(Type.Integer({ minimum: 1 })),
  afterSeq: Type.Optional(Type.Integer({ minimum: 0 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: LIMITS.pageMax })),
});
export const PageQuery = Obj({
  cursor: Type.Optional(Type.String({ maxLength: 128 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: LIMITS.pageMax })),
});

/** A page of my conversations, most recent activity first; pass `nextCursor` back as `cursor`. */
export const ConversationPage = Obj({ items: Type.Array(Conversation), nextCursor: Type.Optional(Type.String()) });
export type ConversationPage = Static<typeof ConversationPage>;
/** A page of history, always ascending by seq. */
export const MessagePage = Obj({ items: Type.Array(Message) });
export type MessagePage = Static<typeof MessagePage>;
export type HistoryQuery = Static<typeof HistoryQuery>;
export type PageQuery = Static<typeof PageQuery>;

export const Presence = Obj({ userId: Id, online: Type.Boolean(), lastSeenAt: Type.Union([Timestamp, Type.Null()]) });
export type Presence = Static<typeof Presence>;
export const PRESENCE_QUERY_MAX = 100;
/** `userIds`: comma-separated user ids, at most PRESENCE_QUERY_MAX. */
export const PresenceQuery = Obj({ userIds: Type.String({ minLength: 1, maxLength: PRESENCE_QUERY_MAX * 37, pattern: '^[0-9a-fA-F-]+(,[0-9a-fA-F-]+)*$' }) });
export const PresenceList = Obj({ items: Type.Array(Presence) });
export type PresenceList = Static<typeof PresenceList>;
