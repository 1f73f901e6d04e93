/**
 * [MV1] Official MLS test vectors, part 2: framing and wire formats
 * (message-protection, welcome, messages) against ts-mls.
 */
import type { AuthenticatedContent } from 'ts-mls/authenticatedContent.js';
import type { Decoder } from 'ts-mls/codec/tlsDecoder.js';
import type { Encoder } from 'ts-mls/codec/tlsEncoder.js';
import { decodeCommit, encodeCommit } from 'ts-mls/commit.js';
import { getCiphersuiteNameFromId, type CiphersuiteId, type CiphersuiteImpl } from 'ts-mls/crypto/ciphersuite.js';
import { createContentCommitSignature } from 'ts-mls/framedContent.js';
import type { GroupContext } from 'ts-mls/groupContext.js';
import { verifyGroupInfoConfirmationTag, verifyGroupInfoSignature } from 'ts-mls/groupInfo.js';
import { decodeGroupSecrets, encodeGroupSecrets } from 'ts-mls/groupSecrets.js';
import { makeKeyPackageRef, verifyKeyPackage } from 'ts-mls/keyPackage.js';
import { decodeMlsMessage, encodeMlsMessage, type MLSMessage } from 'ts-mls/message.js';
import { protect, protectApplicationData, protectProposal, unprotectPrivateMessage } from 'ts-mls/messageProtection.js';
import { protectProposalPublic, protectPublicMessage, unprotectPublicMessage } from 'ts-mls/messageProtectionPublic.js';
import { defaultKeyRetentionConfig } from 'ts-mls/keyRetentionConfig.js';
import { defaultPaddingConfig } from 'ts-mls/paddingConfig.js';
import type { PrivateMessage } from 'ts-mls/privateMessage.js';
import {
  decodeAdd, decodeExternalInit, decodeGroupContextExtensions, decodeProposal, decodePSK, decodeReinit, decodeRemove, decodeUpdate,
  encodeAdd, encodeExternalInit, encodeGroupContextExtensions, encodeProposal, encodePSK, encodeReinit, encodeRemove, encodeUpdate,
} from 'ts-mls/proposal.js';
import type { PublicMessage } from 'ts-mls/publicMessage.js';
import { decodeRatchetTree, encodeRatchetTree } from 'ts-mls/ratchetTree.js';
import { createSecretTree } from 'ts-mls/secretTree.js';
import { decryptGroupInfo, decryptGroupSecrets } from 'ts-mls/welcome.js';
import { expect } from 'vitest';
import { ALL_SUITES, describePlainVectors, describeSuiteVectors, hex, toHex } from './vectors/mls-vectors.js';

function decodeAll<T>(dec: Decoder<T>, bytes: Uint8Array, what: string): T {
  const r = dec(bytes, 0);
  if (r === undefined) throw new Error(`${what} does not decode`);
  expect(r[1], `${what} decodes to its last byte`).toBe(bytes.length);
  return r[0];
}

function mlsMessage<W extends MLSMessage['wireformat']>(bytes: Uint8Array, wireformat: W, what: string): Extract<MLSMessage, { wireformat: W }> {
  const m = decodeAll(decodeMlsMessage, bytes, what);
  expect(m.wireformat, `${what} wire format`).toBe(wireformat);
  return m as Extract<MLSMessage, { wireformat: W }>;
}

interface ProtectionVector {
  cipher_suite: number; group_id: string; epoch: number; tree_hash: string; confirmed_transcript_hash: string;
  signature_priv: string; signature_pub: string; encryption_secret: string; sender_data_secret: string; membership_key: string;
  proposal: string; proposal_priv: string; proposal_pub: string;
  commit: string; commit_priv: string; commit_pub: string;
  application: string; application_priv: string;
}

/** The vector's sender is always leaf 1 of a two-member group. */
const SENDER = 1;

