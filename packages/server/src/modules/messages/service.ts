import { LIMITS, type Content, type EphemeralEvent, type Message } from '@secureconnect/protocol';
import type { Transaction } from 'kysely';
import { RateLimiterRes } from 'rate-limiter-flexible';
import { uuidv7 } from 'uuidv7';
import type { AppContext } from '../../context.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError, badRequest, forbidden, notFound } from '../../infra/errors.js';
import { EPHEMERAL_CHANNEL, type AuthContext, type ContentCheck, type ConversationsService, type EphemeralMessage, type MessagesService } from '../../services.js';
import { SendBatcher } from './batcher.js';
import { commitBody, toMessage, type MessageRow } from './model.js';
import { MessagesStore } from './store.js';

/** A typing signal per user and conversation at most this often; the rest are dropped ([M7]). */
const TYPING_INTERVAL_SEC = 2;
/** A commit's idempotency key is `mls:<epoch>` ([DS3]); sends may not take one. */
const COMMIT_ID_PREFIX = 'mls:';

export interface MessagesServiceImpl extends MessagesService {
  readonly batcher: SendBatcher;
}

/**
 * Bad input stays a 400 on both engines: PostgreSQL text cannot hold NUL, and
 * a ciphertext must at least be well-formed base64 (its length a multiple of
 * 4; the schema checks the alphabet). Ciphertext is otherwise never parsed.
 */
function checkContent(content: Content): void {
  if (content.type === 'text') {
    if (content.text.includes('\u0000')) throw badRequest('text must not contain NUL characters.');
  } else if (content.ciphertext.length % 4 !== 0) {
    throw badRequest('ciphertext must be base64.');
  }
}

