/**
 * The contracts between modules. A module calls another only through these
 * interfaces (DESIGN.md: "through their service's exported functions"), so
 * each can be read, tested and replaced on its own.
 */
import type {
  AuthResult, LoginResult, MfaChallenge, ClaimKeyPackagesBody, ClaimKeyPackagesResult, Content, Device, KeyPackageStatus, MlsCommitBody, MlsGroupStatus, MlsInitBody,
  RegisterDeviceBody, UploadKeyPackagesBody, Conversation, EphemeralEvent, Jwks, LoginBody, Me, Message, Presence, PublicUser, RegisterBody, Role,
  SendMessageBody, Session, TokenPair, UpdateMeBody, UserSearchQuery, UserSearchResult,
  ConversationPage, CreateConversationBody, HistoryQuery, Member, PageQuery,
} from '@secureconnect/protocol';
import type { Transaction } from 'kysely';
import type { DB } from './infra/db/schema.js';
import type { EventEntry } from './infra/eventlog.js';
import type { AccountService } from './modules/account/service.js';
import type { MailService } from './modules/mail/service.js';
import type { MfaService } from './modules/mfa/service.js';

/** Who is calling: set on the request by the auth hook and on a socket after its auth frame. */
export interface AuthContext {
  userId: string;
  sessionId: string;
  /** The E2EE device this session speaks for, or null before one is registered/bound. */
  deviceId: string | null;
  /** False while the account's email is unverified ([AC3]); absent where no token was verified (internal callers). */
  emailVerified?: boolean;
}

/** Where a request comes from; stored on the session it opens. */
export interface ClientMeta {
  /** Resolved by Fastify with the configured trusted proxies (AF-S6). */
  ip: string;
  userAgent: string | null;
  /** Preferred mail language from Accept-Language ([AC2]); registration stores it on the account. */
  locale?: string;
}

/** A new account, as the account module needs it to send the verification mail ([AC3]). */
export interface NewAccountInfo {
  id: string;
  email: string;
  displayName: string;
  locale: string;
}

/**
 * [MF2] Asked after a correct password: a challenge when the account needs a
 * second factor (no session is opened), null to open the session at once.
 */
export type LoginGate = (userId: string, device: string | null) => Promise<MfaChallenge | null>;

