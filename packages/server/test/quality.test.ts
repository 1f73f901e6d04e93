/**
 * Proofs for findings about the codebase itself rather than its behaviour
 * (AUDIT-FINDINGS: "the artefact is the proof and a CI check validates it").
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SRC = join(ROOT, 'packages/server/src');
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [p] : [];
  });
}

describe('codebase findings', () => {
  it('[AF-O8] CI runs lint, typecheck and tests on both engines, the secret scan and the dependency audit, and fails on any failure', () => {
    const ci = read('.ci/run');
    execFileSync('bash', ['-n', join(ROOT, '.ci/run')]); // parses
    expect(ci).toMatch(/^set -euo pipefail$/m);
    expect(ci).toMatch(/^npm ci\b/m);
    expect(ci).toMatch(/npm run check/);
    expect(ci).toMatch(/-u DATABASE_URL/); // the first run is on the embedded defaults
    expect(ci).toMatch(/services\.sh/);
    expect(ci).toMatch(/export DATABASE_URL REDIS_URL REDIS_PREFIX/);
    expect(ci).toMatch(/^npm test$/m);
    expect(ci).toMatch(/secret-scan\.mjs/);
    expect(ci).toMatch(/npm audit --omit=dev --audit-level=high/);
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts.check).toBe('npm run lint && npm run typecheck && npm test');
  });

  it('[AF-Q1] conversation membership is read in one place: the conversations store (and the event log\'s resume filter)', () => {
    const allowed = new Set(['modules/conversations/store.ts', 'infra/eventlog.ts', 'infra/db/schema.ts', 'infra/db/migrations/0001_core.ts']);
    const offenders = sourceFiles(SRC)
      .map((f) => f.slice(SRC.length + 1))
      .filter((f) => !allowed.has(f) && /['"]members['"]/.test(readFileSync(join(SRC, f), 'utf8')));
    expect(offenders).toEqual([]);
    // And the access check itself exists once.
    const definitions = sourceFiles(SRC).filter((f) => /async requireMember\(/.test(readFileSync(f, 'utf8')));
    expect(definitions.map((f) => f.slice(SRC.length + 1))).toEqual(['modules/conversations/service.ts']);
  });

  it('[AF-Q3] every server module has its own tests, and `npm run check` gates lint and types', () => {
    const testFiles = readdirSync(join(ROOT, 'packages/server/test')).filter((f) => f.endsWith('.test.ts'));
    const modules = readdirSync(join(SRC, 'modules'), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    expect(modules.length).toBeGreaterThan(0);
    for (const m of modules) expect(testFiles.some((f) => f.startsWith(m)), `tests for module ${m}`).toBe(true);
    expect(testFiles).toContain('gateway.test.ts');
    const eslint = read('eslint.config.js');
    expect(eslint).toMatch(/recommendedTypeChecked/);
    expect(eslint).toMatch(/no-floating-promises': 'error'/);
    expect(JSON.parse(read('tsconfig.base.json')).compilerOptions.strict).toBe(true);
  });
});
