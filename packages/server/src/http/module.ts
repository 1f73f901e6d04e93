import type { preHandlerAsyncHookHandler } from 'fastify';
import type { AppContext } from '../context.js';
import type { Services } from '../services.js';

/** Options every module's routes plugin receives. */
export interface ModuleOptions {
  ctx: AppContext;
  services: Services;
  requireAuth: preHandlerAsyncHookHandler;
}
