/**
 * Encodings the E2EE layer owns: base64 for MLS bytes on the wire, the
 * records it keeps in the key store, and the padded application payload.
 * Browser-safe (btoa/atob, TextEncoder, Uint8Array).
 */

/** Standard padded base64 (what the API's `B64` fields take). */
export function toB64(bytes: Uint8Array): string {
  let s = '';
  // Chunked: String.fromCharCode(...big) overflows the call stack on trees of several MiB.
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Inverse of {@link toB64}; throws on malformed input. */
export function fromB64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** URL- and file-name-safe base64 without padding (key store names). */
export function toB64url(bytes: Uint8Array): string {
  return toB64(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** MLSMessage framing (RFC 9420 §6): version u16 = 1 (mls10), then the wire format u16. */
const WIRE_PUBLIC_MESSAGE = 1;
const WIRE_PRIVATE_MESSAGE = 2;

function wireFormat(bytes: Uint8Array): number | undefined {
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 1) return undefined;
  return (bytes[2]! << 8) | bytes[3]!;
}

/**
 * Whether the bytes claim to be an MLS PrivateMessage. Checked before
 * decrypting so that a handshake message smuggled into `encrypted` content
 * can never be applied as a commit.
 */
export function isPrivateMessage(bytes: Uint8Array): boolean {
  return wireFormat(bytes) === WIRE_PRIVATE_MESSAGE;
}

/** Whether the bytes claim to be an MLS PublicMessage (how commits travel). */
export function isPublicMessage(bytes: Uint8Array): boolean {
  return wireFormat(bytes) === WIRE_PUBLIC_MESSAGE;
}

// ---- key store records: "SCE" + version, u32 meta length, JSON meta, opaque blob ----

const MAGIC = [0x53, 0x43, 0x45, 0x01] as const;

export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecordError';
  }
}

export function packRecord(meta: Record<string, unknown>, blob: Uint8Array = new Uint8Array()): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(meta));
  const out = new Uint8Array(MAGIC.length + 4 + json.length + blob.length);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(MAGIC.length, json.length);
  out.set(json, MAGIC.length + 4);
  out.set(blob, MAGIC.length + 4 + json.length);
  return out;
}

export function unpackRecord(bytes: Uint8Array, kind: string): { meta: Record<string, unknown>; blob: Uint8Array } {
  const bad = () => new RecordError(`the key store holds a malformed ${kind} record`);
  if (bytes.length < MAGIC.length + 4 || MAGIC.some((b, i) => bytes[i] !== b)) throw bad();
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(MAGIC.length);
  const start = MAGIC.length + 4;
  if (start + len > bytes.length) throw bad();
  let meta: unknown;
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(start, start + len)));
  } catch {
    throw bad();
  }
  if (typeof meta !== 'object' || meta === null || (meta as { kind?: unknown }).kind !== kind) throw bad();
  return { meta: meta as Record<string, unknown>, blob: bytes.slice(start + len) };
}

/** What the messenger remembers about one group besides the MLS state. */
export interface GroupMeta {
  /** Highest seq of the conversation's log this device has handled (processed, skipped or reported). */
  processedSeq: number;
  /** Seq of the log entry that made this device a member (messages at or before it were never for us); null until known. */
  joinSeq: number | null;
  /** Epoch this device joined at. */
  joinEpoch: number;
}

export function encodeGroupRecord(meta: GroupMeta, state: Uint8Array): Uint8Array {
  return packRecord({ kind: 'group', ...meta }, state);
}

/** Decodes a group record of the key store (the state stays MLS-encoded: decode it with MlsCrypto.decodeState). */
export function decodeGroupRecord(bytes: Uint8Array): { meta: GroupMeta; state: Uint8Array } {
  const { meta, blob } = unpackRecord(bytes, 'group');
  const { processedSeq, joinSeq, joinEpoch } = meta;
  if (!isCount(processedSeq) || !isCount(joinEpoch) || !(joinSeq === null || isCount(joinSeq))) throw new RecordError('the key store holds a malformed group record');
  return { meta: { processedSeq, joinSeq, joinEpoch }, state: blob };
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

// ---- application payload ----

const PAYLOAD_VERSION = 1;
/** Largest padded payload: its ciphertext must stay under LIMITS.ciphertextMaxChars (48 KiB) with MLS framing. */
export const PAYLOAD_MAX_BYTES = 40 * 1024;

/**
 * Pads to a power of two from 256 bytes up to 4 KiB, then to whole 4 KiB,
 * so ciphertext lengths tell the server little about the text's length.
 */
function paddedLength(n: number): number {
  if (n <= 256) return 256;
  if (n <= 4096) return 2 ** Math.ceil(Math.log2(n));
  return Math.ceil(n / 4096) * 4096;
}

/** `{v:1, text}` as UTF-8 JSON, zero-padded (JSON never ends in NUL, so the padding is unambiguous). */
export function encodePayload(text: string): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify({ v: PAYLOAD_VERSION, text }));
  const out = new Uint8Array(paddedLength(json.length));
  out.set(json);
  return out;
}

/** The text of a payload, or undefined when it is not one we understand. */
export function decodePayload(bytes: Uint8Array): { text: string } | undefined {
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end--;
  try {
    const v: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, end)));
    if (typeof v !== 'object' || v === null) return undefined;
    const { v: version, text } = v as { v?: unknown; text?: unknown };
    return version === PAYLOAD_VERSION && typeof text === 'string' ? { text } : undefined;
  } catch {
    return undefined;
  }
}
