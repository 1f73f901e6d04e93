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
  content_type: 'text' | 'encrypted' | 'deleted';
  /** Text, or base64 ciphertext the server never reads; null once deleted. */
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
  type: string;
  payload: string;
  created_at: Millis;
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
  meta: MetaTable;
}
