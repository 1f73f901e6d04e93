import type { Message, MlsCommitContent } from '@secureconnect/protocol';
import type { MessagesTable } from '../../infra/db/schema.js';

export type MessageRow = MessagesTable;

const iso = (ms: number) => new Date(Number(ms)).toISOString();

/** An MLS commit is stored as `<epoch>:<base64 commit>` ([DS3]). */
export function commitBody(epoch: number, commit: string): string {
  return `${epoch}:${commit}`;
}

function commitContent(body: string): MlsCommitContent {
  const colon = body.indexOf(':');
  return { type: 'mls-commit', epoch: Number(body.slice(0, colon)), commit: body.slice(colon + 1) };
}

/**
 * Row to wire shape. The body is passed through untouched: for encrypted
 * content it is ciphertext the server neither parses nor logs.
 */
export function toMessage(r: MessageRow): Message {
  const content: Message['content'] =
    r.content_type === 'deleted' || r.body === null
      ? { type: 'deleted' }
      : r.content_type === 'encrypted'
        ? { type: 'encrypted', ciphertext: r.body }
        : r.content_type === 'mls-commit'
          ? commitContent(r.body)
          : { type: 'text', text: r.body };
  return {
    id: r.id,
    conversationId: r.conversation_id,
    seq: Number(r.seq),
    senderId: r.sender_id,
    clientMsgId: r.client_msg_id,
    content,
    createdAt: iso(r.created_at),
    editedAt: r.edited_at === null ? null : iso(r.edited_at),
    deletedAt: r.deleted_at === null ? null : iso(r.deleted_at),
  };
}
