export * from './errors.js';
export * from './common.js';
export * from './api.js';
export * from './ws.js';
export * from './e2ee.js';
export * from './account.js';
export * from './mfa.js';
