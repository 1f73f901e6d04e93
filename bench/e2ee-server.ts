/**
 * E2EE through a real server (issue 3's server-side figures): key package
 * generation + upload of 100 packages, and creating an M-member encrypted
 * group end to end (claim, commit with Welcome, server verification, every
 * member joining from its Welcome), then one message decrypted by everyone.
 *
 *   npx tsx bench/e2ee-server.ts [--members 100] [--suite 84|1]
 *
 * The server runs in this process on the embedded defaults (or on
 * DATABASE_URL/REDIS_URL when set), so figures include client and server on
 * the same 2 cores.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { startApp } from '../packages/server/test/helpers.js';
import { openDevice, signUp, waitFor, type TestDevice } from '../packages/sdk/test/e2ee-helpers.js';
import { MLS_CIPHER_SUITES } from '@secureconnect/protocol';
import { SecureConnectClient, createMlsCrypto, type CipherSuiteId } from '../packages/sdk/src/index.js';

const { values: args } = parseArgs({ options: { members: { type: 'string', default: '100' }, suite: { type: 'string', default: '84' } } });
const members = Number(args.members);
const suite = Number(args.suite) as CipherSuiteId;
if (!Object.values(MLS_CIPHER_SUITES).includes(suite)) throw new Error(`--suite must be one of ${Object.values(MLS_CIPHER_SUITES).join(', ')}`);

const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64');
const ms = (t0: number) => Math.round((performance.now() - t0) * 10) / 10;
const cpuMs = (c0: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(c0);
  return Math.round((c.user + c.system) / 100) / 10;
};

const s = await startApp();
try {
  // 1. 100 key packages: generate, then upload in one request (the server verifies each).
  const acct = await signUp(s, 'kb');
  const crypto = createMlsCrypto();
  const client = new SecureConnectClient({ baseUrl: s.url });
  await client.login(acct.username, acct.password, 'kp-bench');
  const signKeys = await crypto.generateSignatureKeys(suite);
  const device = await client.registerDevice({ name: 'kp-bench', signatureKey: b64(signKeys.publicKey) });
  let t = performance.now();
  let c = process.cpuUsage();
  const kps = await crypto.createKeyPackages({ userId: acct.id, deviceId: device.id }, signKeys, suite, 100);
  const genMs = ms(t);
  const genCpu = cpuMs(c);
  t = performance.now();
  const status = await client.uploadKeyPackages({ keyPackages: kps.map((k) => b64(k.publicBytes)) });
  const uploadMs = ms(t);
  const uploadBytes = kps.reduce((n, k) => n + k.publicBytes.length, 0);
  if (status.stock.find((x) => x.cipherSuite === suite)?.available !== 100) throw new Error('upload did not store 100 packages');

  // 2. An M-member encrypted group, created by one member, joined by all others from their Welcomes.
  const devices: TestDevice[] = [];
  t = performance.now();
  for (let i = 0; i < members; i += 10) {
    const batch = await Promise.all(Array.from({ length: Math.min(10, members - i) }, async (_, j) => openDevice(s, await signUp(s, `g${i + j}`), `d${i + j}`, { suite })));
    devices.push(...batch);
  }
  const setupMs = ms(t);
  const [creator, ...rest] = devices as [TestDevice, ...TestDevice[]];
  t = performance.now();
  c = process.cpuUsage();
  const opened = await creator.messenger.openConversation(rest.map((d) => d.account.id), { title: 'bench' });
  const openMs = ms(t);
  await waitFor(() => rest.every((d) => d.log.joined.some((j) => j.conversationId === opened.conversation.id)), 'every member joined', 300_000);
  const allJoinedMs = ms(t);
  const groupCpu = cpuMs(c);
  t = performance.now();
  await creator.messenger.send(opened.conversation.id, 'hello everyone');
  await waitFor(() => rest.every((d) => d.log.texts(opened.conversation.id).includes('hello everyone')), 'everyone decrypted', 120_000);
  const fanoutMs = ms(t);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
    engine: process.env.DATABASE_URL ? 'postgres' : 'sqlite',
    suite,
    keyPackages100: { generateMs: genMs, generateCpuMs: genCpu, uploadMs, uploadKiB: Math.round(uploadBytes / 1024) },
    group: { members, setupAllDevicesMs: setupMs, openConversationMs: openMs, allMembersJoinedMs: allJoinedMs, cpuMsUntilJoined: groupCpu, firstMessageToAllMs: fanoutMs, missing: opened.missing.length },
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  await Promise.all(devices.map((d) => d.stop()));
} finally {
  await s.close();
}
