/**
 * Pure decode/verify helpers for the MLS delivery service ([DS1]–[DS8]): no
 * I/O, no clock of their own. The server never holds group secrets, so it
 * checks what RFC 9420 lets a passive observer check: public framing,
 * signatures, and the public ratchet tree. For a commit it rebuilds the new
 * public tree the way every member will (removes, adds, then the committer's
 * UpdatePath) and requires the new GroupInfo to commit to exactly that tree
 * and to this commit's transcript. Who may hold a leaf (membership, active
 * devices, rights) is the service's job; these helpers report identities.
 */
import { parseMlsIdentity, type CipherSuiteId } from '@secureconnect/protocol';
import { decodeMlsMessage, encodeMlsMessage, type GroupInfo, type MLSMessage, type RatchetTree } from 'ts-mls';
import type { CiphersuiteImpl } from 'ts-mls/crypto/ciphersuite.js';
import { ciphersuites } from 'ts-mls/crypto/ciphersuite.js';
import { validateRatchetTree } from 'ts-mls/clientState.js';
import { extensionsEqual } from 'ts-mls/extension.js';
import { verifyFramedContentSignature, type FramedContentAuthDataCommit, type FramedContentCommit } from 'ts-mls/framedContent.js';
import { ratchetTreeFromExtension, verifyGroupInfoSignature } from 'ts-mls/groupInfo.js';
import { verifyLeafNodeSignature, type LeafNode } from 'ts-mls/leafNode.js';
import type { PublicMessage } from 'ts-mls/publicMessage.js';
import { addLeafNode, removeLeafNode } from 'ts-mls/ratchetTree.js';
import { createConfirmedHash, createInterimHash } from 'ts-mls/transcriptHash.js';
import { treeHashRoot } from 'ts-mls/treeHash.js';
import { leafToNodeIndex, nodeToLeafIndex, toLeafIndex, toNodeIndex } from 'ts-mls/treemath.js';
import { applyUpdatePath } from 'ts-mls/updatePath.js';
import { constantTimeEqual } from 'ts-mls/util/constantTimeCompare.js';
import { inspectKeyPackage } from './keypackage.js';
import { isAllowedSuite, suiteImpl, toB64 } from './suites.js';

export type Refusal = { ok: false; reason: string };
const refuse = (reason: string): Refusal => ({ ok: false, reason });

/** One occupied leaf of a ratchet tree, as our identity encoding names it. */
export interface LeafInfo {
  leafIndex: number;
  userId: string;
  deviceId: string;
  /** base64 signature public key of the leaf. */
  signatureKey: string;
}

export interface InspectedGroupInfo {
  ok: true;
  groupInfo: GroupInfo;
  cipherSuite: CipherSuiteId;
  cs: CiphersuiteImpl;
  epoch: number;
  tree: RatchetTree;
  leaves: LeafInfo[];
}

/** The MLS group id of a conversation: the UTF-8 bytes of its id. */
export function groupIdOf(conversationId: string): Uint8Array {
  return new TextEncoder().encode(conversationId);
}

function decodeWhole(bytes: Uint8Array): MLSMessage | undefined {
  try {
    const decoded = decodeMlsMessage(bytes, 0);
    if (!decoded || decoded[1] !== bytes.length || decoded[0].version !== 'mls10') return undefined;
    return decoded[0];
  } catch {
    // ts-mls throws on some malformed input (unknown enum values) instead of returning undefined.
    return undefined;
  }
}

/** Suite names decode to ts-mls names; unknown suites to their number as a string. */
function suiteIdOf(name: string): number {
  return (ciphersuites as Record<string, number>)[name] ?? Number(name);
}

function epochNumber(epoch: bigint): number | undefined {
  return epoch >= 0n && epoch <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(epoch) : undefined;
}

function leafAt(tree: RatchetTree, leafIndex: number): LeafNode | undefined {
  const node = tree[leafToNodeIndex(toLeafIndex(leafIndex))];
  return node?.nodeType === 'leaf' ? node.leaf : undefined;
}

function leafInfo(leaf: LeafNode, leafIndex: number): LeafInfo | undefined {
  if (leaf.credential.credentialType !== 'basic') return undefined;
  const id = parseMlsIdentity(leaf.credential.identity);
  return id && { leafIndex, ...id, signatureKey: toB64(leaf.signaturePublicKey) };
}

