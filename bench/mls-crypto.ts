/**
 * Client-side MLS costs (docs/PERFORMANCE.md, "E2EE (MLS) costs"), no server.
 *
 *   npx tsx bench/mls-crypto.ts            # full: key packages ×100, group of 100, commits at 10/100/1000 members
 *   npx tsx bench/mls-crypto.ts --quick    # CI-sized: smaller counts, commits at 10/100 members
 *   npx tsx bench/mls-crypto.ts --suites 1 --sizes 10,100,1000 --messages 2000
 *
 * Per cipher suite:
 * - key package generation (100), per package; uploading them is the E2EE
 *   layer's cost and is measured there;
 * - a 100-member group: one commit adding 99 key packages (committer), and
 *   one joiner processing the Welcome;
 * - 1 KB application messages in a 1:1 group: encrypt CPU at the sender and
 *   decrypt CPU at the receiver, per message, and messages per second on one core;
 * - a commit by one member that updates its path, processed by another member,
 *   at group sizes 10/100/1000. The group is built by one bulk add commit, so
 *   the first path update after it encrypts to many unmerged leaves; later
 *   ones are the steady state. Both are reported.
 *
 * CPU is process.cpuUsage() (user+system, all threads: WebCrypto runs some
 * work on libuv threads), so other load on the machine inflates it less than
 * wall time. Prints a table, then one JSON line (also written to
 * bench/results/mls-crypto-<time>.json).
 */
import { parseArgs } from 'node:util';
import { cpus, loadavg } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MLS_CIPHER_SUITES, type CipherSuiteId } from '@secureconnect/protocol';
import { createMlsCrypto, fingerprint, safetyNumber, type GeneratedKeyPackage, type MlsCrypto, type MlsGroupState, type SignatureKeyPair } from '../packages/sdk/src/crypto/index.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    suites: { type: 'string' },
    sizes: { type: 'string' },
    messages: { type: 'string' },
    'key-packages': { type: 'string' },
    'group-size': { type: 'string' },
    commits: { type: 'string' },
  },
});
const quick = args.quick;
const suites = (args.suites ?? `${MLS_CIPHER_SUITES.MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519},${MLS_CIPHER_SUITES.MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519}`)
  .split(',')
  .map((s) => Number(s) as CipherSuiteId);
const sizes = (args.sizes ?? (quick ? '10,100' : '10,100,1000')).split(',').map(Number);
const messages = Number(args.messages ?? (quick ? 200 : 2000));
const keyPackages = Number(args['key-packages'] ?? (quick ? 20 : 100));
const groupSize = Number(args['group-size'] ?? (quick ? 20 : 100));
const steadyCommits = Number(args.commits ?? 3);

const mls: MlsCrypto = createMlsCrypto();
const te = new TextEncoder();

interface Member {
  userId: string;
  deviceId: string;
  keys: SignatureKeyPair;
  state?: MlsGroupState;
}

/** CPU ms (user + system) and wall ms of `f`. */
async function measure<T>(f: () => Promise<T>): Promise<{ value: T; cpuMs: number; wallMs: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await f();
  const wallMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { value, cpuMs: (c.user + c.system) / 1000, wallMs };
}

async function member(suite: CipherSuiteId): Promise<Member> {
  return { userId: crypto.randomUUID(), deviceId: crypto.randomUUID(), keys: await mls.generateSignatureKeys(suite) };
}

