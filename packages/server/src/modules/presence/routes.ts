import type { FastifyPluginAsync } from 'fastify';
import { ErrorResponse, PRESENCE_QUERY_MAX, PresenceList, PresenceQuery } from '@secureconnect/protocol';
import type { Static } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';
import { AppError } from '../../infra/errors.js';

export const presenceRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  app.get<{ Querystring: Static<typeof PresenceQuery> }>(
    '/v1/presence',
    {
      onRequest: requireAuth,
      schema: {
        tags: ['presence'],
        summary: 'Online state and last seen of users who share a conversation with the caller; others are omitted',
        security: [{ bearer: [] }],
        querystring: PresenceQuery,
        response: { 200: PresenceList, 400: ErrorResponse, 401: ErrorResponse },
      },
    },
    async (request): Promise<PresenceList> => {
      const ids = request.query.userIds.split(',');
      if (ids.length > PRESENCE_QUERY_MAX) throw new AppError('validation_failed', `At most ${PRESENCE_QUERY_MAX} user ids.`);
      return { items: await services.presence.get(caller(request), ids) };
    },
  );
  return Promise.resolve();
};
