import type { Config } from './config.js';
import type { Bus } from './infra/bus/index.js';
import type { Database } from './infra/db/index.js';
import type { EventLog } from './infra/eventlog.js';
import type { Logger } from './infra/logger.js';
import type { Limiters } from './infra/ratelimit.js';

/** What every module's service is built from. Modules never reach into each other's tables. */
export interface AppContext {
  config: Config;
  log: Logger;
  database: Database;
  bus: Bus;
  limiters: Limiters;
  events: EventLog;
}
