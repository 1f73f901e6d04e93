// SKELETON: replaced by the realtime gateway.
import type { Server } from 'node:http';
import type { AppContext } from '../context.js';
import type { Services } from '../services.js';
export class Gateway {
  constructor(readonly ctx: AppContext, readonly services: Services) {}
  attach(_server: Server): void {}
  shutdown(_graceMs: number): Promise<void> { return Promise.resolve(); }
}
