/**
 * Safety numbers ([SN1], [SN2] in docs/SPEC.md): a number two users compare
 * out of band (read aloud or by scanning a QR code) to check that the server
 * gave each of them the other's real device keys. Modelled on Signal's
 * NumericFingerprint, over the set of a user's device signature keys, so that
 * adding or removing any device changes it. WebCrypto only.
 */

/** Bumped when the derivation changes; part of the hash input and of the QR payload. */
export const SAFETY_NUMBER_VERSION = 1;
/** SHA-512 iterations, as Signal: makes searching for a colliding key set expensive. */
export const FINGERPRINT_ITERATIONS = 5200;
const QR_PREFIX = 'scsn';

/** One user's fingerprint over all their device signature keys. */
export interface Fingerprint {
  readonly userId: string;
  /** 30 decimal digits. */
  readonly digits: string;
  /** First 32 bytes of the final hash, for the QR payload. */
  readonly raw: Uint8Array;
}

/** A device as the key directory lists it. */
export interface DeviceKey {
  readonly userId: string;
  readonly deviceId: string;
  readonly signatureKey: Uint8Array;
}

/** The safety number of a conversation between two users. */
export interface SafetyNumber {
  /** 60 digits: the two users' 30-digit fingerprints, ordered by user id. */
  readonly digits: string;
  /** The digits as 12 groups of 5. */
  readonly groups: readonly string[];
  /** Groups joined by spaces, for display. */
  readonly display: string;
  /** Payload for a QR code; compare with {@link compareQr}. */
  readonly qr: string;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/** Sorted, de-duplicated and length-prefixed, so the key set (not its order) determines the bytes. */
function keyMaterial(keys: readonly Uint8Array[]): Uint8Array {
  const sorted = [...keys].sort(compareBytes).filter((k, i, a) => i === 0 || compareBytes(k, a[i - 1]!) !== 0);
  return concat([u32(sorted.length), ...sorted.flatMap((k) => [u32(k.length), k])]);
}

async function sha512(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await globalThis.crypto.subtle.digest('SHA-512', data));
}

/** Five bytes → five digits, six times: Signal's encoding of 30 hash bytes as 30 digits. */
function digitsOf(hash: Uint8Array): string {
  let out = '';
  for (let chunk = 0; chunk < 6; chunk++) {
    let v = 0;
    for (let i = 0; i < 5; i++) v = v * 256 + hash[chunk * 5 + i]!;
    out += String(v % 100_000).padStart(5, '0');
  }
  return out;
}

/**
 * [SN1] A user's fingerprint: SHA-512 iterated {@link FINGERPRINT_ITERATIONS}
 * times over version || key material || userId, then hash || key material.
 * Deterministic and independent of the order of `deviceSignatureKeys`.
 */
export async function fingerprint(userId: string, deviceSignatureKeys: readonly Uint8Array[]): Promise<Fingerprint> {
  const material = keyMaterial(deviceSignatureKeys);
  let hash = concat([new Uint8Array([0, SAFETY_NUMBER_VERSION]), material, new TextEncoder().encode(userId)]);
  for (let i = 0; i < FINGERPRINT_ITERATIONS; i++) hash = await sha512(concat([hash, material]));
  return { userId, digits: digitsOf(hash), raw: hash.slice(0, 32) };
}

