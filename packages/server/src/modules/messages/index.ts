export { createMessagesService, type MessagesServiceImpl } from './service.js';
export { messagesRoutes } from './routes.js';
export { SendBatcher, type SendItem, type SendResult } from './batcher.js';
