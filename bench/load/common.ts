/**
 * Pieces shared by the coordinator (run.ts) and the workers (worker.ts) of the
 * load generator: the IPC message shapes, the message-id encoding and the
 * histogram helpers.
 */
import * as hdr from 'hdr-histogram-js';

export type TargetKind = 'ours' | 'ws-peer' | 'sio-peer';

/** One client connection a worker opens. */
export interface ConnSpec {
  /** Global index of this connection in the scenario (stable across workers). */
  index: number;
  /** Base URL of the server this connection talks to (http://host:port). */
  url: string;
  /** Our server: access token. Peers: unused. */
  token: string;
  /** Our server: conversation id the connection sends in. Peers: the room. */
  room: string;
  localAddress: string;
}

export interface FanoutStep {
  step: number;
  /** Offered messages per second over all senders. */
  rate: number;
  seconds: number;
  /** Global connection indexes that send, each at rate / senders.length. */
  senders: number[];
  /** Epoch milliseconds at which every worker starts its schedule. */
  startAt: number;
  /** Connections that must receive every message (all members). */
  recipients: number;
  drainMs: number;
}

export interface ChatStep {
  /** Messages per second per user. */
  perUserRate: number;
  seconds: number;
  /** Partner of each global connection index (the other side of its pair). */
  partner: Record<number, number>;
  users: number;
  startAt: number;
  drainMs: number;
}

export type ToWorker =
  | { type: 'setup'; target: TargetKind; conns: ConnSpec[]; connectConcurrency: number }
  | { type: 'fanout'; step: FanoutStep }
  | { type: 'chat'; step: ChatStep }
  | { type: 'churn'; target: TargetKind; conns: ConnSpec[]; seconds: number }
  | { type: 'history'; url: string; token: string; conversationId: string; topSeq: number; walkers: number; walkerOffset: number; pageSize: number; seconds: number }
  | { type: 'close' };

export type FromWorker = (
  | { type: 'ready'; connected: number; failed: number; connectMs: string }
  | { type: 'fanoutResult'; result: WorkerFanoutResult }
  | { type: 'chatResult'; result: WorkerChatResult }
  | { type: 'churnResult'; cycles: number; errors: number; latency: string }
  | { type: 'historyResult'; pages: number; messages: number; gaps: number; errors: number; latency: string; elapsedMs: number }
  | { type: 'error'; message: string }
  | { type: 'closed' }
) & { samples?: string[] };

export interface WorkerFanoutResult {
  sent: number;
  acked: number;
  errors: number;
  deliveries: number;
  duplicates: number;
  unexpected: number;
  /** Base64 Uint32Array: deliveries per message index seen by this worker's connections. */
  perMessage: string;
  ack: string;
  delivery: string;
  /** Epoch ms of the last delivery this worker saw. */
  lastDeliveryAt: number;
  sendSeconds: number;
}

export interface WorkerChatResult {
  sent: number;
  acked: number;
  ackedInWindow: number;
  errors: number;
  deliveries: number;
  duplicates: number;
  unexpected: number;
  perMessage: string;
  ack: string;
  delivery: string;
  sendSeconds: number;
}

/** Epoch microseconds; workers are separate processes on one machine, so they share this clock. */
export const nowUs = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `b<step>_<index>_<intended epoch µs>`: a receiver needs nothing else to account for a message. */
export const messageId = (step: number, index: number, intendedUs: number): string => `b${step}_${index}_${intendedUs}`;
export function parseMessageId(id: string): { step: number; index: number; intendedUs: number } | null {
  if (id.charCodeAt(0) !== 98 /* b */) return null;
  const a = id.indexOf('_');
  const b = id.indexOf('_', a + 1);
  if (a < 0 || b < 0) return null;
  const step = Number(id.slice(1, a));
  const index = Number(id.slice(a + 1, b));
  const intendedUs = Number(id.slice(b + 1));
  if (!Number.isInteger(step) || !Number.isInteger(index) || !Number.isFinite(intendedUs)) return null;
  return { step, index, intendedUs };
}

export const histogram = (): hdr.Histogram =>
  hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3, useWebAssembly: false });
export const encodeHistogram = (h: hdr.Histogram): string => hdr.encodeIntoCompressedBase64(h);
export function mergeHistograms(encoded: string[]): hdr.Histogram {
  const out = histogram();
  for (const e of encoded) out.add(hdr.decodeFromCompressedBase64(e, 32, false));
  return out;
}
/** Percentiles in milliseconds from a histogram of microseconds. */
export function summary(h: hdr.Histogram): { count: number; p50: number; p99: number; p999: number; max: number } {
  const ms = (us: number) => Math.round(us) / 1000;
  return {
    count: h.totalCount,
    p50: ms(h.getValueAtPercentile(50)),
    p99: ms(h.getValueAtPercentile(99)),
    p999: ms(h.getValueAtPercentile(99.9)),
    max: ms(h.maxValue),
  };
}

export const toB64 = (a: Uint32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
export function fromB64(s: string): Uint32Array {
  const b = Buffer.from(s, 'base64');
  const out = new Uint32Array(b.byteLength / 4);
  Buffer.from(out.buffer).set(b);
  return out;
}

/** A short text body padded to a fixed size, so all three targets carry the same payload. */
export const PAD = 'x'.repeat(64);

/** JSON REST call of a benchmark's setup; throws with the status and the start of the body on failure. */
export async function api<T>(base: string, method: string, path: string, token: string | null, body?: unknown): Promise<T> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 200)}`);
  return (text ? JSON.parse(text) : undefined) as T;
}
