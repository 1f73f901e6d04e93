import { isHeldUnverified } from '../http/auth-hook.js';
import { randomInt } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CLOSE_CODES, ClientFrameValidator, PROTOCOL_VERSION, WS_LIMITS,
  type AuthFrame, type ClientFrame, type EphemeralEvent, type ErrorCode, type SendFrame,
} from '@secureconnect/protocol';
import { uuidv7 } from 'uuidv7';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { AppContext } from '../context.js';
import { AppError } from '../infra/errors.js';
import type { StoredEvent } from '../infra/eventlog.js';
import { EPHEMERAL_CHANNEL, type AuthContext, type EphemeralMessage, type Services } from '../services.js';

export const WS_PATH = '/v1/ws';

/** Events fetched per replay query; the socket is drained between pages. */
const REPLAY_PAGE = 500;
/**
 * Live events held for a connection while its replay runs. Past this, the
 * buffer is dropped and the replay simply reads further: every durable event
 * is in the log, so memory stays bounded without losing anything (AF-R6).
 */
const MAX_PENDING_LIVE = 5_000;
/** Conversations whose member set the fan-out keeps in memory (least recently used are dropped). */
const MEMBER_CACHE_MAX = 20_000;
/** How long a closed-for-slowness socket may take to flush its close frame before it is cut. */
const SLOW_CONSUMER_GRACE_MS = 2_000;
/** A socket's queue for the current tick is written out early once it holds this much. */
const FLUSH_AT_BYTES = 64 * 1024;
/** A revocation that races a connection's auth is remembered this long. */
const REVOKED_MEMORY_MS = 60_000;

type State = 'auth' | 'authenticating' | 'buffering' | 'live';

interface Pending {
  /** Durable events carry their log id; ephemeral ones (null) take the cursor at flush time. */
  id: number | null;
  data: Frame | EphemeralEvent;
}

interface Conn {
  readonly id: string;
  readonly ws: WebSocket;
  /** The upgraded TCP (or TLS) socket under `ws`: pre-framed bytes are written to it directly. */
  readonly socket: Duplex;
  /** Frames queued this tick, written together by the next flush (one writev per socket). */
  out: Buffer[];
  /** Completion callbacks by index into `out` (only replay pacing uses them). */
  outCbs: (((err?: Error | null) => void) | undefined)[] | null;
  outBytes: number;
  state: State;
  closing: boolean;
  auth: AuthContext | null;
  /** Id of the last durable event this socket was given (or resumed from). */
  cursor: number;
  pending: Pending[];
  overflowed: boolean;
  /** Frames that arrived while the auth frame was being verified. */
  early: ClientFrame[];
  alive: boolean;
  tokens: number;
  refilledAt: number;
  inflight: number;
  authTimer: NodeJS.Timeout | undefined;
}

export interface GatewayOptions {
  /** Overrides config.ws.authTimeoutMs. */
  authTimeoutMs?: number;
}

/**
 * The WebSocket gateway (docs/SPEC.md [G1]–[G6], [E3]).
 *
 * Live delivery comes from this node's event-log tailer, never from the bus
 * directly: the tailer hands over every committed event in id order exactly
 * once, so a socket's cursor is simply the last id it was sent, and resuming
 * on any node is "replay after cursor, then live, skipping ids already sent".
 */
export class Gateway {
  /** Counters for tests and metrics. */
  readonly counters = { accepted: 0, rejectedUpgrades: 0, rateLimited: 0, slowConsumers: 0, heartbeatTimeouts: 0, revoked: 0, fanoutErrors: 0, framesWritten: 0, socketWrites: 0 };
  private readonly wss: WebSocketServer;
  private readonly conns = new Set<Conn>();
  private readonly byUser = new Map<string, Set<Conn>>();
  private readonly bySession = new Map<string, Set<Conn>>();
  private readonly members = new Map<string, Set<string>>();
  private readonly revokedAt = new Map<string, number>();
  private readonly allowedOrigins: Set<string>;
  private readonly authTimeoutMs: number;
  private accepting = true;
  private attached: Server | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  /** Sockets with frames queued for the next flush. */
  private dirty: Conn[] = [];
  private flushScheduled = false;
  private readonly cleanups: (() => void)[] = [];
  private subscribed: Promise<void> = Promise.resolve();
  private onEmpty: (() => void) | undefined;

