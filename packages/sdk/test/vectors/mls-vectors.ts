/**
 * Harness for the official MLS interoperability test vectors (RFC 9420,
 * mlswg/mls-implementations, see mls/SOURCE.md) run against the MLS layer the
 * SDK ships: ts-mls with the SDK's crypto provider. The vector files live in
 * the repository next to this file so that CI on a clean clone runs them too.
 *
 * Every vector file becomes one `describe` with one test per case, plus a
 * closing test that fails unless every case ran and every expected cipher
 * suite was exercised: a case can fail, but it can never be skipped quietly.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { getCiphersuiteImpl, type CiphersuiteImpl } from 'ts-mls';
import { getCiphersuiteFromId, type CiphersuiteId } from 'ts-mls/crypto/ciphersuite.js';
import { describe, expect, it } from 'vitest';
import { sdkCryptoProvider } from '../../src/crypto/provider.js';

export const VECTORS_DIR = fileURLToPath(new URL('./mls/', import.meta.url));

/**
 * The cipher suites of the vector files (RFC 9420 §17.1, 1 to 7). ts-mls
 * implements all of them with the packages the SDK installs: X25519, P-256,
 * P-384, P-521 and Ed25519 through @noble/curves, X448 through
 * @hpke/dhkem-x448 (a dev dependency of the SDK), Ed448 through @noble/curves.
 * None is skipped; a vector for any other suite fails.
 */
export const ALL_SUITES = [1, 2, 3, 4, 5, 6, 7] as const;

export type VectorFile =
  | 'crypto-basics' | 'deserialization' | 'key-schedule' | 'message-protection' | 'messages'
  | 'passive-client-handling-commit' | 'passive-client-random' | 'passive-client-welcome' | 'psk_secret'
  | 'secret-tree' | 'transcript-hashes' | 'tree-math' | 'tree-operations' | 'tree-validation' | 'treekem' | 'welcome';

export function loadVectors<T>(file: VectorFile): T[] {
  const path = `${VECTORS_DIR}${file}.json`;
  if (!existsSync(path)) throw new Error(`MLS test vector file missing: ${path} (copy it from mlswg/mls-implementations, test-vectors/, see SOURCE.md)`);
  const cases = JSON.parse(readFileSync(path, 'utf8')) as unknown;
  if (!Array.isArray(cases) || cases.length === 0) throw new Error(`MLS test vector file ${path} holds no cases`);
  return cases as T[];
}

