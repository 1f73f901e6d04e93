import { sql, type Kysely } from 'kysely';
import type { Dialect } from '../index.js';

/** Accounts, sessions, conversations, messages and the event log. */
export async function up(db: Kysely<unknown>, dialect: Dialect): Promise<void> {
  const big = dialect === 'postgres' ? 'bigint' : 'integer';
  await db.schema
    .createTable('users')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('email', 'text', (c) => c.notNull().unique())
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('username_lower', 'text', (c) => c.notNull().unique())
    .addColumn('display_name', 'text', (c) => c.notNull())
    .addColumn('avatar_url', 'text')
    .addColumn('status_text', 'text')
    .addColumn('password_hash', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('updated_at', big, (c) => c.notNull())
    .addColumn('last_seen_at', big)
    .execute();
  // User search is a prefix scan in byte order; PostgreSQL needs a "C"-collated index for it (SQLite's unique index already is).
  if (dialect === 'postgres') await sql`create index users_username_c_idx on users (username_lower collate "C")`.execute(db);

  await db.schema
    .createTable('sessions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
    .addColumn('device', 'text')
    .addColumn('user_agent', 'text')
    .addColumn('ip', 'text')
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('last_seen_at', big, (c) => c.notNull())
    .addColumn('expires_at', big, (c) => c.notNull())
    .addColumn('revoked_at', big)
    .addColumn('revoked_reason', 'text')
    .execute();
  await db.schema.createIndex('sessions_user_idx').on('sessions').columns(['user_id', 'revoked_at']).execute();

  await db.schema
    .createTable('refresh_tokens')
    .addColumn('token_hash', 'text', (c) => c.primaryKey())
    .addColumn('session_id', 'text', (c) => c.notNull().references('sessions.id').onDelete('cascade'))
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('expires_at', big, (c) => c.notNull())
    .addColumn('used_at', big)
    .execute();
  await db.schema.createIndex('refresh_tokens_session_idx').on('refresh_tokens').column('session_id').execute();

  await db.schema
    .createTable('conversations')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('type', 'text', (c) => c.notNull().check(sql`type in ('direct', 'group')`))
    .addColumn('title', 'text')
    .addColumn('encryption', 'text', (c) => c.notNull().defaultTo('none'))
    .addColumn('direct_key', 'text', (c) => c.unique())
    .addColumn('created_by', 'text', (c) => c.notNull().references('users.id'))
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('updated_at', big, (c) => c.notNull())
    .addColumn('last_seq', big, (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema.createIndex('conversations_created_by_idx').on('conversations').column('created_by').execute();

  await db.schema
    .createTable('members')
    .addColumn('conversation_id', 'text', (c) => c.notNull().references('conversations.id').onDelete('cascade'))
    .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
    .addColumn('role', 'text', (c) => c.notNull().check(sql`role in ('owner', 'admin', 'member')`))
    .addColumn('joined_at', big, (c) => c.notNull())
    .addColumn('read_seq', big, (c) => c.notNull().defaultTo(0))
    .addPrimaryKeyConstraint('members_pk', ['conversation_id', 'user_id'])
    .execute();
  await db.schema.createIndex('members_user_idx').on('members').columns(['user_id', 'conversation_id']).execute();

  await db.schema
    .createTable('messages')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('conversation_id', 'text', (c) => c.notNull().references('conversations.id').onDelete('cascade'))
    .addColumn('seq', big, (c) => c.notNull())
    .addColumn('sender_id', 'text', (c) => c.notNull().references('users.id'))
    .addColumn('client_msg_id', 'text', (c) => c.notNull())
    .addColumn('content_type', 'text', (c) => c.notNull())
    .addColumn('body', 'text')
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('edited_at', big)
    .addColumn('deleted_at', big)
    .addUniqueConstraint('messages_conv_seq_uq', ['conversation_id', 'seq'])
    .addUniqueConstraint('messages_client_id_uq', ['conversation_id', 'sender_id', 'client_msg_id'])
    .execute();
  await db.schema.createIndex('messages_sender_idx').on('messages').column('sender_id').execute();

  if (dialect === 'postgres') {
    await sql`create table events (
      id bigint generated always as identity primary key,
      conversation_id text references conversations(id) on delete cascade,
      user_id text references users(id) on delete cascade,
      type text not null,
      payload text not null,
      created_at bigint not null)`.execute(db);
  } else {
    await sql`create table events (
      id integer primary key autoincrement,
      conversation_id text references conversations(id) on delete cascade,
      user_id text references users(id) on delete cascade,
      type text not null,
      payload text not null,
      created_at integer not null)`.execute(db);
  }
  await db.schema.createIndex('events_conversation_idx').on('events').columns(['conversation_id', 'id']).execute();
  await db.schema.createIndex('events_user_idx').on('events').columns(['user_id', 'id']).execute();
  await db.schema.createIndex('events_created_idx').on('events').column('created_at').execute();

  await db.schema
    .createTable('meta')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('value', 'text', (c) => c.notNull())
    .execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const t of ['meta', 'events', 'messages', 'members', 'conversations', 'refresh_tokens', 'sessions', 'users']) {
    await db.schema.dropTable(t).ifExists().execute();
  }
}
