// SKELETON: replaced by the users module.
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../../context.js';
import { AppError } from '../../infra/errors.js';
import type { ModuleOptions } from '../../http/module.js';
import type { UsersService } from '../../services.js';
const no = () => Promise.reject(new AppError('unavailable'));
export function createUsersService(_ctx: AppContext): UsersService {
  return { getMe: no, getPublicMany: no, exists: no, setLastSeen: no, lastSeenMany: no };
}
export const usersRoutes: FastifyPluginAsync<ModuleOptions> = async () => {};
