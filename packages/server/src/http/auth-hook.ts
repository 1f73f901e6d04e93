import type { FastifyReply, FastifyRequest } from 'fastify';
import { AppError } from '../infra/errors.js';
import type { AuthContext, AuthService } from '../services.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by `requireAuth`; routes that use it may rely on it. */
    auth: AuthContext | null;
  }
}

/**
 * [AC3] What an account with an unverified email may do while verification
 * is required: manage its sign-in, read its profile and verify. The one place
 * this limit is enforced for HTTP; docs/API.md lists the same routes.
 */
export function allowedUnverified(method: string, routeUrl: string | undefined): boolean {
  if (routeUrl === undefined) return false;
  if (routeUrl.startsWith('/v1/auth/') || routeUrl.startsWith('/v1/account/')) return true;
  return method === 'GET' && routeUrl === '/v1/me';
}

/** [AC3] True when this caller is held to the unverified limits (other transports, e.g. the gateway, use the same rule). */
export function isHeldUnverified(emailVerification: 'required' | 'optional', auth: AuthContext): boolean {
  return emailVerification === 'required' && auth.emailVerified === false;
}

/** Bearer-token authentication only: no cookies, so no CSRF on the API (AF-R2). */
export function makeRequireAuth(auth: AuthService, emailVerification: 'required' | 'optional' = 'optional') {
  return async function requireAuth(request: FastifyRequest, _reply: FastifyReply): Promise<void> {
    const header = request.headers.authorization;
    if (!header || !header.startsWith('Bearer ')) throw new AppError('unauthorized');
    const ctx = await auth.verifyAccessToken(header.slice(7).trim());
    if (isHeldUnverified(emailVerification, ctx) && !allowedUnverified(request.method, request.routeOptions.url)) {
      throw new AppError('email_unverified');
    }
    request.auth = ctx;
  };
}

/** The caller of an authenticated route. */
export function caller(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new AppError('unauthorized');
  return request.auth;
}