/** Every occupied leaf with its identity, or a refusal when one is not one of our devices or a device holds two leaves. */
export function treeLeaves(tree: RatchetTree): LeafInfo[] | Refusal {
  const out: LeafInfo[] = [];
  const devices = new Set<string>();
  for (let i = 0; i < tree.length; i += 2) {
    const node = tree[i];
    if (node === undefined) continue;
    if (node.nodeType !== 'leaf') return refuse('the ratchet tree is malformed');
    const leafIndex = nodeToLeafIndex(toNodeIndex(i));
    const info = leafInfo(node.leaf, leafIndex);
    if (!info) return refuse(`leaf ${leafIndex} does not carry a SecureConnect device identity`);
    if (devices.has(info.deviceId)) return refuse(`device ${info.deviceId} holds more than one leaf`);
    devices.add(info.deviceId);
    out.push(info);
  }
  return out;
}

/**
 * Decodes an MLSMessage(GroupInfo) and checks what any joiner relies on: an
 * allowed suite, this group, the ratchet_tree extension whose hash is the
 * GroupContext's tree hash, an external_pub extension (so a new device of a
 * member can always join by external commit, [DS8]), our identity on every
 * leaf, and the signature of its signer leaf.
 */
export async function inspectGroupInfo(bytes: Uint8Array, groupId: Uint8Array): Promise<InspectedGroupInfo | Refusal> {
  const msg = decodeWhole(bytes);
  if (!msg || msg.wireformat !== 'mls_group_info') return refuse('groupInfo is not an MLSMessage GroupInfo');
  const gi = msg.groupInfo;
  const ctx = gi.groupContext;
  const suite = suiteIdOf(ctx.cipherSuite);
  if (!isAllowedSuite(suite)) return refuse('the GroupInfo uses a cipher suite the server does not accept');
  if (ctx.version !== 'mls10') return refuse('unsupported MLS version');
  if (!constantTimeEqual(ctx.groupId, groupId)) return refuse('the GroupInfo is for another group');
  const epoch = epochNumber(ctx.epoch);
  if (epoch === undefined) return refuse('epoch out of range');
  let tree: RatchetTree | undefined;
  try {
    tree = ratchetTreeFromExtension(gi);
  } catch {
    return refuse('the ratchet_tree extension does not decode');
  }
  if (!tree || tree.length === 0) return refuse('the GroupInfo must carry the ratchet_tree extension');
  if (!gi.extensions.some((e) => e.extensionType === 'external_pub')) return refuse('the GroupInfo must carry the external_pub extension');
  const cs = await suiteImpl(suite);
  if (!constantTimeEqual(await treeHashRoot(tree, cs.hash), ctx.treeHash)) return refuse("the ratchet tree does not match the GroupInfo's tree hash");
  const leaves = treeLeaves(tree);
  if (!Array.isArray(leaves)) return leaves;
  const signer = leafAt(tree, gi.signer);
  if (!signer) return refuse('the GroupInfo signer is not a leaf of the tree');
  if (!(await verifySafely(() => verifyGroupInfoSignature(gi, signer.signaturePublicKey, cs.signature)))) return refuse('the GroupInfo signature does not verify');
  return { ok: true, groupInfo: gi, cipherSuite: suite, cs, epoch, tree, leaves };
}

/** A signature check that treats a key of the wrong shape as a failed verification. */
async function verifySafely(check: () => Promise<boolean>): Promise<boolean> {
  try {
    return await check();
  } catch {
    return false;
  }
}

/**
 * [DS1] The creator's GroupInfo at epoch 0: on top of inspectGroupInfo, the
 * whole tree is validated as a joiner would (leaf signatures, parent and tree
 * hashes), and it must hold exactly one leaf, which the caller compares with
 * its device.
 */
