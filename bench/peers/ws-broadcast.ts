/**
 * Baseline peer: a raw `ws` broadcast server, no auth, no persistence
 * (issue 4, "the limit for Node here").
 *
 *   PORT=9001 node --import tsx bench/peers/ws-broadcast.ts
 *
 * Protocol (text frames): the first message a client sends is the name of the
 * room to join; the server answers `{"joined":"<room>"}`. Every later message
 * is broadcast unchanged to every socket in the room, the sender included.
 *
 * Frame once: the payload is framed a single time with the public
 * `WebSocket.Sender.frame` and the same header and payload buffers are written
 * to every recipient's TCP socket. ws has no public API to write a prepared
 * frame, so this reaches the socket through the private `_socket` field; that
 * is safe here because permessage-deflate is off (no frame is ever in flight
 * in ws's own compression queue) and the server sends nothing else but pings.
 */
import { createServer } from 'node:http';
import type { Socket } from 'node:net';
import * as wsModule from 'ws';
import WebSocket, { WebSocketServer } from 'ws';

const port = Number(process.env.PORT ?? 9001);
const host = process.env.HOST ?? '127.0.0.1';
const heartbeatMs = Number(process.env.HEARTBEAT_MS ?? 25_000);

/** ws exports Sender (a named export of its ESM wrapper) but @types/ws does not declare it. */
const Sender = (wsModule as unknown as {
  Sender: { frame(data: Buffer, o: { fin: boolean; rsv1: boolean; opcode: number; mask: boolean; readOnly: boolean }): Buffer[] };
}).Sender;

const rooms = new Map<string, Set<WebSocket>>();
const sockets = new WeakMap<WebSocket, Socket>();

const http = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('ok');
});
const wss = new WebSocketServer({ server: http, perMessageDeflate: false, maxPayload: 96 * 1024 });

wss.on('connection', (ws) => {
  sockets.set(ws, (ws as unknown as { _socket: Socket })._socket);
  let room: Set<WebSocket> | null = null;
  let alive = true;
  ws.on('pong', () => {
    alive = true;
  });
  const ping = setInterval(() => {
    if (!alive) return ws.terminate();
    alive = false;
    ws.ping();
  }, heartbeatMs);
  ping.unref();
  ws.on('message', (data: Buffer, isBinary) => {
    if (room === null) {
      const name = data.toString();
      room = rooms.get(name) ?? new Set();
      rooms.set(name, room);
      room.add(ws);
      ws.send(JSON.stringify({ joined: name }));
      return;
    }
    const list = Sender.frame(data, { fin: true, rsv1: false, opcode: isBinary ? 2 : 1, mask: false, readOnly: true });
    for (const peer of room) {
      if (peer.readyState !== WebSocket.OPEN) continue;
      const socket = sockets.get(peer);
      if (!socket) continue;
      socket.cork();
      socket.write(list[0]!);
      socket.write(list[1]!);
      socket.uncork();
    }
  });
  ws.on('close', () => {
    clearInterval(ping);
    room?.delete(ws);
  });
});

http.listen(port, host, () => process.stderr.write(`ws-broadcast listening on ${host}:${port}\n`));
const stop = () => {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  http.close(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
