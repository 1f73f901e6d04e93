/**
 * A load-generator worker: a process of its own (forked by run.ts) with its
 * own event loop, so parsing deliveries does not compete with the sends of
 * other workers. It opens its share of the connections, runs the steps the
 * coordinator sends, records latencies in HDR histograms (µs, from the
 * intended send time carried in the message id) and counts every delivery per
 * message for the exactly-once check, then reports back over IPC.
 */
import { connect, type Client, type Handlers } from './adapters.js';
import {
  encodeHistogram, histogram, messageId, nowUs, parseMessageId, sleep, toB64,
  type ChatStep, type ConnSpec, type FanoutStep, type FromWorker, type TargetKind, type ToWorker,
} from './common.js';

/** First few error details since the last report, sent with every report. */
const errorSamples: string[] = [];
const reply = (m: FromWorker) => process.send?.({ ...m, samples: errorSamples.splice(0) });

let specs: ConnSpec[] = [];
const clients = new Map<number, Client>();
/** Per-connection hooks the current step installs; the adapters call through these. */
let onMessage: (conn: number, id: string) => void = () => {};
let onAck: (conn: number, id: string) => void = () => {};
let errors = 0;

function handlers(conn: number): Handlers {
  return {
    onMessage: (id) => onMessage(conn, id),
    onAck: (id) => onAck(conn, id),
    onError: (detail) => {
      errors++;
      if (errorSamples.length < 5) errorSamples.push(detail);
    },
  };
}

async function setup(kind: TargetKind, conns: ConnSpec[], concurrency: number): Promise<void> {
  specs = conns;
  const latency = histogram();
  let next = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, conns.length) }, async () => {
      while (next < conns.length) {
        const spec = conns[next++]!;
        const t0 = nowUs();
        try {
          clients.set(spec.index, await connect(kind, spec, handlers(spec.index)));
          latency.recordValue(Math.max(1, nowUs() - t0));
        } catch (e) {
          failed++;
          if (errorSamples.length < 5) errorSamples.push(`connect: ${(e as Error).message}`);
        }
      }
    }),
  );
  reply({ type: 'ready', connected: clients.size, failed, connectMs: encodeHistogram(latency) });
}

/** Paces `count` sends at `rate`/s from `startAt` (epoch ms) against a fixed schedule (no coordinated omission). */
async function pace(startAtMs: number, rate: number, count: number, send: (n: number, intendedUs: number) => void): Promise<void> {
  const startUs = startAtMs * 1000;
  for (let n = 0; n < count; n++) {
    const due = startUs + Math.round((n * 1e6) / rate);
    const wait = (due - nowUs()) / 1000;
    if (wait > 1) await sleep(wait);
    send(n, due);
  }
}

