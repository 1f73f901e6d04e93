import type { CipherSuiteId } from '@secureconnect/protocol';

/**
 * The SDK's MLS interface (RFC 9420). The E2EE layer codes against this, not
 * against ts-mls, so the MLS library can be swapped. Every MLS byte string is
 * MLSMessage-encoded (what the server stores and relays, base64 on the wire).
 * Group states are immutable values: an operation returns a new state and a
 * refused operation leaves the given state usable.
 */

/** The (user, device) a leaf belongs to; encoded as the BasicCredential identity `sc1:<userId>:<deviceId>`. */
export interface MlsDeviceIdentity {
  readonly userId: string;
  readonly deviceId: string;
}

/** A device's MLS signature key pair (Ed25519 in both supported suites). The public half is the directory's `signatureKey`. */
export interface SignatureKeyPair {
  readonly publicKey: Uint8Array;
  readonly privateKey: Uint8Array;
}

/** One generated KeyPackage: upload `publicBytes`, keep `privateState` in the device's key store under `ref`. */
export interface GeneratedKeyPackage {
  /** KeyPackageRef (RFC 9420 §5.2); the server keys packages by its base64 and a Welcome names the package it opens with it. */
  readonly ref: Uint8Array;
  /** MLSMessage (mls_key_package) bytes to upload. */
  readonly publicBytes: Uint8Array;
  /** Opaque private half (init and leaf HPKE private keys plus the public package); secret, never leaves the device. */
  readonly privateState: Uint8Array;
  readonly lastResort: boolean;
  /** Seconds since the epoch after which peers refuse the package. */
  readonly notAfter: number;
}

/** Options of {@link MlsCrypto.createKeyPackages}. */
export interface KeyPackageOptions {
  /** Marks the packages with the last_resort extension (RFC 9420 §17.3): reusable when the stock runs out. */
  readonly lastResort?: boolean;
  /** Validity in seconds from now; default 60 days. */
  readonly lifetimeSec?: number;
}

declare const groupStateBrand: unique symbol;
/** An MLS group state: opaque, immutable. Persist it with {@link MlsCrypto.encodeState}; it contains private keys. */
export interface MlsGroupState {
  readonly [groupStateBrand]: 'MlsGroupState';
}

declare const pendingBrand: unique symbol;
/**
 * The state a commit would create. Apply it with {@link MlsCrypto.acceptCommit}
 * only once the server accepted the commit; on 409 epoch_conflict drop it with
 * {@link MlsCrypto.discardCommit} and keep using the old state.
 */
export interface MlsPendingCommit {
  readonly [pendingBrand]: 'MlsPendingCommit';
  /** Epoch the commit creates. */
  readonly epoch: number;
}

/** A member leaf as read from the ratchet tree. */
export interface MlsMember {
  readonly leafIndex: number;
  readonly userId: string;
  readonly deviceId: string;
  readonly signatureKey: Uint8Array;
}

/** What a new group or a commit gives the server. */
export interface MlsGroupInfoResult {
  /** MLSMessage GroupInfo of the new epoch, with the ratchet_tree and external_pub extensions ([DS1], external joins). */
  readonly groupInfo: Uint8Array;
}

/** Result of {@link MlsCrypto.createGroup}: epoch 0 with only the creator's leaf. */
export interface CreatedGroup extends MlsGroupInfoResult {
  readonly state: MlsGroupState;
}

/** What a commit changes; empty means a path update only (key rotation). */
export interface CommitChanges {
  /** MLSMessage KeyPackages (as claimed from the server) to add. */
  readonly add?: readonly Uint8Array[];
  /** Leaf indexes to remove (see {@link MlsCrypto.members}). */
  readonly removeLeaves?: readonly number[];
}

/** Result of {@link MlsCrypto.commit}. */
export interface CreatedCommit extends MlsGroupInfoResult {
  /** MLSMessage PublicMessage commit (the server checks its framing). */
  readonly commit: Uint8Array;
  /** MLSMessage Welcome for the added devices (with the ratchet tree), when `add` was non-empty. */
  readonly welcome?: Uint8Array;
  readonly pendingState: MlsPendingCommit;
}

