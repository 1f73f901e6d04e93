import type { FastifyPluginAsync } from 'fastify';
import type { ModuleOptions } from '../../http/module.js';

/**
 * GET /dev/outbox: the development outbox, registered only when
 * NODE_ENV=development (404 otherwise, as for any unknown route). No auth:
 * development binds to 127.0.0.1 by default and production never has it.
 */
export const mailRoutes: FastifyPluginAsync<ModuleOptions> = (app, { ctx, services }) => {
  if (ctx.config.nodeEnv === 'development') {
    app.get('/dev/outbox', { schema: { hide: true } }, async () => ({ items: await services.mail.devOutbox() }));
  }
  return Promise.resolve();
};