describeSuiteVectors<ProtectionVector>('message-protection', ALL_SUITES, async (v, cs) => {
  const gc: GroupContext = {
    version: 'mls10',
    cipherSuite: getCiphersuiteNameFromId(v.cipher_suite as CiphersuiteId),
    groupId: hex(v.group_id),
    epoch: BigInt(v.epoch),
    treeHash: hex(v.tree_hash),
    confirmedTranscriptHash: hex(v.confirmed_transcript_hash),
    extensions: [],
  };
  const membershipKey = hex(v.membership_key);
  const senderDataSecret = hex(v.sender_data_secret);
  const signPriv = hex(v.signature_priv);
  const signPub = hex(v.signature_pub);
  const freshTree = () => createSecretTree(2, hex(v.encryption_secret), cs.kdf);

  const openPublic = async (pm: PublicMessage) => {
    const ac = await unprotectPublicMessage(membershipKey, gc, [], pm, cs, signPub);
    expect(ac.content.sender).toEqual({ senderType: 'member', leafIndex: SENDER });
    // A wrong membership key must be refused, or the check above proves nothing.
    const wrongKey = membershipKey.slice();
    wrongKey[0] = wrongKey[0]! ^ 1;
    await expect(unprotectPublicMessage(wrongKey, gc, [], pm, cs, signPub)).rejects.toThrow();
    return ac.content;
  };
  const openPrivate = async (pm: PrivateMessage) => {
    const { content } = await unprotectPrivateMessage(senderDataSecret, pm, await freshTree(), [], gc, defaultKeyRetentionConfig, cs, signPub);
    expect(content.content.sender).toEqual({ senderType: 'member', leafIndex: SENDER });
    expect(toHex(content.content.groupId)).toBe(v.group_id);
    expect(content.content.epoch).toBe(BigInt(v.epoch));
    return content.content;
  };

  // Proposal: vector PublicMessage and PrivateMessage open to the raw proposal, and ours round-trip.
  const proposal = decodeAll(decodeProposal, hex(v.proposal), 'proposal');
  const pubProposal = await openPublic(mlsMessage(hex(v.proposal_pub), 'mls_public_message', 'proposal_pub').publicMessage);
  expect(pubProposal.contentType === 'proposal' && toHex(encodeProposal(pubProposal.proposal)), 'proposal_pub').toBe(v.proposal);
  const privProposal = await openPrivate(mlsMessage(hex(v.proposal_priv), 'mls_private_message', 'proposal_priv').privateMessage);
  expect(privProposal.contentType === 'proposal' && toHex(encodeProposal(privProposal.proposal)), 'proposal_priv').toBe(v.proposal);
  const ourPubProposal = await protectProposalPublic(signPriv, membershipKey, gc, new Uint8Array(), proposal, SENDER, cs);
  const reopenedPubProposal = await openPublic(ourPubProposal.publicMessage);
  expect(reopenedPubProposal.contentType === 'proposal' && toHex(encodeProposal(reopenedPubProposal.proposal)), 'our public proposal').toBe(v.proposal);
  const ourPrivProposal = await protectProposal(signPriv, senderDataSecret, proposal, new Uint8Array(), gc, await freshTree(), SENDER, defaultPaddingConfig, cs);
  const reopenedPrivProposal = await openPrivate(ourPrivProposal.privateMessage);
  expect(reopenedPrivProposal.contentType === 'proposal' && toHex(encodeProposal(reopenedPrivProposal.proposal)), 'our private proposal').toBe(v.proposal);

  // Commit: same, with a confirmation tag added when we protect it ourselves.
  const commit = decodeAll(decodeCommit, hex(v.commit), 'commit');
  const pubCommit = await openPublic(mlsMessage(hex(v.commit_pub), 'mls_public_message', 'commit_pub').publicMessage);
  expect(pubCommit.contentType === 'commit' && toHex(encodeCommit(pubCommit.commit)), 'commit_pub').toBe(v.commit);
  const privCommit = await openPrivate(mlsMessage(hex(v.commit_priv), 'mls_private_message', 'commit_priv').privateMessage);
  expect(privCommit.contentType === 'commit' && toHex(encodeCommit(privCommit.commit)), 'commit_priv').toBe(v.commit);
  const confirmationTag = await cs.hash.mac(membershipKey, hex(v.commit)); // any MAC-sized value
  const sender = { senderType: 'member', leafIndex: SENDER } as const;
  const signedPub = await createContentCommitSignature(gc, 'mls_public_message', commit, sender, new Uint8Array(), signPriv, cs.signature);
  const ourPubCommit: AuthenticatedContent = {
    wireformat: 'mls_public_message',
    content: signedPub.framedContent,
    auth: { contentType: 'commit', signature: signedPub.signature, confirmationTag },
  };
  const reopenedPubCommit = await openPublic(await protectPublicMessage(membershipKey, gc, ourPubCommit, cs));
  expect(reopenedPubCommit.contentType === 'commit' && toHex(encodeCommit(reopenedPubCommit.commit)), 'our public commit').toBe(v.commit);
  const signedPriv = await createContentCommitSignature(gc, 'mls_private_message', commit, sender, new Uint8Array(), signPriv, cs.signature);
  const ourPrivCommit = await protect(senderDataSecret, new Uint8Array(), gc, await freshTree(), {
    contentType: 'commit',
    commit,
    auth: { contentType: 'commit', signature: signedPriv.signature, confirmationTag },
  }, SENDER, defaultPaddingConfig, cs);
  const reopenedPrivCommit = await openPrivate(ourPrivCommit.privateMessage);
  expect(reopenedPrivCommit.contentType === 'commit' && toHex(encodeCommit(reopenedPrivCommit.commit)), 'our private commit').toBe(v.commit);

  // Application data: only as a PrivateMessage; a PublicMessage carrying it is refused.
  const privApp = await openPrivate(mlsMessage(hex(v.application_priv), 'mls_private_message', 'application_priv').privateMessage);
  expect(privApp.contentType === 'application' && toHex(privApp.applicationData), 'application_priv').toBe(v.application);
  const ourPrivApp = await protectApplicationData(signPriv, senderDataSecret, hex(v.application), new Uint8Array(), gc, await freshTree(), SENDER, defaultPaddingConfig, cs);
  const reopenedApp = await openPrivate(ourPrivApp.privateMessage);
  expect(reopenedApp.contentType === 'application' && toHex(reopenedApp.applicationData), 'our private application').toBe(v.application);
  const publicApp: AuthenticatedContent = {
    wireformat: 'mls_public_message',
    content: { ...privApp, sender },
    auth: { contentType: 'application', signature: new Uint8Array(64) },
  };
  await expect(protectPublicMessage(membershipKey, gc, publicApp, cs), 'application data as PublicMessage').rejects.toThrow();
});

