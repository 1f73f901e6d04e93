// SKELETON: replaced by the messages module.
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../../context.js';
import { AppError } from '../../infra/errors.js';
import type { ModuleOptions } from '../../http/module.js';
import type { ConversationsService, MessagesService } from '../../services.js';
const no = () => Promise.reject(new AppError('unavailable'));
export function createMessagesService(_ctx: AppContext, _deps: { conversations: ConversationsService }): MessagesService {
  return { send: no, edit: no, remove: no, markRead: no, typing: no, stop: () => Promise.resolve() };
}
export const messagesRoutes: FastifyPluginAsync<ModuleOptions> = async () => {};
