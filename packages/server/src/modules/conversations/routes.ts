import type { FastifyPluginAsync } from 'fastify';
import {
  AddMemberBody, Conversation, ConversationPage, CreateConversationBody, ErrorResponse, Id, Member, Obj, PageQuery,
  UpdateConversationBody, UpdateMemberBody,
} from '@secureconnect/protocol';
import { Type, type Static } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';

const ConvParams = Obj({ id: Id });
const MemberParams = Obj({ id: Id, userId: Id });
const errors = { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const common = { tags: ['conversations'], security: [{ bearer: [] }] };

/** HTTP edge of the conversations module: validation and status codes only; the rules live in the service. */
export const conversationsRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const conversations = services.conversations;

  app.post<{ Body: Static<typeof CreateConversationBody> }>(
    '/v1/conversations',
    {
      onRequest: requireAuth,
      schema: {
        ...common,
        summary: 'Start a direct conversation (200 with the existing one if the pair has one) or a group owned by the caller',
        body: CreateConversationBody,
        response: { 200: Conversation, 201: Conversation, ...errors },
      },
    },
    async (request, reply) => {
      const { conversation, created } = await conversations.create(caller(request), request.body);
      return reply.status(created ? 201 : 200).send(conversation);
    },
  );

  app.get<{ Querystring: Static<typeof PageQuery> }>(
    '/v1/conversations',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'My conversations, most recent activity first, with last message and unread count', querystring: PageQuery, response: { 200: ConversationPage, ...errors } },
    },
    async (request) => conversations.list(caller(request), request.query),
  );

  app.get<{ Params: Static<typeof ConvParams> }>(
    '/v1/conversations/:id',
    { onRequest: requireAuth, schema: { ...common, summary: 'One conversation; 404 unless the caller is a member', params: ConvParams, response: { 200: Conversation, ...errors } } },
    async (request) => conversations.get(caller(request), request.params.id),
  );

  app.patch<{ Params: Static<typeof ConvParams>; Body: Static<typeof UpdateConversationBody> }>(
    '/v1/conversations/:id',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Rename a group (owners and admins)', params: ConvParams, body: UpdateConversationBody, response: { 200: Conversation, ...errors } },
    },
    async (request) => conversations.update(caller(request), request.params.id, request.body),
  );

  app.post<{ Params: Static<typeof ConvParams>; Body: Static<typeof AddMemberBody> }>(
    '/v1/conversations/:id/members',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Add a member to a group (owners and admins; only owners grant admin or owner)', params: ConvParams, body: AddMemberBody, response: { 201: Member, ...errors } },
    },
    async (request, reply) => {
      const member = await conversations.addMember(caller(request), request.params.id, request.body.userId, request.body.role);
      return reply.status(201).send(member);
    },
  );

  app.patch<{ Params: Static<typeof MemberParams>; Body: Static<typeof UpdateMemberBody> }>(
    '/v1/conversations/:id/members/:userId',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: "Change a member's role (owners only; the last owner cannot be demoted)", params: MemberParams, body: UpdateMemberBody, response: { 200: Member, ...errors } },
    },
    async (request) => conversations.setRole(caller(request), request.params.id, request.params.userId, request.body.role),
  );

  app.delete<{ Params: Static<typeof MemberParams> }>(
    '/v1/conversations/:id/members/:userId',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: 'Remove a member, or leave when userId is the caller', params: MemberParams, response: { 204: Type.Null(), ...errors } },
    },
    async (request, reply) => {
      await conversations.removeMember(caller(request), request.params.id, request.params.userId);
      return reply.status(204).send();
    },
  );
  return Promise.resolve();
};
