/**
 * [MV1] Official MLS test vectors, part 6: TreeKEM (treekem) against ts-mls:
 * the private state matches the tree, every member decrypts each UpdatePath
 * to the vector's path secret and commit secret, and an UpdatePath ts-mls
 * makes is processed the same way.
 */
import { defaultAuthenticationService } from 'ts-mls/authenticationService.js';
import { validateRatchetTree } from 'ts-mls/clientState.js';
import { applyUpdatePathSecret } from 'ts-mls/createCommit.js';
import type { CiphersuiteImpl } from 'ts-mls/crypto/ciphersuite.js';
import { deriveSecret } from 'ts-mls/crypto/kdf.js';
import type { GroupContext } from 'ts-mls/groupContext.js';
import { verifyLeafNodeSignature } from 'ts-mls/leafNode.js';
import { defaultLifetimeConfig } from 'ts-mls/lifetimeConfig.js';
import { verifyParentHashes } from 'ts-mls/parentHash.js';
import { getCommitSecret } from 'ts-mls/pathSecrets.js';
import { toPrivateKeyPath, type PrivateKeyPath } from 'ts-mls/privateKeyPath.js';
import { getHpkePublicKey, type RatchetTree } from 'ts-mls/ratchetTree.js';
import { treeHashRoot } from 'ts-mls/treeHash.js';
import { leafToNodeIndex, leafWidth, root, toLeafIndex, type LeafIndex } from 'ts-mls/treemath.js';
import { applyUpdatePath, createUpdatePath, decodeUpdatePath } from 'ts-mls/updatePath.js';
import { expect } from 'vitest';
import { ALL_SUITES, SAMPLED_NOTE, describeSuiteVectors, hex, hpkePairMatches, sampled, toHex } from './vectors/mls-vectors.js';
import { groupContext, tree } from './vectors/ratchet-tree.js';

interface TreeKemVector {
  cipher_suite: number; group_id: string; epoch: number; confirmed_transcript_hash: string; ratchet_tree: string;
  leaves_private: { index: number; encryption_priv: string; signature_priv: string; path_secrets: { node: number; path_secret: string }[] }[];
  update_paths: { sender: number; update_path: string; path_secrets: (string | null)[]; commit_secret: string; tree_hash_after: string }[];
}