  constructor(private readonly ctx: AppContext, private readonly services: Services, opts: GatewayOptions = {}) {
    this.wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: WS_LIMITS.maxFrameBytes, clientTracking: false });
    this.allowedOrigins = new Set(ctx.config.corsOrigins);
    if (ctx.config.publicUrl) this.allowedOrigins.add(new URL(ctx.config.publicUrl).origin);
    this.authTimeoutMs = opts.authTimeoutMs ?? ctx.config.ws.authTimeoutMs;
  }

  /** Open sockets on this node, by stage. */
  get stats() {
    let live = 0;
    for (const c of this.conns) if (c.state === 'live') live++;
    return { connections: this.conns.size, live, users: this.byUser.size, ...this.counters };
  }

  attach(server: Server): void {
    if (this.attached) return;
    this.attached = server;
    // Stays attached after shutdown so late upgrades get a clear 503, not a hang.
    server.on('upgrade', this.onUpgrade);
    this.cleanups.push(this.ctx.events.onEvents((events) => this.enqueue(events)));
    this.cleanups.push(this.services.auth.onSessionRevoked((sessionId) => this.revokeSession(sessionId)));
    this.cleanups.push(this.services.auth.onSessionBound((sessionId, deviceId) => this.bindSession(sessionId, deviceId)));
    this.subscribed = this.ctx.bus.subscribe(EPHEMERAL_CHANNEL, (m) => this.onEphemeral(m)).then(
      (unsubscribe) => {
        this.cleanups.push(() => {
          unsubscribe().catch((err: unknown) => this.ctx.log.warn({ err }, 'ephemeral unsubscribe failed'));
        });
      },
      (err: unknown) => this.ctx.log.error({ err }, 'ephemeral subscription failed; typing and presence will not be pushed'),
    );
    this.heartbeat = setInterval(() => this.beat(), this.ctx.config.ws.heartbeatIntervalMs);
    this.heartbeat.unref();
  }

  /** [G6]: refuse new sockets, ask every client to reconnect elsewhere, wait for them to go, cut the rest. */
  async shutdown(graceMs: number): Promise<void> {
    this.accepting = false;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const deadline = Date.now() + graceMs;
    // Sends in flight get their ack first (they are committed or will be by messages.stop()).
    for (const c of this.conns) for (const f of c.early.splice(0)) this.ctx.log.debug({ type: f.type }, 'frame dropped at shutdown');
    while ([...this.conns].some((c) => c.inflight > 0) && Date.now() < deadline - graceMs / 2) await sleep(20);
    const gone = new Promise<void>((resolve) => {
      if (this.conns.size === 0) resolve();
      else this.onEmpty = resolve;
    });
    for (const c of this.conns) {
      this.write(c, JSON.stringify({ type: 'reconnect', afterMs: randomInt(0, 1_000) }));
      this.close(c, CLOSE_CODES.serviceRestart, 'server restarting');
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([gone, new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))))]);
    clearTimeout(timer);
    for (const c of this.conns) c.ws.terminate();
    await this.subscribed;
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    await this.chain;
    this.wss.close();
  }

  // ---- upgrade and connection ----

  private readonly onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', (err) => this.ctx.log.debug({ err }, 'upgrade socket error'));
    const path = (req.url ?? '').split('?')[0];
    if (path !== WS_PATH) return this.refuse(socket, 404, 'not_found');
    if (!this.accepting) return this.refuse(socket, 503, 'unavailable');
    // [G2]/[AF-R2]: browsers always send Origin; non-browser clients may omit it.
    const origin = req.headers.origin;
    if (origin !== undefined && !this.allowedOrigins.has(origin)) return this.refuse(socket, 403, 'origin_forbidden');
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, socket));
  };

  private refuse(socket: Duplex, status: number, code: ErrorCode): void {
    this.counters.rejectedUpgrades++;
    const body = JSON.stringify({ error: { code, message: new AppError(code).message } });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      () => socket.destroy(),
    );
  }

  private onConnection(ws: WebSocket, socket: Duplex): void {
    const { ws: limits } = this.ctx.config;
    const conn: Conn = {
      id: uuidv7(), ws, socket, out: [], outCbs: null, outBytes: 0, state: 'auth', closing: false, auth: null, cursor: 0, pending: [], overflowed: false, early: [],
      alive: true, tokens: limits.frameBurst, refilledAt: performance.now(), inflight: 0, authTimer: undefined,
    };
    const full = this.conns.size >= limits.maxConnectionsPerNode;
    this.conns.add(conn);
    this.counters.accepted++;
    ws.on('message', (data) => this.onMessage(conn, data));
    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('close', () => this.onClose(conn));
    // ws reports protocol violations (e.g. a frame over maxPayload → 1009) here and closes by itself.
    ws.on('error', (err) => this.ctx.log.debug({ err, conn: conn.id }, 'websocket error'));
    if (full) return this.close(conn, CLOSE_CODES.rateLimited, 'too many connections on this node');
    conn.authTimer = setTimeout(() => this.close(conn, CLOSE_CODES.unauthenticated, 'auth timeout'), this.authTimeoutMs);
  }

  private onClose(conn: Conn): void {
    conn.closing = true;
    clearTimeout(conn.authTimer);
    this.conns.delete(conn);
    const auth = conn.auth;
    if (auth && (conn.state === 'buffering' || conn.state === 'live')) {
      removeFrom(this.byUser, auth.userId, conn);
      removeFrom(this.bySession, auth.sessionId, conn);
      this.services.presence
        .disconnected(auth.userId, conn.id)
        .catch((err: unknown) => this.ctx.log.warn({ err, userId: auth.userId }, 'presence disconnect failed'));
    }
    conn.pending = [];
    this.dropQueued(conn);
    if (this.conns.size === 0 && this.onEmpty) {
      this.onEmpty();
      this.onEmpty = undefined;
    }
  }

  private close(conn: Conn, code: number, reason: string): void {
    if (conn.closing) return;
    conn.closing = true;
    clearTimeout(conn.authTimer);
    // The close frame goes through ws's own sender: what this tick queued must be on the wire before it.
    this.flushConn(conn);
    try {
      conn.ws.close(code, reason);
    } catch (err) {
      this.ctx.log.debug({ err }, 'close failed; terminating');
      conn.ws.terminate();
    }
  }

  // ---- client frames ----

  private onMessage(conn: Conn, data: RawData): void {
    conn.alive = true;
    // While draining for shutdown nothing new starts: an unacknowledged send is retried on the next node.
    if (conn.closing || !this.accepting) return;
    if (!this.takeToken(conn)) {
      this.counters.rateLimited++;
      return this.close(conn, CLOSE_CODES.rateLimited, 'too many frames');
    }
    let raw: unknown;
    try {
      raw = JSON.parse(rawToString(data));
    } catch {
      return this.close(conn, CLOSE_CODES.badFrame, 'invalid json');
    }
    const frame: ClientFrame | null = ClientFrameValidator.Check(raw) ? raw : null;
    if (conn.state === 'auth') {
      // [G1]/[AF-R1]: nothing but a valid auth frame is looked at before authentication.
      if (frame?.type !== 'auth') return this.close(conn, CLOSE_CODES.unauthenticated, 'auth frame expected');
      conn.state = 'authenticating';
      this.authenticate(conn, frame).catch((err: unknown) => {
        // A database or Redis failure, not the client's fault: it should retry, not drop its credentials.
        this.ctx.log.error({ err }, 'websocket auth or replay failed');
        this.close(conn, CLOSE_CODES.internalError, 'internal error');
      });
      return;
    }
    if (!frame) {
      const reqId = isObject(raw) && typeof raw.reqId === 'string' && raw.reqId.length <= 64 ? raw.reqId : undefined;
      const first = [...ClientFrameValidator.Errors(raw)][0];
      const message = first ? `Invalid frame at ${first.instancePath || '/'}: ${first.message}` : 'Invalid frame.';
      this.sendError(conn, reqId, 'validation_failed', message);
      return;
    }
    if (conn.state === 'authenticating') {
      conn.early.push(frame);
      return;
    }
    this.handle(conn, frame);
  }

  private takeToken(conn: Conn): boolean {
    const { framesPerSecond, frameBurst } = this.ctx.config.ws;
    const now = performance.now();
    conn.tokens = Math.min(frameBurst, conn.tokens + ((now - conn.refilledAt) * framesPerSecond) / 1000);
    conn.refilledAt = now;
    if (conn.tokens < 1) return false;
    conn.tokens -= 1;
    return true;
  }

  private handle(conn: Conn, frame: ClientFrame): void {
    const auth = conn.auth;
    if (!auth) return;
    switch (frame.type) {
      case 'ping':
        this.write(conn, '{"type":"pong"}');
        return;
      case 'auth':
        this.sendError(conn, undefined, 'bad_request', 'Already authenticated.');
        return;
      case 'send':
        this.run(conn, frame.reqId, () => this.send(conn, auth, frame));
        return;
      case 'typing':
        this.run(conn, undefined, () => this.services.messages.typing(auth, frame.conversationId));
        return;
      case 'read':
        this.run(conn, undefined, () => this.services.messages.markRead(auth, frame.conversationId, frame.seq));
        return;
    }
  }

  private async send(conn: Conn, auth: AuthContext, frame: SendFrame): Promise<void> {
    // [M3]: the messages service resolves only after the durable commit, so an ack never precedes it.
    const { message } = await this.services.messages.send(auth, frame.conversationId, { clientMsgId: frame.clientMsgId, content: frame.content });
    this.write(conn, JSON.stringify({ type: 'ack', reqId: frame.reqId, message }));
  }

  private run(conn: Conn, reqId: string | undefined, op: () => Promise<void>): void {
    conn.inflight++;
    op()
      .catch((err: unknown) => {
        if (err instanceof AppError) return this.sendError(conn, reqId, err.code, err.message);
        this.ctx.log.error({ err, conn: conn.id }, 'websocket operation failed');
        this.sendError(conn, reqId, 'internal');
      })
      .finally(() => {
        conn.inflight--;
      });
  }

  private sendError(conn: Conn, reqId: string | undefined, code: ErrorCode, message?: string): void {
    const error = { code, message: message ?? new AppError(code).message };
    this.write(conn, JSON.stringify(reqId === undefined ? { type: 'error', error } : { type: 'error', reqId, error }));
  }

  // ---- auth, registration and resume ([G1], [E3], [E4]) ----

  private async authenticate(conn: Conn, frame: AuthFrame): Promise<void> {
    if (frame.protocolVersion !== undefined && frame.protocolVersion !== PROTOCOL_VERSION) {
      this.sendError(conn, undefined, 'bad_request', `This server speaks protocol version ${PROTOCOL_VERSION}.`);
      return this.close(conn, CLOSE_CODES.badFrame, 'unsupported protocol version');
    }
    let auth: AuthContext;
    try {
      auth = await this.services.auth.verifyAccessToken(frame.token);
    } catch (err) {
      if (!(err instanceof AppError) || err.status >= 500) throw err;
      return this.close(conn, CLOSE_CODES.unauthenticated, 'invalid token');
    }
    if (conn.closing) return;
    if (this.revokedAt.has(auth.sessionId)) return this.close(conn, CLOSE_CODES.sessionRevoked, 'session revoked');
    // The HTTP API holds unverified accounts to a few account routes ([AC3]); the socket carries messages, so it is closed to them.
    if (isHeldUnverified(this.ctx.config.emailVerification, auth)) return this.close(conn, CLOSE_CODES.emailUnverified, 'email not verified');

    const resumeFrom = frame.cursor === undefined ? null : Number(frame.cursor);
    if (resumeFrom !== null && !Number.isSafeInteger(resumeFrom)) return this.close(conn, CLOSE_CODES.badFrame, 'invalid cursor');
    // The per-user limit counts every node's sockets (presence), and this node's exactly.
    const max = this.ctx.config.ws.maxConnectionsPerUser;
    let cluster = 0;
    try {
      cluster = await this.services.presence.connectionCount(auth.userId);
    } catch (err) {
      this.ctx.log.warn({ err }, 'presence count unavailable; limiting per node');
    }
    const floor = resumeFrom === null ? 0 : await this.ctx.events.floor();
    await this.subscribed;
    if (conn.closing) return;
    if (Math.max(cluster, this.byUser.get(auth.userId)?.size ?? 0) >= max) {
      this.counters.rateLimited++;
      return this.close(conn, CLOSE_CODES.rateLimited, 'too many connections for this user');
    }
    if (resumeFrom !== null && resumeFrom < floor) return this.close(conn, CLOSE_CODES.cursorExpired, 'cursor expired');

    // Registered before the replay starts: live events from here on are held, so none falls between the two.
    clearTimeout(conn.authTimer);
    conn.auth = auth;
    conn.state = 'buffering';
    conn.cursor = resumeFrom ?? this.ctx.events.position;
    addTo(this.byUser, auth.userId, conn);
    addTo(this.bySession, auth.sessionId, conn);
    try {
      await this.services.presence.connected(auth.userId, conn.id);
    } catch (err) {
      this.ctx.log.warn({ err, userId: auth.userId }, 'presence connect failed');
    }

    let replayed = 0;
    for (;;) {
      // Read per page: the session may get its device while the replay runs.
      const page = await this.ctx.events.readForUser(auth.userId, conn.auth.deviceId, conn.cursor, REPLAY_PAGE);
      if (conn.closing) return;
      for (const e of page) {
        const data = eventFrame(e);
        if (this.backlog(conn) > this.ctx.config.ws.maxBufferedBytes / 2) {
          // A replay may hold far more than the slow-consumer limit: wait until the client has taken what is queued.
          const taken = await new Promise<boolean>((resolve) => {
            if (!this.write(conn, data, (err) => resolve(!err))) resolve(false);
          });
          if (!taken || conn.closing) return;
        } else if (!this.write(conn, data)) return;
        conn.cursor = e.id;
        replayed++;
      }
      if (page.length === REPLAY_PAGE) continue;
      if (!conn.overflowed) break;
      conn.overflowed = false;
    }

    this.write(conn, JSON.stringify({ type: 'ready', userId: auth.userId, sessionId: auth.sessionId, deviceId: conn.auth.deviceId, cursor: String(conn.cursor), protocolVersion: PROTOCOL_VERSION, replayed }));
    const held = conn.pending;
    conn.pending = [];
    conn.state = 'live';
    for (const p of held) {
      if (p.id === null) this.write(conn, ephemeralFrame(conn.cursor, JSON.stringify(p.data)));
      else if (p.id > conn.cursor) {
        if (!this.write(conn, p.data as Frame)) return;
        conn.cursor = p.id;
      }
    }
    for (const f of conn.early.splice(0)) this.handle(conn, f);
  }

  /**
   * A socket speaks for the device its session is bound to, from the binding
   * on: device-addressed events committed after it reach the socket live.
   * Earlier ones are in the log for a resume from the device's own cursor.
   */
  private bindSession(sessionId: string, deviceId: string): void {
    for (const c of this.bySession.get(sessionId) ?? []) if (c.auth) c.auth = { ...c.auth, deviceId };
  }

  private revokeSession(sessionId: string): void {
    const now = Date.now();
    this.revokedAt.set(sessionId, now);
    for (const c of this.bySession.get(sessionId) ?? []) {
      this.counters.revoked++;
      this.close(c, CLOSE_CODES.sessionRevoked, 'session revoked');
    }
  }

  // ---- writing ----

  /** Bytes this socket has not yet handed to the kernel: ws's and the socket's buffers plus this tick's queue. */
  private backlog(conn: Conn): number {
    return conn.ws.bufferedAmount + conn.outBytes;
  }

  /**
   * Queues a frame unless the socket is behind by more than the limit, in
   * which case it is cut off ([G3]). Frames are built once per event and the
   * same bytes go to every recipient; a socket's frames of one tick leave in
   * one write ([G7]).
   */
  private write(conn: Conn, data: string | Frame, cb?: (err?: Error | null) => void): boolean {
    if (conn.ws.readyState !== WebSocket.OPEN || !conn.socket.writable) return false;
    // What the kernel has not taken yet; this tick's queue is bounded by flushing early (FLUSH_AT_BYTES).
    if (conn.ws.bufferedAmount > this.ctx.config.ws.maxBufferedBytes) {
      this.counters.slowConsumers++;
      this.close(conn, CLOSE_CODES.slowConsumer, 'slow consumer');
      // The close frame queues behind the backlog; a client that never reads loses the socket anyway.
      setTimeout(() => conn.ws.terminate(), SLOW_CONSUMER_GRACE_MS).unref();
      return false;
    }
    const frame = typeof data === 'string' ? textFrame(data) : data;
    conn.out.push(frame);
    conn.outBytes += frame.length;
    if (cb) (conn.outCbs ??= [])[conn.out.length - 1] = cb;
    if (conn.outBytes >= FLUSH_AT_BYTES) {
      this.flushConn(conn);
      return true;
    }
    if (conn.out.length === 1) this.dirty.push(conn);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushAll);
    }
    return true;
  }

  private readonly flushAll = (): void => {
    this.flushScheduled = false;
    const dirty = this.dirty;
    this.dirty = [];
    for (const c of dirty) this.flushConn(c);
  };

  private flushConn(conn: Conn): void {
    const { out, outCbs } = conn;
    if (out.length === 0) return;
    conn.out = [];
    conn.outCbs = null;
    conn.outBytes = 0;
    const { socket } = conn;
    if (!socket.writable) return failCallbacks(outCbs);
    this.counters.socketWrites++;
    this.counters.framesWritten += out.length;
    if (out.length === 1) {
      socket.write(out[0]!, outCbs?.[0]);
      return;
    }
    // Corked writes leave as one writev: one syscall per socket per tick, not per frame.
    socket.cork();
    for (let i = 0; i < out.length; i++) socket.write(out[i]!, outCbs?.[i]);
    socket.uncork();
  }

  private dropQueued(conn: Conn): void {
    const cbs = conn.outCbs;
    conn.out = [];
    conn.outCbs = null;
    conn.outBytes = 0;
    failCallbacks(cbs);
  }

  // ---- fan-out ([G5]) ----

  private enqueue(events: StoredEvent[]): void {
    // Strictly sequential: a membership lookup for one event must not let a later event overtake it.
    this.chain = this.chain.then(() => this.dispatch(events)).catch((err: unknown) => this.fanoutFailed(err));
  }

  private async dispatch(events: StoredEvent[]): Promise<void> {
    for (const e of events) {
      if (this.byUser.size === 0) {
        // Nobody to deliver to: the member cache cannot follow changes we skip, so start over later.
        this.members.clear();
        continue;
      }
      const recipients = await this.recipientsOf(e);
      const data = eventFrame(e);
      for (const userId of recipients) {
        const conns = this.byUser.get(userId);
        if (conns) for (const c of conns) this.deliver(c, e.id, e.deviceId, data);
      }
    }
  }

  private async recipientsOf(e: StoredEvent): Promise<Iterable<string>> {
    const out = new Set<string>();
    if (e.conversationId) {
      const members = await this.membersOf(e.conversationId);
      const ev = e.event;
      if (ev.type === 'member.added' || ev.type === 'member.updated') members.add(ev.member.userId);
      // Only local users matter: iterate whichever side is smaller.
      if (members.size <= this.byUser.size) for (const m of members) out.add(m);
      else for (const u of this.byUser.keys()) if (members.has(u)) out.add(u);
      if (ev.type === 'member.removed') {
        // The removed user still gets this event, and nothing after it.
        out.add(ev.userId);
        members.delete(ev.userId);
      }
    }
    if (e.userId) out.add(e.userId);
    return out;
  }

  private async membersOf(conversationId: string): Promise<Set<string>> {
    const hit = this.members.get(conversationId);
    if (hit) {
      this.members.delete(conversationId);
      this.members.set(conversationId, hit);
      return hit;
    }
    let ids: string[] | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        ids = await this.services.conversations.memberIds(conversationId);
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
        await sleep(100 * 4 ** attempt);
      }
    }
    const set = new Set(ids);
    this.members.set(conversationId, set);
    if (this.members.size > MEMBER_CACHE_MAX) {
      const oldest = this.members.keys().next();
      if (!oldest.done) this.members.delete(oldest.value);
    }
    return set;
  }

  private deliver(conn: Conn, id: number, deviceId: string | null, data: Frame): void {
    if (conn.closing) return;
    // Addressed to one device: other sockets of the user skip it, and their cursor passes over it on the next event.
    if (deviceId !== null && conn.auth?.deviceId !== deviceId) return;
    if (conn.state === 'buffering') {
      if (conn.overflowed) return;
      if (conn.pending.length >= MAX_PENDING_LIVE) {
        conn.pending = conn.pending.filter((p) => p.id === null);
        conn.overflowed = true;
        return;
      }
      conn.pending.push({ id, data });
      return;
    }
    if (conn.state !== 'live' || id <= conn.cursor) return;
    if (this.write(conn, data)) conn.cursor = id;
  }

  /**
   * If recipients cannot be determined, live sockets may have missed events.
   * Closing them makes every client resume from its cursor, which replays
   * from the log: slower, never lossy.
   */
  private fanoutFailed(err: unknown): void {
    this.counters.fanoutErrors++;
    this.ctx.log.error({ err }, 'fan-out failed; asking clients to resume');
    this.members.clear();
    for (const c of this.conns) {
      if (c.state !== 'live' && c.state !== 'buffering') continue;
      this.write(c, JSON.stringify({ type: 'reconnect', afterMs: randomInt(0, 1_000) }));
      this.close(c, CLOSE_CODES.serviceRestart, 'resume required');
    }
  }

  // ---- ephemeral events and heartbeat ----

  private onEphemeral(m: unknown): void {
    if (!isObject(m) || !Array.isArray(m.userIds) || !isObject(m.event)) return;
    const msg = m as unknown as EphemeralMessage;
    // The frame carries each socket's cursor, but live sockets mostly share the latest one: build each variant once.
    const json = JSON.stringify(msg.event);
    const frames = new Map<number, Frame>();
    for (const userId of msg.userIds) {
      for (const c of this.byUser.get(userId) ?? []) {
        if (c.closing) continue;
        if (c.state === 'live') {
          let frame = frames.get(c.cursor);
          if (!frame) frames.set(c.cursor, (frame = ephemeralFrame(c.cursor, json)));
          this.write(c, frame);
        }
        else if (c.state === 'buffering' && c.pending.length < MAX_PENDING_LIVE) c.pending.push({ id: null, data: msg.event });
      }
    }
  }

  /** [G4]: a socket that answered nothing (pong or frame) since the last ping is gone. */
  private beat(): void {
    for (const c of this.conns) {
      if (!c.alive) {
        this.counters.heartbeatTimeouts++;
        c.ws.terminate();
        continue;
      }
      c.alive = false;
      if (c.ws.readyState === WebSocket.OPEN) c.ws.ping();
    }
    const cutoff = Date.now() - REVOKED_MEMORY_MS;
    for (const [id, at] of this.revokedAt) if (at < cutoff) this.revokedAt.delete(id);
  }
}


