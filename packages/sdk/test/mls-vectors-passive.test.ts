/**
 * [MV1] Official MLS test vectors, part 4: a passive client joins from a
 * Welcome and follows the group's commits (passive-client-welcome,
 * passive-client-handling-commit); see vectors/passive-client.ts. The long
 * passive-client-random has its own file so that it runs in parallel.
 */
import { ALL_SUITES, SAMPLED_NOTE, describeSuiteVectors, sampled } from './vectors/mls-vectors.js';
import { followGroup, type PassiveVector } from './vectors/passive-client.js';

const opts = { timeout: 60_000, only: (c: PassiveVector, _i: number, pos: number) => sampled(c.cipher_suite, pos), note: SAMPLED_NOTE };
describeSuiteVectors<PassiveVector>('passive-client-welcome', ALL_SUITES, followGroup, opts);
describeSuiteVectors<PassiveVector>('passive-client-handling-commit', ALL_SUITES, followGroup, opts);
