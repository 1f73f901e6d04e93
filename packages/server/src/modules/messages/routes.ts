import type { FastifyPluginAsync } from 'fastify';
import { EditMessageBody, ErrorResponse, HistoryQuery, Id, Message, MessagePage, Obj, ReadBody, SendMessageBody } from '@secureconnect/protocol';
import { Type, type Static } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';

const ConvParams = Obj({ id: Id });
const MessageParams = Obj({ id: Id, messageId: Id });
const errors = { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const common = { tags: ['messages'], security: [{ bearer: [] }] };

/** HTTP edge of the messages module: validation and status codes only; the rules live in the service. */
export const messagesRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const messages = services.messages;

  app.post<{ Params: Static<typeof ConvParams>; Body: Static<typeof SendMessageBody> }>(
    '/v1/conversations/:id/messages',
    {
      onRequest: requireAuth,
      schema: {
        ...common,
        summary: 'Send a message; answered after it is committed. A clientMsgId already used by the caller here returns the original (200)',
        params: ConvParams,
        body: SendMessageBody,
        response: { 200: Message, 201: Message, ...errors, 503: ErrorResponse },
      },
    },
    async (request, reply) => {
      const { message, created } = await messages.send(caller(request), request.params.id, request.body);
      return reply.status(created ? 201 : 200).send(message);
    },
  );

  app.get<{ Params: Static<typeof ConvParams>; Querystring: Static<typeof HistoryQuery> }>(
    '/v1/conversations/:id/messages',
    {
      onRequest: requireAuth,
      schema: {
        ...common,
        summary: 'History by seq, items ascending: the latest page by default, afterSeq pages forward, beforeSeq pages back',
        params: ConvParams,
        querystring: HistoryQuery,
        response: { 200: MessagePage, ...errors },
      },
    },
    async (request) => ({ items: await messages.history(caller(request), request.params.id, request.query) }),
  );

  app.patch<{ Params: Static<typeof MessageParams>; Body: Static<typeof EditMessageBody> }>(
    '/v1/conversations/:id/messages/:messageId',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Edit your own message (same content type)', params: MessageParams, body: EditMessageBody, response: { 200: Message, ...errors } },
    },
    async (request) => messages.edit(caller(request), request.params.id, request.params.messageId, request.body.content),
  );

  app.delete<{ Params: Static<typeof MessageParams> }>(
    '/v1/conversations/:id/messages/:messageId',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Delete your own message; returns the tombstone', params: MessageParams, response: { 200: Message, ...errors } },
    },
    async (request) => messages.remove(caller(request), request.params.id, request.params.messageId),
  );

  app.post<{ Params: Static<typeof ConvParams>; Body: Static<typeof ReadBody> }>(
    '/v1/conversations/:id/read',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Move your read position forward (clamped to the last seq)', params: ConvParams, body: ReadBody, response: { 204: Type.Null(), ...errors } },
    },
    async (request, reply) => {
      await messages.markRead(caller(request), request.params.id, request.body.seq);
      return reply.status(204).send();
    },
  );
  return Promise.resolve();
};
