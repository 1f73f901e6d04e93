/**
 * MLS test helpers (ts-mls): device signature keys, key packages for a
 * (user, device) identity, and device registration through the API. Shared by
 * the key directory and delivery service tests.
 */
import { bindChallenge, mlsIdentity } from '@secureconnect/protocol';
import {
  defaultCapabilities,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type CiphersuiteImpl,
  type CiphersuiteName,
  type Credential,
  type KeyPackage,
  type Lifetime,
  type PrivateKeyPackage,
} from 'ts-mls';
import { ciphersuites } from 'ts-mls/crypto/ciphersuite.js';
import type { client } from './helpers.js';

export type Http = ReturnType<typeof client>;

const nameById = new Map<number, CiphersuiteName>(Object.entries(ciphersuites).map(([name, id]) => [id, name as CiphersuiteName]));
const impls = new Map<number, Promise<CiphersuiteImpl>>();

/** The ts-mls implementation of any suite ts-mls knows (also ones the server refuses, for negative tests). */
export function testSuiteImpl(suite: number): Promise<CiphersuiteImpl> {
  let impl = impls.get(suite);
  if (!impl) {
    const name = nameById.get(suite);
    if (!name) throw new Error(`unknown cipher suite ${suite}`);
    impl = getCiphersuiteImpl(getCiphersuiteFromName(name));
    impls.set(suite, impl);
  }
  return impl;
}

export const b64 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
export const unb64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));

/** A device's MLS signature key pair for one suite. */
export interface DeviceKeys {
  suite: number;
  cs: CiphersuiteImpl;
  publicKey: Uint8Array;
  signKey: Uint8Array;
  /** base64 of publicKey, as RegisterDeviceBody.signatureKey. */
  publicKeyB64: string;
}

export async function makeDeviceKeys(suite = 1): Promise<DeviceKeys> {
  const cs = await testSuiteImpl(suite);
  const { publicKey, signKey } = await cs.signature.keygen();
  return { suite, cs, publicKey, signKey, publicKeyB64: b64(publicKey) };
}

/** BasicCredential with our identity encoding (`sc1:<userId>:<deviceId>`). */
export function credentialFor(userId: string, deviceId: string): Credential {
  return { credentialType: 'basic', identity: mlsIdentity(userId, deviceId) };
}

/** Lifetime in seconds since the epoch (RFC 9420 §7.2), valid from a minute ago for `days`. */
export function lifetimeDays(days = 30, nowMs = Date.now()): Lifetime {
  const now = BigInt(Math.floor(nowMs / 1000));
  return { notBefore: now - 60n, notAfter: now + BigInt(Math.round(days * 86_400)) };
}

export interface MadeKeyPackage {
  /** base64 MLSMessage (wire format mls_key_package): what the API takes. */
  b64: string;
  publicPackage: KeyPackage;
  privatePackage: PrivateKeyPackage;
}

export interface KeyPackageOptions {
  lifetime?: Lifetime;
  /** Credential identity bytes to put in the leaf instead of mlsIdentity(userId, deviceId). */
  identity?: Uint8Array;
}

export function encodeKeyPackage(kp: KeyPackage): string {
  return b64(encodeMlsMessage({ version: 'mls10', wireformat: 'mls_key_package', keyPackage: kp }));
}

/** `n` key packages for (userId, deviceId) signed with the device's key. */
export async function makeKeyPackages(keys: DeviceKeys, userId: string, deviceId: string, n = 1, opts: KeyPackageOptions = {}): Promise<MadeKeyPackage[]> {
  const credential: Credential = opts.identity ? { credentialType: 'basic', identity: opts.identity } : credentialFor(userId, deviceId);
  const out: MadeKeyPackage[] = [];
  for (let i = 0; i < n; i++) {
    const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
      credential,
      defaultCapabilities(),
      opts.lifetime ?? lifetimeDays(),
      [],
      { signKey: keys.signKey, publicKey: keys.publicKey },
      keys.cs,
    );
    out.push({ b64: encodeKeyPackage(publicPackage), publicPackage, privatePackage });
  }
  return out;
}

/** Signature (base64) over bindChallenge(sessionId) with the device's key: what POST /v1/devices/:id/bind takes. */
export async function signBindChallenge(keys: DeviceKeys, sessionId: string): Promise<string> {
  return b64(await keys.cs.signature.sign(keys.signKey, bindChallenge(sessionId)));
}

export interface RegisteredDevice {
  deviceId: string;
  userId: string;
  keys: DeviceKeys;
  device: any;
}

/** Registers a device through the API (binding the token's session to it); throws unless 201. */
export async function registerDevice(http: Http, token: string, name = 'test device', suite = 1): Promise<RegisteredDevice> {
  const keys = await makeDeviceKeys(suite);
  const res = await http('POST', '/v1/devices', { token, body: { name, signatureKey: keys.publicKeyB64 } });
  if (res.status !== 201) throw new Error(`device registration failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { deviceId: res.body.id, userId: res.body.userId, keys, device: res.body };
}

/** Registers a device and uploads `n` key packages (and optionally a last-resort one) for it. */
export async function registerDeviceWithPackages(http: Http, token: string, n: number, opts: { suite?: number; lastResort?: boolean; name?: string } = {}): Promise<RegisteredDevice & { packages: MadeKeyPackage[] }> {
  const dev = await registerDevice(http, token, opts.name, opts.suite);
  const packages = await makeKeyPackages(dev.keys, dev.userId, dev.deviceId, n + (opts.lastResort ? 1 : 0));
  const body: { keyPackages: string[]; lastResort?: string } = { keyPackages: packages.slice(0, n).map((p) => p.b64) };
  if (opts.lastResort) body.lastResort = packages[n]!.b64;
  const res = await http('POST', '/v1/key-packages', { token, body });
  if (res.status !== 200) throw new Error(`key package upload failed: ${res.status} ${JSON.stringify(res.body)}`);
  return { ...dev, packages };
}
