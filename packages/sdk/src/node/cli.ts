#!/usr/bin/env node
/**
 * `secureconnect-cli`: a command-line client of SecureConnect's public API
 * (REST and `/v1/ws`, through the SDK only), end-to-end encrypted with MLS by
 * {@link EncryptedMessenger}. One home directory holds one account's device:
 *
 * - `config.json`: server, account and device ids (nothing secret);
 * - `tokens.json` (0600): the session's access and refresh token;
 * - `keys/` (FileKeyStore, 0700): device keys, key packages, MLS group states, the session cursor;
 * - `inbox/` (FileKeyStore): messages decrypted by a command other than `follow`, shown by the next `follow`
 *   (MLS keys are single-use: a message decrypted once cannot be decrypted again);
 * - `run/` (0700): the lock that keeps two processes from using the device's MLS state at once, and the
 *   socket through which `send` and `open` hand their work to a running `follow`.
 *
 * Passwords are read from stdin, never from argv. Exit status: 0 ok, 1 error
 * (`error: <code>: <message>` on stderr), 2 usage.
 */
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { homedir, hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { E2EE_LIMITS, LIMITS } from '@secureconnect/protocol';
import { CryptoError } from '../crypto/errors.js';
import {
  E2eeError, EncryptedMessenger, KeyStoreError, NotFoundError, SecureConnectClient, SecureConnectError, SessionError, keyStoreCursor,
  type Conversation, type DecryptedMessage, type DeviceInfo, type Session, type SessionClosed, type Tokens,
} from '../index.js';
import { FileKeyStore } from './file-keystore.js';
import { createNodeSession } from './index.js';

const DEFAULT_SERVER = 'http://127.0.0.1:8080';
/** A non-follow command gives up connecting after this long (follow waits for the server forever). */
const CONNECT_TIMEOUT_MS = 30_000;
const DELEGATE_TIMEOUT_MS = 120_000;
const DELEGATE_MAX_BYTES = 256 * 1024;
const ID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const USERNAME_RE = /^[a-zA-Z0-9_.]{3,32}$/;

const USAGE = `Usage: secureconnect-cli [--server <url>] [--home <dir>] <command> [arguments]

Commands:
  register --email <email> --username <name> [--password-stdin] [--device-name <name>]
                                   create an account and set up this device
  login <username> [--password-stdin] [--device-name <name>]
                                   sign in; a new device joins your encrypted conversations
  conversations                    list: id, title or @peer, encryption, unread
  open <username...> [--title <t>] open an encrypted conversation, print its id
  send <conversation> <text...>    send a message ("-" as the text reads it from stdin)
  follow [<conversation>]          print incoming messages until Ctrl-C
  safety <conversation> <username> print the safety number to compare with that user
  devices [<username>]             list a user's devices (yours by default)
  logout                           end this session (the device keys stay for the next login)

A <conversation> is its id, or @username for your encrypted direct conversation with them.

Options:
  --server <url>  server origin (default $SECURECONNECT_SERVER or ${DEFAULT_SERVER};
                  a home stays with the server it was set up with)
  --home <dir>    account directory (default $SECURECONNECT_HOME or ~/.secureconnect)
  -h, --help      this help

Passwords are read from stdin: typed without echo on a terminal, else its first line.
Exit status: 0 ok, 1 error (code and message on stderr), 2 usage.
`;

const OPTIONS = {
  server: { type: 'string' },
  home: { type: 'string' },
  'device-name': { type: 'string' },
  email: { type: 'string' },
  username: { type: 'string' },
  'password-stdin': { type: 'boolean' },
  title: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;
type OptionName = keyof typeof OPTIONS;

function parse(argv: string[]) {
  return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
}
type Values = ReturnType<typeof parse>['values'];

/** A failure of the CLI itself (not an SDK answer); `exitCode` 2 means the command line was wrong. */
class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode: 1 | 2 = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

const usage = (message: string) => new CliError('usage', message, 2);

/** Where a command's output goes: the terminal, or the reply to a delegating process. */
interface Out {
  print(line: string): void;
  warn(line: string): void;
}

const stdio: Out = {
  print: (line) => void process.stdout.write(`${line}\n`),
  warn: (line) => void process.stderr.write(`${line}\n`),
};

// ---- home directory ----

interface HomeConfig {
  server: string;
  userId: string;
  username: string;
  deviceName: string;
  deviceId?: string;
}

/** The home directory and what it holds; the REST client is built from its tokens. */
class Home {
  private configValue: HomeConfig | null;
  readonly server: string;
  private clientValue: SecureConnectClient | null = null;
  private readonly names = new Map<string, string>();

  constructor(
    readonly dir: string,
    serverOption: string | undefined,
    private readonly deviceNameOption: string | undefined,
  ) {
    const config = readConfig(join(dir, 'config.json'));
    this.configValue = config;
    const chosen = serverOption !== undefined ? normalizeServer(serverOption) : undefined;
    if (chosen && config && chosen !== config.server) {
      throw usage(`${dir} is set up for ${config.server}; use another --home for ${chosen}.`);
    }
    this.server = chosen ?? config?.server ?? normalizeServer(process.env.SECURECONNECT_SERVER || DEFAULT_SERVER);
  }

  /** Account and device this home belongs to; null before the first register or login. */
  get config(): HomeConfig | null {
    return this.configValue;
  }

  get tokensPath(): string {
    return join(this.dir, 'tokens.json');
  }

  get runDir(): string {
    return join(this.dir, 'run');
  }

  /** Device name: --device-name, else the one this home registered with, else the host name. */
  get deviceName(): string {
    const name = this.deviceNameOption ?? this.config?.deviceName ?? `cli on ${hostname()}`;
    return name.slice(0, E2EE_LIMITS.deviceNameMaxChars) || 'cli';
  }

  /** A client with this home's tokens, persisting every change of them (refresh rotates the refresh token). */
  get client(): SecureConnectClient {
    if (!this.clientValue) {
      const tokens = readTokens(this.tokensPath);
      this.clientValue = new SecureConnectClient({ baseUrl: this.server, ...(tokens ? { tokens } : {}), onTokens: (t) => this.saveTokens(t) });
    }
    return this.clientValue;
  }

  get signedIn(): boolean {
    return this.client.accessToken !== null;
  }

  /** The client, or an `unauthorized` error telling how to sign in. */
  requireClient(): SecureConnectClient {
    if (!this.signedIn) throw new CliError('unauthorized', 'Not signed in: run `secureconnect-cli login <username>` first.');
    return this.client;
  }

  /** Tokens of a new sign-in: saved, and used by the client from now on. */
  signIn(tokens: Tokens): void {
    this.saveTokens(tokens);
    this.clientValue = null;
  }

  private saveTokens(tokens: Tokens | null): void {
    if (tokens) writeFileAtomic(this.tokensPath, JSON.stringify({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken }));
    else rmSync(this.tokensPath, { force: true });
  }

  saveConfig(config: HomeConfig): void {
    writeFileAtomic(join(this.dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    this.configValue = config;
  }

  /** A user's username for display (the id when the user is gone). */
  async nameOf(userId: string): Promise<string> {
    const known = this.names.get(userId) ?? (this.config?.userId === userId ? this.config.username : undefined);
    if (known) return known;
    let name = userId;
    try {
      name = (await this.client.user(userId)).username;
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
    }
    this.names.set(userId, name);
    return name;
  }
}

function openHome(dirOption: string | undefined): string {
  const dir = resolve(dirOption ?? (process.env.SECURECONNECT_HOME || join(homedir(), '.secureconnect')));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const run = join(dir, 'run');
  mkdirSync(run, { recursive: true, mode: 0o700 });
  // The lock and the delegation socket live here: only this user may reach them, whatever the home's mode.
  if (process.platform !== 'win32') chmodSync(run, 0o700);
  return dir;
}

function normalizeServer(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw usage(`--server: ${raw} is not a URL.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usage('--server: only http and https URLs are supported.');
  return url.toString().replace(/\/+$/, '');
}

/** Temp file (0600, exclusive) → fsync → rename: a reader sees the old file or the new one. */
function writeFileAtomic(path: string, data: string): void {
  const temp = `${path}.${process.pid}.tmp`;
  const fd = openSync(temp, 'wx', 0o600);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, path);
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new CliError('corrupt_home', `${path} is not valid JSON; fix or delete it.`);
  }
}

function readTokens(path: string): Tokens | null {
  const v = readJson(path) as Partial<Tokens> | undefined;
  if (v === undefined) return null;
  if (typeof v?.accessToken !== 'string' || typeof v.refreshToken !== 'string') throw new CliError('corrupt_home', `${path} does not hold tokens; delete it and log in again.`);
  return { accessToken: v.accessToken, refreshToken: v.refreshToken };
}

function readConfig(path: string): HomeConfig | null {
  const v = readJson(path) as Partial<HomeConfig> | undefined;
  if (v === undefined) return null;
  if (typeof v?.server !== 'string' || typeof v.userId !== 'string' || typeof v.username !== 'string' || typeof v.deviceName !== 'string') {
    throw new CliError('corrupt_home', `${path} is not a SecureConnect home configuration.`);
  }
  return { server: v.server, userId: v.userId, username: v.username, deviceName: v.deviceName, ...(typeof v.deviceId === 'string' ? { deviceId: v.deviceId } : {}) };
}

// ---- one process per device ----

interface LockHolder {
  pid: number;
  command: string;
}

/**
 * Takes the home's lock: two processes working on the same MLS group states
 * would fork them (each advancing its own copy). Returns the holder when
 * another live process has it; a lock left by a dead process is taken over.
 */
function tryLock(home: Home, command: string): { release(): void } | { holder: LockHolder } {
  const path = join(home.runDir, 'lock');
  const mine = JSON.stringify({ pid: process.pid, command });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try {
        writeSync(fd, mine);
      } finally {
        closeSync(fd);
      }
      const release = () => {
        try {
          if (readFileSync(path, 'utf8') === mine) rmSync(path, { force: true });
        } catch (err) {
          // Already gone (a user deleted it by hand): nothing to release.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      };
      process.once('exit', release);
      return { release };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder: LockHolder | undefined;
    try {
      const v = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockHolder>;
      if (typeof v.pid === 'number' && typeof v.command === 'string') holder = { pid: v.pid, command: v.command };
    } catch (err) {
      // Unreadable or half-written: treated as left over, unless it is gone already.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
    }
    if (holder && alive(holder.pid)) return { holder };
    rmSync(path, { force: true });
  }
  throw new CliError('home_busy', `Could not take the lock ${path}.`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function socketPath(home: Home): string {
  // Windows has no Unix sockets in directories; its named pipes are per machine, so the name carries the home.
  if (process.platform === 'win32') return `\\\\.\\pipe\\secureconnect-cli-${Buffer.from(home.dir).toString('hex').slice(-80)}`;
  return join(home.runDir, 'follow.sock');
}

// ---- online: device, session, messenger ----

interface Online {
  client: SecureConnectClient;
  session: Session;
  messenger: EncryptedMessenger;
  device: DeviceInfo;
  /** Resolves when the session ends for good (revoked, signed out). */
  ended: Promise<SessionClosed>;
  close(): Promise<void>;
}

/** The user stopped a command (Ctrl-C) while it was still connecting. */
class Stopped extends Error {
  constructor() {
    super('stopped');
  }
}

/**
 * Sets up (or binds) the device, connects the session and lets the
 * messenger process everything since the last run: replayed events arrive
 * before `start()` resolves, and the messages among them go to the inbox.
 * `deliver` gets every decrypted message (replayed ones too); by default
 * they wait in the inbox for the next `follow`. Without `until`, gives up
 * connecting after CONNECT_TIMEOUT_MS; with it, waits for the server until
 * `until` resolves (then throws Stopped).
 */
async function goOnline(
  home: Home,
  out: Out,
  opts: { until?: Promise<void>; deliver?: (m: DecryptedMessage, inbox: FileKeyStore, session: Session) => Promise<void> } = {},
): Promise<Online> {
  const client = home.requireClient();
  const keys = await FileKeyStore.open(join(home.dir, 'keys'));
  const inbox = await FileKeyStore.open(join(home.dir, 'inbox'));
  const session = createNodeSession({ client, cursorStore: keyStoreCursor(keys) });
  const messenger = new EncryptedMessenger({ client, session, keyStore: keys });
  let ended!: (closed: SessionClosed) => void;
  let device: DeviceInfo | undefined;
  const o: Online = {
    client, session, messenger,
    get device() {
      if (!device) throw new CliError('no_device', 'The device is not set up yet.');
      return device;
    },
    ended: new Promise((r) => (ended = r)),
    async close() {
      messenger.close();
      await session.close();
    },
  };
  messenger.on('message', async (m) => {
    if (opts.deliver) await opts.deliver(m, inbox, session);
    // Sent from this process: the user has seen it.
    else if (!m.own) await keepInInbox(inbox, m);
  });
  messenger.on('undecryptable', async (e) => {
    out.warn(`warning: ${e.kind} #${e.seq} of ${e.conversationId} from ${await home.nameOf(e.senderId)} could not be read (${e.reason})`);
  });
  messenger.on('devicesChanged', async (e) => {
    if (e.userId === device?.userId && e.rekeyed.length === 0) return;
    const who = await home.nameOf(e.userId);
    const what = [e.added.length ? `${e.added.length} added` : '', e.removed.length ? `${e.removed.length} removed` : '', e.rekeyed.length ? `${e.rekeyed.length} CHANGED KEYS` : '']
      .filter(Boolean)
      .join(', ');
    out.warn(`notice: ${who}'s devices changed (${what}); compare your safety number again (secureconnect-cli safety <conversation> ${who})`);
  });
  messenger.on('error', (e) => out.warn(`warning: ${e.context}: ${e.error.message}`));
  session.on('error', (e) => {
    // Failures the session retries by itself are not worth a line.
    if (e.kind === 'cursor_store' || (e.kind === 'handler' && e.willRetry === false)) out.warn(`warning: ${e.error.message}`);
  });
  session.on('closed', (e) => ended(e));
  try {
    device = await messenger.setupDevice(home.deviceName);
    if (home.config && home.config.deviceId !== device.deviceId) home.saveConfig({ ...home.config, deviceId: device.deviceId });
    const started = session.start();
    if (opts.until) {
      await Promise.race([started, opts.until.then(() => Promise.reject(new Stopped()))]);
    } else {
      await withTimeout(started, CONNECT_TIMEOUT_MS, () => new CliError('unavailable', `No realtime connection to ${home.server} within ${CONNECT_TIMEOUT_MS / 1000} s.`));
    }
  } catch (err) {
    await o.close();
    throw err;
  }
  return o;
}

async function withTimeout<T>(p: Promise<T>, ms: number, error: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(error()), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- inbox: messages decrypted while nobody was following ----

interface Kept {
  conversationId: string;
  seq: number;
  senderId: string;
  text: string;
  sentAt: string;
}

const INBOX_PREFIX = 'm/';

async function keepInInbox(inbox: FileKeyStore, m: DecryptedMessage): Promise<void> {
  const kept: Kept = { conversationId: m.conversationId, seq: m.seq, senderId: m.senderId, text: m.text, sentAt: m.sentAt };
  // ISO times sort as strings: the inbox lists in the order the messages were sent.
  await inbox.put(`${INBOX_PREFIX}${m.sentAt}/${m.conversationId}/${String(m.seq).padStart(12, '0')}`, new TextEncoder().encode(JSON.stringify(kept)));
}

async function* takeFromInbox(inbox: FileKeyStore, conversationId: string | null): AsyncGenerator<Kept> {
  for (const key of await inbox.list(INBOX_PREFIX)) {
    const bytes = await inbox.get(key);
    if (!bytes) continue;
    let kept: Kept;
    try {
      kept = JSON.parse(new TextDecoder().decode(bytes)) as Kept;
    } catch {
      await inbox.delete(key);
      continue;
    }
    if (conversationId !== null && kept.conversationId !== conversationId) continue;
    yield kept;
    // Deleted only once shown: an interrupted follow shows it again rather than never.
    await inbox.delete(key);
  }
}

// ---- lookups ----

async function resolveUser(client: SecureConnectClient, raw: string): Promise<{ id: string; username: string }> {
  const name = raw.replace(/^@/, '');
  if (!USERNAME_RE.test(name)) throw usage(`${raw} is not a username.`);
  const found = (await client.searchUsers(name, { limit: 20 })).items.find((u) => u.username.toLowerCase() === name.toLowerCase());
  if (!found) throw new CliError('not_found', `No user named ${name}.`);
  return { id: found.id, username: found.username };
}

async function allConversations(client: SecureConnectClient): Promise<Conversation[]> {
  const out: Conversation[] = [];
  let cursor: string | undefined;
  do {
    const page = await client.conversations({ limit: LIMITS.pageMax, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

/** A conversation argument: an id, or `@username` for the encrypted direct conversation with that user. */
async function resolveConversation(client: SecureConnectClient, raw: string): Promise<string> {
  if (ID_RE.test(raw)) return raw.toLowerCase();
  if (!raw.startsWith('@')) throw usage(`${raw} is neither a conversation id nor @username.`);
  const peer = await resolveUser(client, raw);
  const found = (await allConversations(client)).find(
    (c) => c.type === 'direct' && c.encryption === 'mls' && c.members.some((m) => m.userId === peer.id),
  );
  if (!found) throw new CliError('not_found', `No encrypted conversation with ${peer.username}: run \`secureconnect-cli open ${peer.username}\`.`);
  return found.id;
}

// ---- terminal output ----

/**
 * Text from other users, safe for a terminal: control characters (escape
 * sequences could rewrite the screen or forge lines) and bidirectional
 * overrides (they could disguise a line) are shown as escapes.
 */
function printable(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    const unsafe = c < 0x20 || (c >= 0x7f && c <= 0x9f) || c === 0x200e || c === 0x200f || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
    if (!unsafe) out += ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else out += `\\u{${c.toString(16)}}`;
  }
  return out;
}

async function messageLine(home: Home, m: { sentAt: string; conversationId: string; senderId: string; text: string }): Promise<string> {
  return `${m.sentAt} ${m.conversationId} ${await home.nameOf(m.senderId)}: ${printable(m.text)}`;
}

// ---- passwords and stdin ----

/** The password: typed without echo on a terminal (twice with `confirm`), else the first line of stdin. */
async function readPassword(confirm: boolean): Promise<string> {
  let password: string;
  if (process.stdin.isTTY) {
    password = await promptHidden('Password: ');
    if (confirm && (await promptHidden('Repeat password: ')) !== password) throw usage('The passwords do not match.');
  } else {
    const line = await readFirstLine();
    if (line === null) throw usage('No password on stdin (it is read from stdin, never from the command line).');
    password = line;
  }
  if (password.length === 0) throw usage('The password is empty.');
  return password;
}

async function readFirstLine(): Promise<string | null> {
  const rl = createInterface({ input: process.stdin, terminal: false, crlfDelay: Infinity });
  try {
    for await (const line of rl) return line;
    return null;
  } finally {
    rl.close();
  }
}

async function readAll(maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > maxBytes) throw new CliError('invalid_argument', `The text on stdin is longer than ${maxBytes} bytes.`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function promptHidden(prompt: string): Promise<string> {
  const input = process.stdin;
  process.stderr.write(prompt);
  input.setRawMode(true);
  input.setEncoding('utf8');
  input.resume();
  return new Promise((resolvePw, reject) => {
    let value = '';
    const finish = () => {
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
      process.stderr.write('\n');
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n' || (ch === '\u0004' && value !== '')) {
          finish();
          return resolvePw(value);
        }
        if (ch === '\u0003' || ch === '\u0004') {
          finish();
          return reject(new CliError('interrupted', 'No password entered.'));
        }
        if (ch === '\u007f' || ch === '\b') value = [...value].slice(0, -1).join('');
        else if (ch === '\u0015') value = '';
        else if (ch >= ' ') value += ch;
      }
    };
    input.on('data', onData);
  });
}

// ---- delegation to a running follow ----

type DelegateRequest = { v: 1; command: 'send'; conversationId: string; text: string } | { v: 1; command: 'open'; usernames: string[]; title?: string };
interface DelegateReply {
  exitCode: number;
  stdout: string[];
  stderr: string[];
}

/** Serves `send` and `open` of other processes on this home while `follow` holds the lock. */
function serveDelegates(home: Home, o: Online, out: Out): Promise<Server | null> {
  const path = socketPath(home);
  if (process.platform !== 'win32') rmSync(path, { force: true });
  const server = createServer((sock) => void handleDelegate(home, o, sock));
  return new Promise((resolveServer) => {
    server.once('error', (err) => {
      // Following still works; other commands then report the home as busy.
      out.warn(`warning: other commands cannot hand their work to this follow (${err.message})`);
      resolveServer(null);
    });
    server.listen(path, () => {
      if (process.platform !== 'win32') chmodSync(path, 0o600);
      resolveServer(server);
    });
  });
}

async function handleDelegate(home: Home, o: Online, sock: Socket): Promise<void> {
  const reply: DelegateReply = { exitCode: 0, stdout: [], stderr: [] };
  const out: Out = { print: (l) => void reply.stdout.push(l), warn: (l) => void reply.stderr.push(l) };
  try {
    const req = await readRequest(sock);
    if (req.command === 'send') await sendText(o, req.conversationId, req.text);
    else await openWith(home, o, out, req.usernames, req.title);
  } catch (err) {
    const e = describeError(err);
    reply.exitCode = e.exitCode;
    reply.stderr.push(`error: ${e.code}: ${e.message}`);
  }
  sock.end(`${JSON.stringify(reply)}\n`);
}

function readRequest(sock: Socket): Promise<DelegateRequest> {
  return new Promise((resolveReq, reject) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > DELEGATE_MAX_BYTES) {
        sock.destroy();
        return reject(new CliError('invalid_argument', 'The request is too large.'));
      }
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.removeAllListeners('data');
      try {
        resolveReq(parseRequest(JSON.parse(buf.slice(0, nl)) as unknown));
      } catch (err) {
        reject(err instanceof CliError ? err : new CliError('invalid_argument', 'Malformed request.'));
      }
    });
    sock.on('error', reject);
  });
}

function parseRequest(v: unknown): DelegateRequest {
  const r = v as Record<string, unknown>;
  const bad = () => new CliError('invalid_argument', 'Malformed request.');
  if (typeof r !== 'object' || r === null || r.v !== 1) throw bad();
  if (r.command === 'send' && typeof r.conversationId === 'string' && typeof r.text === 'string') return { v: 1, command: 'send', conversationId: r.conversationId, text: r.text };
  if (r.command === 'open' && Array.isArray(r.usernames) && r.usernames.every((u) => typeof u === 'string') && (r.title === undefined || typeof r.title === 'string')) {
    return { v: 1, command: 'open', usernames: r.usernames, ...(typeof r.title === 'string' ? { title: r.title } : {}) };
  }
  throw bad();
}

/** Hands a command to the follow process that holds the home; its output becomes ours. */
async function delegate(home: Home, holder: LockHolder, req: DelegateRequest, out: Out): Promise<void> {
  const busy = () => new CliError('home_busy', `${home.dir} is in use by secureconnect-cli ${holder.command} (pid ${holder.pid}); wait for it or stop it.`);
  if (holder.command !== 'follow') throw busy();
  const text = await withTimeout(
    new Promise<string>((resolveText, reject) => {
      const sock = createConnection(socketPath(home));
      let buf = '';
      sock.setEncoding('utf8');
      sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
      sock.on('data', (chunk: string) => (buf += chunk));
      sock.on('end', () => resolveText(buf));
      sock.on('error', () => reject(busy()));
    }),
    DELEGATE_TIMEOUT_MS,
    () => new CliError('unavailable', `The follow process (pid ${holder.pid}) did not answer.`),
  );
  let reply: DelegateReply;
  try {
    reply = JSON.parse(text) as DelegateReply;
  } catch {
    throw busy();
  }
  for (const l of reply.stdout) out.print(l);
  for (const l of reply.stderr) out.warn(l);
  if (reply.exitCode !== 0) throw new Reported(reply.exitCode);
}

/** The error was already written (by the process we delegated to); only the exit status is left. */
class Reported extends Error {
  constructor(readonly exitCode: number) {
    super('reported');
  }
}

/**
 * Runs `fn` online with the home locked; when a `follow` holds the home,
 * `delegated` (if given) hands the work to it instead.
 */
async function exclusive(home: Home, command: string, out: Out, fn: () => Promise<void>, delegated?: DelegateRequest): Promise<void> {
  const lock = tryLock(home, command);
  if ('holder' in lock) {
    if (delegated) return delegate(home, lock.holder, delegated, out);
    throw new CliError('home_busy', `${home.dir} is in use by secureconnect-cli ${lock.holder.command} (pid ${lock.holder.pid}); stop it first.`);
  }
  try {
    await fn();
  } finally {
    lock.release();
  }
}

// ---- commands ----

async function sendText(o: Online, conversationId: string, text: string): Promise<void> {
  await o.messenger.send(conversationId, text);
  // Reads our own message back from the log while this process still knows its text; otherwise a later run would meet it as undecryptable.
  await o.messenger.sync();
}

async function openWith(home: Home, o: Online, out: Out, usernames: string[], title: string | undefined): Promise<void> {
  const users = [];
  for (const u of usernames) users.push(await resolveUser(o.client, u));
  const others = users.filter((u) => u.id !== o.device.userId);
  if (others.length === 0) throw usage('Name at least one other user.');
  const groupTitle = title ?? (others.length > 1 ? [home.config?.username ?? 'me', ...others.map((u) => u.username)].join(', ').slice(0, LIMITS.titleMaxChars) : undefined);
  const opened = await o.messenger.openConversation(
    others.map((u) => u.id),
    groupTitle !== undefined ? { title: groupTitle } : {},
  );
  for (const m of opened.missing) {
    out.warn(`notice: a device of ${await home.nameOf(m.userId)} had no key package; it can join later by itself`);
  }
  out.print(opened.conversation.id);
}

type Handler = (home: Home, args: string[], values: Values, out: Out) => Promise<void>;

interface CommandSpec {
  args: [min: number, max: number];
  options: OptionName[];
  run: Handler;
}

const COMMANDS: Record<string, CommandSpec> = {
  register: {
    args: [0, 0],
    options: ['email', 'username', 'password-stdin', 'device-name'],
    async run(home, _args, values, out) {
      if (!values.email || !values.username) throw usage('register needs --email and --username.');
      if (home.config) throw new CliError('home_in_use', `${home.dir} holds the device of ${home.config.username}; use another --home for a new account.`);
      await exclusive(home, 'register', out, async () => {
        const password = await readPassword(true);
        const client = new SecureConnectClient({ baseUrl: home.server });
        const res = await client.register({ email: values.email!, username: values.username!, password, device: home.deviceName });
        home.signIn({ accessToken: res.accessToken, refreshToken: res.refreshToken });
        home.saveConfig({ server: home.server, userId: res.user.id, username: res.user.username, deviceName: home.deviceName });
        const o = await goOnline(home, out);
        try {
          out.print(`registered ${res.user.username}; this device is ${o.device.deviceId}`);
        } finally {
          await o.close();
        }
      });
    },
  },

  login: {
    args: [1, 1],
    options: ['password-stdin', 'device-name'],
    async run(home, [login], _values, out) {
      const config = home.config;
      if (config && !login!.includes('@') && login!.toLowerCase() !== config.username.toLowerCase()) {
        throw new CliError('home_in_use', `${home.dir} holds the device of ${config.username}; use another --home for ${login}.`);
      }
      await exclusive(home, 'login', out, async () => {
        const password = await readPassword(false);
        const fresh = new SecureConnectClient({ baseUrl: home.server });
        const res = await fresh.login(login!, password, home.deviceName);
        if (config && res.user.id !== config.userId) {
          await fresh.logout();
          throw new CliError('home_in_use', `${home.dir} holds the device of ${config.username}; use another --home for ${res.user.username}.`);
        }
        const previous = readTokens(home.tokensPath);
        home.signIn({ accessToken: res.accessToken, refreshToken: res.refreshToken });
        home.saveConfig({ ...(config ?? {}), server: home.server, userId: res.user.id, username: res.user.username, deviceName: home.deviceName });
        if (previous) {
          // The session this home had before: ended so that it does not linger on the server.
          await new SecureConnectClient({ baseUrl: home.server, tokens: previous }).logout().catch(() => undefined);
        }
        const o = await goOnline(home, out);
        try {
          const joined = await o.messenger.addMyNewDevice();
          out.print(`signed in as ${res.user.username}; this device is ${o.device.deviceId}${o.device.created ? ' (new)' : ''}`);
          if (joined.length) out.print(`joined ${joined.length} encrypted conversation${joined.length > 1 ? 's' : ''}`);
        } finally {
          await o.close();
        }
      });
    },
  },

  conversations: {
    args: [0, 0],
    options: [],
    async run(home, _args, _values, out) {
      const client = home.requireClient();
      const me = home.config?.userId ?? (await client.me()).id;
      for (const c of await allConversations(client)) {
        let name: string;
        if (c.type === 'group') name = printable(c.title ?? '(untitled)');
        else name = `@${await home.nameOf(c.members.find((m) => m.userId !== me)?.userId ?? me)}`;
        out.print(`${c.id}\t${name}\t${c.encryption}\t${c.unreadCount}`);
      }
    },
  },

  open: {
    args: [1, LIMITS.groupCreateMaxMembers],
    options: ['title'],
    async run(home, usernames, values, out) {
      home.requireClient();
      const req: DelegateRequest = { v: 1, command: 'open', usernames, ...(values.title !== undefined ? { title: values.title } : {}) };
      await exclusive(
        home, 'open', out,
        async () => {
          const o = await goOnline(home, out);
          try {
            await openWith(home, o, out, usernames, values.title);
          } finally {
            await o.close();
          }
        },
        req,
      );
    },
  },

  send: {
    args: [2, Infinity],
    options: [],
    async run(home, [target, ...words], _values, out) {
      const client = home.requireClient();
      const conversationId = await resolveConversation(client, target!);
      const text = words.length === 1 && words[0] === '-' ? (await readAll(LIMITS.textMaxChars * 4)).replace(/\r?\n$/, '') : words.join(' ');
      if (text.length === 0) throw usage('The message is empty.');
      await exclusive(
        home, 'send', out,
        async () => {
          const o = await goOnline(home, out);
          try {
            await sendText(o, conversationId, text);
          } finally {
            await o.close();
          }
        },
        { v: 1, command: 'send', conversationId, text },
      );
    },
  },

  follow: {
    args: [0, 1],
    options: [],
    async run(home, [target], _values, out) {
      const client = home.requireClient();
      const only = target === undefined ? null : await resolveConversation(client, target);
      // Installed first: Ctrl-C must end a follow that is still waiting for the server.
      let stop!: () => void;
      const stopped = new Promise<void>((r) => (stop = r));
      const onSignal = () => {
        process.once('SIGINT', () => process.exit(130));
        stop();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      await exclusive(home, 'follow', out, async () => {
        /** Highest seq shown per conversation: the read position the server gets. */
        const shown = new Map<string, number>();
        const show = async (m: { sentAt: string; conversationId: string; senderId: string; text: string; seq: number }) => {
          out.print(await messageLine(home, m));
          shown.set(m.conversationId, Math.max(m.seq, shown.get(m.conversationId) ?? 0));
        };
        const inbox = await FileKeyStore.open(join(home.dir, 'inbox'));
        for await (const kept of takeFromInbox(inbox, only)) await show(kept);
        const deliver = async (m: DecryptedMessage, store: FileKeyStore, session: Session) => {
          if (only !== null && m.conversationId !== only) return keepInInbox(store, m);
          await show(m);
          session.markRead(m.conversationId, m.seq);
        };
        let o: Online;
        try {
          o = await goOnline(home, out, { until: stopped, deliver });
        } catch (err) {
          if (err instanceof Stopped) return;
          throw err;
        }
        try {
          for (const [conversationId, seq] of shown) o.session.markRead(conversationId, seq);
          let down = false;
          o.session.on('state', (s) => {
            if (s.state === 'closed' && s.willReconnect && !down) {
              down = true;
              out.warn(`notice: connection lost (${s.reason}); reconnecting`);
            } else if (s.state === 'open' && down) {
              down = false;
              out.warn('notice: reconnected');
            }
          });
          await o.messenger.sync();
          const server = await serveDelegates(home, o, out);
          out.warn(`following ${only ?? 'all conversations'} as ${home.config?.username ?? o.device.userId}; Ctrl-C to stop`);
          const ended = await Promise.race([stopped.then(() => null), o.ended]);
          server?.close();
          if (ended) throw new CliError(`session_${ended.reason}`, ended.message);
        } finally {
          await o.close();
        }
        // Reads still queued in the closed session would be lost; the server only ever moves a read position forward.
        for (const [conversationId, seq] of shown) await client.markRead(conversationId, seq).catch(() => undefined);
      });
    },
  },

  safety: {
    args: [2, 2],
    options: [],
    async run(home, [target, username], _values, out) {
      const client = home.requireClient();
      const conversationId = await resolveConversation(client, target!);
      const peer = await resolveUser(client, username!);
      const keys = await FileKeyStore.open(join(home.dir, 'keys'));
      // Never started: the safety number needs the device and the key directory only.
      const session = createNodeSession({ client });
      const messenger = new EncryptedMessenger({ client, session, keyStore: keys });
      try {
        const sn = await messenger.safetyNumber(conversationId, peer.id);
        out.print(sn.display);
        out.print(`qr ${sn.qr}`);
      } catch (err) {
        if (err instanceof E2eeError && err.code === 'no_device') throw new CliError('no_device', 'This home has no device yet: run `secureconnect-cli login <username>` first.');
        throw err;
      } finally {
        messenger.close();
        await session.close();
      }
    },
  },

  devices: {
    args: [0, 1],
    options: [],
    async run(home, [username], _values, out) {
      const client = home.requireClient();
      const userId = username === undefined ? (home.config?.userId ?? (await client.me()).id) : (await resolveUser(client, username)).id;
      for (const d of await client.devices(userId)) {
        const mark = d.id === home.config?.deviceId ? '\tthis device' : '';
        out.print(`${d.id}\t${printable(d.name)}\tadded ${d.createdAt}\tseen ${d.lastSeenAt ?? '-'}${mark}`);
      }
    },
  },

  logout: {
    args: [0, 0],
    options: [],
    async run(home, _args, _values, out) {
      if (!home.signedIn) {
        out.warn('not signed in');
        return;
      }
      // The client forgets the tokens (and deletes the file) even when the server cannot be told.
      await home.client.logout();
      out.print('signed out; the device keys stay in this home for the next login');
    },
  },
};

// ---- errors and main ----

function describeError(err: unknown): { code: string; message: string; exitCode: number } {
  if (err instanceof CliError) return { code: err.code, message: err.message, exitCode: err.exitCode };
  if (err instanceof SecureConnectError || err instanceof E2eeError || err instanceof CryptoError) return { code: err.code, message: err.message, exitCode: 1 };
  if (err instanceof SessionError) return { code: err.reason ? `session_${err.reason}` : err.code, message: err.message, exitCode: 1 };
  if (err instanceof KeyStoreError) return { code: 'key_store', message: err.message, exitCode: 1 };
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) return { code: 'usage', message: (err as Error).message, exitCode: 2 };
  const message = err instanceof Error ? err.message : String(err);
  return { code: typeof code === 'string' ? code : 'internal', message, exitCode: 1 };
}

async function main(argv: string[]): Promise<number> {
  if (argv.some((a) => a === '--password' || a.startsWith('--password='))) {
    throw usage('Passwords are never taken from the command line (other users can read it); they are read from stdin.');
  }
  const { values, positionals } = parse(argv);
  const [name, ...args] = positionals;
  if (values.help || name === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (name === undefined) throw usage('No command given.');
  const spec = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!spec) throw usage(`Unknown command ${name}.`);
  const foreign = (Object.keys(values) as OptionName[]).filter((k) => k !== 'server' && k !== 'home' && !spec.options.includes(k));
  if (foreign.length) throw usage(`${name} takes no --${foreign[0]}.`);
  const [min, max] = spec.args;
  if (args.length < min || args.length > max) throw usage(`${name}: wrong number of arguments.`);
  const home = new Home(openHome(values.home), values.server, values['device-name']);
  await spec.run(home, args, values, stdio);
  return 0;
}

async function flush(): Promise<void> {
  await new Promise<void>((r) => process.stdout.write('', () => r()));
  await new Promise<void>((r) => process.stderr.write('', () => r()));
}

// A bug must still end with one line and status 1, not a stack trace.
const crash = (err: unknown) => {
  process.stderr.write(`error: internal: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
};
process.on('uncaughtException', crash);
process.on('unhandledRejection', crash);

let exitCode: number;
try {
  exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof Reported) {
    exitCode = err.exitCode;
  } else {
    const e = describeError(err);
    process.stderr.write(`error: ${e.code}: ${e.message}\n`);
    if (e.exitCode === 2) process.stderr.write('Run secureconnect-cli --help for usage.\n');
    exitCode = e.exitCode;
  }
}
await flush();
// Idle keep-alive sockets of fetch would hold the process open for seconds after the work is done.
process.exit(exitCode);
