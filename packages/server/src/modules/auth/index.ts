import type { AppContext } from '../../context.js';
import type { AuthService } from '../../services.js';
import { AuthServiceImpl } from './service.js';

export { authRoutes } from './routes.js';
export { SESSIONS_BOUND_CHANNEL, SESSIONS_REVOKED_CHANNEL, SESSION_CACHE_TTL_MS } from './service.js';
export { TOKEN_AUDIENCE, TOKEN_ISSUER } from './tokens.js';

export function createAuthService(ctx: AppContext): AuthService {
  return new AuthServiceImpl(ctx);
}
