/**
 * Test kit for the E2EE layer against a real server: accounts, devices (each
 * its own login, key store, session and EncryptedMessenger) and a log of
 * every messenger event with a polling wait.
 */
import { uid, type Running } from '../../server/test/helpers.js';
import { createNodeSession } from '../src/node/index.js';
import {
  EncryptedMessenger, MemoryKeyStore, SecureConnectClient, keyStoreCursor,
  type CipherSuiteId, type DecryptedMessage, type DeviceInfo, type DevicesChanged, type JoinedGroup, type KeyStore, type MessengerErrorEvent,
  type MessengerSession, type Session, type UndecryptableMessage,
} from '../src/index.js';

export interface Account {
  id: string;
  username: string;
  password: string;
}

export async function signUp(s: Pick<Running, 'url'>, prefix = 'e2'): Promise<Account> {
  const username = `${prefix}${uid(4)}`;
  const password = `pw-${uid(8)}`;
  const c = new SecureConnectClient({ baseUrl: s.url });
  const res = await c.register({ email: `${username}@example.test`, username, password });
  return { id: res.user.id, username, password };
}

/** Everything a messenger emitted, in order. */
export class EventLog {
  messages: DecryptedMessage[] = [];
  undecryptable: UndecryptableMessage[] = [];
  joined: JoinedGroup[] = [];
  removed: string[] = [];
  changes: DevicesChanged[] = [];
  errors: MessengerErrorEvent[] = [];

  constructor(m: EncryptedMessenger) {
    m.on('message', (e) => void this.messages.push(e));
    m.on('undecryptable', (e) => void this.undecryptable.push(e));
    m.on('joined', (e) => void this.joined.push(e));
    m.on('removed', (e) => void this.removed.push(e.conversationId));
    m.on('devicesChanged', (e) => void this.changes.push(e));
    m.on('error', (e) => void this.errors.push(e));
  }

  texts(conversationId: string): string[] {
    return this.messages.filter((m) => m.conversationId === conversationId).map((m) => m.text);
  }
}

/** Polls until `check` returns a truthy value (returned) or the time is up. */
export async function waitFor<T>(check: () => T | Promise<T>, what: string, timeoutMs = 20_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface DeviceOptions {
  suite?: CipherSuiteId;
  /** Reuse a key store (a restarted client). */
  store?: KeyStore;
  /** Reuse a signed-in client (same server session). */
  client?: SecureConnectClient;
  /** Wrap the session the messenger sees (e.g. to tamper with sends). */
  wrap?: (session: Session) => MessengerSession;
  /** Do not start the session (the device is "offline" for events). */
  offline?: boolean;
}

export interface TestDevice {
  account: Account;
  client: SecureConnectClient;
  store: KeyStore;
  session: Session;
  messenger: EncryptedMessenger;
  info: DeviceInfo;
  log: EventLog;
  /** mlsCommit answers that were 409 epoch_conflict. */
  conflicts: unknown[];
  /** Closes the session and detaches the messenger (the key store survives). */
  stop(): Promise<void>;
}

/** A device of `account`: its own login (unless `client` is given), key store, session and messenger; setupDevice done. */
export async function openDevice(s: Pick<Running, 'url'>, account: Account, name: string, opts: DeviceOptions = {}): Promise<TestDevice> {
  let client = opts.client;
  if (!client) {
    client = new SecureConnectClient({ baseUrl: s.url });
    await client.login(account.username, account.password, name);
  }
  const conflicts: unknown[] = [];
  const mlsCommit = client.mlsCommit.bind(client);
  client.mlsCommit = async (conversationId, body) => {
    try {
      return await mlsCommit(conversationId, body);
    } catch (err) {
      if ((err as { code?: string }).code === 'epoch_conflict') conflicts.push(err);
      throw err;
    }
  };
  const store = opts.store ?? new MemoryKeyStore();
  const session = createNodeSession({ client, cursorStore: keyStoreCursor(store), backoff: { initialMs: 50, maxMs: 500 } });
  const messenger = new EncryptedMessenger({
    client, session: opts.wrap ? opts.wrap(session) : session, keyStore: store, cipherSuite: opts.suite ?? 1, keyPackageBatch: 12,
  });
  const log = new EventLog(messenger);
  const info = await messenger.setupDevice(name);
  if (!opts.offline) await session.start();
  return {
    account, client, store, session, messenger, info, log, conflicts,
    async stop() {
      messenger.close();
      await session.close();
    },
  };
}

/** Makes the first `n` callers of `fn` wait for each other, so their calls start together. */
export function barrier<A extends unknown[], R>(n: number, fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  let waiting = 0;
  let release!: () => void;
  const all = new Promise<void>((r) => (release = r));
  return async (...args: A) => {
    if (waiting < n) {
      waiting++;
      if (waiting === n) release();
      await all;
    }
    return fn(...args);
  };
}
