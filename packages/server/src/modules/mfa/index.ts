import type { AppContext } from '../../context.js';
import type { AuthService } from '../../services.js';
import type { MailService } from '../mail/service.js';
import { MfaService } from './service.js';

export { mfaRoutes } from './routes.js';
export { MfaService, MFA_CHALLENGE_TTL_MS, RECOVERY_CODE_COUNT } from './service.js';

export function createMfaService(ctx: AppContext, deps: { auth: AuthService; mail: MailService }): MfaService {
  return new MfaService(ctx, deps);
}
