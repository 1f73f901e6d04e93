import { Type, type Static } from 'typebox';
import { Id, Obj, Timestamp } from './common.js';

/**
 * End-to-end encryption: the key directory (devices, key packages) and the
 * MLS delivery service (RFC 9420). The server stores and routes MLS bytes; it
 * decodes public framing (key packages, PublicMessage commits, GroupInfo,
 * Welcome headers) to enforce the rules in docs/SPEC.md [K1]–[K6], [DS1]–[DS9],
 * and never sees application plaintext.
 */

/** Standard base64 (RFC 4648 §4), padded. MLS bytes travel as this in JSON. */
export const B64 = (maxChars: number) => Type.String({ minLength: 4, maxLength: maxChars, pattern: '^[A-Za-z0-9+/]+={0,2}$' });

export const E2EE_LIMITS = {
  deviceNameMaxChars: 64,
  /** Devices a user may have at once (every device is a leaf in every group). */
  devicesPerUser: 10,
  /** Key packages per upload request. */
  keyPackagesPerUpload: 100,
  /** base64 characters of one key package (X-Wing packages are about 1.5 KiB). */
  keyPackageMaxChars: 8_192,
  /** Unclaimed key packages a device may hold. */
  keyPackagesPerDevice: 500,
  /** Below this stock a device is told to upload more (`key_packages.low`). */
  keyPackagesLowWater: 10,
  /** Users per claim request. */
  claimMaxUsers: 100,
  /** base64 characters of one commit, GroupInfo (with ratchet tree) or Welcome. */
  handshakeMaxChars: 2_000_000,
  /** base64 characters of an Ed25519 (32 bytes) or larger signature public key. */
  signatureKeyMaxChars: 4_096,
} as const;

/**
 * Cipher suites (RFC 9420 §17.1 names, as ts-mls spells them). The default
 * is the post-quantum hybrid X-Wing suite; suite 1 is always supported.
 */
export const MLS_CIPHER_SUITES = {
  MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519: 84,
  MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: 1,
} as const;
export type MlsCipherSuiteName = keyof typeof MLS_CIPHER_SUITES;
export const DEFAULT_MLS_CIPHER_SUITE: MlsCipherSuiteName = 'MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519';
export const CipherSuiteId = Type.Union([Type.Literal(84), Type.Literal(1)]);
export type CipherSuiteId = Static<typeof CipherSuiteId>;

const IDENTITY_PREFIX = 'sc1:';
/**
 * The MLS BasicCredential identity of a device: binds a leaf to exactly one
 * (user, device). The server refuses key packages and leaves whose identity is
 * not the uploading device's.
 */
export function mlsIdentity(userId: string, deviceId: string): Uint8Array {
  return new TextEncoder().encode(`${IDENTITY_PREFIX}${userId}:${deviceId}`);
}
/** Inverse of mlsIdentity; undefined when the bytes are not one of ours. */
export function parseMlsIdentity(identity: Uint8Array): { userId: string; deviceId: string } | undefined {
  let s: string;
  try {
    s = new TextDecoder('utf-8', { fatal: true }).decode(identity);
  } catch {
    return undefined;
  }
  const m = /^sc1:([0-9a-f-]{36}):([0-9a-f-]{36})$/.exec(s);
  return m ? { userId: m[1]!, deviceId: m[2]! } : undefined;
}

// ---- devices ----
export const Device = Obj({
  id: Id,
  userId: Id,
  name: Type.String({ maxLength: E2EE_LIMITS.deviceNameMaxChars }),
  /** base64 MLS signature public key (Ed25519 for the supported suites). */
  signatureKey: Type.String(),
  createdAt: Timestamp,
  lastSeenAt: Type.Union([Timestamp, Type.Null()]),
});
export type Device = Static<typeof Device>;
export const DeviceList = Obj({ items: Type.Array(Device) });
export type DeviceList = Static<typeof DeviceList>;
/** Registers a device and binds the calling session to it (a session has at most one device). */
export const RegisterDeviceBody = Obj({
  name: Type.String({ minLength: 1, maxLength: E2EE_LIMITS.deviceNameMaxChars }),
  signatureKey: B64(E2EE_LIMITS.signatureKeyMaxChars),
});
export type RegisterDeviceBody = Static<typeof RegisterDeviceBody>;

