/**
 * Where a client keeps its secrets: device signature keys, private key
 * packages, MLS group states. Values are opaque bytes; keys are names chosen
 * by the SDK (e.g. `device/key`, `group/<conversationId>`).
 *
 * The SDK ships {@link MemoryKeyStore} (tests, ephemeral clients) and, for
 * Node, `FileKeyStore` (`@secureconnect/sdk/node`); the browser store
 * (IndexedDB) comes with the web app. None of them encrypts at rest: the
 * file store relies on file permissions (0600 in a 0700 directory). An app
 * that needs more wraps a store and seals values with a key from the OS
 * keychain (Keychain, DPAPI, libsecret) or a WebCrypto non-extractable key;
 * that choice belongs to the app, which knows its platform.
 */
import type { CursorStore } from './session.js';

/** Persistent map from names to bytes. Every method may reject on I/O failure. */
export interface KeyStore {
  /** The value stored under `key`, or undefined. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** Stores `value` under `key`, replacing any previous value, atomically: a reader sees the old or the new value, never a mix. */
  put(key: string, value: Uint8Array): Promise<void>;
  /** Removes `key`; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Every stored key that starts with `prefix`, sorted. */
  list(prefix: string): Promise<string[]>;
}

/** Longest key, in UTF-8 bytes: every store must be able to hold it (a file name is at most 255 bytes). */
export const KEY_MAX_BYTES = 150;

/** A key store method was given a name it refuses (empty, too long, not a string). */
export class KeyStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyStoreError';
  }
}

/**
 * Checks a key name: 1 to {@link KEY_MAX_BYTES} UTF-8 bytes, no NUL. Any
 * other character is allowed (stores encode names; none is a path).
 * Returns the UTF-8 bytes.
 */
export function checkKey(key: string): Uint8Array {
  if (typeof key !== 'string' || key.length === 0) throw new KeyStoreError('Key must be a non-empty string.');
  if (key.includes('\0')) throw new KeyStoreError('Key must not contain NUL.');
  const bytes = new TextEncoder().encode(key);
  if (bytes.length > KEY_MAX_BYTES) throw new KeyStoreError(`Key is longer than ${KEY_MAX_BYTES} UTF-8 bytes.`);
  return bytes;
}

/** A {@link KeyStore} in memory: gone with the process. Values are copied in and out, so callers cannot alter what is stored. */
export class MemoryKeyStore implements KeyStore {
  private readonly entries = new Map<string, Uint8Array>();

  get(key: string): Promise<Uint8Array | undefined> {
    return settle(() => {
      checkKey(key);
      return this.entries.get(key)?.slice();
    });
  }

  put(key: string, value: Uint8Array): Promise<void> {
    return settle(() => {
      checkKey(key);
      if (!(value instanceof Uint8Array)) throw new KeyStoreError('Value must be a Uint8Array.');
      this.entries.set(key, value.slice());
    });
  }

  delete(key: string): Promise<void> {
    return settle(() => {
      checkKey(key);
      this.entries.delete(key);
    });
  }

  list(prefix: string): Promise<string[]> {
    return settle(() => [...this.entries.keys()].filter((k) => k.startsWith(prefix)).sort());
  }
}

/** Runs `fn` so that a throw becomes a rejection, as from any other (I/O-backed) store. */
function settle<T>(fn: () => T): Promise<T> {
  return new Promise<T>((resolve) => resolve(fn()));
}

/**
 * A {@link CursorStore} that keeps the session's resume cursor in a key
 * store under `key`, so a restarted client resumes where it stopped.
 */
export function keyStoreCursor(store: KeyStore, key = 'session/cursor'): CursorStore {
  return {
    async load() {
      const v = await store.get(key);
      return v ? new TextDecoder().decode(v) : null;
    },
    async save(cursor) {
      if (cursor === null) await store.delete(key);
      else await store.put(key, new TextEncoder().encode(cursor));
    },
  };
}