describeSuiteVectors<TreeKemVector>('treekem', ALL_SUITES, async (v, cs) => {
  const before = tree(v.ratchet_tree);
  const epoch = BigInt(v.epoch);
  const cth = hex(v.confirmed_transcript_hash);
  const gcBefore = groupContext(v.cipher_suite, v.group_id, epoch, await treeHashRoot(before, cs.hash), cth);
  expect(await validateRatchetTree(before, gcBefore, defaultLifetimeConfig, defaultAuthenticationService, gcBefore.treeHash, cs), 'ratchet_tree is valid').toBeUndefined();

  // The private state matches the public tree.
  const privatePaths = new Map<number, PrivateKeyPath>();
  for (const leaf of v.leaves_private) {
    const node = before[leafToNodeIndex(toLeafIndex(leaf.index))];
    if (node?.nodeType !== 'leaf') throw new Error(`leaf ${leaf.index} is blank`);
    expect(await hpkePairMatches(node.leaf.hpkePublicKey, hex(leaf.encryption_priv), cs), `leaf ${leaf.index} encryption_priv`).toBe(true);
    const secrets: Record<number, Uint8Array> = {};
    for (const ps of leaf.path_secrets) {
      secrets[ps.node] = hex(ps.path_secret);
      const { publicKey } = await cs.hpke.deriveKeyPair(await deriveSecret(hex(ps.path_secret), 'node', cs.kdf));
      expect(toHex(await cs.hpke.exportPublicKey(publicKey)), `leaf ${leaf.index} path secret of node ${ps.node}`).toBe(toHex(getHpkePublicKey(before[ps.node]!)));
    }
    const path = await toPrivateKeyPath(secrets, leaf.index, cs);
    privatePaths.set(leaf.index, { ...path, privateKeys: { ...path.privateKeys, [leafToNodeIndex(toLeafIndex(leaf.index))]: hex(leaf.encryption_priv) } });
  }

  for (const [u, up] of v.update_paths.entries()) {
    const sender = toLeafIndex(up.sender);
    const decoded = decodeUpdatePath(hex(up.update_path), 0);
    if (decoded === undefined) throw new Error(`update_paths[${u}] does not decode`);
    const path = decoded[0];
    expect(await verifyLeafNodeSignature(path.leafNode, hex(v.group_id), sender, cs.signature), `update_paths[${u}] leaf signature`).toBe(true);
    const after = await applyUpdatePath(before, sender, path, cs.hash);
    const thAfter = await treeHashRoot(after, cs.hash);
    expect(toHex(thAfter), `update_paths[${u}] tree_hash_after`).toBe(up.tree_hash_after);
    expect(await verifyParentHashes(after, cs.hash), `update_paths[${u}] parent hashes`).toBe(true);

    // Every other member decrypts the path secret at its common ancestor with the sender and reaches the same commit secret.
    const gcAfter = { ...gcBefore, treeHash: thAfter };
    let receivers = 0;
    for (const [leafIndex, pkp] of privatePaths) {
      if (leafIndex === up.sender) {
        expect(up.path_secrets[leafIndex], `update_paths[${u}] sender has no path secret`).toBeNull();
        continue;
      }
      const got = await applyUpdatePathSecret(after, pkp, sender, gcAfter, path, [], cs);
      expect(toHex(got.pathSecret), `update_paths[${u}] path_secrets[${leafIndex}]`).toBe(up.path_secrets[leafIndex]);
      expect(toHex(await getCommitSecret(after, got.nodeIndex, got.pathSecret, cs.kdf)), `update_paths[${u}] commit_secret at leaf ${leafIndex}`).toBe(up.commit_secret);
      receivers++;
    }
    expect(receivers, `update_paths[${u}] had receivers`).toBe(privatePaths.size - (privatePaths.has(up.sender) ? 1 : 0));
  }

  // A fresh UpdatePath made by ts-mls from the first sender is processed the same way by every other member.
  // (Once per case, not per sender: it doubles the HPKE work and the code path is the same.)
  const first = v.update_paths[0]!;
  const senderPriv = v.leaves_private.find((l) => l.index === first.sender);
  if (senderPriv === undefined) throw new Error('the first update path has no sender private state');
  await ourUpdatePathRoundTrip(before, gcBefore, toLeafIndex(first.sender), hex(senderPriv.signature_priv), privatePaths, cs);
}, { timeout: 60_000, only: (c, _i, pos) => sampled(c.cipher_suite, pos), note: SAMPLED_NOTE });

async function ourUpdatePathRoundTrip(
  before: RatchetTree, gc: GroupContext, sender: LeafIndex, signaturePriv: Uint8Array,
  privatePaths: Map<number, PrivateKeyPath>, cs: CiphersuiteImpl,
): Promise<void> {
  const [created, path, secrets] = await createUpdatePath(before, sender, gc, signaturePriv, cs);
  const rootIndex = root(leafWidth(before.length));
  const rootSecret = secrets.find((s) => s.nodeIndex === rootIndex);
  if (rootSecret === undefined) throw new Error('our update path has no root secret');
  const commitSecret = toHex(await deriveSecret(rootSecret.secret, 'path', cs.kdf));
  const applied = await applyUpdatePath(before, sender, path, cs.hash);
  const th = await treeHashRoot(applied, cs.hash);
  expect(toHex(th), 'our update path: receivers build the tree the sender built').toBe(toHex(await treeHashRoot(created, cs.hash)));
  const gcNext = { ...gc, treeHash: th, epoch: gc.epoch + 1n };
  for (const [leafIndex, pkp] of privatePaths) {
    if (leafIndex === sender) continue;
    const got = await applyUpdatePathSecret(applied, pkp, sender, gcNext, path, [], cs);
    expect(toHex(await getCommitSecret(applied, got.nodeIndex, got.pathSecret, cs.kdf)), `our update path: commit secret at leaf ${leafIndex}`).toBe(commitSecret);
  }
}
