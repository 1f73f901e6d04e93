/**
 * End-to-end encryption primitives: the SDK's MLS interface ({@link MlsCrypto},
 * implemented over ts-mls by {@link createMlsCrypto}) and safety numbers.
 * Browser-safe: WebCrypto and Uint8Array only.
 */
export { createMlsCrypto } from './mls.js';
export { CryptoError } from './errors.js';
export type * from './types.js';
export {
  fingerprint, safetyNumber, safetyNumberQr, compareQr, diffDevices, SAFETY_NUMBER_VERSION, FINGERPRINT_ITERATIONS,
  type Fingerprint, type DeviceKey, type SafetyNumber, type DeviceChange,
} from './safety.js';