export interface AuthService {
  register(body: RegisterBody, meta: ClientMeta): Promise<AuthResult>;
  /** Tokens, or the 2FA challenge the login gate answers with ([MF2]). */
  login(body: LoginBody, meta: ClientMeta): Promise<LoginResult>;
  /** Installs the second-factor check of login (one gate; the MFA module). */
  setLoginGate(gate: LoginGate): void;
  /** [MF2] Opens a session for a user whose factors the caller has all checked; AppError('invalid_credentials') if the user is gone. */
  openSession(userId: string, device: string | null, meta: ClientMeta): Promise<AuthResult>;
  /** Rotates the refresh token; a used one presented again revokes its session. */
  refresh(refreshToken: string, meta: ClientMeta): Promise<TokenPair>;
  logout(auth: AuthContext): Promise<void>;
  listSessions(auth: AuthContext): Promise<Session[]>;
  /** AppError('not_found') unless the session is the caller's and live. */
  revokeSession(auth: AuthContext, sessionId: string): Promise<void>;
  revokeOtherSessions(auth: AuthContext): Promise<void>;
  /** Public verification keys only. */
  jwks(): Jwks;
  /**
   * Verifies an access token (EdDSA, known kid, not expired) and that its
   * session is still live. A revoked session fails within 1 s on every node.
   * Throws AppError('invalid_token').
   */
  verifyAccessToken(token: string): Promise<AuthContext>;
  /** Called when a session is revoked anywhere in the cluster (bus), e.g. to close its sockets. */
  onSessionRevoked(listener: (sessionId: string, userId: string) => void): () => void;
  /**
   * Binds a live session to a device ([K1]): AppError('conflict') if it is
   * bound to another, idempotent for the same one. Visible on this node at
   * once and on every node within 1 s. With `trx` only the row is written
   * (nothing is announced before commit): call again without it after commit.
   */
  bindDevice(sessionId: string, deviceId: string, trx?: Transaction<DB>): Promise<void>;
  /** Called when a session is bound to a device anywhere in the cluster (bus), e.g. to retarget its sockets. */
  onSessionBound(listener: (sessionId: string, deviceId: string) => void): () => void;
  /** Ends every live session bound to the device, on every node, like revokeSession ([K5]). */
  revokeDeviceSessions(userId: string, deviceId: string): Promise<void>;
  /** Runs inside the registration transaction: work that must commit with the account or not at all ([AC1]). */
  onAccountCreated(hook: (trx: Transaction<DB>, account: NewAccountInfo) => Promise<void>): void;
  /**
   * [AC4]/[AC5] Checks the policy, then in one transaction sets the password,
   * ends the user's sessions (all, or all but `keepSessionId`) and runs
   * `inTrx`; afterwards announces the revocations to every node.
   */
  setPassword(userId: string, newPassword: string, keepSessionId: string | null, inTrx: (trx: Transaction<DB>) => Promise<void>): Promise<void>;
  /** The user's current password, with the login's throttling and lockouts: AppError('invalid_credentials') or 429. */
  checkPassword(userId: string, password: string, meta: ClientMeta): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface UsersService {
  getMe(auth: AuthContext): Promise<Me>;
  updateMe(auth: AuthContext, body: UpdateMeBody): Promise<Me>;
  /** AppError('not_found') for an unknown id. */
  getPublic(auth: AuthContext, userId: string): Promise<PublicUser>;
  /** Username prefix search, keyset-paginated, rate limited per caller. */
  search(auth: AuthContext, query: UserSearchQuery): Promise<UserSearchResult>;
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
  /**
   * Which of `userIds` are members right now, read inside the caller's
   * transaction. The caller must already hold the conversation row's lock
   * (e.g. from allocating a seq), which every membership change also takes, so
   * the answer stays true until that transaction commits. Internal use only.
   */
  membersAmong(trx: Transaction<DB>, conversationId: string, userIds: readonly string[]): Promise<Set<string>>;
  /** Like membersAmong, with each member's role (same locking rule). Internal use only. */
  rolesAmong(trx: Transaction<DB>, conversationId: string, userIds: readonly string[]): Promise<Map<string, Role>>;
  /** A conversation's encryption ('none' | 'mls'), undefined when it does not exist. It never changes. No access check: internal use only. */
  encryptionOf(conversationId: string): Promise<'none' | 'mls' | undefined>;
  /** Current member ids (for fan-out). No access check: internal use only. */
  memberIds(conversationId: string): Promise<string[]>;
  /** Users who share at least one conversation with `userId` (presence audience). */
  peersOf(userId: string): Promise<string[]>;
  get(auth: AuthContext, conversationId: string): Promise<Conversation>;
  /** Direct (idempotent per pair: created=false returns the existing one) or group with the caller as owner. */
  create(auth: AuthContext, body: CreateConversationBody): Promise<{ conversation: Conversation; created: boolean }>;
  /** The caller's conversations by last activity, keyset-paginated, in a constant number of queries ([C4]). */
  list(auth: AuthContext, query: PageQuery): Promise<ConversationPage>;
  /** Group title; owners and admins. */
  update(auth: AuthContext, conversationId: string, body: { title: string }): Promise<Conversation>;
  addMember(auth: AuthContext, conversationId: string, userId: string, role?: Role): Promise<Member>;
  setRole(auth: AuthContext, conversationId: string, userId: string, role: Role): Promise<Member>;
  /** Moves the caller's read position forward, clamped to lastSeq, and emits `read` ([M5]). */
  markRead(auth: AuthContext, conversationId: string, seq: number): Promise<void>;
  /** Removes another member, or leaves when `userId` is the caller. */
  removeMember(auth: AuthContext, conversationId: string, userId: string): Promise<void>;
  /** Runs inside the transaction that removes a member (the delivery service marks the group, [DS6]). */
  onMemberRemoved(hook: (trx: Transaction<DB>, conversationId: string, userId: string) => Promise<void>): void;
}

export interface MessagesService {
  /** Idempotent by (conversation, sender, clientMsgId): a retry returns the original with created=false. */
  send(auth: AuthContext, conversationId: string, body: SendMessageBody): Promise<{ message: Message; created: boolean }>;
  edit(auth: AuthContext, conversationId: string, messageId: string, content: Content): Promise<Message>;
  remove(auth: AuthContext, conversationId: string, messageId: string): Promise<Message>;
  markRead(auth: AuthContext, conversationId: string, seq: number): Promise<void>;
  typing(auth: AuthContext, conversationId: string): Promise<void>;
  /** Items ascending by seq ([M6]): latest page by default, `afterSeq` pages forward, `beforeSeq` back. */
  history(auth: AuthContext, conversationId: string, query: HistoryQuery): Promise<Message[]>;
  /** Flushes pending writes (group commit) and refuses new ones. */
  stop(): Promise<void>;
  /**
   * Installs the check every send and edit runs after the membership check and
   * before anything is written (the delivery service's [DS7]); it throws an
   * AppError to refuse the content.
   */
  setContentCheck(check: ContentCheck): void;
  /**
   * Sequences an accepted MLS commit in the caller's transaction ([DS3]):
   * allocates its seq first (taking the conversation row lock that membership
   * changes and sends take), runs `underLock` (the caller's re-checks and
   * writes; it returns further events), then inserts the message
   * (content `mls-commit`, clientMsgId `mls:<epoch>`) and appends
   * `message.created` and those events last. The caller notifies after commit.
   */
  appendCommit(trx: Transaction<DB>, commit: CommitItem, underLock: () => Promise<EventEntry[]>): Promise<Message>;
  /** The commit `senderId` had accepted for `epoch`, if any (an idempotent retry answers with it). Internal use only. */
  findCommit(conversationId: string, senderId: string, epoch: number): Promise<Message | undefined>;
}

/** Refuses content a conversation does not take (throws AppError). */
export type ContentCheck = (auth: AuthContext, conversationId: string, content: Content) => Promise<void>;

export interface CommitItem {
  conversationId: string;
  senderId: string;
  /** Epoch the commit is based on. */
  epoch: number;
  /** base64 MLSMessage(PublicMessage). */
  commit: string;
}

export interface PresenceService {
  /** A socket of `userId` opened on this node. */
  connected(userId: string, connId: string): Promise<void>;
  disconnected(userId: string, connId: string): Promise<void>;
  /** Presence of users the caller shares a conversation with (and the caller); others are omitted ([P1]). */
  get(auth: AuthContext, userIds: readonly string[]): Promise<Presence[]>;
  /** Live connections of `userId` on every node (the gateway's per-user limit). */
  connectionCount(userId: string): Promise<number>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface DevicesService {
  /** Registers a device for the caller and binds the calling session to it (AppError('conflict') if already bound). */
  register(auth: AuthContext, body: RegisterDeviceBody): Promise<Device>;
  /**
   * Binds the calling session to an existing device of the caller. `signature`
   * proves possession of the device's key: Ed25519 over `sc-bind:<sessionId>`.
   */
  bind(auth: AuthContext, deviceId: string, signature: string): Promise<Device>;
  /** Active devices of a user with their public keys. */
  list(auth: AuthContext, userId: string): Promise<Device[]>;
  /** Revokes one of the caller's devices: its sessions end, its key packages go, its groups are told ([K5]). */
  revoke(auth: AuthContext, deviceId: string): Promise<void>;
  /** Verifies and stores key packages of the caller's device ([K2]). */
  uploadKeyPackages(auth: AuthContext, body: UploadKeyPackagesBody): Promise<KeyPackageStatus>;
  keyPackageStatus(auth: AuthContext): Promise<KeyPackageStatus>;
  /** One package per active device of each user, never the same one twice ([K3]). */
  claim(auth: AuthContext, body: ClaimKeyPackagesBody): Promise<ClaimKeyPackagesResult>;
  /** Active devices among `deviceIds` with owner and signature key. Internal use (delivery service). */
  activeDevices(deviceIds: readonly string[], trx?: Transaction<DB>): Promise<Map<string, { userId: string; signatureKey: string }>>;
  /** Runs inside the revoking transaction (the delivery service marks the device's groups, [DS6]). */
  onRevoke(hook: (trx: Transaction<DB>, device: { userId: string; deviceId: string }) => Promise<void>): void;
}

export interface MlsService {
  /** Records the group at epoch 0 from the creator's GroupInfo ([DS1]). */
  init(auth: AuthContext, conversationId: string, body: MlsInitBody): Promise<MlsGroupStatus>;
  status(auth: AuthContext, conversationId: string): Promise<MlsGroupStatus>;
  /** Accepts the first commit for the current epoch, sequences it, routes its Welcome ([DS2]–[DS5]). */
  commit(auth: AuthContext, conversationId: string, body: MlsCommitBody): Promise<{ message: Message; epoch: number }>;
  /**
   * Send-path check for a conversation's content: plaintext conversations take
   * text/encrypted as before; MLS ones only a PrivateMessage of this group with
   * application content, and not while removals are pending ([DS6], [DS7]).
   */
  checkContent(auth: AuthContext, conversationId: string, content: Content): Promise<void>;
  /** Called inside the transaction that removes a member or revokes a device: marks affected groups ([DS6]). */
  markPendingRemoval(trx: Transaction<DB>, where: { conversationId: string; userId: string } | { deviceId: string }): Promise<void>;
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
  devices: DevicesService;
  mls: MlsService;
  mail: MailService;
  account: AccountService;
  mfa: MfaService;
}
