// SKELETON: replaced by the presence module.
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../../context.js';
import { AppError } from '../../infra/errors.js';
import type { ModuleOptions } from '../../http/module.js';
import type { ConversationsService, PresenceService, UsersService } from '../../services.js';
const no = () => Promise.reject(new AppError('unavailable'));
export function createPresenceService(_ctx: AppContext, _deps: { conversations: ConversationsService; users: UsersService }): PresenceService {
  return { connected: no, disconnected: no, get: no, start: () => Promise.resolve(), stop: () => Promise.resolve() };
}
export const presenceRoutes: FastifyPluginAsync<ModuleOptions> = async () => {};
