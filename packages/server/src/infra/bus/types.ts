/**
 * The event bus between nodes. Delivery is at-most-once and best effort, like
 * Redis pub/sub: anything that must not be lost is in the database first (the
 * event log) and the bus only carries notifications and ephemeral signals.
 */
export interface Bus {
  readonly kind: 'memory' | 'redis';
  publish(channel: string, message: unknown): Promise<void>;
  /** Returns an unsubscribe function. Handlers must not throw; errors are logged. */
  subscribe(channel: string, handler: (message: unknown) => void): Promise<() => Promise<void>>;
  ping(timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}
