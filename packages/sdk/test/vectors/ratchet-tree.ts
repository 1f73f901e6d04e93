import { getCiphersuiteNameFromId, type CiphersuiteId } from 'ts-mls/crypto/ciphersuite.js';
import type { GroupContext } from 'ts-mls/groupContext.js';
import { decodeRatchetTree, type RatchetTree } from 'ts-mls/ratchetTree.js';
import { expect } from 'vitest';
import { hex } from './mls-vectors.js';

/** Decodes a vector's ratchet tree, which must use every byte. */
export function tree(s: string): RatchetTree {
  const r = decodeRatchetTree(hex(s), 0);
  if (r === undefined) throw new Error('ratchet tree does not decode');
  expect(r[1], 'ratchet tree decodes to its last byte').toBe(s.length / 2);
  return r[0];
}

/** A GroupContext with no extensions, as the tree vectors define it. */
export function groupContext(suite: number, groupId: string, epoch: bigint, th: Uint8Array, cth: Uint8Array): GroupContext {
  return {
    version: 'mls10',
    cipherSuite: getCiphersuiteNameFromId(suite as CiphersuiteId),
    groupId: hex(groupId),
    epoch,
    treeHash: th,
    confirmedTranscriptHash: cth,
    extensions: [],
  };
}
