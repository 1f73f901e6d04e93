import type { Generated } from 'kysely';

/** Timestamps are epoch milliseconds in both engines; the API edge renders ISO 8601. */
export type Millis = number;

export interface UsersTable {
  id: string;
  email: string; // lower-cased
  username: string; // as typed
  username_lower: string;
  display_name: string;
  avatar_url: string | null;
  status_text: string | null;
  password_hash: string;
  created_at: Millis;
  updated_at: Millis;
  last_seen_at: Millis | null;
  email_verified_at: Generated<Millis | null>;
  locale: Generated<string>;
}

export interface SessionsTable {
  id: string;
  user_id: string;
  device: string | null;
  user_agent: string | null;
  ip: string | null;
  created_at: Millis;
  last_seen_at: Millis;
  expires_at: Millis;
  revoked_at: Millis | null;
  revoked_reason: string | null;
  /** The device this session speaks for (set by device registration or login with deviceId). */
  device_id: string | null;
}

/** Every refresh token ever issued for a session, stored as SHA-256; a used one presented again means theft. */
export interface RefreshTokensTable {
  token_hash: string;
  session_id: string;
  created_at: Millis;
  expires_at: Millis;
  used_at: Millis | null;
}

export interface ConversationsTable {
  id: string;
  type: 'direct' | 'group';
  title: string | null;
  encryption: 'none' | 'mls';
  /** "<smallerUserId>:<largerUserId>" for direct conversations, so the pair is unique. */
  direct_key: string | null;
  created_by: string;
  created_at: Millis;
  updated_at: Millis;
  last_seq: number;
}

export interface MembersTable {
  conversation_id: string;
  user_id: string;
  role: 'owner' | 'admin' | 'member';
  joined_at: Millis;
  read_seq: number;
}

export interface MessagesTable {
  id: string;
  conversation_id: string;
  seq: number;
  sender_id: string;
  client_msg_id: string;
  content_type: 'text' | 'encrypted' | 'deleted' | 'mls-commit';
  /** Text, base64 ciphertext the server never reads, or for mls-commit `<epoch>:<base64 commit>`; null once deleted. */
  body: string | null;
  created_at: Millis;
  edited_at: Millis | null;
  deleted_at: Millis | null;
}

/** The durable event log: the source of live fan-out and of resume. */
export interface EventsTable {
  id: Generated<number>;
  conversation_id: string | null;
  /** A user who must receive this event even if not (or no longer) a member. */
  user_id: string | null;
  /** Only this device's sockets receive it (Welcome, key package stock). */
  device_id: string | null;
  type: string;
  payload: string;
  created_at: Millis;
}

export interface DevicesTable {
  id: string;
  user_id: string;
  name: string;
  /** base64 MLS signature public key; the only key a leaf of this device may carry. */
  signature_key: string;
  created_at: Millis;
  last_seen_at: Millis | null;
  revoked_at: Millis | null;
}

export interface KeyPackagesTable {
  /** base64 KeyPackageRef: what a Welcome names its recipients by. */
  ref: string;
  device_id: string;
  user_id: string;
  cipher_suite: number;
  /** 1 for the last-resort package: handed out when the stock is empty, never consumed. */
  last_resort: number;
  /** base64 MLSMessage(KeyPackage). */
  data: string;
  created_at: Millis;
  expires_at: Millis;
}

export interface MlsGroupsTable {
  conversation_id: string;
  cipher_suite: number;
  epoch: number;
  /** base64 MLSMessage(GroupInfo) of `epoch`, with the ratchet_tree extension. */
  group_info: string;
  /** 1 while the tree holds a removed member's or a revoked device's leaf ([DS6]). */
  pending_removal: number;
  updated_at: Millis;
}

/** Who holds each leaf of an MLS group at the current epoch, derived from the GroupInfo's tree. */
export interface MlsLeavesTable {
  conversation_id: string;
  leaf_index: number;
  user_id: string;
  device_id: string;
}

export interface MetaTable {
  key: string;
  value: string;
}

export interface DB {
  users: UsersTable;
  sessions: SessionsTable;
  refresh_tokens: RefreshTokensTable;
  conversations: ConversationsTable;
  members: MembersTable;
  messages: MessagesTable;
  events: EventsTable;
  devices: DevicesTable;
  key_packages: KeyPackagesTable;
  mls_groups: MlsGroupsTable;
  mls_leaves: MlsLeavesTable;
  meta: MetaTable;
  account_tokens: AccountTokensTable;
  mail_outbox: MailOutboxTable;
  mfa_totp: MfaTotpTable;
  mfa_recovery_codes: MfaRecoveryCodesTable;
  mfa_challenges: MfaChallengesTable;
  mfa_reauth: MfaReauthTable;
}

export interface AccountTokensTable {
  token_hash: string;
  user_id: string;
  purpose: 'verify' | 'reset';
  created_at: Millis;
  expires_at: Millis;
  used_at: Millis | null;
}

export type MailStatus = 'pending' | 'sending' | 'sent' | 'dead';

export interface MailOutboxTable {
  id: string;
  to_addr: string;
  template: string;
  locale: string;
  subject: string;
  text_body: string;
  html_body: string;
  status: MailStatus;
  attempts: number;
  next_attempt_at: Millis;
  locked_until: Millis | null;
  last_error: string | null;
  created_at: Millis;
  sent_at: Millis | null;
}

export interface MfaTotpTable {
  user_id: string;
  /** base64 of iv (12) | ciphertext | tag (16), AES-256-GCM under MFA_ENCRYPTION_KEY. */
  secret_enc: string;
  created_at: Millis;
  enabled_at: Millis | null;
  last_step: number | null;
}

export interface MfaRecoveryCodesTable {
  code_hash: string;
  user_id: string;
  created_at: Millis;
  used_at: Millis | null;
}

export interface MfaChallengesTable {
  token_hash: string;
  user_id: string;
  device: string | null;
  created_at: Millis;
  expires_at: Millis;
  used_at: Millis | null;
}

export interface MfaReauthTable {
  session_id: string;
  user_id: string;
  until: Millis;
}
