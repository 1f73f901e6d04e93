#!/usr/bin/env node
// npm links a package's bins when it installs, before any build, and skips a
// bin whose file does not exist yet; so the bin is this committed file, and
// the CLI itself is the compiled dist/node/cli.js (src/node/cli.ts).
import process from 'node:process';

try {
  await import('../dist/node/cli.js');
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !/dist[\\/]node[\\/]cli\.js/.test(String(err.message))) throw err;
  process.stderr.write('error: not_built: secureconnect-cli is not compiled yet: run `npm run build` first.\n');
  process.exit(1);
}