/** A complete, unmasked WebSocket text frame (header + UTF-8 payload), shared by every socket it goes to and never mutated. */
type Frame = Buffer & { readonly __frame: true };

/**
 * Frames `text` as one final, unmasked text frame (RFC 6455 §5.2; servers
 * never mask). ws would frame it again for every socket; built here once, the
 * same bytes go to all recipients. Only valid while permessage-deflate is off
 * (the constructor's WebSocketServer options) since nothing is compressed.
 */
function textFrame(text: string): Frame {
  const length = Buffer.byteLength(text);
  const header = length < 126 ? 2 : length < 65_536 ? 4 : 10;
  const buf = Buffer.allocUnsafe(header + length);
  buf[0] = 0x81;
  if (header === 2) buf[1] = length;
  else if (header === 4) {
    buf[1] = 126;
    buf.writeUInt16BE(length, 2);
  } else {
    buf[1] = 127;
    buf.writeUInt32BE(0, 2);
    buf.writeUInt32BE(length, 6);
  }
  buf.write(text, header, 'utf8');
  return buf as Frame;
}

/** Serialised and framed once per event, whatever the number of recipients. */
function eventFrame(e: StoredEvent): Frame {
  return textFrame(JSON.stringify({ type: 'event', cursor: String(e.id), event: e.event }));
}

/** `eventJson` is the event serialised once; only the cursor differs between sockets. */
function ephemeralFrame(cursor: number, eventJson: string): Frame {
  return textFrame(`{"type":"event","cursor":"${cursor}","event":${eventJson}}`);
}

function failCallbacks(cbs: (((err?: Error | null) => void) | undefined)[] | null): void {
  if (!cbs) return;
  const err = new Error('socket closed');
  for (const cb of cbs) cb?.(err);
}

function rawToString(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function addTo<K, V>(map: Map<K, Set<V>>, key: K, v: V): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(v);
}

function removeFrom<K, V>(map: Map<K, Set<V>>, key: K, v: V): void {
  const set = map.get(key);
  if (!set) return;
  set.delete(v);
  if (set.size === 0) map.delete(key);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
