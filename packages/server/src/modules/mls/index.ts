export { createMlsService, type MlsDeps } from './service.js';
export { mlsRoutes } from './routes.js';