export async function inspectInitialGroupInfo(bytes: Uint8Array, groupId: Uint8Array, cipherSuite: CipherSuiteId): Promise<(InspectedGroupInfo & { creator: LeafInfo }) | Refusal> {
  const gi = await inspectGroupInfo(bytes, groupId);
  if (!gi.ok) return gi;
  if (gi.cipherSuite !== cipherSuite) return refuse('the GroupInfo uses another cipher suite than the request');
  if (gi.epoch !== 0) return refuse('a new group starts at epoch 0');
  if (gi.leaves.length !== 1 || gi.leaves[0]!.leafIndex !== 0) return refuse("a new group's tree holds exactly one leaf: the creator's device");
  const ctx = gi.groupInfo.groupContext;
  if (ctx.extensions.length > 0) return refuse('group context extensions are not accepted');
  const invalid = await validateRatchetTree(
    gi.tree,
    ctx,
    { maximumTotalLifetime: 2n ** 63n, validateLifetimeOnReceive: false },
    { validateCredential: () => Promise.resolve(true) },
    ctx.treeHash,
    gi.cs,
  ).catch((err: unknown) => (err instanceof Error ? err : new Error('invalid tree')));
  if (invalid) return refuse(`the ratchet tree is invalid: ${invalid.message}`);
  return { ...gi, creator: gi.leaves[0]! };
}

export interface DecodedCommit {
  ok: true;
  publicMessage: PublicMessage;
  content: FramedContentCommit;
  auth: FramedContentAuthDataCommit;
  /** The epoch the commit is based on. */
  epoch: number;
}

/** First stage of a commit: framing only, so the caller can answer an epoch conflict before any cryptography. */
export function decodeCommit(bytes: Uint8Array, groupId: Uint8Array): DecodedCommit | Refusal {
  const msg = decodeWhole(bytes);
  if (!msg || msg.wireformat !== 'mls_public_message') return refuse('the commit must be an MLSMessage PublicMessage');
  const pm = msg.publicMessage;
  const content = pm.content;
  if (content.contentType !== 'commit' || pm.auth.contentType !== 'commit') return refuse('the message is not a commit (standalone proposals are not accepted)');
  if (!constantTimeEqual(content.groupId, groupId)) return refuse('the commit is for another group');
  const epoch = epochNumber(content.epoch);
  if (epoch === undefined) return refuse('epoch out of range');
  return { ok: true, publicMessage: pm, content, auth: pm.auth, epoch };
}

export interface AddedLeaf extends LeafInfo {
  /** base64 KeyPackageRef of the package the leaf came from. */
  ref: string;
}

export interface VerifiedCommit {
  ok: true;
  kind: 'member' | 'external';
  /** The committing device's leaf in the new tree. */
  committer: LeafInfo;
  /** Leaves of the old tree this commit removes. */
  removed: LeafInfo[];
  /** Leaves this commit adds from key packages (member commits only). */
  added: AddedLeaf[];
  /** The new epoch's GroupInfo, checked against the rebuilt tree. */
  next: InspectedGroupInfo;
}

/**
 * [DS2]–[DS5], [DS8]: verifies a decoded commit against the current epoch's
 * GroupInfo and the proposed next GroupInfo (and Welcome).
 * - sender: a member leaf (signature by that leaf's key) or a new-member
 *   commit (signature by its UpdatePath leaf's key);
 * - proposals by value only: add/remove, or for a new member one
 *   external_init and at most one remove;
 * - added key packages pass inspectKeyPackage at `now` and use the group's suite;
 * - the UpdatePath is applied to the public tree (parent hashes verified), and
 *   the next GroupInfo must be epoch+1 of the same group, with that tree's
 *   hash, the transcript hash this commit produces, its confirmation tag and
 *   unchanged group context extensions, signed by the committer's new leaf;
 * - a Welcome exactly when devices are added, addressed to exactly their key packages.
 */
