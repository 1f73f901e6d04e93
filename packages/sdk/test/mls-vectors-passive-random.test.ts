/**
 * [MV1] Official MLS test vectors, part 5: passive-client-random, one client
 * following 200 epochs of random adds, removes, updates and commits (suite 1,
 * the only suite of the file). Its own file so that it runs in parallel with
 * the other vector files.
 */
import { describeSuiteVectors } from './vectors/mls-vectors.js';
import { followGroup, type PassiveVector } from './vectors/passive-client.js';

describeSuiteVectors<PassiveVector>('passive-client-random', [1], followGroup, { timeout: 120_000 });
