#!/usr/bin/env node
/**
 * The one deployable: `secureconnect serve | migrate | mail:dead`. Only this file exits
 * the process (AF-I4); everything else throws.
 */
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { openDatabase } from './infra/db/index.js';
import { migrateToLatest } from './infra/db/migrate.js';
import { createLogger } from './infra/logger.js';
import { listDeadLetters } from './modules/mail/index.js';

const USAGE = `usage: secureconnect <command>
  serve     start the server (HTTP + WebSocket)
  migrate   apply pending database migrations and exit
  mail:dead [limit]  print undeliverable mails (dead letters), newest first, one JSON object a line
Configuration comes from the environment; see .env.example.`;

async function main(argv: string[]): Promise<number> {
  const command = argv[0] ?? 'serve';
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const config = await loadConfig();
  const log = createLogger({ level: config.logLevel, nodeId: config.nodeId });

  if (command === 'migrate') {
    const database = openDatabase(config, log);
    try {
      const result = await migrateToLatest(database.db as never, database.dialect);
      for (const r of result.results ?? []) log.info({ migration: r.migrationName, status: r.status }, 'migration');
      log.info({ applied: result.results?.length ?? 0 }, 'migrations complete');
    } finally {
      await database.close();
    }
    return 0;
  }
  // Operators' view of dead letters until the admin API exists (issue 5 item 6) ([AC1]).
  if (command === 'mail:dead') {
    const limit = Number.parseInt(argv[1] ?? '100', 10);
    const database = openDatabase(config, log);
    try {
      for (const m of await listDeadLetters(database, Number.isFinite(limit) && limit > 0 ? limit : 100)) process.stdout.write(`${JSON.stringify(m)}\n`);
    } finally {
      await database.close();
    }
    return 0;
  }
  if (command !== 'serve') {
    process.stderr.write(`unknown command "${command}"\n${USAGE}\n`);
    return 2;
  }

  const app = await buildApp(config, { logger: log });
  await app.listen();
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down');
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      resolve();
    };
    const onTerm = () => stop('SIGTERM');
    const onInt = () => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
  await app.close();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
