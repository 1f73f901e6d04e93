import { getCiphersuiteFromName, getCiphersuiteImpl, type CiphersuiteImpl } from 'ts-mls';
import { MLS_CIPHER_SUITES, type CipherSuiteId, type MlsCipherSuiteName } from '@secureconnect/protocol';

const byId = new Map<number, MlsCipherSuiteName>(Object.entries(MLS_CIPHER_SUITES).map(([name, id]) => [id, name as MlsCipherSuiteName]));
const impls = new Map<number, Promise<CiphersuiteImpl>>();

/** True for the suites the server accepts (protocol's MLS_CIPHER_SUITES). */
export function isAllowedSuite(id: number): id is CipherSuiteId {
  return byId.has(id);
}

/**
 * The ts-mls implementation of an allowed suite, built once per process:
 * building one loads the HPKE modules, which is too slow for a request path.
 */
export function suiteImpl(id: CipherSuiteId): Promise<CiphersuiteImpl> {
  let impl = impls.get(id);
  if (!impl) {
    impl = getCiphersuiteImpl(getCiphersuiteFromName(byId.get(id)!));
    impls.set(id, impl);
  }
  return impl;
}

export const toB64 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
export const fromB64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
