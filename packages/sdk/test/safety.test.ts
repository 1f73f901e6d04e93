import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  compareQr, diffDevices, fingerprint, FINGERPRINT_ITERATIONS, safetyNumber, safetyNumberQr, type DeviceKey,
} from '../src/crypto/index.js';

const key = (n: number) => Uint8Array.from({ length: 32 }, (_, i) => (n * 31 + i * 7) & 0xff);
const alice = '11111111-1111-4111-8111-111111111111';
const bob = '22222222-2222-4222-8222-222222222222';

/** An independent implementation (node:crypto, no shared code) of the derivation SPEC [SN1] states. */
function reference(userId: string, keys: Uint8Array[]): { digits: string; raw: Buffer } {
  const sorted = [...new Map(keys.map((k) => [Buffer.from(k).toString('hex'), Buffer.from(k)])).values()].sort((x, y) => Buffer.compare(x, y));
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  const material = Buffer.concat([u32(sorted.length), ...sorted.flatMap((k) => [u32(k.length), k])]);
  let hash = Buffer.concat([Buffer.from([0, 1]), material, Buffer.from(userId, 'utf8')]);
  for (let i = 0; i < 5200; i++) hash = createHash('sha512').update(hash).update(material).digest();
  let digits = '';
  for (let c = 0; c < 6; c++) digits += String(hash.readUIntBE(c * 5, 5) % 100000).padStart(5, '0');
  return { digits, raw: hash.subarray(0, 32) };
}

describe('Safety numbers', () => {
  it('[SN1] a fingerprint is 30 digits, matches an independent implementation and ignores key order and duplicates', async () => {
    expect(FINGERPRINT_ITERATIONS).toBe(5200);
    const keys = [key(1), key(2), key(3)];
    const fp = await fingerprint(alice, keys);
    expect(fp.digits).toMatch(/^\d{30}$/);
    const ref = reference(alice, keys);
    expect(fp.digits).toBe(ref.digits);
    expect(Buffer.from(fp.raw).equals(ref.raw)).toBe(true);
    expect((await fingerprint(alice, [key(3), key(1), key(2), key(1)])).digits).toBe(fp.digits);
    // The same keys under another user id give another fingerprint.
    expect((await fingerprint(bob, keys)).digits).not.toBe(fp.digits);
  });

  it('[SN1] adding, removing or replacing any device key changes the safety number', async () => {
    const b = await fingerprint(bob, [key(9)]);
    const base = safetyNumber(await fingerprint(alice, [key(1), key(2)]), b);
    const variants = [[key(1)], [key(1), key(2), key(3)], [key(1), key(4)], [key(2)], []];
    const seen = new Set([base.digits]);
    for (const v of variants) {
      const sn = safetyNumber(await fingerprint(alice, v), b);
      expect(seen.has(sn.digits)).toBe(false);
      seen.add(sn.digits);
    }
    expect(safetyNumber(await fingerprint(alice, [key(1), key(2)]), await fingerprint(bob, [key(9), key(8)])).digits).not.toBe(base.digits);
  });

  it('[SN1] both users compute the same 60-digit number (12 groups of 5) and QR payload; compareQr matches only equal numbers', async () => {
    const a = await fingerprint(alice, [key(1)]);
    const b = await fingerprint(bob, [key(2), key(3)]);
    const fromA = safetyNumber(a, b);
    const fromB = safetyNumber(b, a);
    expect(fromA).toEqual(fromB);
    expect(fromA.digits).toBe(a.digits + b.digits); // alice < bob
    expect(fromA.groups).toHaveLength(12);
    expect(fromA.display).toMatch(/^(\d{5} ){11}\d{5}$/);
    expect(fromA.qr).toBe(safetyNumberQr(b, a));
    expect(compareQr(fromB.qr, fromA.qr)).toBe(true);

    const mitm = safetyNumber(a, await fingerprint(bob, [key(2), key(4)]));
    expect(compareQr(mitm.qr, fromA.qr)).toBe(false);
    for (const junk of ['', 'scsn1..', fromA.qr.replace('scsn1', 'scsn2'), fromA.qr.slice(0, -2), `${fromA.qr}x`, fromA.qr.replace('.', '..')]) {
      expect(compareQr(junk, fromA.qr), junk).toBe(false);
    }
    expect(() => safetyNumber(a, a)).toThrow(RangeError);
  });

  it('[SN2] diffDevices names added, removed and rekeyed devices with old and new safety numbers', async () => {
    const self = await fingerprint(alice, [key(1)]);
    const d = (userId: string, deviceId: string, k: number): DeviceKey => ({ userId, deviceId, signatureKey: key(k) });
    const prev = [d(alice, 'a1', 1), d(bob, 'b1', 2), d(bob, 'b2', 3)];
    expect(await diffDevices(prev, [...prev].reverse(), self)).toEqual([]);

    const next = [d(alice, 'a1', 1), d(bob, 'b1', 2), d(bob, 'b3', 4)];
    const [change, ...rest] = await diffDevices(prev, next, self);
    expect(rest).toEqual([]);
    expect(change).toMatchObject({ userId: bob, added: ['b3'], removed: ['b2'], rekeyed: [] });
    expect(change!.previous!.digits).toBe((await fingerprint(bob, [key(2), key(3)])).digits);
    expect(change!.current!.digits).toBe((await fingerprint(bob, [key(2), key(4)])).digits);
    expect(change!.previousSafetyNumber!.digits).not.toBe(change!.currentSafetyNumber!.digits);
    expect(change!.currentSafetyNumber).toEqual(safetyNumber(self, change!.current!));

    const rekeyed = await diffDevices(prev, [d(alice, 'a1', 1), d(bob, 'b1', 5), d(bob, 'b2', 3)]);
    expect(rekeyed).toMatchObject([{ userId: bob, added: [], removed: [], rekeyed: ['b1'] }]);
    expect(rekeyed[0]!.previousSafetyNumber).toBeUndefined();

    const gone = await diffDevices(prev, [d(alice, 'a1', 1)], self);
    expect(gone).toMatchObject([{ userId: bob, removed: ['b1', 'b2'], current: undefined, currentSafetyNumber: undefined }]);
    // A change to the local user's own devices carries fingerprints but no safety number with itself.
    const own = await diffDevices(prev, [...prev, d(alice, 'a2', 6)], self);
    expect(own).toMatchObject([{ userId: alice, added: ['a2'] }]);
    expect(own[0]!.currentSafetyNumber).toBeUndefined();
  });
});