function b64url(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromB64url(s: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) return undefined;
  try {
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

function ordered(a: Fingerprint, b: Fingerprint): [Fingerprint, Fingerprint] {
  if (a.userId === b.userId) throw new RangeError('a safety number needs two different users');
  return a.userId < b.userId ? [a, b] : [b, a];
}

/**
 * [SN1] QR payload for two users' fingerprints: `scsn<version>.<first>.<second>`,
 * each fingerprint's raw bytes base64url, ordered by user id so both sides
 * produce the same string.
 */
export function safetyNumberQr(a: Fingerprint, b: Fingerprint): string {
  const [x, y] = ordered(a, b);
  return `${QR_PREFIX}${SAFETY_NUMBER_VERSION}.${b64url(x.raw)}.${b64url(y.raw)}`;
}

/** [SN1] The conversation safety number of two users, the same on both sides. */
export function safetyNumber(a: Fingerprint, b: Fingerprint): SafetyNumber {
  const [x, y] = ordered(a, b);
  const digits = x.digits + y.digits;
  const groups = digits.match(/\d{5}/g)!;
  return { digits, groups, display: groups.join(' '), qr: safetyNumberQr(a, b) };
}

/**
 * [SN1] True when a scanned QR payload matches ours: same version and the same
 * two fingerprints. Malformed payloads never match.
 */
export function compareQr(scanned: string, mine: string): boolean {
  const parse = (s: string) => {
    const m = /^scsn(\d+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(s);
    if (!m || Number(m[1]) !== SAFETY_NUMBER_VERSION) return undefined;
    const x = fromB64url(m[2]!);
    const y = fromB64url(m[3]!);
    return x?.length === 32 && y?.length === 32 ? concat([x, y]) : undefined;
  };
  const a = parse(scanned);
  const b = parse(mine);
  if (!a || !b) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** [SN2] How one user's devices changed between two directory snapshots. */
export interface DeviceChange {
  readonly userId: string;
  /** Device ids present only in the new snapshot. */
  readonly added: readonly string[];
  /** Device ids present only in the old snapshot. */
  readonly removed: readonly string[];
  /** Device ids whose signature key differs between snapshots (never legitimate: keys are fixed per device). */
  readonly rekeyed: readonly string[];
  /** Fingerprint before and after; undefined when the user had (has) no device. */
  readonly previous: Fingerprint | undefined;
  readonly current: Fingerprint | undefined;
  /** With `self` given and another user: the safety number with this user before and after. */
  readonly previousSafetyNumber?: SafetyNumber | undefined;
  readonly currentSafetyNumber?: SafetyNumber | undefined;
}

/**
 * [SN2] Compares two snapshots of device keys (any number of users) and
 * describes each user whose device set changed, with fingerprints before and
 * after, for the E2EE layer's `devicesChanged` event. With `self` (the local
 * user's current fingerprint) each change to another user also carries the
 * old and new conversation safety numbers. Unchanged users are omitted.
 */
export async function diffDevices(prev: readonly DeviceKey[], next: readonly DeviceKey[], self?: Fingerprint): Promise<DeviceChange[]> {
  const byUser = (list: readonly DeviceKey[]) => {
    const m = new Map<string, Map<string, Uint8Array>>();
    for (const d of list) {
      let u = m.get(d.userId);
      if (!u) m.set(d.userId, (u = new Map<string, Uint8Array>()));
      u.set(d.deviceId, d.signatureKey);
    }
    return m;
  };
  const before = byUser(prev);
  const after = byUser(next);
  const users = [...new Set([...before.keys(), ...after.keys()])].sort();
  const changes: DeviceChange[] = [];
  for (const userId of users) {
    const b = before.get(userId) ?? new Map<string, Uint8Array>();
    const a = after.get(userId) ?? new Map<string, Uint8Array>();
    const added = [...a.keys()].filter((id) => !b.has(id)).sort();
    const removed = [...b.keys()].filter((id) => !a.has(id)).sort();
    const rekeyed = [...a.keys()].filter((id) => b.has(id) && compareBytes(b.get(id)!, a.get(id)!) !== 0).sort();
    if (added.length + removed.length + rekeyed.length === 0) continue;
    const previous = b.size > 0 ? await fingerprint(userId, [...b.values()]) : undefined;
    const current = a.size > 0 ? await fingerprint(userId, [...a.values()]) : undefined;
    const withSelf = self !== undefined && self.userId !== userId;
    changes.push({
      userId,
      added,
      removed,
      rekeyed,
      previous,
      current,
      ...(withSelf
        ? {
            previousSafetyNumber: previous ? safetyNumber(self, previous) : undefined,
            currentSafetyNumber: current ? safetyNumber(self, current) : undefined,
          }
        : {}),
    });
  }
  return changes;
}