/** Result of {@link MlsCrypto.joinExternal}: send `commit` + `groupInfo` to the server, then acceptCommit. */
export interface ExternalJoin extends MlsGroupInfoResult {
  readonly commit: Uint8Array;
  readonly pendingState: MlsPendingCommit;
}

/** Result of {@link MlsCrypto.encrypt}. */
export interface Encrypted {
  /** MLSMessage PrivateMessage bytes. */
  readonly ciphertext: Uint8Array;
  readonly state: MlsGroupState;
}

/** Result of {@link MlsCrypto.process}. */
export type Processed =
  | {
      readonly kind: 'application';
      readonly plaintext: Uint8Array;
      readonly senderLeaf: number;
      readonly senderIdentity: MlsDeviceIdentity;
      readonly epoch: number;
      readonly state: MlsGroupState;
    }
  | {
      readonly kind: 'commit';
      /** Epoch after the commit. */
      readonly epoch: number;
      /** Leaf of the committer (for an external join, the joiner's new leaf). */
      readonly senderLeaf: number;
      /** False when the commit removed this device: the state can no longer send or receive. */
      readonly active: boolean;
      readonly state: MlsGroupState;
    };

/**
 * Why an MLS operation was refused. The given state is unchanged in every case.
 * - `decrypt_failed`: AEAD or HPKE opening failed (tampered, or not for us);
 * - `replay`: the message's generation was already consumed;
 * - `wrong_epoch`: the message is for an epoch this state cannot process (old commit, too old or future epoch);
 * - `invalid_signature`: a signature, membership tag or confirmation tag did not verify;
 * - `wrong_group`: the message is for another group;
 * - `not_for_us`: a Welcome that names none of our key packages;
 * - `untrusted_credential`: a leaf whose identity is not ours (`sc1:`) or whose key the directory disowns;
 * - `invalid_message`: undecodable or not the expected wire format;
 * - `unsupported_suite`: a cipher suite outside MLS_CIPHER_SUITES;
 * - `inactive`: the state was removed from the group;
 * - `invalid_operation`: the request itself is wrong (e.g. removing an absent leaf).
 */
export type CryptoErrorCode =
  | 'decrypt_failed'
  | 'replay'
  | 'wrong_epoch'
  | 'invalid_signature'
  | 'wrong_group'
  | 'not_for_us'
  | 'untrusted_credential'
  | 'invalid_message'
  | 'unsupported_suite'
  | 'inactive'
  | 'invalid_operation';

/**
 * Checks a leaf's signature key against the key directory. Return false to
 * refuse a credential (the operation then fails with `untrusted_credential`).
 */
export type DeviceKeyCheck = (identity: MlsDeviceIdentity, signatureKey: Uint8Array) => boolean | Promise<boolean>;

/** Options of {@link createMlsCrypto}. */
export interface MlsCryptoOptions {
  /** Directory check applied to every credential the MLS library validates; without it only the identity format is checked. */
  readonly verifyDeviceKey?: DeviceKeyCheck;
}

/** Options of {@link MlsCrypto.joinExternal}. */
export interface ExternalJoinOptions {
  /** Also remove this device's old leaf (rejoin after losing state). */
  readonly resync?: boolean;
}

/**
 * The MLS operations the SDK needs. Safe in Node and browsers. Run the
 * operations of one group one at a time: a successful encrypt or process
 * wipes the secrets it used from the state it was given, so only the returned
 * state may be used afterwards (a refused one leaves the given state intact).
 */
