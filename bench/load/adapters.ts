/**
 * One client connection to one of the three targets, behind the same small
 * interface, so each scenario's code drives ours and both peers alike.
 *
 * - ours: our public WebSocket protocol (auth frame, `send` frames with a
 *   clientMsgId, `ack`, `event` frames with `message.created`);
 * - ws-peer: bench/peers/ws-broadcast.ts (first message = room name);
 * - sio-peer: bench/peers/socketio-room.ts (`join`, then `msg`).
 *
 * The peers have no acknowledgement: there, a sender's "ack" is its own copy
 * of the broadcast, which is the closest equivalent (the server has taken the
 * message and fanned it out).
 */
import { io as sioConnect, type Socket } from 'socket.io-client';
import WebSocket from 'ws';
import { PAD, type ConnSpec, type TargetKind } from './common.js';

export interface Handlers {
  /** A message delivered to this connection (its id). */
  onMessage(id: string): void;
  /** The server accepted a message this connection sent. */
  onAck(id: string): void;
  onError(detail: string): void;
}

export interface Client {
  send(id: string): void;
  close(): void;
  /** Our server: the resume cursor of the last `ready` or `event`. */
  cursor: string | null;
}

const wsUrl = (url: string) => `${url.replace(/^http/, 'ws')}/v1/ws`;

/** The one string field `name` of a JSON text, without parsing it (receivers parse tens of thousands of frames/s). */
function field(text: string, name: string): string | undefined {
  const key = `"${name}":"`;
  const at = text.indexOf(key);
  if (at < 0) return undefined;
  const from = at + key.length;
  return text.slice(from, text.indexOf('"', from));
}

function connectOurs(spec: ConnSpec, h: Handlers, cursor: string | null, timeoutMs: number): Promise<Client> {
  const ws = new WebSocket(wsUrl(spec.url), { perMessageDeflate: false, localAddress: spec.localAddress });
  const client: Client = {
    cursor,
    send(id) {
      ws.send(`{"type":"send","reqId":"${id}","conversationId":"${spec.room}","clientMsgId":"${id}","content":{"type":"text","text":"${PAD}"}}`);
    },
    close() {
      ws.close(1000);
    },
  };
  return new Promise<Client>((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('no ready frame in time'));
    }, timeoutMs);
    ws.once('error', (e) => {
      clearTimeout(timer);
      if (!ready) reject(e);
      else h.onError(`socket: ${e.message}`);
    });
    ws.once('open', () => ws.send(JSON.stringify({ type: 'auth', token: spec.token, ...(cursor ? { cursor } : {}) })));
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      if (text.startsWith('{"type":"event"')) {
        const c = field(text, 'cursor');
        if (c) client.cursor = c;
        if (!text.includes('"type":"message.created"')) return;
        const id = field(text, 'clientMsgId');
        if (id) h.onMessage(id);
        return;
      }
      if (text.startsWith('{"type":"ack"')) {
        const id = field(text, 'reqId');
        if (id) h.onAck(id);
        return;
      }
      const f = JSON.parse(text) as { type: string; cursor?: string; error?: { code: string } };
      if (f.type === 'ready') {
        ready = true;
        client.cursor = f.cursor ?? null;
        clearTimeout(timer);
        resolve(client);
      } else if (f.type === 'error') {
        h.onError(f.error?.code ?? 'error');
      }
    });
    ws.once('close', (code) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`closed ${code} before ready`));
      else if (code !== 1000 && code !== 1005) h.onError(`closed ${code}`);
    });
  });
}

function connectWsPeer(spec: ConnSpec, h: Handlers, timeoutMs: number): Promise<Client> {
  const ws = new WebSocket(spec.url.replace(/^http/, 'ws'), { perMessageDeflate: false, localAddress: spec.localAddress });
  const mine = `"from":${spec.index},`;
  const client: Client = {
    cursor: null,
    send(id) {
      ws.send(`{"id":"${id}","from":${spec.index},"text":"${PAD}"}`);
    },
    close() {
      ws.close(1000);
    },
  };
  return new Promise<Client>((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('not joined in time'));
    }, timeoutMs);
    ws.once('error', (e) => {
      clearTimeout(timer);
      if (!ready) reject(e);
      else h.onError(`socket: ${e.message}`);
    });
    ws.once('open', () => ws.send(spec.room));
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      const id = field(text, 'id');
      if (id !== undefined) {
        h.onMessage(id);
        if (text.includes(mine)) h.onAck(id);
      } else if (!ready && text.startsWith('{"joined"')) {
        ready = true;
        clearTimeout(timer);
        resolve(client);
      }
    });
    ws.once('close', (code) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`closed ${code} before join`));
      else if (code !== 1000 && code !== 1005) h.onError(`closed ${code}`);
    });
  });
}

interface PeerMsg {
  id: string;
  from: number;
  text: string;
}

function connectSioPeer(spec: ConnSpec, h: Handlers, timeoutMs: number): Promise<Client> {
  const socket: Socket = sioConnect(spec.url, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    perMessageDeflate: false,
    localAddress: spec.localAddress,
    // engine.io-client hands localAddress to ws in Node; its option types leave it out.
  } as unknown as Parameters<typeof sioConnect>[1]);
  const client: Client = {
    cursor: null,
    send(id) {
      socket.emit('msg', { id, from: spec.index, text: PAD } satisfies PeerMsg);
    },
    close() {
      socket.disconnect();
    },
  };
  return new Promise<Client>((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error('not joined in time'));
    }, timeoutMs);
    socket.on('msg', (m: PeerMsg) => {
      h.onMessage(m.id);
      if (m.from === spec.index) h.onAck(m.id);
    });
    socket.once('connect_error', (e) => {
      clearTimeout(timer);
      if (!ready) reject(e);
    });
    socket.once('connect', () => {
      socket.emit('join', spec.room, () => {
        ready = true;
        clearTimeout(timer);
        resolve(client);
      });
    });
    socket.on('disconnect', (reason) => {
      if (ready && reason !== 'io client disconnect') h.onError(`disconnected: ${reason}`);
    });
  });
}

export function connect(kind: TargetKind, spec: ConnSpec, h: Handlers, opts: { cursor?: string | null; timeoutMs?: number } = {}): Promise<Client> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  if (kind === 'ours') return connectOurs(spec, h, opts.cursor ?? null, timeoutMs);
  if (kind === 'ws-peer') return connectWsPeer(spec, h, timeoutMs);
  return connectSioPeer(spec, h, timeoutMs);
}
