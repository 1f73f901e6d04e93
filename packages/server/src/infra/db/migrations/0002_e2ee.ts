import { sql, type Kysely } from 'kysely';
import type { Dialect } from '../index.js';

/** Key directory (devices, key packages) and the MLS delivery service's state. */
export async function up(db: Kysely<unknown>, dialect: Dialect): Promise<void> {
  const big = dialect === 'postgres' ? 'bigint' : 'integer';

  await db.schema
    .createTable('devices')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('signature_key', 'text', (c) => c.notNull().unique())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('last_seen_at', big)
    .addColumn('revoked_at', big)
    .execute();
  await db.schema.createIndex('devices_user_idx').on('devices').columns(['user_id', 'revoked_at']).execute();

  // A session speaks for at most one device; events may address one device only.
  await db.schema.alterTable('sessions').addColumn('device_id', 'text').execute();
  await db.schema.createIndex('sessions_device_idx').on('sessions').column('device_id').execute();
  await db.schema.alterTable('events').addColumn('device_id', 'text').execute();

  await db.schema
    .createTable('key_packages')
    .addColumn('ref', 'text', (c) => c.primaryKey()) // base64 KeyPackageRef (RFC 9420 §5.2)
    .addColumn('device_id', 'text', (c) => c.notNull().references('devices.id').onDelete('cascade'))
    .addColumn('user_id', 'text', (c) => c.notNull())
    .addColumn('cipher_suite', 'integer', (c) => c.notNull())
    .addColumn('last_resort', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('data', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('expires_at', big, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('key_packages_claim_idx').on('key_packages').columns(['device_id', 'cipher_suite', 'last_resort', 'created_at']).execute();
  // At most one last-resort package per device and suite, also when two uploads race ([K2]).
  await db.schema.createIndex('key_packages_last_resort_idx').on('key_packages').columns(['device_id', 'cipher_suite']).unique().where(sql.ref('last_resort'), '=', 1).execute();

  await db.schema
    .createTable('mls_groups')
    .addColumn('conversation_id', 'text', (c) => c.primaryKey().references('conversations.id').onDelete('cascade'))
    .addColumn('cipher_suite', 'integer', (c) => c.notNull())
    .addColumn('epoch', big, (c) => c.notNull())
    .addColumn('group_info', 'text', (c) => c.notNull())
    // 1 while the tree holds a device of a removed member or a revoked device: sends wait for the removing commit ([DS6]).
    .addColumn('pending_removal', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('updated_at', big, (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('mls_leaves')
    .addColumn('conversation_id', 'text', (c) => c.notNull().references('conversations.id').onDelete('cascade'))
    .addColumn('leaf_index', 'integer', (c) => c.notNull())
    .addColumn('user_id', 'text', (c) => c.notNull())
    .addColumn('device_id', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('mls_leaves_pk', ['conversation_id', 'leaf_index'])
    .execute();
  await db.schema.createIndex('mls_leaves_device_idx').on('mls_leaves').column('device_id').execute();
  await db.schema.createIndex('mls_leaves_user_idx').on('mls_leaves').columns(['user_id', 'conversation_id']).execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const t of ['mls_leaves', 'mls_groups', 'key_packages']) await db.schema.dropTable(t).ifExists().execute();
  await db.schema.dropIndex('sessions_device_idx').ifExists().execute();
  await db.schema.alterTable('events').dropColumn('device_id').execute();
  await db.schema.alterTable('sessions').dropColumn('device_id').execute();
  await db.schema.dropTable('devices').ifExists().execute();
}