/** Creator + (n-1) members added in one commit; returns creator, one joined member and the Welcome cost. */
async function buildGroup(suite: CipherSuiteId, n: number) {
  const creator = await member(suite);
  const others = await Promise.all(Array.from({ length: n - 1 }, () => member(suite)));
  const kps: GeneratedKeyPackage[] = [];
  for (const o of others) kps.push((await mls.createKeyPackages(o, o.keys, suite, 1))[0]!);
  creator.state = (await mls.createGroup(te.encode(crypto.randomUUID()), creator, creator.keys, suite)).state;
  const add = await measure(() => mls.commit(creator.state!, { add: kps.map((k) => k.publicBytes) }));
  creator.state = mls.acceptCommit(add.value.pendingState);
  const joiner = others[0]!;
  const join = await measure(() => mls.joinFromWelcome(add.value.welcome!, kps[0]!.privateState, joiner.keys));
  joiner.state = join.value;
  return {
    creator,
    joiner,
    addCommit: { cpuMs: add.cpuMs, wallMs: add.wallMs, commitBytes: add.value.commit.length, welcomeBytes: add.value.welcome!.length, groupInfoBytes: add.value.groupInfo.length },
    joinWelcome: { cpuMs: join.cpuMs, wallMs: join.wallMs },
  };
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

async function benchSuite(suite: CipherSuiteId) {
  // Warm up the suite (module loading) outside the measurements.
  const warm = await member(suite);
  await mls.createKeyPackages(warm, warm.keys, suite, 2);

  const kp = await measure(() => mls.createKeyPackages(warm, warm.keys, suite, keyPackages));
  const keyPackageGen = { count: keyPackages, cpuMsTotal: round(kp.cpuMs), cpuMsEach: round(kp.cpuMs / keyPackages, 3), bytesEach: kp.value[0]!.publicBytes.length };

  const g = await buildGroup(suite, groupSize);
  const groupCreate = { members: groupSize, addCommitCpuMs: round(g.addCommit.cpuMs), welcomeJoinCpuMs: round(g.joinWelcome.cpuMs), commitBytes: g.addCommit.commitBytes, welcomeBytes: g.addCommit.welcomeBytes, groupInfoBytes: g.addCommit.groupInfoBytes };

  // 1:1 messages of 1 KB.
  const pair = await buildGroup(suite, 2);
  const payload = crypto.getRandomValues(new Uint8Array(1024));
  const cts: Uint8Array[] = [];
  const enc = await measure(async () => {
    for (let i = 0; i < messages; i++) {
      const r = await mls.encrypt(pair.creator.state!, payload);
      pair.creator.state = r.state;
      cts.push(r.ciphertext);
    }
  });
  const dec = await measure(async () => {
    for (const ct of cts) {
      const r = await mls.process(pair.joiner.state!, ct);
      pair.joiner.state = r.state;
    }
  });
  const oneToOne = {
    messages,
    plaintextBytes: 1024,
    ciphertextBytes: cts[0]!.length,
    encryptCpuMsEach: round(enc.cpuMs / messages, 3),
    decryptCpuMsEach: round(dec.cpuMs / messages, 3),
    encryptPerSecOneCore: Math.round(messages / (enc.cpuMs / 1000)),
    decryptPerSecOneCore: Math.round(messages / (dec.cpuMs / 1000)),
  };

  // Commit processing at another member as the group grows.
  const commits = [];
  for (const n of sizes) {
    const grp = await buildGroup(suite, n);
    const rounds: { createCpuMs: number; processCpuMs: number; commitBytes: number; groupInfoBytes: number }[] = [];
    for (let i = 0; i < 1 + steadyCommits; i++) {
      const made = await measure(() => mls.commit(grp.creator.state!, {}));
      grp.creator.state = mls.acceptCommit(made.value.pendingState);
      const processed = await measure(() => mls.process(grp.joiner.state!, made.value.commit));
      grp.joiner.state = processed.value.state;
      rounds.push({ createCpuMs: made.cpuMs, processCpuMs: processed.cpuMs, commitBytes: made.value.commit.length, groupInfoBytes: made.value.groupInfo.length });
    }
    const steady = rounds.slice(1);
    const avg = (f: (r: (typeof rounds)[number]) => number) => round(steady.reduce((s, r) => s + f(r), 0) / steady.length);
    commits.push({
      members: n,
      joinWelcomeCpuMs: round(grp.joinWelcome.cpuMs),
      firstAfterBulkAdd: { createCpuMs: round(rounds[0]!.createCpuMs), processCpuMs: round(rounds[0]!.processCpuMs), commitBytes: rounds[0]!.commitBytes },
      steady: { createCpuMs: avg((r) => r.createCpuMs), processCpuMs: avg((r) => r.processCpuMs), commitBytes: Math.round(avg((r) => r.commitBytes)), groupInfoBytes: Math.round(avg((r) => r.groupInfoBytes)) },
    });
  }
  return { suite, keyPackageGen, groupCreate, oneToOne, commits };
}

const load = loadavg()[0]!;
const results = [];
for (const suite of suites) results.push(await benchSuite(suite));

// Safety number of a conversation between two users with three devices each (two fingerprints).
const devKeys = () => Array.from({ length: 3 }, () => crypto.getRandomValues(new Uint8Array(32)));
const sn = await measure(async () => safetyNumber(await fingerprint(crypto.randomUUID(), devKeys()), await fingerprint(crypto.randomUUID(), devKeys())));
const safety = { cpuMs: round(sn.cpuMs), wallMs: round(sn.wallMs) };

const machine = { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', quick, loadAtStart: round(load) };
console.log(`MLS client crypto, Node ${machine.node}, ${machine.cpus} cores (${machine.cpuModel}), load ${machine.loadAtStart}${quick ? ', --quick' : ''}`);
for (const r of results) {
  console.log(`\nsuite ${r.suite}`);
  console.log(`  key packages: ${r.keyPackageGen.count} in ${r.keyPackageGen.cpuMsTotal} ms CPU (${r.keyPackageGen.cpuMsEach} ms each, ${r.keyPackageGen.bytesEach} B)`);
  console.log(`  group of ${r.groupCreate.members}: add commit ${r.groupCreate.addCommitCpuMs} ms CPU, Welcome join ${r.groupCreate.welcomeJoinCpuMs} ms; commit ${r.groupCreate.commitBytes} B, Welcome ${r.groupCreate.welcomeBytes} B, GroupInfo ${r.groupCreate.groupInfoBytes} B`);
  console.log(`  1:1, 1 KB: encrypt ${r.oneToOne.encryptCpuMsEach} ms, decrypt ${r.oneToOne.decryptCpuMsEach} ms CPU per message (${r.oneToOne.encryptPerSecOneCore}/s, ${r.oneToOne.decryptPerSecOneCore}/s on one core); ciphertext ${r.oneToOne.ciphertextBytes} B`);
  console.log('  members | join (Welcome) ms | 1st commit after bulk add: create / process ms | steady commit: create / process ms | commit B | GroupInfo B');
  for (const c of r.commits) {
    console.log(
      `  ${String(c.members).padStart(7)} | ${String(c.joinWelcomeCpuMs).padStart(17)} | ${`${c.firstAfterBulkAdd.createCpuMs} / ${c.firstAfterBulkAdd.processCpuMs}`.padStart(46)} | ${`${c.steady.createCpuMs} / ${c.steady.processCpuMs}`.padStart(34)} | ${String(c.steady.commitBytes).padStart(8)} | ${c.steady.groupInfoBytes}`,
    );
  }
}
console.log(`\nsafety number (2 users × 3 devices): ${safety.cpuMs} ms CPU, ${safety.wallMs} ms wall`);
const out = { at: new Date().toISOString(), machine, results, safety };
const dir = fileURLToPath(new URL('results/', import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(`${dir}mls-crypto-${out.at.replace(/[:.]/g, '-')}.json`, `${JSON.stringify(out, null, 2)}\n`);
console.log(JSON.stringify(out));