export interface MlsCrypto {
  /** Suite ids this implementation supports, default first. */
  readonly suites: readonly CipherSuiteId[];
  readonly defaultSuite: CipherSuiteId;
  /** A new Ed25519 signature key pair for a device. */
  generateSignatureKeys(suite: CipherSuiteId): Promise<SignatureKeyPair>;
  /** Ed25519 signature over raw bytes (e.g. protocol bindChallenge) for POST /devices/:id/bind. */
  signBindChallenge(privateKey: Uint8Array, challenge: Uint8Array): Promise<Uint8Array>;
  createKeyPackages(identity: MlsDeviceIdentity, keys: SignatureKeyPair, suite: CipherSuiteId, count: number, options?: KeyPackageOptions): Promise<GeneratedKeyPackage[]>;
  /** KeyPackageRef of MLSMessage KeyPackage bytes (to match what the server lists). */
  keyPackageRef(publicBytes: Uint8Array): Promise<Uint8Array>;
  createGroup(groupId: Uint8Array, identity: MlsDeviceIdentity, keys: SignatureKeyPair, suite: CipherSuiteId): Promise<CreatedGroup>;
  /** Commits adds/removes (or a path update when `changes` is empty) as a PublicMessage. The given state is not consumed. */
  commit(state: MlsGroupState, changes?: CommitChanges): Promise<CreatedCommit>;
  /**
   * The state of an accepted commit; wipes secrets the old state no longer needs (do not use the old state afterwards).
   * If messages were processed with the old state after {@link MlsCrypto.commit}, pass that latest state as `latest`
   * so late messages of the old epoch keep decrypting (and cannot be replayed).
   */
  acceptCommit(pending: MlsPendingCommit, latest?: MlsGroupState): MlsGroupState;
  /** Drops a refused commit's state (wipes its fresh secrets); the old state stays valid. */
  discardCommit(pending: MlsPendingCommit): void;
  /** KeyPackageRefs a Welcome carries secrets for; pick the matching key package from the key store. */
  welcomeKeyPackageRefs(welcome: Uint8Array): Promise<Uint8Array[]>;
  /** Joins from a Welcome with the private state of the key package it names. `groupInfo` (with tree) is needed only if the Welcome lacks the tree. */
  joinFromWelcome(welcome: Uint8Array, keyPackagePrivateState: Uint8Array, keys: SignatureKeyPair, groupInfo?: Uint8Array): Promise<MlsGroupState>;
  /** External commit joining the group described by a GroupInfo (with ratchet tree and external_pub). */
  joinExternal(groupInfo: Uint8Array, identity: MlsDeviceIdentity, keys: SignatureKeyPair, options?: ExternalJoinOptions): Promise<ExternalJoin>;
  /** Encrypts an application message; the returned state replaces the given one (its used key is wiped). */
  encrypt(state: MlsGroupState, plaintext: Uint8Array): Promise<Encrypted>;
  /** Decrypts an application message or applies a commit from another member; throws CryptoError, leaving `state` unchanged. */
  process(state: MlsGroupState, message: Uint8Array): Promise<Processed>;
  members(state: MlsGroupState): MlsMember[];
  epoch(state: MlsGroupState): number;
  groupId(state: MlsGroupState): Uint8Array;
  suite(state: MlsGroupState): CipherSuiteId;
  ownLeaf(state: MlsGroupState): number;
  /**
   * Whether some parent node still lists this device's leaf in its unmerged_leaves: it was added by a commit
   * without an UpdatePath and has not committed one since. Joiners on ts-mls 1.6.4 refuse some valid trees
   * with unmerged leaves, so such a device commits a path update ([EC9]).
   */
  isUnmerged(state: MlsGroupState): boolean;
  /** RFC 9420 epoch_authenticator: equal on all members at the same epoch, a cheap out-of-band consistency check. */
  epochAuthenticator(state: MlsGroupState): Uint8Array;
  /** MLS-Exporter(label, context, length) of the current epoch. */
  exportSecret(state: MlsGroupState, label: string, context: Uint8Array, length: number): Promise<Uint8Array>;
  /** Serialises a state for the device's key store (contains private keys). */
  encodeState(state: MlsGroupState): Uint8Array;
  decodeState(bytes: Uint8Array): MlsGroupState;
}
