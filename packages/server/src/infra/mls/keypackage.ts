import { parseMlsIdentity, type CipherSuiteId } from '@secureconnect/protocol';
import { decodeMlsMessage, type KeyPackage } from 'ts-mls';
import { ciphersuites } from 'ts-mls/crypto/ciphersuite.js';
import { makeKeyPackageRef, verifyKeyPackage } from 'ts-mls/keyPackage.js';
import { verifyLeafNodeSignatureKeyPackage } from 'ts-mls/leafNode.js';
import { isAllowedSuite, suiteImpl, toB64 } from './suites.js';

/** A key package may claim to start this far in the future (client clocks drift). */
export const KEY_PACKAGE_CLOCK_SKEW_MS = 5 * 60_000;
/** Longest lifetime left on a key package we publish: a stolen init key stays useful no longer than this. */
export const KEY_PACKAGE_MAX_LIFETIME_MS = 90 * 86_400_000;

export type KeyPackageRefusal =
  | 'malformed'
  | 'trailing_bytes'
  | 'not_a_key_package'
  | 'cipher_suite'
  | 'signature'
  | 'credential'
  | 'identity'
  | 'lifetime';

export interface InspectedKeyPackage {
  ok: true;
  keyPackage: KeyPackage;
  cipherSuite: CipherSuiteId;
  identity: { userId: string; deviceId: string };
  /** base64 of the leaf's signature public key. */
  signatureKey: string;
  /** base64 KeyPackageRef (RFC 9420 §5.2): what a Welcome names its recipient by. */
  ref: string;
  /** Epoch milliseconds. */
  notAfter: number;
}

export type KeyPackageInspection = InspectedKeyPackage | { ok: false; reason: KeyPackageRefusal };

const refuse = (reason: KeyPackageRefusal): KeyPackageInspection => ({ ok: false, reason });

/**
 * Decodes and verifies one MLSMessage-encoded KeyPackage the way RFC 9420
 * §10.1 asks a recipient to, plus our own rules ([K2]): an allowed suite, a
 * BasicCredential naming one of our devices, and a bounded lifetime. Pure (no
 * I/O, no clock): the caller passes `now` in epoch milliseconds. It does not
 * know who uploads: matching identity and key to the caller is the caller's job.
 */
export async function inspectKeyPackage(bytes: Uint8Array, now: number): Promise<KeyPackageInspection> {
  let decoded: ReturnType<typeof decodeMlsMessage>;
  try {
    decoded = decodeMlsMessage(bytes, 0);
  } catch {
    return refuse('malformed');
  }
  if (!decoded) return refuse('malformed');
  const [msg, used] = decoded;
  if (used !== bytes.length) return refuse('trailing_bytes');
  if (msg.version !== 'mls10' || msg.wireformat !== 'mls_key_package') return refuse('not_a_key_package');
  const kp = msg.keyPackage;
  if (kp.version !== 'mls10') return refuse('not_a_key_package');

  // Unknown suites decode to their number as a string.
  const suiteId = (ciphersuites as Record<string, number>)[kp.cipherSuite] ?? Number(kp.cipherSuite);
  if (!isAllowedSuite(suiteId)) return refuse('cipher_suite');
  const cs = await suiteImpl(suiteId);

  const leaf = kp.leafNode;
  if (leaf.leafNodeSource !== 'key_package') return refuse('not_a_key_package');
  try {
    if (!(await verifyKeyPackage(kp, cs.signature))) return refuse('signature');
    if (!(await verifyLeafNodeSignatureKeyPackage(leaf, cs.signature))) return refuse('signature');
  } catch {
    // A key of the wrong length or shape cannot verify anything.
    return refuse('signature');
  }
  // RFC 9420 §10.1: the init key and the leaf's encryption key must differ.
  if (equalBytes(kp.initKey, leaf.hpkePublicKey)) return refuse('malformed');

  if (leaf.credential.credentialType !== 'basic') return refuse('credential');
  const identity = parseMlsIdentity(leaf.credential.identity);
  if (!identity) return refuse('identity');

  const notBefore = Number(leaf.lifetime.notBefore) * 1000;
  const notAfterSec = leaf.lifetime.notAfter;
  // Compared as bigint first: a far-future not_after does not fit a double exactly.
  if (notAfterSec > BigInt(Math.floor((now + KEY_PACKAGE_MAX_LIFETIME_MS) / 1000))) return refuse('lifetime');
  const notAfter = Number(notAfterSec) * 1000;
  if (notBefore > now + KEY_PACKAGE_CLOCK_SKEW_MS || now >= notAfter) return refuse('lifetime');

  const ref = await makeKeyPackageRef(kp, cs.hash);
  return { ok: true, keyPackage: kp, cipherSuite: suiteId, identity, signatureKey: toB64(leaf.signaturePublicKey), ref: toB64(ref), notAfter };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
