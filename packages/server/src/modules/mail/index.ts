import type { AppContext } from '../../context.js';
import { MailService } from './service.js';
import type { MailTransport } from './transport.js';

export { mailRoutes } from './routes.js';
export { MailService, listDeadLetters, type MailRequest, type OutboxEntry } from './service.js';
export type { MailTransport } from './transport.js';
export { renderMail, pickLocale, escapeHtml, type MailTemplate } from './templates.js';

export function createMailService(ctx: AppContext, transport?: MailTransport): MailService {
  return new MailService(ctx, transport);
}
