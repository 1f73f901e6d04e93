export { createConversationsService } from './service.js';
export { conversationsRoutes } from './routes.js';
