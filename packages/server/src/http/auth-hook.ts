import type { FastifyReply, FastifyRequest } from 'fastify';
import { AppError } from '../infra/errors.js';
import type { AuthContext, AuthService } from '../services.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by `requireAuth`; routes that use it may rely on it. */
    auth: AuthContext | null;
  }
}

/** Bearer-token authentication only: no cookies, so no CSRF on the API (AF-R2). */
export function makeRequireAuth(auth: AuthService) {
  return async function requireAuth(request: FastifyRequest, _reply: FastifyReply): Promise<void> {
    const header = request.headers.authorization;
    if (!header || !header.startsWith('Bearer ')) throw new AppError('unauthorized');
    request.auth = await auth.verifyAccessToken(header.slice(7).trim());
  };
}

/** The caller of an authenticated route. */
export function caller(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new AppError('unauthorized');
  return request.auth;
}