export function createMessagesService(ctx: AppContext, deps: { conversations: ConversationsService }): MessagesServiceImpl {
  const store = new MessagesStore(ctx.database);
  const batcher = new SendBatcher(store, ctx.events, ctx.log, (trx, conversationId, userIds) => deps.conversations.membersAmong(trx, conversationId, userIds));
  const typingLimiter = ctx.limiters.create({ name: 'typing', points: 1, durationSec: TYPING_INTERVAL_SEC });
  const { events } = ctx;
  let contentCheck: ContentCheck | undefined;

  /** Loads a message of this conversation that the caller sent and may still change ([M4]). */
  async function ownMessage(auth: AuthContext, conversationId: string, messageId: string, trx: Transaction<DB>): Promise<MessageRow> {
    const row = await store.byId(conversationId, messageId, trx);
    if (!row) throw notFound('Message not found.');
    if (row.sender_id !== auth.userId) throw forbidden('Only the sender may change a message.');
    if (row.deleted_at !== null) throw new AppError('conflict', 'The message was deleted.');
    // Members replay commits in seq order to reach the group's state: the log of commits is immutable ([DS3]).
    if (row.content_type === 'mls-commit') throw forbidden('An MLS commit cannot be edited or deleted.');
    return row;
  }

  /**
   * The conversation's content rule ([DS7]). A retry of a send that was
   * already stored answers with the original ([M1]) even when the content
   * would no longer pass (its epoch has aged out meanwhile); the lookup costs
   * nothing on the accepted path.
   */
  async function checkSendable(auth: AuthContext, conversationId: string, clientMsgId: string, content: Content) {
    if (!contentCheck) return undefined;
    try {
      await contentCheck(auth, conversationId, content);
      return undefined;
    } catch (err) {
      const [stored] = await store.findByClientKeys([{ conversationId, senderId: auth.userId, clientMsgId }]);
      if (stored) return { message: toMessage(stored), created: false };
      throw err;
    }
  }

  return {
    batcher,

    async send(auth, conversationId, body) {
      await deps.conversations.requireMember(auth, conversationId);
      checkContent(body.content);
      if (body.clientMsgId.startsWith(COMMIT_ID_PREFIX)) throw badRequest(`clientMsgIds starting with ${COMMIT_ID_PREFIX} are reserved for MLS commits.`);
      const retry = await checkSendable(auth, conversationId, body.clientMsgId, body.content);
      if (retry) return retry;
      return batcher.submit({ conversationId, senderId: auth.userId, clientMsgId: body.clientMsgId, content: body.content });
    },

    async edit(auth, conversationId, messageId, content): Promise<Message> {
      await deps.conversations.requireMember(auth, conversationId);
      checkContent(content);
      await contentCheck?.(auth, conversationId, content);
      const message = await store.tx(async (trx) => {
        const row = await ownMessage(auth, conversationId, messageId, trx);
        if (row.content_type !== content.type) throw badRequest(`A ${row.content_type} message can only be edited with ${row.content_type} content.`);
        const patch = { content_type: content.type, body: content.type === 'text' ? content.text : content.ciphertext, edited_at: Date.now(), deleted_at: null };
        await store.update(trx, messageId, patch);
        const m = toMessage({ ...row, ...patch });
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'message.updated', message: m } }]);
        return m;
      });
      events.notify();
      return message;
    },

    async remove(auth, conversationId, messageId): Promise<Message> {
      await deps.conversations.requireMember(auth, conversationId);
      const message = await store.tx(async (trx) => {
        const row = await ownMessage(auth, conversationId, messageId, trx);
        // A tombstone keeps the seq (history has no holes) but not the content.
        const patch = { content_type: 'deleted' as const, body: null, edited_at: row.edited_at, deleted_at: Date.now() };
        await store.update(trx, messageId, patch);
        const m = toMessage({ ...row, ...patch });
        await events.append(trx, [{ conversationId, userId: null, event: { type: 'message.deleted', message: m } }]);
        return m;
      });
      events.notify();
      return message;
    },

    async markRead(auth, conversationId, seq) {
      // The read position is membership state: the conversations module owns it (and checks access).
      await deps.conversations.markRead(auth, conversationId, seq);
    },

    async typing(auth, conversationId) {
      await deps.conversations.requireMember(auth, conversationId);
      try {
        await typingLimiter.consume(`${auth.userId}:${conversationId}`);
      } catch (err) {
        if (err instanceof RateLimiterRes) return;
        throw err;
      }
      const userIds = (await deps.conversations.memberIds(conversationId)).filter((id) => id !== auth.userId);
      if (userIds.length === 0) return;
      const event: EphemeralEvent = { type: 'typing', conversationId, userId: auth.userId };
      const msg: EphemeralMessage = { userIds, event };
      await ctx.bus.publish(EPHEMERAL_CHANNEL, msg);
    },

    async history(auth, conversationId, query) {
      await deps.conversations.requireMember(auth, conversationId);
      const rows = await store.history(conversationId, { ...query, limit: query.limit ?? LIMITS.pageDefault });
      return rows.map(toMessage);
    },

    stop: () => batcher.stop(),

    setContentCheck(check) {
      contentCheck = check;
    },

    async appendCommit(trx, item, underLock): Promise<Message> {
      // Internal: the delivery service checked access. The seq is allocated first: its UPDATE takes the row lock.
      const now = Date.now();
      const seq = await store.allocate(trx, item.conversationId, 1, now);
      if (seq === undefined) throw notFound('Conversation not found.');
      const more = await underLock();
      const row: MessageRow = {
        id: uuidv7(),
        conversation_id: item.conversationId,
        seq,
        sender_id: item.senderId,
        client_msg_id: `${COMMIT_ID_PREFIX}${item.epoch}`,
        content_type: 'mls-commit',
        body: commitBody(item.epoch, item.commit),
        created_at: now,
        edited_at: null,
        deleted_at: null,
      };
      await store.insert(trx, [row]);
      const message = toMessage(row);
      await events.append(trx, [{ conversationId: item.conversationId, userId: null, event: { type: 'message.created', message } }, ...more]);
      return message;
    },

    async findCommit(conversationId, senderId, epoch) {
      const [row] = await store.findByClientKeys([{ conversationId, senderId, clientMsgId: `${COMMIT_ID_PREFIX}${epoch}` }]);
      return row && row.content_type === 'mls-commit' ? toMessage(row) : undefined;
    },
  };
}
