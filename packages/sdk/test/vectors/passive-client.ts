/**
 * A passive client following a group through the official passive-client-*
 * vectors, with ts-mls's public API (joinGroup, processMessage): the calls the
 * SDK makes. Checks the epoch authenticator after the join and every epoch.
 */
import { acceptAll, joinGroup, makePskIndex, processMessage, type ClientState } from 'ts-mls';
import { bytesToBase64 } from 'ts-mls/util/byteArray.js';
import type { CiphersuiteImpl } from 'ts-mls/crypto/ciphersuite.js';
import { decodeMlsMessage, type MLSMessage } from 'ts-mls/message.js';
import { decodeRatchetTree } from 'ts-mls/ratchetTree.js';
import { expect } from 'vitest';
import { hex, hpkePairMatches, signaturePairMatches, toHex } from './mls-vectors.js';

export interface PassiveVector {
  cipher_suite: number;
  external_psks: { psk_id: string; psk: string }[];
  key_package: string; signature_priv: string; encryption_priv: string; init_priv: string;
  welcome: string; ratchet_tree: string | null; initial_epoch_authenticator: string;
  epochs: { proposals: string[]; commit: string; epoch_authenticator: string }[];
}

function message<W extends MLSMessage['wireformat']>(s: string, wireformats: readonly W[], what: string): Extract<MLSMessage, { wireformat: W }> {
  const m = decodeMlsMessage(hex(s), 0)?.[0];
  if (m === undefined || !(wireformats as readonly string[]).includes(m.wireformat)) throw new Error(`${what} is not an MLSMessage of type ${wireformats.join('/')}`);
  return m as Extract<MLSMessage, { wireformat: W }>;
}

export async function followGroup(v: PassiveVector, cs: CiphersuiteImpl): Promise<void> {
  const { keyPackage } = message(v.key_package, ['mls_key_package'], 'key_package');
  expect(await signaturePairMatches(keyPackage.leafNode.signaturePublicKey, hex(v.signature_priv), cs), 'signature_priv').toBe(true);
  expect(await hpkePairMatches(keyPackage.leafNode.hpkePublicKey, hex(v.encryption_priv), cs), 'encryption_priv').toBe(true);
  expect(await hpkePairMatches(keyPackage.initKey, hex(v.init_priv), cs), 'init_priv').toBe(true);

  const externalPsks = Object.fromEntries(v.external_psks.map((p) => [bytesToBase64(hex(p.psk_id)), hex(p.psk)]));
  const { welcome } = message(v.welcome, ['mls_welcome'], 'welcome');
  const tree = v.ratchet_tree === null ? undefined : decodeRatchetTree(hex(v.ratchet_tree), 0)?.[0];
  if (v.ratchet_tree !== null && tree === undefined) throw new Error('ratchet_tree does not decode');
  let state: ClientState = await joinGroup(
    welcome,
    keyPackage,
    { initPrivateKey: hex(v.init_priv), hpkePrivateKey: hex(v.encryption_priv), signaturePrivateKey: hex(v.signature_priv) },
    makePskIndex(undefined, externalPsks),
    cs,
    tree,
  );
  expect(toHex(state.keySchedule.epochAuthenticator), 'initial_epoch_authenticator').toBe(v.initial_epoch_authenticator);

  for (const [e, epoch] of v.epochs.entries()) {
    const before = state.groupContext.epoch;
    for (const [p, proposal] of epoch.proposals.entries()) {
      const m = message(proposal, ['mls_public_message', 'mls_private_message'], `epochs[${e}].proposals[${p}]`);
      // The PSK index reads resumption PSKs from the state, so it is rebuilt for every message.
      state = (await processMessage(m, state, makePskIndex(state, externalPsks), acceptAll, cs)).newState;
    }
    const commit = message(epoch.commit, ['mls_public_message', 'mls_private_message'], `epochs[${e}].commit`);
    state = (await processMessage(commit, state, makePskIndex(state, externalPsks), acceptAll, cs)).newState;
    expect(state.groupContext.epoch, `epochs[${e}] advances the epoch`).toBe(before + 1n);
    expect(toHex(state.keySchedule.epochAuthenticator), `epochs[${e}].epoch_authenticator`).toBe(epoch.epoch_authenticator);
  }
}