interface WelcomeVector { cipher_suite: number; init_priv: string; key_package: string; signer_pub: string; welcome: string }

describeSuiteVectors<WelcomeVector>('welcome', ALL_SUITES, async (v, cs: CiphersuiteImpl) => {
  const { welcome } = mlsMessage(hex(v.welcome), 'mls_welcome', 'welcome');
  const { keyPackage } = mlsMessage(hex(v.key_package), 'mls_key_package', 'key_package');
  expect(await verifyKeyPackage(keyPackage, cs.signature), 'key package signature').toBe(true);
  const ref = await makeKeyPackageRef(keyPackage, cs.hash);
  expect(welcome.secrets.some((s) => toHex(s.newMember) === toHex(ref)), 'Welcome addresses the key package').toBe(true);
  const secrets = await decryptGroupSecrets(await cs.hpke.importPrivateKey(hex(v.init_priv)), ref, welcome, cs.hpke);
  expect(secrets, 'group secrets decrypt with init_priv').toBeDefined();
  expect(secrets!.psks).toEqual([]);
  const pskSecret = new Uint8Array(cs.kdf.size); // no PSKs: psk_secret is all zero (RFC 9420 §8.4)
  const groupInfo = await decryptGroupInfo(welcome, secrets!.joinerSecret, pskSecret, cs);
  expect(groupInfo, 'group info decrypts').toBeDefined();
  expect(await verifyGroupInfoConfirmationTag(groupInfo!, secrets!.joinerSecret, pskSecret, cs), 'confirmation tag').toBe(true);
  expect(await verifyGroupInfoSignature(groupInfo!, hex(v.signer_pub), cs.signature), 'signature by signer_pub').toBe(true);
  const otherSigner = (await cs.signature.keygen()).publicKey;
  expect(await verifyGroupInfoSignature(groupInfo!, otherSigner, cs.signature), 'signature by another key').toBe(false);
});

type MessagesVector = Record<
  | 'mls_welcome' | 'mls_group_info' | 'mls_key_package' | 'ratchet_tree' | 'group_secrets' | 'add_proposal' | 'update_proposal'
  | 'remove_proposal' | 'pre_shared_key_proposal' | 're_init_proposal' | 'external_init_proposal' | 'group_context_extensions_proposal'
  | 'commit' | 'public_message_application' | 'public_message_proposal' | 'public_message_commit' | 'private_message',
  string
>;

function roundTrip<T>(dec: Decoder<T>, enc: Encoder<T>, s: string, what: string): T {
  const value = decodeAll(dec, hex(s), what);
  expect(toHex(enc(value)), `${what} re-encodes to the same bytes`).toBe(s);
  return value;
}

describePlainVectors<MessagesVector>('messages', (v) => {
  const wire = (s: string, wf: MLSMessage['wireformat'], what: string) => {
    const m = roundTrip(decodeMlsMessage, encodeMlsMessage, s, what);
    expect(m.wireformat, `${what} wire format`).toBe(wf);
    return m;
  };
  wire(v.mls_welcome, 'mls_welcome', 'mls_welcome');
  wire(v.mls_group_info, 'mls_group_info', 'mls_group_info');
  wire(v.mls_key_package, 'mls_key_package', 'mls_key_package');
  roundTrip(decodeRatchetTree, encodeRatchetTree, v.ratchet_tree, 'ratchet_tree');
  roundTrip(decodeGroupSecrets, encodeGroupSecrets, v.group_secrets, 'group_secrets');
  roundTrip(decodeAdd, encodeAdd, v.add_proposal, 'add_proposal');
  roundTrip(decodeUpdate, encodeUpdate, v.update_proposal, 'update_proposal');
  roundTrip(decodeRemove, encodeRemove, v.remove_proposal, 'remove_proposal');
  roundTrip(decodePSK, encodePSK, v.pre_shared_key_proposal, 'pre_shared_key_proposal');
  roundTrip(decodeReinit, encodeReinit, v.re_init_proposal, 're_init_proposal');
  roundTrip(decodeExternalInit, encodeExternalInit, v.external_init_proposal, 'external_init_proposal');
  roundTrip(decodeGroupContextExtensions, encodeGroupContextExtensions, v.group_context_extensions_proposal, 'group_context_extensions_proposal');
  roundTrip(decodeCommit, encodeCommit, v.commit, 'commit');
  for (const [field, contentType] of [['public_message_application', 'application'], ['public_message_proposal', 'proposal'], ['public_message_commit', 'commit']] as const) {
    const m = wire(v[field], 'mls_public_message', field);
    expect(m.wireformat === 'mls_public_message' && m.publicMessage.content.contentType, `${field} content type`).toBe(contentType);
  }
  wire(v.private_message, 'mls_private_message', 'private_message');
});
