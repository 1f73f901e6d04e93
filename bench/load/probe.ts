/**
 * Preloaded into every benchmarked server process (ours and the peers) with
 * `--import`: answers the coordinator's `probe` over the IPC channel with the
 * process's memory and CPU use, after a full GC when `--expose-gc` is on, so
 * heap per connection is not mostly garbage. Benchmark-only; never loaded by
 * `npm start`.
 */
const gc = (globalThis as { gc?: () => void }).gc;

if (process.send) {
  process.on('message', (m: unknown) => {
    if (m !== 'probe') return;
    if (gc) {
      gc();
      gc();
    }
    const mem = process.memoryUsage();
    const cpu = process.cpuUsage();
    process.send?.({ probe: { rss: mem.rss, heapUsed: mem.heapUsed, heapTotal: mem.heapTotal, external: mem.external, cpuUserUs: cpu.user, cpuSystemUs: cpu.system } });
  });
  // After the listener (which refs the channel): the probe must not keep a stopping server alive.
  process.channel?.unref();
}
export {};
