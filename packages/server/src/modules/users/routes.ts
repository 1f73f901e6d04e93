import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { ErrorResponse, Id, Me, Obj, PublicUser, UpdateMeBody, UserSearchQuery, UserSearchResult } from '@secureconnect/protocol';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';

const tags = ['users'];
const security = [{ bearer: [] }];
const errors = { 400: ErrorResponse, 401: ErrorResponse };

// Registers routes synchronously; FastifyPluginAsync only because app.ts awaits every module alike.
export const usersRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const users = services.users;

  r.get('/v1/me', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Your own profile', response: { 200: Me, ...errors } },
  }, async (req) => users.getMe(caller(req)));

  r.patch('/v1/me', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Change your display name, avatar URL or status text', body: UpdateMeBody, response: { 200: Me, ...errors } },
  }, async (req) => users.updateMe(caller(req), req.body));

  r.get('/v1/users/:id', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'A public profile (never the email)', params: Obj({ id: Id }), response: { 200: PublicUser, 404: ErrorResponse, ...errors } },
  }, async (req) => users.getPublic(caller(req), req.params.id));

  r.get('/v1/users', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Search users by username prefix', querystring: UserSearchQuery, response: { 200: UserSearchResult, 429: ErrorResponse, ...errors } },
  }, async (req) => users.search(caller(req), req.query));
  return Promise.resolve();
};