async function fanout(step: FanoutStep): Promise<void> {
  const senders = step.senders.length;
  const perSender = Math.max(1, Math.round((step.rate / senders) * step.seconds));
  const total = perSender * senders;
  const mine = specs.map((s) => s.index);
  const slot = new Map<number, number>(mine.map((c, i) => [c, i]));
  const bytes = Math.ceil(total / 8);
  const seen = new Uint8Array(bytes * mine.length);
  const perMessage = new Uint32Array(total);
  const ack = histogram();
  const delivery = histogram();
  let deliveries = 0;
  let duplicates = 0;
  let unexpected = 0;
  let acked = 0;
  let lastDeliveryAt = 0;
  const errorsBefore = errors;
  onMessage = (conn, id) => {
    const m = parseMessageId(id);
    if (!m || m.step !== step.step || m.index >= total) {
      unexpected++;
      return;
    }
    const at = slot.get(conn)! * bytes + (m.index >> 3);
    const bit = 1 << (m.index & 7);
    if (seen[at]! & bit) {
      duplicates++;
      return;
    }
    seen[at] = seen[at]! | bit;
    perMessage[m.index]!++;
    deliveries++;
    const now = nowUs();
    lastDeliveryAt = now;
    delivery.recordValue(Math.max(1, now - m.intendedUs));
  };
  onAck = (_conn, id) => {
    const m = parseMessageId(id);
    if (!m || m.step !== step.step) return;
    acked++;
    ack.recordValue(Math.max(1, nowUs() - m.intendedUs));
  };

  const local = step.senders.map((c, s) => ({ client: clients.get(c), s })).filter((x) => x.client !== undefined);
  const began = nowUs();
  await Promise.all(
    local.map(({ client, s }) =>
      pace(step.startAt, step.rate / senders, perSender, (n, due) => client!.send(messageId(step.step, n * senders + s, due))),
    ),
  );
  const sendSeconds = local.length > 0 ? (nowUs() - Math.max(began, step.startAt * 1000)) / 1e6 : 0;
  const expected = total * clients.size;
  const deadline = Date.now() + step.drainMs;
  while ((deliveries < expected || acked < local.length * perSender) && Date.now() < deadline) await sleep(20);
  reply({
    type: 'fanoutResult',
    result: {
      sent: local.length * perSender,
      acked,
      errors: errors - errorsBefore,
      deliveries,
      duplicates,
      unexpected,
      perMessage: toB64(perMessage),
      ack: encodeHistogram(ack),
      delivery: encodeHistogram(delivery),
      lastDeliveryAt: lastDeliveryAt / 1000,
      sendSeconds,
    },
  });
}

async function chat(step: ChatStep): Promise<void> {
  const perUser = Math.max(1, Math.round(step.perUserRate * step.seconds));
  const total = perUser * step.users;
  const perMessage = new Uint32Array(total);
  const ack = histogram();
  const delivery = histogram();
  let deliveries = 0;
  let duplicates = 0;
  let unexpected = 0;
  let acked = 0;
  let ackedInWindow = 0;
  const endUs = (step.startAt + step.seconds * 1000) * 1000;
  const errorsBefore = errors;
  onMessage = (conn, id) => {
    const m = parseMessageId(id);
    if (!m || m.index >= total) {
      unexpected++;
      return;
    }
    const sender = m.index % step.users;
    if (sender === conn) return; // our own copy (ours: the sender's other sockets; peers: the echo)
    if (step.partner[sender] !== conn) {
      unexpected++;
      return;
    }
    if (perMessage[m.index]! > 0) {
      duplicates++;
      return;
    }
    perMessage[m.index] = 1;
    deliveries++;
    delivery.recordValue(Math.max(1, nowUs() - m.intendedUs));
  };
  onAck = (_conn, id) => {
    const m = parseMessageId(id);
    if (!m) return;
    const now = nowUs();
    acked++;
    if (now <= endUs) ackedInWindow++;
    ack.recordValue(Math.max(1, now - m.intendedUs));
  };
  // Each user starts at a random phase within its first interval, so a thousand users do not send in lockstep.
  const began = nowUs();
  await Promise.all(
    specs.map((spec) => {
      const client = clients.get(spec.index);
      if (!client) return Promise.resolve();
      const phase = Math.random() * (1000 / step.perUserRate);
      return pace(step.startAt + phase, step.perUserRate, perUser, (n, due) => client.send(messageId(0, n * step.users + spec.index, due)));
    }),
  );
  const sendSeconds = (nowUs() - Math.max(began, step.startAt * 1000)) / 1e6;
  const sent = clients.size * perUser;
  const expectedHere = specs.length * perUser;
  const deadline = Date.now() + step.drainMs;
  while ((acked < sent || deliveries < expectedHere) && Date.now() < deadline) await sleep(20);
  reply({
    type: 'chatResult',
    result: {
      sent,
      acked,
      ackedInWindow,
      errors: errors - errorsBefore,
      deliveries,
      duplicates,
      unexpected,
      perMessage: toB64(perMessage),
      ack: encodeHistogram(ack),
      delivery: encodeHistogram(delivery),
      sendSeconds,
    },
  });
}

