/**
 * secureconnect-cli end to end ([CLI1]–[CLI5]): the CLI runs as child
 * processes (`node --import tsx src/node/cli.ts`), one home directory per
 * user, against a real server (SQLite, or PostgreSQL + Redis with
 * DATABASE_URL/REDIS_URL). The tests run in order and share the accounts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, uid, type Running } from '../../server/test/helpers.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = join(ROOT, 'packages/sdk/src/node/cli.ts');
const ID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const ISO = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface Proc {
  child: ChildProcess;
  out(): string;
  err(): string;
  done: Promise<Result>;
}

interface User {
  name: string;
  password: string;
  home: string;
}

describe('secureconnect-cli through a real server', () => {
  let s: Running;
  let root: string;
  let alice: User;
  let bob: User;
  let conv: string;
  const procs: Proc[] = [];
  /** Every command line the tests ran, to check that no password was ever on one. */
  const argvs: string[][] = [];

  /** Starts the CLI for `user` with `args`, writing `input` to its stdin (then closing it). */
  const start = (user: User, args: string[], input = ''): Proc => {
    const argv = ['--import', 'tsx', CLI, '--server', s.url, '--home', user.home, ...args];
    argvs.push(argv);
    const env = { ...process.env };
    delete env.SECURECONNECT_SERVER;
    delete env.SECURECONNECT_HOME;
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, argv, { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.end(input);
    const done = new Promise<Result>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    });
    const p = { child, out: () => stdout, err: () => stderr, done };
    procs.push(p);
    return p;
  };
  const run = (user: User, args: string[], input = '') => start(user, args, input).done;
  /** Runs a command that must succeed; its stdout. */
  const ok = async (user: User, args: string[], input = '') => {
    const r = await run(user, args, input);
    expect(r.stderr, `${args.join(' ')} wrote to stderr`).not.toMatch(/^error:/m);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };
  /** Waits until the process has printed a line matching `re` (on stderr with `fromStderr`). */
  const waitForLine = async (p: Proc, re: RegExp, fromStderr = false, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = (fromStderr ? p.err() : p.out()).split('\n').find((l) => re.test(l));
      if (line) return line;
      if (p.child.exitCode !== null) throw new Error(`the CLI exited (${p.child.exitCode}) before printing ${re}: ${p.err()}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; stdout: ${p.out()} stderr: ${p.err()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const interrupt = async (p: Proc) => {
    p.child.kill('SIGINT');
    return p.done;
  };

  beforeAll(async () => {
    s = await startApp();
    root = mkdtempSync(join(tmpdir(), 'sc-cli-'));
    const user = (prefix: string): User => {
      const name = `${prefix}${uid(3)}`;
      return { name, password: `pw ${uid(6)} with spaces`, home: join(root, name) };
    };
    alice = user('cla');
    bob = user('clb');
  });

  afterAll(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await s?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('[CLI1] alice and bob register; alice opens an encrypted conversation with bob and sends; bob\'s follow prints the decrypted line, exits 0 on SIGINT', async () => {
    const [a, b] = await Promise.all([
      ok(alice, ['register', '--email', `${alice.name}@example.test`, '--username', alice.name, '--password-stdin'], `${alice.password}\n`),
      ok(bob, ['register', '--email', `${bob.name}@example.test`, '--username', bob.name], `${bob.password}\n`),
    ]);
    expect(a).toMatch(new RegExp(`^registered ${alice.name}; this device is ${ID}\\n$`));
    expect(b).toMatch(new RegExp(`^registered ${bob.name}; this device is ${ID}\\n$`));

    conv = (await ok(alice, ['open', bob.name])).trim();
    expect(conv).toMatch(new RegExp(`^${ID}$`));
    const marker = `marker-${uid(6)}`;
    expect(await ok(alice, ['send', conv, 'hello', 'bob', marker])).toBe('');
    // A peer's terminal escapes and bidi overrides are shown as escapes, never passed to bob's terminal.
    await ok(alice, ['send', conv, `esc\u001b[2J\u009bnext\nline\u202Etxt.exe ${marker}`]);

    const follow = start(bob, ['follow']);
    const line = await waitForLine(follow, new RegExp(`hello bob ${marker}$`));
    expect(line).toMatch(new RegExp(`^${ISO} ${conv} ${alice.name}: hello bob ${marker}$`));
    const escaped = await waitForLine(follow, new RegExp(`txt\\.exe ${marker}$`));
    expect(escaped.endsWith(`${alice.name}: esc\\u{1b}[2J\\u{9b}next\\nline\\u{202e}txt.exe ${marker}`)).toBe(true);
    const unsafe = [...follow.out()].filter((c) => {
      const n = c.codePointAt(0)!;
      return (n < 0x20 && n !== 0x0a) || (n >= 0x7f && n <= 0x9f) || n === 0x202e;
    });
    expect(unsafe).toEqual([]);

    // While follow holds bob's home, `send` hands the message to it (text from stdin), and follow shows it.
    await waitForLine(follow, /^following all conversations as /, true);
    const reply = `reply ${uid(6)}`;
    expect(await ok(bob, ['send', `@${alice.name}`, '-'], `${reply}\n`)).toBe('');
    await waitForLine(follow, new RegExp(`^${ISO} ${conv} ${bob.name}: ${reply}$`));

    const end = await interrupt(follow);
    expect(end).toMatchObject({ code: 0, signal: null });
    expect(end.stderr).not.toMatch(/error/);
    // Follow marked what it showed as read.
    expect(await ok(bob, ['conversations'])).toBe(`${conv}\t@${alice.name}\tmls\t0\n`);

    // Two-way: alice's follow shows bob's reply.
    const af = start(alice, ['follow', conv]);
    await waitForLine(af, new RegExp(`^${ISO} ${conv} ${bob.name}: ${reply}$`));
    expect(await interrupt(af)).toMatchObject({ code: 0, signal: null });
  }, 300_000);

  it('[CLI2] a message decrypted by another command while nobody followed is shown by the next follow, once', async () => {
    const missed = `while away ${uid(6)}`;
    await ok(alice, ['send', conv, missed]);
    // Bob's send processes everything since his last run first, alice's message included: it waits in his inbox.
    const later = `later ${uid(6)}`;
    await ok(bob, ['send', conv, later]);
    const follow = start(bob, ['follow', `@${alice.name}`]);
    await waitForLine(follow, new RegExp(`^${ISO} ${conv} ${alice.name}: ${missed}$`));
    expect(await interrupt(follow)).toMatchObject({ code: 0 });
    expect(follow.out().split('\n').filter((l) => l.includes(missed))).toHaveLength(1);

    // Shown once: the next follow shows only what is new.
    const again = start(bob, ['follow']);
    await waitForLine(again, /^following /, true);
    const fresh = `fresh ${uid(6)}`;
    await ok(alice, ['send', conv, fresh]);
    await waitForLine(again, new RegExp(`^${ISO} ${conv} ${alice.name}: ${fresh}$`));
    expect(await interrupt(again)).toMatchObject({ code: 0 });
    expect(again.out().trim().split('\n')).toHaveLength(1);
  }, 300_000);

  it('[CLI3] both users see the same safety number; devices lists the keys of a user', async () => {
    const [a, b] = await Promise.all([ok(alice, ['safety', conv, bob.name]), ok(bob, ['safety', `@${alice.name}`, alice.name])]);
    expect(a).toMatch(/^(\d{5} ){11}\d{5}\nqr scsn1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    expect(b).toBe(a);
    const devices = await ok(bob, ['devices', alice.name]);
    expect(devices.trim().split('\n')).toHaveLength(1);
    expect(devices).toMatch(new RegExp(`^${ID}\\t`));
  }, 120_000);

  it('[CLI4] a wrong password exits 1 with invalid_credentials on stderr, no stack trace; the home is unchanged', async () => {
    const stranger: User = { ...alice, home: join(root, 'stranger') };
    const r = await run(stranger, ['login', alice.name], 'not-the-password\n');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: invalid_credentials: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stdout).toBe('');
    expect(() => statSync(join(stranger.home, 'tokens.json'))).toThrow();
  }, 60_000);

  it('[CLI5] passwords never go on the command line; tokens are 0600 and the key store 0700', async () => {
    const r = await run({ ...alice, home: join(root, 'argv') }, ['login', alice.name, `--password=${alice.password}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error: usage: Passwords are never taken from the command line/);
    expect(r.stderr).not.toContain(alice.password);
    // Every other command these tests ran got its password on stdin.
    for (const argv of argvs.slice(0, -1)) {
      for (const pw of [alice.password, bob.password]) expect(argv.join(' ')).not.toContain(pw);
    }
    if (process.platform !== 'win32') {
      for (const u of [alice, bob]) {
        expect(statSync(join(u.home, 'tokens.json')).mode & 0o777).toBe(0o600);
        expect(statSync(join(u.home, 'keys')).mode & 0o777).toBe(0o700);
        expect(statSync(join(u.home, 'run')).mode & 0o777).toBe(0o700);
      }
    }
    const tokens = JSON.parse(readFileSync(join(alice.home, 'tokens.json'), 'utf8')) as Record<string, unknown>;
    expect(Object.keys(tokens).sort()).toEqual(['accessToken', 'refreshToken']);
    expect(await run(alice, ['frobnicate'])).toMatchObject({ code: 2 });
    expect(await run(alice, ['send', conv])).toMatchObject({ code: 2 });
  }, 120_000);
});