/** Plain Uint8Array (not a Buffer) so that it compares equal to what ts-mls produces. */
export function hex(s: string): Uint8Array {
  if (s.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(s)) throw new Error(`not hex: ${s.slice(0, 16)}…`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Compared as hex so that a mismatch shows both values readably. */
export function toHex(b: Uint8Array | ArrayBuffer): string {
  return Buffer.from(b instanceof ArrayBuffer ? new Uint8Array(b) : b).toString('hex');
}

const impls = new Map<number, Promise<CiphersuiteImpl>>();

/**
 * A suite as the SDK builds it: ts-mls with the SDK's crypto provider, which
 * replaces ts-mls's hash, HMAC, HKDF, AES-GCM and Ed25519 with its own
 * (src/crypto/provider.ts). The vectors check those replacements too.
 */
export function suiteImpl(id: number): Promise<CiphersuiteImpl> {
  if (!(ALL_SUITES as readonly number[]).includes(id)) return Promise.reject(new Error(`cipher suite ${id} is not one of the vector suites`));
  let impl = impls.get(id);
  if (!impl) {
    impl = getCiphersuiteImpl(getCiphersuiteFromId(id as CiphersuiteId), sdkCryptoProvider);
    impls.set(id, impl);
  }
  return impl;
}

interface SuiteCase { cipher_suite: number }

/**
 * Suites whose every case runs in every file. Suite 1 is the one the SDK
 * always supports; suite 3 shares X25519, Ed25519 and ChaCha20-Poly1305 with
 * the default suite 84 (which has no official vectors).
 */
export const FULL_SUITES: readonly number[] = [1, 3];

/**
 * The fixed sample the heavy files (treekem, tree-validation, passive-client-*)
 * run for the other suites, whose pure-JS curves (P-256, P-384, P-521, X448,
 * Ed448) cost 5 to 50 times more than X25519/Ed25519: the case at position
 * `pos` among a suite's cases runs when (pos + suite) % 4 === 0, so about a
 * quarter of each suite runs and, across suites 2, 4, 5, 6, 7, every position.
 */
export function sampled(suite: number, pos: number): boolean {
  return FULL_SUITES.includes(suite) || (pos + suite) % 4 === 0;
}

export const SAMPLED_NOTE = 'suites 1 and 3: every case; suites 2, 4-7: a fixed quarter';

export interface VectorOptions<T> {
  /**
   * Only these cases run (a fixed sample); the closing test checks exactly
   * these ran. `pos` is the case's position among the cases of its suite.
   */
  only?: (c: T, index: number, pos: number) => boolean;
  /**
   * Cases that fail because of a known ts-mls bug: returns the reason (added
   * to the title) and the case runs as `it.fails`, so it turns red once the
   * bug is fixed and the marker can go. They still count as run.
   */
  expectFailure?: (c: T, index: number, pos: number) => string | undefined;
  /** Per-case timeout in ms. */
  timeout?: number;
  /** Title suffix, e.g. to say a file is sampled. */
  note?: string;
}

/**
 * Declares the tests for a vector file whose cases carry a cipher suite.
 * `suites` lists the suites the file must contain: the closing test fails if
 * one is missing, if the file holds another, or if any selected case did not
 * complete.
 */
export function describeSuiteVectors<T extends SuiteCase>(
  file: VectorFile,
  suites: readonly number[],
  run: (c: T, cs: CiphersuiteImpl, index: number) => Promise<void>,
  opts: VectorOptions<T> = {},
): void {
  const cases = loadVectors<T>(file);
  const seen = new Map<number, number>();
  const positioned = cases.map((c, i) => {
    const pos = seen.get(c.cipher_suite) ?? 0;
    seen.set(c.cipher_suite, pos + 1);
    return [c, i, pos] as const;
  });
  const selected = positioned.filter(([c, i, pos]) => opts.only?.(c, i, pos) ?? true);
  const completed = new Map<number, number>();
  describe(`[MV1] ${file}.json${opts.note ? ` (${opts.note})` : ''}`, () => {
    for (const [c, i, pos] of selected) {
      const bug = opts.expectFailure?.(c, i, pos);
      const done = () => completed.set(c.cipher_suite, (completed.get(c.cipher_suite) ?? 0) + 1);
      if (bug === undefined) {
        it(`case ${i}, suite ${c.cipher_suite}`, async () => {
          expect.hasAssertions();
          await run(c, await suiteImpl(c.cipher_suite), i);
          done();
        }, opts.timeout);
      } else {
        it.fails(`case ${i}, suite ${c.cipher_suite}: fails, known ts-mls bug: ${bug}`, async () => {
          const cs = await suiteImpl(c.cipher_suite);
          done();
          await run(c, cs, i);
        }, opts.timeout);
      }
    }
    it(`ran all ${selected.length} selected cases of ${cases.length}, covering suites ${suites.join(',')}`, () => {
      const present = [...new Set(cases.map((c) => c.cipher_suite))].sort((a, b) => a - b);
      expect(present).toEqual([...suites].sort((a, b) => a - b));
      const want = new Map<number, number>();
      for (const [c] of selected) want.set(c.cipher_suite, (want.get(c.cipher_suite) ?? 0) + 1);
      for (const s of suites) expect(want.get(s) ?? 0, `selected cases for suite ${s}`).toBeGreaterThan(0);
      expect(Object.fromEntries(completed)).toEqual(Object.fromEntries(want));
    });
  });
}

/** Same as describeSuiteVectors for files without a cipher suite (tree math, codecs). */
export function describePlainVectors<T>(file: VectorFile, run: (c: T, index: number) => void | Promise<void>): void {
  const cases = loadVectors<T>(file);
  let completed = 0;
  describe(`[MV1] ${file}.json`, () => {
    for (const [i, c] of cases.entries()) {
      it(`case ${i}`, async () => {
        expect.hasAssertions();
        await run(c, i);
        completed++;
      });
    }
    it(`ran all ${cases.length} cases`, () => {
      expect(completed).toBe(cases.length);
    });
  });
}

/**
 * True when `priv` is the HPKE private key of `pub`: what one seals to the
 * public key, only the private key opens. (ts-mls has no "public key of this
 * private key" function for every KEM.)
 */
export async function hpkePairMatches(pub: Uint8Array, priv: Uint8Array, cs: CiphersuiteImpl): Promise<boolean> {
  const plaintext = new TextEncoder().encode('mls-vectors key check');
  const info = new Uint8Array([1, 2, 3]);
  const { ct, enc } = await cs.hpke.seal(await cs.hpke.importPublicKey(pub), plaintext, info);
  try {
    const opened = await cs.hpke.open(await cs.hpke.importPrivateKey(priv), enc, ct, info);
    return toHex(opened) === toHex(plaintext);
  } catch {
    return false;
  }
}

/** True when `priv` signs what `pub` verifies. */
export async function signaturePairMatches(pub: Uint8Array, priv: Uint8Array, cs: CiphersuiteImpl): Promise<boolean> {
  const message = new TextEncoder().encode('mls-vectors signature check');
  return cs.signature.verify(pub, message, await cs.signature.sign(priv, message));
}