export async function verifyCommit(
  current: InspectedGroupInfo,
  commit: DecodedCommit,
  nextGroupInfo: Uint8Array,
  welcome: Uint8Array | undefined,
  now: number,
): Promise<VerifiedCommit | Refusal> {
  const { cs } = current;
  const ctx = current.groupInfo.groupContext;
  const groupId = ctx.groupId;
  const { content, auth } = commit;
  const { proposals, path } = content.commit;
  const sender = content.sender;
  if (sender.senderType !== 'member' && sender.senderType !== 'new_member_commit') return refuse('a commit must come from a member or be an external join');
  const external = sender.senderType === 'new_member_commit';

  const byValue = [];
  for (const p of proposals) {
    if (p.proposalOrRefType !== 'proposal') return refuse('proposals by reference are not accepted; commit them by value');
    byValue.push(p.proposal);
  }
  const removes: number[] = [];
  const adds = [];
  let externalInits = 0;
  for (const p of byValue) {
    if (p.proposalType === 'remove') removes.push(p.remove.removed);
    else if (p.proposalType === 'add' && !external) adds.push(p.add.keyPackage);
    else if (p.proposalType === 'external_init' && external) externalInits++;
    else return refuse(`proposal type ${String(p.proposalType)} is not accepted in this commit`);
  }
  if (external && (externalInits !== 1 || removes.length > 1)) return refuse('an external join carries one external_init and at most one remove');
  if (new Set(removes).size !== removes.length) return refuse('a leaf is removed twice');
  if (!path && (external || byValue.length === 0 || removes.length > 0)) return refuse('this commit needs an UpdatePath');

  // Signature over the FramedContent with the current epoch's GroupContext.
  let senderLeafIndex: number | undefined;
  let signKey: Uint8Array;
  if (sender.senderType === 'member') {
    senderLeafIndex = sender.leafIndex;
    const leaf = leafAt(current.tree, senderLeafIndex);
    if (!leaf) return refuse('the sender leaf is empty');
    signKey = leaf.signaturePublicKey;
    if (removes.includes(senderLeafIndex)) return refuse('a committer cannot remove itself');
  } else {
    signKey = path!.leafNode.signaturePublicKey;
  }
  if (!(await verifySafely(() => verifyFramedContentSignature(signKey, 'mls_public_message', content, auth, ctx, cs.signature)))) {
    return refuse('the commit signature does not verify');
  }

  // Rebuild the public tree as every member will: removes, adds, then the path.
  let tree = current.tree;
  const removed: LeafInfo[] = [];
  for (const r of removes) {
    const leaf = leafAt(tree, r);
    const info = leaf && leafInfo(leaf, r);
    if (!info) return refuse(`leaf ${r} cannot be removed: it is empty`);
    removed.push(info);
    tree = removeLeafNode(tree, toLeafIndex(r));
  }
  const added: AddedLeaf[] = [];
  for (const kp of adds) {
    const inspected = await inspectKeyPackage(encodeMlsMessage({ version: 'mls10', wireformat: 'mls_key_package', keyPackage: kp }), now);
    if (!inspected.ok) return refuse(`an added key package is refused (${inspected.reason})`);
    if (inspected.cipherSuite !== current.cipherSuite) return refuse("an added key package uses another cipher suite than the group's");
    const [next, nodeIndex] = addLeafNode(tree, kp.leafNode);
    tree = next;
    added.push({ leafIndex: nodeToLeafIndex(nodeIndex), ...inspected.identity, signatureKey: inspected.signatureKey, ref: inspected.ref });
  }
  let committerIndex: number;
  if (sender.senderType === 'member') {
    committerIndex = sender.leafIndex;
  } else {
    const [next, nodeIndex] = addLeafNode(tree, path!.leafNode);
    tree = next;
    committerIndex = nodeToLeafIndex(nodeIndex);
  }
  if (path) {
    if (!(await verifySafely(() => verifyLeafNodeSignature(path.leafNode, groupId, committerIndex, cs.signature)))) return refuse("the UpdatePath's leaf signature does not verify");
    try {
      tree = await applyUpdatePath(tree, toLeafIndex(committerIndex), path, cs.hash, external);
    } catch (err) {
      return refuse(`the UpdatePath is invalid: ${err instanceof Error ? err.message : 'malformed'}`);
    }
  }
  const committerLeaf = leafAt(tree, committerIndex);
  const committer = committerLeaf && leafInfo(committerLeaf, committerIndex);
  if (!committer) return refuse("the committer's leaf does not carry a SecureConnect device identity");
  if (sender.senderType === 'member') {
    const before = current.leaves.find((l) => l.leafIndex === committerIndex)!;
    if (before.deviceId !== committer.deviceId || before.userId !== committer.userId) return refuse("the committer's leaf must keep its identity");
  }

  // The next GroupInfo must describe exactly the epoch this commit creates.
  const next = await inspectGroupInfo(nextGroupInfo, groupId);
  if (!next.ok) return next;
  const nctx = next.groupInfo.groupContext;
  if (next.cipherSuite !== current.cipherSuite) return refuse('the GroupInfo changes the cipher suite');
  if (next.epoch !== current.epoch + 1) return refuse('the GroupInfo is not for the epoch this commit creates');
  if (!constantTimeEqual(nctx.treeHash, await treeHashRoot(tree, cs.hash))) return refuse('the GroupInfo tree is not the tree this commit produces');
  const interim = await createInterimHash(ctx.confirmedTranscriptHash, current.groupInfo.confirmationTag, cs.hash);
  const confirmed = await createConfirmedHash(interim, { wireformat: 'mls_public_message', content: content, signature: auth.signature }, cs.hash);
  if (!constantTimeEqual(nctx.confirmedTranscriptHash, confirmed)) return refuse("the GroupInfo's transcript hash is not this commit's");
  if (!constantTimeEqual(next.groupInfo.confirmationTag, auth.confirmationTag)) return refuse("the GroupInfo's confirmation tag is not this commit's");
  if (!extensionsEqual(nctx.extensions, ctx.extensions)) return refuse('group context extensions cannot change');
  if (next.groupInfo.signer !== committerIndex) return refuse('the GroupInfo must be signed by the committer');

  // [DS5] A Welcome exactly for the added key packages.
  if (added.length === 0) {
    if (welcome !== undefined) return refuse('a Welcome is only sent with a commit that adds devices');
  } else {
    if (welcome === undefined) return refuse('a commit that adds devices must carry their Welcome');
    const msg = decodeWhole(welcome);
    if (!msg || msg.wireformat !== 'mls_welcome') return refuse('welcome is not an MLSMessage Welcome');
    if (suiteIdOf(msg.welcome.cipherSuite) !== current.cipherSuite) return refuse("the Welcome uses another cipher suite than the group's");
    const refs = new Set(msg.welcome.secrets.map((s) => toB64(s.newMember)));
    const wanted = new Set(added.map((a) => a.ref));
    if (refs.size !== msg.welcome.secrets.length || refs.size !== wanted.size || [...wanted].some((r) => !refs.has(r))) {
      return refuse('Welcome is not for the added devices');
    }
  }
  return { ok: true, kind: external ? 'external' : 'member', committer, removed, added, next };
}

