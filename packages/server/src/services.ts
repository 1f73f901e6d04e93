/**
 * The contracts between modules. A module calls another only through these
 * interfaces (DESIGN.md: "through their service's exported functions"), so
 * each can be read, tested and replaced on its own.
 */
import type {
  Content, Conversation, EphemeralEvent, Me, Message, Presence, PublicUser, Role, SendMessageBody,
} from '@secureconnect/protocol';

/** Who is calling: set on the request by the auth hook and on a socket after its auth frame. */
export interface AuthContext {
  userId: string;
  sessionId: string;
}

export interface AuthService {
  /**
   * Verifies an access token (EdDSA, known kid, not expired) and that its
   * session is still live. A revoked session fails within 1 s on every node.
   * Throws AppError('invalid_token').
   */
  verifyAccessToken(token: string): Promise<AuthContext>;
  /** Called when a session is revoked anywhere in the cluster (bus), e.g. to close its sockets. */
  onSessionRevoked(listener: (sessionId: string, userId: string) => void): () => void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface UsersService {
  getMe(auth: AuthContext): Promise<Me>;
  /** Public profiles for the ids that exist; never includes email. */
  getPublicMany(ids: readonly string[]): Promise<Map<string, PublicUser>>;
  exists(userId: string): Promise<boolean>;
  setLastSeen(userId: string, at: number): Promise<void>;
  lastSeenMany(ids: readonly string[]): Promise<Map<string, number | null>>;
}

export interface MemberInfo {
  userId: string;
  role: Role;
  readSeq: number;
}

export interface ConversationsService {
  /** The caller's membership, or AppError('not_found') (non-members learn nothing). */
  requireMember(auth: AuthContext, conversationId: string): Promise<MemberInfo>;
  /** Current member ids (for fan-out). No access check: internal use only. */
  memberIds(conversationId: string): Promise<string[]>;
  /** Users who share at least one conversation with `userId` (presence audience). */
  peersOf(userId: string): Promise<string[]>;
  get(auth: AuthContext, conversationId: string): Promise<Conversation>;
}

export interface MessagesService {
  /** Idempotent by (conversation, sender, clientMsgId): a retry returns the original with created=false. */
  send(auth: AuthContext, conversationId: string, body: SendMessageBody): Promise<{ message: Message; created: boolean }>;
  edit(auth: AuthContext, conversationId: string, messageId: string, content: Content): Promise<Message>;
  remove(auth: AuthContext, conversationId: string, messageId: string): Promise<Message>;
  markRead(auth: AuthContext, conversationId: string, seq: number): Promise<void>;
  typing(auth: AuthContext, conversationId: string): Promise<void>;
  /** Flushes pending writes (group commit) and refuses new ones. */
  stop(): Promise<void>;
}

export interface PresenceService {
  /** A socket of `userId` opened on this node. */
  connected(userId: string, connId: string): Promise<void>;
  disconnected(userId: string, connId: string): Promise<void>;
  /** Presence of users the caller shares a conversation with; others are not_found. */
  get(auth: AuthContext, userIds: readonly string[]): Promise<Presence[]>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Bus channel for events that are not stored (typing, presence). */
export const EPHEMERAL_CHANNEL = 'ephemeral';
export interface EphemeralMessage {
  userIds: string[];
  event: EphemeralEvent;
}

export interface Services {
  auth: AuthService;
  users: UsersService;
  conversations: ConversationsService;
  messages: MessagesService;
  presence: PresenceService;
}