// ---- key packages ----
/** MLSMessage-encoded KeyPackages (wire format mls_key_package), base64. */
export const UploadKeyPackagesBody = Obj({
  keyPackages: Type.Array(B64(E2EE_LIMITS.keyPackageMaxChars), { maxItems: E2EE_LIMITS.keyPackagesPerUpload }),
  /** Replaces the device's last-resort package for that suite (handed out when the stock is empty, never deleted by a claim). */
  lastResort: Type.Optional(B64(E2EE_LIMITS.keyPackageMaxChars)),
});
export type UploadKeyPackagesBody = Static<typeof UploadKeyPackagesBody>;
export const KeyPackageStock = Obj({
  cipherSuite: CipherSuiteId,
  available: Type.Integer({ minimum: 0 }),
  lastResort: Type.Boolean(),
});
export const KeyPackageStatus = Obj({ deviceId: Id, stock: Type.Array(KeyPackageStock) });
export type KeyPackageStatus = Static<typeof KeyPackageStatus>;
export const ClaimKeyPackagesBody = Obj({
  userIds: Type.Array(Id, { minItems: 1, maxItems: E2EE_LIMITS.claimMaxUsers, uniqueItems: true }),
  cipherSuite: CipherSuiteId,
});
export type ClaimKeyPackagesBody = Static<typeof ClaimKeyPackagesBody>;
export const ClaimedKeyPackage = Obj({ userId: Id, deviceId: Id, keyPackage: Type.String(), lastResort: Type.Boolean() });
export type ClaimedKeyPackage = Static<typeof ClaimedKeyPackage>;
/** One package per active device of each user; devices with nothing to hand out are listed in `missing`. */
export const ClaimKeyPackagesResult = Obj({
  keyPackages: Type.Array(ClaimedKeyPackage),
  missing: Type.Array(Obj({ userId: Id, deviceId: Id })),
});
export type ClaimKeyPackagesResult = Static<typeof ClaimKeyPackagesResult>;

// ---- delivery service ----
/** The server's view of an MLS conversation. */
export const MlsGroupStatus = Obj({
  conversationId: Id,
  cipherSuite: CipherSuiteId,
  /** Epoch of the last accepted commit (0 after init). */
  epoch: Type.Integer({ minimum: 0 }),
  /** MLSMessage GroupInfo of the current epoch with the ratchet_tree extension (for external joins). */
  groupInfo: Type.String(),
  /** Who holds which leaf, as the server derived it from the GroupInfo's tree. */
  leaves: Type.Array(Obj({ leafIndex: Type.Integer({ minimum: 0 }), userId: Id, deviceId: Id })),
});
export type MlsGroupStatus = Static<typeof MlsGroupStatus>;
/** Creates the server's record of the group at epoch 0: the tree holds only the caller's device. */
export const MlsInitBody = Obj({ cipherSuite: CipherSuiteId, groupInfo: B64(E2EE_LIMITS.handshakeMaxChars) });
export type MlsInitBody = Static<typeof MlsInitBody>;
/**
 * A commit (MLSMessage PublicMessage, or a new-member commit for an external
 * join), the GroupInfo of the epoch it creates (with ratchet tree), and the
 * Welcome for devices it adds.
 */
export const MlsCommitBody = Obj({
  commit: B64(E2EE_LIMITS.handshakeMaxChars),
  groupInfo: B64(E2EE_LIMITS.handshakeMaxChars),
  welcome: Type.Optional(B64(E2EE_LIMITS.handshakeMaxChars)),
});
export type MlsCommitBody = Static<typeof MlsCommitBody>;

/** A commit as sequenced in the conversation's log ([DS3]). Content type of a message. */
export const MlsCommitContent = Obj({
  type: Type.Literal('mls-commit'),
  /** Epoch the commit is based on; members at this epoch process it to reach epoch + 1. */
  epoch: Type.Integer({ minimum: 0 }),
  commit: Type.String(),
});
export type MlsCommitContent = Static<typeof MlsCommitContent>;

// ---- events ----
export const DeviceAddedEvent = Obj({ type: Type.Literal('device.added'), device: Device });
export const DeviceRevokedEvent = Obj({ type: Type.Literal('device.revoked'), userId: Id, deviceId: Id });
/** To one device: its stock of unclaimed key packages fell below E2EE_LIMITS.keyPackagesLowWater. */
export const KeyPackagesLowEvent = Obj({ type: Type.Literal('key_packages.low'), deviceId: Id, cipherSuite: CipherSuiteId, available: Type.Integer({ minimum: 0 }) });
/** To one device: a Welcome that adds it to an MLS conversation at `epoch`. */
export const MlsWelcomeEvent = Obj({ type: Type.Literal('mls.welcome'), conversationId: Id, epoch: Type.Integer({ minimum: 0 }), welcome: Type.String() });
/** Proof of possession for binding a session to an existing device: Ed25519 signature over `sc-bind:<sessionId>`. */
export const BindDeviceBody = Obj({ signature: B64(512) });
export type BindDeviceBody = Static<typeof BindDeviceBody>;
/** The bytes a device signs to bind a session to itself. */
export function bindChallenge(sessionId: string): Uint8Array {
  return new TextEncoder().encode(`sc-bind:${sessionId}`);
}
