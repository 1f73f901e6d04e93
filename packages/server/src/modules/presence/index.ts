export { createPresenceService, type PresenceOptions, type PresenceServiceImpl } from './service.js';
export { presenceRoutes } from './routes.js';
export { MemoryPresenceStore, RedisPresenceStore, type PresenceStore } from './store.js';
