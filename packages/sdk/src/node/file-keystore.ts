import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { KeyStoreError, checkKey, type KeyStore } from '../keystore.js';

/** Prefix of value files; temp files start with a dot, so the two never meet. */
const FILE_PREFIX = 'k-';
const TEMP_PREFIX = '.tmp-';
/** Temp files older than this are leftovers of a crash (a live write takes milliseconds). */
const STALE_TEMP_MS = 10 * 60_000;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/**
 * A {@link KeyStore} in a directory: one file per key.
 *
 * - The directory is created with mode 0700 (and tightened to it if it
 *   exists); files are 0600. Nothing is encrypted at rest: see keystore.ts
 *   for wrapping a store with an OS keychain key.
 * - File names are `k-` + the key's UTF-8 bytes in lowercase base32: no key
 *   can name a path (`../x`, `/etc`, `a/b`), a dot file, a reserved Windows
 *   name, or collide with another on a case-insensitive file system.
 * - Writes are atomic and durable: temp file (0600, exclusive create) →
 *   write → fsync → rename over the old file → fsync the directory. A crash
 *   leaves the old value or the new one; leftover temp files are removed by
 *   {@link FileKeyStore.open}.
 */
export class FileKeyStore implements KeyStore {
  private constructor(readonly dir: string) {}

  /** Opens (creating if needed) the store in `dir`. */
  static async open(dir: string): Promise<FileKeyStore> {
    const abs = resolve(dir);
    await mkdir(abs, { recursive: true, mode: 0o700 });
    // mkdir leaves an existing directory's mode alone, and the umask may have narrowed the new one's.
    if (process.platform !== 'win32') await chmod(abs, 0o700);
    const store = new FileKeyStore(abs);
    await store.removeStaleTemps();
    return store;
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const path = this.pathOf(key);
    try {
      return new Uint8Array(await readFile(path));
    } catch (err) {
      if (isCode(err, 'ENOENT')) return undefined;
      throw err;
    }
  }

  async put(key: string, value: Uint8Array): Promise<void> {
    const path = this.pathOf(key);
    if (!(value instanceof Uint8Array)) throw new KeyStoreError('Value must be a Uint8Array.');
    const temp = join(this.dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const fh = await open(temp, 'wx', 0o600);
    try {
      await fh.writeFile(value);
      await fh.sync();
    } catch (err) {
      await fh.close();
      await unlink(temp);
      throw err;
    }
    await fh.close();
    try {
      await rename(temp, path);
    } catch (err) {
      await unlink(temp);
      throw err;
    }
    await this.syncDir();
  }

  async delete(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await unlink(path);
    } catch (err) {
      if (isCode(err, 'ENOENT')) return;
      throw err;
    }
    await this.syncDir();
  }

  async list(prefix: string): Promise<string[]> {
    const names = await readdir(this.dir);
    const keys: string[] = [];
    for (const name of names) {
      if (!name.startsWith(FILE_PREFIX)) continue;
      const key = decodeName(name.slice(FILE_PREFIX.length));
      if (key !== undefined && key.startsWith(prefix)) keys.push(key);
    }
    return keys.sort();
  }

  /** The file that holds `key` (exposed for tests and diagnostics). */
  pathOf(key: string): string {
    return join(this.dir, FILE_PREFIX + base32(checkKey(key)));
  }

  /** Makes a rename or unlink durable: the directory entry itself must reach the disk. */
  private async syncDir(): Promise<void> {
    // Windows cannot open a directory for fsync; NTFS journals the rename itself.
    if (process.platform === 'win32') return;
    const dh = await open(this.dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }

  private async removeStaleTemps(): Promise<void> {
    const cutoff = Date.now() - STALE_TEMP_MS;
    for (const name of await readdir(this.dir)) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      const path = join(this.dir, name);
      try {
        if ((await stat(path)).mtimeMs < cutoff) await rm(path, { force: true });
      } catch (err) {
        // Another process finished (renamed) or cleaned it meanwhile.
        if (!isCode(err, 'ENOENT')) throw err;
      }
    }
  }
}

function base32(bytes: Uint8Array): string {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const b of bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
    buffer &= (1 << bits) - 1;
  }
  if (bits > 0) out += BASE32[(buffer << (5 - bits)) & 31];
  return out;
}

/** Inverse of base32; undefined for names this store did not write. */
function decodeName(name: string): string | undefined {
  const bytes: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const ch of name) {
    const v = BASE32.indexOf(ch);
    if (v < 0) return undefined;
    buffer = (buffer << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bytes.push((buffer >>> (bits - 8)) & 255);
      bits -= 8;
    }
    buffer &= (1 << bits) - 1;
  }
  // Canonical encodings only: leftover bits must be zero padding of fewer than 5 bits.
  if (bits >= 5 || buffer !== 0) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    // Not UTF-8: not a name this store wrote.
    return undefined;
  }
}

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}
