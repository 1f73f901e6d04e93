import type { Logger } from '../logger.js';
import type { Bus } from './types.js';

/** In-process twin of the Redis bus: same contract, one node. */
export class MemoryBus implements Bus {
  readonly kind = 'memory' as const;
  private readonly handlers = new Map<string, Set<(m: unknown) => void>>();
  private closed = false;

  constructor(private readonly log: Logger) {}

  publish(channel: string, message: unknown): Promise<void> {
    if (this.closed) return Promise.reject(new Error('bus closed'));
    // Serialise like Redis does, so no subscriber shares a mutable object with the publisher.
    const copy: unknown = JSON.parse(JSON.stringify(message));
    const set = this.handlers.get(channel);
    if (set) {
      // Asynchronous like a network bus: a publisher never runs subscribers inside its own call stack.
      queueMicrotask(() => {
        for (const h of set) {
          try {
            h(copy);
          } catch (err) {
            this.log.error({ err, channel }, 'bus handler failed');
          }
        }
      });
    }
    return Promise.resolve();
  }

  subscribe(channel: string, handler: (message: unknown) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(channel);
    if (!set) this.handlers.set(channel, (set = new Set()));
    set.add(handler);
    return Promise.resolve(() => {
      set.delete(handler);
      return Promise.resolve();
    });
  }

  ping(): Promise<void> {
    return this.closed ? Promise.reject(new Error('bus closed')) : Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    this.handlers.clear();
    return Promise.resolve();
  }
}
