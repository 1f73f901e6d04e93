import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KEY_MAX_BYTES, KeyStoreError, MemoryKeyStore, keyStoreCursor, type KeyStore } from '../src/index.js';
import { FileKeyStore } from '../src/node/index.js';

const roots: string[] = [];
const tempRoot = () => {
  const d = mkdtempSync(join(tmpdir(), 'sc-keystore-'));
  roots.push(d);
  return d;
};
afterAll(() => {
  for (const d of roots) rmSync(d, { recursive: true, force: true });
});

const bytes = (...v: number[]) => new Uint8Array(v);
const posix = process.platform !== 'win32';

const stores: [string, () => Promise<KeyStore>][] = [
  ['MemoryKeyStore', () => Promise.resolve(new MemoryKeyStore())],
  ['FileKeyStore', () => FileKeyStore.open(join(tempRoot(), 'keys'))],
];

describe.each(stores)('%s', (_name, make) => {
  it('stores, replaces, lists by prefix (sorted) and deletes', async () => {
    const s = await make();
    expect(await s.get('device/key')).toBeUndefined();
    await s.put('device/key', bytes(1, 2, 3));
    await s.put('group/b', bytes(4));
    await s.put('group/a', bytes(5));
    expect(await s.get('device/key')).toEqual(bytes(1, 2, 3));
    await s.put('device/key', bytes(9));
    expect(await s.get('device/key')).toEqual(bytes(9));
    expect(await s.list('group/')).toEqual(['group/a', 'group/b']);
    expect(await s.list('')).toEqual(['device/key', 'group/a', 'group/b']);
    await s.delete('group/a');
    await s.delete('group/a'); // a missing key is not an error
    expect(await s.get('group/a')).toBeUndefined();
    expect(await s.list('group/')).toEqual(['group/b']);
    await s.put('empty', new Uint8Array(0));
    expect(await s.get('empty')).toEqual(new Uint8Array(0));
  });

  it('keeps its own copy of values', async () => {
    const s = await make();
    const v = bytes(1, 2, 3);
    await s.put('k', v);
    v[0] = 99;
    const out = (await s.get('k'))!;
    expect(out).toEqual(bytes(1, 2, 3));
    out[1] = 99;
    expect(await s.get('k')).toEqual(bytes(1, 2, 3));
  });

  it('refuses empty, NUL-containing and over-long keys with a rejection, and accepts the longest allowed', async () => {
    const s = await make();
    await expect(s.put('', bytes(1))).rejects.toBeInstanceOf(KeyStoreError);
    await expect(s.get('a\0b')).rejects.toBeInstanceOf(KeyStoreError);
    await expect(s.put('x'.repeat(KEY_MAX_BYTES + 1), bytes(1))).rejects.toBeInstanceOf(KeyStoreError);
    // 3-byte UTF-8 characters: the limit is in bytes, not characters.
    await expect(s.put('€'.repeat(KEY_MAX_BYTES / 3 + 1), bytes(1))).rejects.toBeInstanceOf(KeyStoreError);
    const longest = '€'.repeat(KEY_MAX_BYTES / 3);
    await s.put(longest, bytes(7));
    expect(await s.get(longest)).toEqual(bytes(7));
    await expect(s.put('v', 'not bytes' as unknown as Uint8Array)).rejects.toBeInstanceOf(KeyStoreError);
  });

  it('keeps a session cursor (keyStoreCursor)', async () => {
    const s = await make();
    const c = keyStoreCursor(s);
    expect(await c.load()).toBeNull();
    await c.save('12345');
    expect(await c.load()).toBe('12345');
    await c.save(null);
    expect(await c.load()).toBeNull();
  });
});

