import { defaultCryptoProvider, type CiphersuiteImpl, type CryptoProvider, type Signature } from 'ts-mls';
import { sha256, sha384, sha512 } from '@noble/hashes/sha2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { expand, extract } from '@noble/hashes/hkdf.js';
import { gcm } from '@noble/ciphers/aes.js';
import { ed25519 } from '@noble/curves/ed25519.js';
import type { CHash } from '@noble/hashes/utils.js';

/**
 * ts-mls's default provider with the small, frequent primitives replaced.
 * MLS does thousands of HKDF/HMAC/hash calls on tiny inputs per commit (the
 * secret tree is derived for every leaf of every epoch) and a handful per
 * message; through WebCrypto each one pays a key import and a thread-pool
 * round trip, which dominated the measured costs (docs/PERFORMANCE.md). The
 * pure-JS @noble implementations (audited, browser-safe) run them inline.
 * Ed25519 stays on WebCrypto where available, with imported keys cached.
 * A rejected key import (e.g. malformed public key) makes verify return false.
 */

type HashFn = CHash;
const hashes: Record<string, HashFn> = { 'SHA-256': sha256, 'SHA-384': sha384, 'SHA-512': sha512 };
const kdfHashes: Record<string, HashFn> = { 'HKDF-SHA256': sha256, 'HKDF-SHA384': sha384, 'HKDF-SHA512': sha512 };

/** Runs a synchronous primitive behind ts-mls's async interface; a throw becomes a rejection. */
function lift<A extends unknown[], R>(f: (...args: A) => R): (...args: A) => Promise<R> {
  return (...args) => {
    try {
      return Promise.resolve(f(...args));
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  };
}

function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

const PKCS8_ED25519_PREFIX = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

/** Pure-JS Ed25519, for runtimes whose WebCrypto lacks it (older browsers). Exported for tests. */
export const nobleEd25519: Signature = {
  keygen: lift(() => {
    const signKey = ed25519.utils.randomSecretKey();
    return { signKey, publicKey: ed25519.getPublicKey(signKey) };
  }),
  sign: lift((signKey: Uint8Array, message: Uint8Array) => ed25519.sign(message, signKey.length === 48 ? signKey.slice(16) : signKey)),
  verify: lift((publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array) => {
    try {
      return ed25519.verify(signature, message, publicKey);
    } catch {
      return false;
    }
  }),
};

/** RFC 8032 §7.1 test 1 public key: any valid point does to probe for WebCrypto Ed25519. */
const PROBE_KEY = new Uint8Array([
  0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
  0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
]);

/**
 * WebCrypto Ed25519 when the runtime has it, with key objects cached by the
 * identity of the key bytes: group states keep the same Uint8Array for a
 * device's key and a leaf's public key across epochs, and a WeakMap lets them
 * go with the state. Otherwise @noble/curves.
 */
async function ed25519Impl(): Promise<Signature> {
  const subtle = globalThis.crypto?.subtle;
  if (subtle === undefined) return nobleEd25519;
  const buf = (b: Uint8Array) => b as Uint8Array<ArrayBuffer>;
  try {
    await subtle.importKey('raw', buf(PROBE_KEY), 'Ed25519', false, ['verify']);
  } catch {
    return nobleEd25519;
  }
  type Key = Awaited<ReturnType<typeof subtle.importKey>>;
  const privateKeys = new WeakMap<Uint8Array, Promise<Key>>();
  const publicKeys = new WeakMap<Uint8Array, Promise<Key>>();
  return {
    async keygen() {
      const pair = (await subtle.generateKey('Ed25519', true, ['sign', 'verify'])) as { publicKey: Key; privateKey: Key };
      const pkcs8 = new Uint8Array(await subtle.exportKey('pkcs8', pair.privateKey));
      return { publicKey: new Uint8Array(await subtle.exportKey('raw', pair.publicKey)), signKey: pkcs8.slice(pkcs8.length - 32) };
    },
    async sign(signKey, message) {
      let key = privateKeys.get(signKey);
      if (!key) {
        const pkcs8 = signKey.length === 32 ? new Uint8Array([...PKCS8_ED25519_PREFIX, ...signKey]) : signKey;
        key = subtle.importKey('pkcs8', buf(pkcs8), 'Ed25519', false, ['sign']);
        privateKeys.set(signKey, key);
      }
      return new Uint8Array(await subtle.sign('Ed25519', await key, buf(message)));
    },
    async verify(publicKey, message, signature) {
      let key = publicKeys.get(publicKey);
      if (!key) {
        key = subtle.importKey('raw', buf(publicKey), 'Ed25519', false, ['verify']);
        publicKeys.set(publicKey, key);
      }
      try {
        return await subtle.verify('Ed25519', await key, buf(signature), buf(message));
      } catch {
        // A malformed key or signature does not verify.
        return false;
      }
    },
  };
}

/** Our provider: see the file comment. */
export const sdkCryptoProvider: CryptoProvider = {
  async getCiphersuiteImpl(cs): Promise<CiphersuiteImpl> {
    const base = await defaultCryptoProvider.getCiphersuiteImpl(cs);
    const h = hashes[cs.hash];
    const k = kdfHashes[cs.hpke.kdf];
    if (!h || !k) return base;
    const hpke = { ...base.hpke };
    if (cs.hpke.aead === 'AES128GCM' || cs.hpke.aead === 'AES256GCM') {
      hpke.encryptAead = lift((key: Uint8Array, nonce: Uint8Array, aad: Uint8Array | undefined, plaintext: Uint8Array) => gcm(key, nonce, aad).encrypt(plaintext));
      hpke.decryptAead = lift((key: Uint8Array, nonce: Uint8Array, aad: Uint8Array | undefined, ciphertext: Uint8Array) => gcm(key, nonce, aad).decrypt(ciphertext));
    }
    return {
      ...base,
      hpke,
      hash: {
        digest: lift((data: Uint8Array) => h(data)),
        mac: lift((key: Uint8Array, data: Uint8Array) => hmac(h, key, data)),
        verifyMac: lift((key: Uint8Array, mac: Uint8Array, data: Uint8Array) => timingSafeEqual(mac, hmac(h, key, data))),
      },
      kdf: {
        size: base.kdf.size,
        extract: lift((salt: Uint8Array, ikm: Uint8Array) => extract(k, ikm, salt)),
        expand: lift((prk: Uint8Array, info: Uint8Array, len: number) => expand(k, prk, info, len)),
      },
      signature: cs.signature === 'Ed25519' ? await ed25519Impl() : base.signature,
    };
  },
};
