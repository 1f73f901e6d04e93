import type { onRequestAsyncHookHandler } from 'fastify';
import type { AppContext } from '../context.js';
import type { Services } from '../services.js';

/** Options every module's routes plugin receives. */
export interface ModuleOptions {
  ctx: AppContext;
  services: Services;
  /** Runs on `onRequest`: an unauthenticated caller is refused before its body or query is parsed or validated. */
  requireAuth: onRequestAsyncHookHandler;
}
