import type { Config } from '../../config.js';
import { redactUrl, type Logger } from '../logger.js';
import { MemoryBus } from './memory.js';
import { RedisBus } from './redis.js';
import type { Bus } from './types.js';

export type { Bus };
export { MemoryBus, RedisBus };

export function openBus(config: Config, log: Logger): Bus {
  if (config.redis.url) {
    log.info({ redis: redactUrl(config.redis.url), prefix: config.redis.prefix }, 'using redis bus');
    return new RedisBus(config.redis.url, config.redis.prefix, config.redis.commandTimeoutMs, log);
  }
  return new MemoryBus(log);
}
