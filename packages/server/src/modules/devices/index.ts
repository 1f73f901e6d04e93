export { createDevicesService, CLAIMS_PER_MINUTE, type DevicesDeps } from './service.js';
export { devicesRoutes } from './routes.js';