/** Each connection spec is a loop: connect, authenticate (resuming from its last cursor), wait for ready, disconnect, again. */
async function churn(kind: TargetKind, conns: ConnSpec[], seconds: number): Promise<void> {
  const latency = histogram();
  let cycles = 0;
  let failures = 0;
  const end = Date.now() + seconds * 1000;
  const cursors = new Map<number, string | null>();
  const noop: Handlers = { onMessage: () => {}, onAck: () => {}, onError: () => {} };
  await Promise.all(
    conns.map(async (spec) => {
      while (Date.now() < end) {
        const t0 = nowUs();
        try {
          const c = await connect(kind, spec, noop, { cursor: cursors.get(spec.index) ?? null, timeoutMs: 10_000 });
          cursors.set(spec.index, c.cursor);
          latency.recordValue(Math.max(1, nowUs() - t0));
          cycles++;
          c.close();
        } catch (e) {
          failures++;
          if (errorSamples.length < 5) errorSamples.push(`churn: ${(e as Error).message}`);
          await sleep(50);
        }
      }
    }),
  );
  reply({ type: 'churnResult', cycles, errors: failures, latency: encodeHistogram(latency) });
}

/**
 * Walkers page back from the newest message to the oldest with `beforeSeq`,
 * each checking that the seqs it sees are contiguous and descending; a walker
 * that reaches seq 1 starts again from the top until the time is up.
 */
async function history(m: Extract<ToWorker, { type: 'history' }>): Promise<void> {
  const latency = histogram();
  let pages = 0;
  let messages = 0;
  let gaps = 0;
  let failures = 0;
  const started = Date.now();
  const end = started + m.seconds * 1000;
  await Promise.all(
    Array.from({ length: m.walkers }, async (_x, w) => {
      // Walkers start at different depths so they do not all read the same hot pages.
      let before = m.topSeq + 1 - Math.floor(((w + m.walkerOffset) * 7919 * m.pageSize) % m.topSeq);
      while (Date.now() < end) {
        const t0 = nowUs();
        const res = await fetch(`${m.url}/v1/conversations/${m.conversationId}/messages?beforeSeq=${before}&limit=${m.pageSize}`, {
          headers: { authorization: `Bearer ${m.token}` },
        }).catch(() => null);
        if (!res?.ok) {
          failures++;
          if (errorSamples.length < 5) errorSamples.push(`history: ${res?.status ?? 'network'}`);
          await sleep(50);
          continue;
        }
        const page = (await res.json()) as { items: { seq: number }[] };
        latency.recordValue(Math.max(1, nowUs() - t0));
        pages++;
        messages += page.items.length;
        const want = Math.min(m.pageSize, before - 1);
        if (page.items.length !== want) gaps++;
        for (let i = 0; i < page.items.length; i++) if (page.items[i]!.seq !== before - page.items.length + i) gaps++;
        before = before - page.items.length;
        if (before <= 1) before = m.topSeq + 1;
      }
    }),
  );
  reply({ type: 'historyResult', pages, messages, gaps, errors: failures, latency: encodeHistogram(latency), elapsedMs: Date.now() - started });
}

process.on('message', (raw: unknown) => {
  const m = raw as ToWorker;
  const run = async () => {
    if (m.type === 'setup') await setup(m.target, m.conns, m.connectConcurrency);
    else if (m.type === 'fanout') await fanout(m.step);
    else if (m.type === 'chat') await chat(m.step);
    else if (m.type === 'churn') await churn(m.target, m.conns, m.seconds);
    else if (m.type === 'history') await history(m);
    else if (m.type === 'close') {
      for (const c of clients.values()) c.close();
      clients.clear();
      await sleep(200);
      reply({ type: 'closed' });
      process.disconnect();
    }
  };
  run().catch((e: unknown) => reply({ type: 'error', message: (e as Error).stack ?? String(e) }));
});