/**
 * [DS5] The Welcome as one added device receives it: only that device's
 * EncryptedGroupSecrets. A Welcome carries one entry per added device, so
 * sending the whole message to each of n devices would store and send n²
 * entries; per device it is one. Call only after verifyCommit accepted it.
 */
export function welcomeForDevice(welcome: Uint8Array, ref: string): string {
  const msg = decodeWhole(welcome);
  if (!msg || msg.wireformat !== 'mls_welcome') throw new Error('welcomeForDevice: not a verified Welcome');
  const secrets = msg.welcome.secrets.filter((s) => toB64(s.newMember) === ref);
  return toB64(encodeMlsMessage({ ...msg, welcome: { ...msg.welcome, secrets } }));
}

/** How far behind the current epoch an application message may be (members may not have processed the latest commits yet). */
export const APPLICATION_EPOCH_LAG = 2;

/**
 * [DS7] An application message: an MLSMessage PrivateMessage of this group
 * with content type application. Returns its epoch; the service compares it
 * with the current one. Nothing is decrypted.
 */
export function inspectApplicationMessage(bytes: Uint8Array, groupId: Uint8Array): { ok: true; epoch: number } | Refusal {
  const msg = decodeWhole(bytes);
  if (!msg || msg.wireformat !== 'mls_private_message') return refuse('encrypted content must be an MLSMessage PrivateMessage');
  const pm = msg.privateMessage;
  if (!constantTimeEqual(pm.groupId, groupId)) return refuse('the message is for another group');
  if (pm.contentType !== 'application') return refuse('only application messages are sent as encrypted content; commits go to the commit endpoint');
  const epoch = epochNumber(pm.epoch);
  if (epoch === undefined) return refuse('epoch out of range');
  return { ok: true, epoch };
}
