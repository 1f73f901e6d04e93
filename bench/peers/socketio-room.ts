/**
 * Baseline peer: a Socket.IO room server, no auth, no persistence: what a
 * typical Node team writes for group chat (issue 4).
 *
 *   PORT=9002 node --import tsx bench/peers/socketio-room.ts
 *
 * Events: `join(room, ack)` puts the socket in a room and acknowledges;
 * `msg(payload)` is re-emitted as `msg` to every socket of the sender's room,
 * the sender included (`io.to(room).emit`). Defaults are Socket.IO's own
 * (25 s ping interval), except permessage-deflate stays off as in ours.
 */
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.env.PORT ?? 9002);
const host = process.env.HOST ?? '127.0.0.1';

const http = createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('ok');
});
const io = new Server(http, { transports: ['websocket'], perMessageDeflate: false, maxHttpBufferSize: 96 * 1024 });

io.on('connection', (socket) => {
  let room: string | null = null;
  socket.on('join', (name: unknown, ack?: unknown) => {
    if (typeof name !== 'string') return;
    room = name;
    void socket.join(name);
    if (typeof ack === 'function') (ack as (r: unknown) => void)({ joined: name });
  });
  socket.on('msg', (payload: unknown) => {
    if (room !== null) io.to(room).emit('msg', payload);
  });
});

http.listen(port, host, () => process.stderr.write(`socketio-room listening on ${host}:${port}\n`));
const stop = () => {
  void io.close();
  http.close(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
