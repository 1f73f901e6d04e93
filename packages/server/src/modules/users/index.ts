import type { AppContext } from '../../context.js';
import type { UsersService } from '../../services.js';
import { UsersServiceImpl } from './service.js';

export { usersRoutes } from './routes.js';

export function createUsersService(ctx: AppContext): UsersService {
  return new UsersServiceImpl(ctx);
}
