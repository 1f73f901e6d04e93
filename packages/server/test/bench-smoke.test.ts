/**
 * CI proof that the load generator (bench/load) works end to end: the fanout
 * scenario at a tiny size, in child processes exactly as `npm run bench:fanout`
 * runs it, against our server (on this run's engine) and the raw ws peer. The
 * JSON result must say every message reached every member exactly once.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'sc-bench-smoke-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface FanoutStep {
  sent: number;
  acked: number;
  expectedDeliveries: number;
  deliveries: number;
  missing: number;
  duplicates: number;
  unexpected: number;
  errors: number;
  complete: boolean;
}

function runFanout(target: 'ours' | 'ws-peer'): Promise<{ code: number; stderr: string; result: { complete: boolean; target: string; steps: FanoutStep[] } | null }> {
  const out = join(dir, `${target}.json`);
  const engine = process.env.DATABASE_URL ? 'pg' : 'sqlite';
  const args = ['--import', 'tsx', 'bench/load/run.ts', 'fanout', '--target', target, '--engine', engine,
    '--members', '20', '--rate', '10', '--seconds', '2', '--workers', '2', '--addresses', '4', '--drain-ms', '15000', '--out', out];
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: ROOT, env: process.env, timeout: 150_000 }, (err, _stdout, stderr) => {
      let result: { complete: boolean; target: string; steps: FanoutStep[] } | null;
      try {
        result = JSON.parse(readFileSync(out, 'utf8')) as { complete: boolean; target: string; steps: FanoutStep[] };
      } catch {
        result = null;
      }
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr, result });
    });
  });
}

describe('load generator smoke (bench/load)', () => {
  it.each(['ours', 'ws-peer'] as const)('[B1] fanout at 20 members against %s: every message delivered exactly once to every member', async (target) => {
    const { code, stderr, result } = await runFanout(target);
    expect(result, stderr).not.toBeNull();
    expect(result!.target).toBe(target);
    const step = result!.steps[0]!;
    expect(step.sent).toBe(20);
    expect(step.expectedDeliveries).toBe(20 * 20);
    expect(step.deliveries).toBe(step.expectedDeliveries);
    expect(step.acked).toBe(step.sent);
    expect({ missing: step.missing, duplicates: step.duplicates, unexpected: step.unexpected, errors: step.errors }).toEqual({ missing: 0, duplicates: 0, unexpected: 0, errors: 0 });
    expect(result!.complete).toBe(true);
    expect(code, stderr).toBe(0);
  }, 180_000);
});
