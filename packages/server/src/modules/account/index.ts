import type { AppContext } from '../../context.js';
import type { AuthService } from '../../services.js';
import type { MailService } from '../mail/service.js';
import { AccountService } from './service.js';

export { accountRoutes } from './routes.js';
export { AccountService, hashAccountToken, RESET_TOKEN_TTL_MS, VERIFY_TOKEN_TTL_MS } from './service.js';

export function createAccountService(ctx: AppContext, deps: { auth: AuthService; mail: MailService }): AccountService {
  return new AccountService(ctx, deps);
}
