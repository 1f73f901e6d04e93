// SKELETON: replaced by the conversations module.
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../../context.js';
import { AppError } from '../../infra/errors.js';
import type { ModuleOptions } from '../../http/module.js';
import type { ConversationsService, UsersService } from '../../services.js';
const no = () => Promise.reject(new AppError('unavailable'));
export function createConversationsService(_ctx: AppContext, _deps: { users: UsersService }): ConversationsService {
  return { requireMember: no, memberIds: no, peersOf: no, get: no };
}
export const conversationsRoutes: FastifyPluginAsync<ModuleOptions> = async () => {};
