/**
 * [MV1] Official MLS test vectors, part 1: primitives and key derivation
 * (crypto-basics, key-schedule, secret-tree, psk_secret, transcript-hashes,
 * tree-math, deserialization) against ts-mls. Also checks that the vector
 * files are byte-identical to the upstream ones.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { decodeAuthenticatedContent } from 'ts-mls/authenticatedContent.js';
import { determineLength, lengthEncoder } from 'ts-mls/codec/variableLength.js';
import { encode } from 'ts-mls/codec/tlsEncoder.js';
import { getCiphersuiteNameFromId, type CiphersuiteId } from 'ts-mls/crypto/ciphersuite.js';
import { refhash } from 'ts-mls/crypto/hash.js';
import { decryptWithLabel, encryptWithLabel } from 'ts-mls/crypto/hpke.js';
import { deriveSecret, deriveTreeSecret, expandWithLabel } from 'ts-mls/crypto/kdf.js';
import { signWithLabel, verifyWithLabel } from 'ts-mls/crypto/signature.js';
import type { ContentTypeName } from 'ts-mls/contentType.js';
import { encodeGroupContext, type GroupContext } from 'ts-mls/groupContext.js';
import { defaultKeyRetentionConfig } from 'ts-mls/keyRetentionConfig.js';
import { initializeEpoch, mlsExporter } from 'ts-mls/keySchedule.js';
import { computePskSecret, type PreSharedKeyID } from 'ts-mls/presharedkey.js';
import { createSecretTree, ratchetToGeneration } from 'ts-mls/secretTree.js';
import { expandSenderDataKey, expandSenderDataNonce, type ReuseGuard } from 'ts-mls/sender.js';
import { createConfirmedHash, createInterimHash } from 'ts-mls/transcriptHash.js';
import { left, nodeWidth, parent, right, root, sibling, toNodeIndex, type NodeIndex } from 'ts-mls/treemath.js';
import { describe, expect, it } from 'vitest';
import { ALL_SUITES, VECTORS_DIR, describePlainVectors, describeSuiteVectors, hex, toHex } from './vectors/mls-vectors.js';

describe('[MV1] the vector files are the upstream mlswg/mls-implementations files, unchanged', () => {
  it('every file matches its SHA-256 in SHA256SUMS, and the folder holds nothing else (it is exempt from the secret scan)', () => {
    const sums = new Map(readFileSync(`${VECTORS_DIR}SHA256SUMS`, 'utf8').trim().split('\n').map((l) => {
      const [sum, name] = l.split(/\s+/);
      return [name!, sum!] as const;
    }));
    expect(readdirSync(VECTORS_DIR).sort()).toEqual([...sums.keys(), 'SHA256SUMS'].sort());
    const files = [...sums.keys()];
    expect(files.filter((f) => f.endsWith('.json'))).toHaveLength(16);
    for (const f of files) expect(createHash('sha256').update(readFileSync(`${VECTORS_DIR}${f}`)).digest('hex'), f).toBe(sums.get(f));
  });
});

interface CryptoBasics {
  cipher_suite: number;
  ref_hash: { label: string; value: string; out: string };
  expand_with_label: { secret: string; label: string; context: string; length: number; out: string };
  derive_secret: { secret: string; label: string; out: string };
  derive_tree_secret: { secret: string; label: string; generation: number; length: number; out: string };
  sign_with_label: { priv: string; pub: string; content: string; label: string; signature: string };
  encrypt_with_label: { priv: string; pub: string; label: string; context: string; plaintext: string; kem_output: string; ciphertext: string };
}

describeSuiteVectors<CryptoBasics>('crypto-basics', ALL_SUITES, async (v, cs) => {
  expect(toHex(await refhash(v.ref_hash.label, hex(v.ref_hash.value), cs.hash)), 'ref_hash').toBe(v.ref_hash.out);

  const e = v.expand_with_label;
  expect(toHex(await expandWithLabel(hex(e.secret), e.label, hex(e.context), e.length, cs.kdf)), 'expand_with_label').toBe(e.out);

  expect(toHex(await deriveSecret(hex(v.derive_secret.secret), v.derive_secret.label, cs.kdf)), 'derive_secret').toBe(v.derive_secret.out);

  const t = v.derive_tree_secret;
  expect(toHex(await deriveTreeSecret(hex(t.secret), t.label, t.generation, t.length, cs.kdf)), 'derive_tree_secret').toBe(t.out);

  const s = v.sign_with_label;
  expect(await verifyWithLabel(hex(s.pub), s.label, hex(s.content), hex(s.signature), cs.signature), 'vector signature verifies').toBe(true);
  const ours = await signWithLabel(hex(s.priv), s.label, hex(s.content), cs.signature);
  expect(await verifyWithLabel(hex(s.pub), s.label, hex(s.content), ours, cs.signature), 'our signature verifies').toBe(true);
  // A verifier that accepts everything would pass both checks above.
  expect(await verifyWithLabel(hex(s.pub), `${s.label}x`, hex(s.content), hex(s.signature), cs.signature), 'wrong label rejected').toBe(false);

  const x = v.encrypt_with_label;
  const priv = await cs.hpke.importPrivateKey(hex(x.priv));
  const pub = await cs.hpke.importPublicKey(hex(x.pub));
  expect(toHex(await decryptWithLabel(priv, x.label, hex(x.context), hex(x.kem_output), hex(x.ciphertext), cs.hpke)), 'decrypt vector').toBe(x.plaintext);
  const mine = await encryptWithLabel(pub, x.label, hex(x.context), hex(x.plaintext), cs.hpke);
  expect(toHex(await decryptWithLabel(priv, x.label, hex(x.context), mine.enc, mine.ct, cs.hpke)), 'decrypt our encryption').toBe(x.plaintext);
});

interface KeyScheduleEpoch {
  group_context: string; tree_hash: string; confirmed_transcript_hash: string; commit_secret: string; psk_secret: string;
  joiner_secret: string; welcome_secret: string; init_secret: string; sender_data_secret: string; encryption_secret: string;
  exporter_secret: string; epoch_authenticator: string; external_secret: string; confirmation_key: string; membership_key: string;
  resumption_psk: string; external_pub: string; exporter: { label: string; context: string; length: number; secret: string };
}
interface KeySchedule { cipher_suite: number; group_id: string; initial_init_secret: string; epochs: KeyScheduleEpoch[] }

describeSuiteVectors<KeySchedule>('key-schedule', ALL_SUITES, async (v, cs) => {
  let initSecret = hex(v.initial_init_secret);
  for (const [i, ep] of v.epochs.entries()) {
    const gc: GroupContext = {
      version: 'mls10',
      cipherSuite: getCiphersuiteNameFromId(v.cipher_suite as CiphersuiteId),
      groupId: hex(v.group_id),
      epoch: BigInt(i),
      treeHash: hex(ep.tree_hash),
      confirmedTranscriptHash: hex(ep.confirmed_transcript_hash),
      extensions: [],
    };
    expect(toHex(encodeGroupContext(gc)), `epoch ${i} group_context`).toBe(ep.group_context);
    const { keySchedule: ks, joinerSecret, welcomeSecret, encryptionSecret } = await initializeEpoch(initSecret, hex(ep.commit_secret), gc, hex(ep.psk_secret), cs.kdf);
    expect({
      joiner_secret: toHex(joinerSecret),
      welcome_secret: toHex(welcomeSecret),
      init_secret: toHex(ks.initSecret),
      sender_data_secret: toHex(ks.senderDataSecret),
      encryption_secret: toHex(encryptionSecret),
      exporter_secret: toHex(ks.exporterSecret),
      epoch_authenticator: toHex(ks.epochAuthenticator),
      external_secret: toHex(ks.externalSecret),
      confirmation_key: toHex(ks.confirmationKey),
      membership_key: toHex(ks.membershipKey),
      resumption_psk: toHex(ks.resumptionPsk),
    }, `epoch ${i}`).toEqual({
      joiner_secret: ep.joiner_secret,
      welcome_secret: ep.welcome_secret,
      init_secret: ep.init_secret,
      sender_data_secret: ep.sender_data_secret,
      encryption_secret: ep.encryption_secret,
      exporter_secret: ep.exporter_secret,
      epoch_authenticator: ep.epoch_authenticator,
      external_secret: ep.external_secret,
      confirmation_key: ep.confirmation_key,
      membership_key: ep.membership_key,
      resumption_psk: ep.resumption_psk,
    });
    const { publicKey } = await cs.hpke.deriveKeyPair(ks.externalSecret);
    expect(toHex(await cs.hpke.exportPublicKey(publicKey)), `epoch ${i} external_pub`).toBe(ep.external_pub);
    // The generator used the hex text of its random label as the label string.
    const exported = await mlsExporter(ks.exporterSecret, ep.exporter.label, hex(ep.exporter.context), ep.exporter.length, cs);
    expect(toHex(exported), `epoch ${i} exporter.secret`).toBe(ep.exporter.secret);
    initSecret = ks.initSecret;
  }
});

interface SecretTreeLeaf { generation: number; application_key: string; application_nonce: string; handshake_key: string; handshake_nonce: string }
interface SecretTreeVector {
  cipher_suite: number;
  encryption_secret: string;
  sender_data: { sender_data_secret: string; ciphertext: string; key: string; nonce: string };
  leaves: SecretTreeLeaf[][];
}

describeSuiteVectors<SecretTreeVector>('secret-tree', ALL_SUITES, async (v, cs) => {
  const sd = v.sender_data;
  expect(toHex(await expandSenderDataKey(cs, hex(sd.sender_data_secret), hex(sd.ciphertext))), 'sender_data.key').toBe(sd.key);
  expect(toHex(await expandSenderDataNonce(cs, hex(sd.sender_data_secret), hex(sd.ciphertext))), 'sender_data.nonce').toBe(sd.nonce);

  let tree = await createSecretTree(v.leaves.length, hex(v.encryption_secret), cs.kdf);
  const reuseGuard = new Uint8Array(4) as ReuseGuard; // all zero: the nonce comes back unmasked
  const at = async (leafIndex: number, generation: number, type: ContentTypeName) => {
    const r = await ratchetToGeneration(tree, { leafIndex, generation, reuseGuard }, type, defaultKeyRetentionConfig, cs);
    tree = r.newTree;
    expect(r.generation).toBe(generation);
    return { key: toHex(r.key), nonce: toHex(r.nonce) };
  };
  for (const [leafIndex, generations] of v.leaves.entries()) {
    for (const g of generations) {
      expect(await at(leafIndex, g.generation, 'application'), `leaf ${leafIndex} application gen ${g.generation}`).toEqual({ key: g.application_key, nonce: g.application_nonce });
      expect(await at(leafIndex, g.generation, 'commit'), `leaf ${leafIndex} handshake gen ${g.generation}`).toEqual({ key: g.handshake_key, nonce: g.handshake_nonce });
    }
  }
});

interface PskSecretVector { cipher_suite: number; psks: { psk_id: string; psk: string; psk_nonce: string }[]; psk_secret: string }

describeSuiteVectors<PskSecretVector>('psk_secret', ALL_SUITES, async (v, cs) => {
  const psks: [PreSharedKeyID, Uint8Array][] = v.psks.map((p) => [{ psktype: 'external', pskId: hex(p.psk_id), pskNonce: hex(p.psk_nonce) }, hex(p.psk)]);
  expect(toHex(await computePskSecret(psks, cs)), `psk_secret over ${psks.length} psks`).toBe(v.psk_secret);
});

interface TranscriptVector {
  cipher_suite: number; confirmation_key: string; authenticated_content: string;
  interim_transcript_hash_before: string; confirmed_transcript_hash_after: string; interim_transcript_hash_after: string;
}

describeSuiteVectors<TranscriptVector>('transcript-hashes', ALL_SUITES, async (v, cs) => {
  const decoded = decodeAuthenticatedContent(hex(v.authenticated_content), 0);
  expect(decoded, 'authenticated_content decodes').toBeDefined();
  const ac = decoded![0];
  if (ac.content.contentType !== 'commit' || ac.auth.contentType !== 'commit') throw new Error('authenticated_content is not a commit');
  const confirmed = await createConfirmedHash(hex(v.interim_transcript_hash_before), { wireformat: ac.wireformat, content: ac.content, signature: ac.auth.signature }, cs.hash);
  expect(toHex(confirmed), 'confirmed_transcript_hash_after').toBe(v.confirmed_transcript_hash_after);
  expect(await cs.hash.verifyMac(hex(v.confirmation_key), ac.auth.confirmationTag, confirmed), 'confirmation_tag verifies').toBe(true);
  expect(toHex(await createInterimHash(confirmed, ac.auth.confirmationTag, cs.hash)), 'interim_transcript_hash_after').toBe(v.interim_transcript_hash_after);
});

interface TreeMathVector { n_leaves: number; n_nodes: number; root: number; left: (number | null)[]; right: (number | null)[]; parent: (number | null)[]; sibling: (number | null)[] }

describePlainVectors<TreeMathVector>('tree-math', (v) => {
  expect(nodeWidth(v.n_leaves), 'n_nodes').toBe(v.n_nodes);
  expect(root(v.n_leaves), 'root').toBe(v.root);
  // ts-mls throws where the vector has null (a leaf has no children, the root no parent or sibling).
  const orNull = (f: () => NodeIndex): number | null => {
    try {
      return f();
    } catch {
      return null;
    }
  };
  const nodes = Array.from({ length: v.n_nodes }, (_, i) => toNodeIndex(i));
  expect(nodes.map((x) => orNull(() => left(x))), 'left').toEqual(v.left);
  expect(nodes.map((x) => orNull(() => right(x))), 'right').toEqual(v.right);
  expect(nodes.map((x) => orNull(() => parent(x, v.n_leaves))), 'parent').toEqual(v.parent);
  expect(nodes.map((x) => orNull(() => sibling(x, v.n_leaves))), 'sibling').toEqual(v.sibling);
});

interface DeserializationVector { vlbytes_header: string; length: number }

describePlainVectors<DeserializationVector>('deserialization', (v) => {
  const header = hex(v.vlbytes_header);
  expect(determineLength(header, 0), 'decode').toEqual({ length: v.length, lengthFieldSize: header.length });
  expect(toHex(encode(() => lengthEncoder(v.length))(undefined)), 'encode (minimal length)').toBe(v.vlbytes_header);
});