describe('FileKeyStore on disk', () => {
  it.skipIf(!posix)('creates its directory 0700, tightens an existing one, and writes files 0600 whatever the umask', async () => {
    const root = tempRoot();
    const fresh = await FileKeyStore.open(join(root, 'a', 'b'));
    expect(statSync(fresh.dir).mode & 0o777).toBe(0o700);

    const loose = join(root, 'loose');
    mkdirSync(loose, { mode: 0o755 });
    const s = await FileKeyStore.open(loose);
    expect(statSync(loose).mode & 0o777).toBe(0o700);

    const old = process.umask(0);
    try {
      await s.put('secret', bytes(1, 2, 3));
      await s.put('secret', bytes(4, 5, 6)); // a replacement too
    } finally {
      process.umask(old);
    }
    expect(statSync(s.pathOf('secret')).mode & 0o777).toBe(0o600);
  });

  it('maps every key to a plain file inside its directory: no traversal, no dot files, no case collisions', async () => {
    const root = tempRoot();
    const dir = join(root, 'store');
    const s = await FileKeyStore.open(dir);
    const keys = ['../../escape', '/etc/passwd', 'a/b', '..', '.', '.hidden', 'CON', 'con', 'A', 'a', 'C:\\x', 'nul.txt', 'ключ', '%2e%2e', 'k-abc'];
    for (const [i, k] of keys.entries()) await s.put(k, bytes(i));
    for (const [i, k] of keys.entries()) expect(await s.get(k), k).toEqual(bytes(i));
    expect(await s.list('')).toEqual([...keys].sort());
    // Only the store's directory appeared under the root, and it holds one flat file per key.
    expect(readdirSync(root)).toEqual(['store']);
    const names = readdirSync(dir);
    expect(names).toHaveLength(keys.length);
    for (const n of names) expect(n).toMatch(/^k-[a-z2-7]+$/);
    // Case-insensitive file systems cannot merge two keys: names are lowercase only, so distinct keys give distinct lowercase names.
    expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(keys.length);
  });

  it('ignores files it did not write', async () => {
    const dir = join(tempRoot(), 'store');
    const s = await FileKeyStore.open(dir);
    await s.put('mine', bytes(1));
    writeFileSync(join(dir, 'README'), 'x');
    writeFileSync(join(dir, 'k-0'), 'x'); // not base32
    writeFileSync(join(dir, 'k-aaa'), 'x'); // not a canonical encoding
    expect(await s.list('')).toEqual(['mine']);
  });

  it('replaces values atomically: concurrent readers see the old or the new value, never a torn one, and no temp file remains', async () => {
    const dir = join(tempRoot(), 'store');
    const s = await FileKeyStore.open(dir);
    const size = 1 << 18;
    await s.put('big', new Uint8Array(size).fill(0));
    let torn = 0;
    let reads = 0;
    let writing = true;
    const reader = (async () => {
      while (writing) {
        const v = (await s.get('big'))!;
        reads++;
        if (v.length !== size || v.some((b) => b !== v[0])) torn++;
      }
    })();
    for (let i = 1; i <= 40; i++) await s.put('big', new Uint8Array(size).fill(i));
    writing = false;
    await reader;
    expect(reads).toBeGreaterThan(0);
    expect(torn).toBe(0);
    expect((await s.get('big'))![0]).toBe(40);
    expect(readdirSync(dir).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
  });

  it('a write interrupted before its rename leaves the old value, and open() clears stale temp files', async () => {
    const dir = join(tempRoot(), 'store');
    const s = await FileKeyStore.open(dir);
    await s.put('k', bytes(1, 1, 1));
    // What a crash between write and rename leaves behind: a temp file with the would-be value.
    const stale = join(dir, '.tmp-deadbeefdeadbeef');
    writeFileSync(stale, bytes(2, 2));
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(stale, old, old);
    const live = join(dir, '.tmp-0123456789abcdef'); // another process's write in progress
    writeFileSync(live, bytes(3));
    expect(await s.get('k')).toEqual(bytes(1, 1, 1));
    expect(await s.list('')).toEqual(['k']);

    const reopened = await FileKeyStore.open(dir);
    expect(await reopened.get('k')).toEqual(bytes(1, 1, 1));
    expect(readdirSync(dir).sort()).toEqual(['.tmp-0123456789abcdef', reopened.pathOf('k').slice(dir.length + 1)].sort());
  });
});
