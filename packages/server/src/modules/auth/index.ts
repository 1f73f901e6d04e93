// SKELETON: replaced by the auth module.
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../../context.js';
import { AppError } from '../../infra/errors.js';
import type { ModuleOptions } from '../../http/module.js';
import type { AuthService } from '../../services.js';
export function createAuthService(_ctx: AppContext): AuthService {
  return { verifyAccessToken: () => Promise.reject(new AppError('unavailable')), onSessionRevoked: () => () => undefined, start: () => Promise.resolve(), stop: () => Promise.resolve() };
}
export const authRoutes: FastifyPluginAsync<ModuleOptions> = async () => {};
