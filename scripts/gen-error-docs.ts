/**
 * Regenerates the error catalogue and close-code tables in docs/API.md from
 * packages/protocol/src/errors.ts (between the GENERATED markers), so the
 * document cannot drift from the code. ops.test.ts fails when it has.
 *
 *   npx tsx scripts/gen-error-docs.ts
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CLOSE_CODES, ERRORS } from '../packages/protocol/src/errors.js';

const root = new URL('../', import.meta.url);
const source = readFileSync(fileURLToPath(new URL('packages/protocol/src/errors.ts', root)), 'utf8');
const docPath = fileURLToPath(new URL('docs/API.md', root));

/** The one-line JSDoc above each close code is its meaning. */
const meanings = new Map<string, string>();
for (const m of source.matchAll(/\/\*\*\s*(.+?)\s*\*\/\s*(\w+):\s*\d+,/g)) meanings.set(m[2]!, m[1]!);

const esc = (s: string) => s.replace(/\|/g, '\\|');
const errors = [
  '| code | HTTP | message |',
  '|---|---|---|',
  ...Object.entries(ERRORS).map(([code, e]) => `| \`${code}\` | ${e.status} | ${esc(e.message)} |`),
].join('\n');
const closes = [
  '| close code | name | meaning |',
  '|---|---|---|',
  ...Object.entries(CLOSE_CODES)
    .sort((a, b) => a[1] - b[1])
    .map(([name, code]) => `| ${code} | \`${name}\` | ${esc(meanings.get(name) ?? '')} |`),
].join('\n');

let doc = readFileSync(docPath, 'utf8');
for (const [name, table] of [['errors', errors], ['close-codes', closes]] as const) {
  const re = new RegExp(`(<!-- GENERATED:${name} -->\\n)[\\s\\S]*?(<!-- /GENERATED:${name} -->)`);
  if (!re.test(doc)) throw new Error(`docs/API.md lacks the GENERATED:${name} markers`);
  doc = doc.replace(re, `$1${table}\n$2`);
}
writeFileSync(docPath, doc);
process.stdout.write('docs/API.md tables regenerated\n');
