/**
 * The realtime session: one WebSocket to `/v1/ws` kept alive across network
 * failures, server restarts and token expiry (docs/SPEC.md [CS1]–[CS7]).
 * Browser-safe: no Node imports; the WebSocket implementation is injected
 * (the browser's by default, `ws` through `createNodeSession` in Node).
 */
import {
  CLOSE_CODES, ClientFrameValidator, DURABLE_EVENT_TYPES, ERRORS, PROTOCOL_VERSION, ServerFrameValidator, WS_LIMITS,
  isErrorCode, type ClientFrame, type Content, type Message, type ServerEvent, type ServerEventType, type ServerFrame,
} from '@secureconnect/protocol';
import { newClientMsgId, type SecureConnectClient } from './client.js';
import { AuthenticationError, ValidationError, errorFromResponse, type SecureConnectError } from './errors.js';

type Listener<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/**
 * The part of the WebSocket API the session uses. The browser's `WebSocket`
 * and the `ws` package's both fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Listener<unknown> | null;
  onmessage: Listener<{ data: unknown }> | null;
  onclose: Listener<{ code: number; reason: string }> | null;
  onerror: Listener<unknown> | null;
}

/** A WebSocket class, e.g. `globalThis.WebSocket` or the default export of `ws`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/**
 * Where the session keeps its resume cursor between runs. `save(null)`
 * forgets it (after the server declared it expired). Either method may be
 * synchronous or return a promise.
 */
export interface CursorStore {
  load(): Promise<string | null> | string | null;
  save(cursor: string | null): Promise<void> | void;
}

/** Options of {@link Session}. */
export interface SessionOptions {
  /** The REST client: supplies the server address and (refreshed) access tokens. */
  client: SecureConnectClient;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Overrides the socket URL (default: the client's baseUrl with ws(s):// and `/v1/ws`). */
  url?: string;
  /** Persists the resume cursor; without one a new Session starts from the server's current position. */
  cursorStore?: CursorStore;
  /** Reconnect backoff: delay = random(0, min(maxMs, initialMs·2^attempt)) ("full jitter"). Defaults 500 ms and 30 s. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Sends `ping` after this much silence and gives the socket up after twice as much. Default WS_LIMITS.heartbeatIntervalMs. */
  heartbeatMs?: number;
  /** Most sends waiting for their ack at once (queued + in flight); beyond it send() rejects. Default 1000. */
  maxQueue?: number;
  /** Most sends written to the socket but not yet acknowledged. Default 32. */
  maxInFlight?: number;
  /**
   * Keep each conversation's messages in the order send() was called (default
   * true): one unacknowledged send per conversation at a time. The server
   * sequences concurrent sends in any order, so `false` pipelines more but
   * may store a conversation's messages out of order.
   */
  ordered?: boolean;
  /** Client-side frame rate, kept under the server's default limit (50/s) so the session never gets itself cut off. Default 40. */
  framesPerSecond?: number;
  /** Client-side frame burst, under the server's default (100). Default 80. */
  frameBurst?: number;
  /** Deliveries of one durable event whose handler keeps failing before it is skipped (reported each time). Default 5. */
  maxHandlerAttempts?: number;
  /** Source of randomness for the jitter, in [0, 1). For tests. */
  random?: () => number;
}

/** A server event of one type, e.g. `ServerEventOf<'message.created'>`. */
export type ServerEventOf<T extends ServerEventType> = Extract<ServerEvent, { type: T }>;

/** Argument of the `ready` event: the server accepted the session and finished replaying. */
export interface SessionReady {
  userId: string;
  sessionId: string;
  deviceId: string | null;
  cursor: string;
  /** Events replayed from the log before this `ready` (0 on a fresh start). */
  replayed: number;
}

/** Argument of the `state` event. */
export type SessionStateChange =
  | { state: 'connecting'; attempt: number }
  | { state: 'open' }
  | { state: 'closed'; willReconnect: boolean; code?: number; reason: string; retryInMs?: number };

/** Why a session ended for good. */
export type TerminalReason =
  /** The app called close(). */
  | 'closed'
  /** The server revoked the session (logout, revocation, device revoked). */
  | 'revoked'
  /** No valid token: refresh failed or the account signed out. */
  | 'unauthenticated'
  /** The server refused the protocol (version or frame); reconnecting would not help. */
  | 'protocol';

/** Argument of the `closed` event, emitted once when the session ends and will not reconnect. */
export interface SessionClosed {
  reason: TerminalReason;
  code?: number;
  message: string;
}

/** Argument of the `error` event. None of these end the session by themselves. */
export interface SessionErrorEvent {
  /**
   * `protocol`: the server sent a frame that is not JSON or not in the protocol (the socket is replaced);
   * `server`: an error frame not tied to a send (e.g. a refused `read`);
   * `handler`: an event handler threw (durable events are redelivered, see [CS3]);
   * `connection`: the socket failed or went silent; `cursor_store`: the cursor could not be saved or loaded.
   */
  kind: 'protocol' | 'server' | 'handler' | 'connection' | 'cursor_store';
  error: Error;
  /** The event whose handler failed (kind `handler`). */
  event?: ServerEvent;
  /** For `handler`: whether the event will be delivered again. */
  willRetry?: boolean;
}

/** Argument of the `resync` event: the server no longer has the events after the stored cursor. */
export interface SessionResync {
  /** Position the session continues from. Reload state over REST: events before it will not be delivered. */
  cursor: string;
}

/** Every event the session emits, by name, with its handler's argument. */
export type SessionEvents = { [K in ServerEventType]: ServerEventOf<K> } & {
  /** Every server event, after its type's handlers. */
  event: ServerEvent;
  ready: SessionReady;
  state: SessionStateChange;
  error: SessionErrorEvent;
  resync: SessionResync;
  closed: SessionClosed;
};
export type SessionEventName = keyof SessionEvents;
/** A handler; a returned promise is awaited before the next event is handled. */
export type SessionHandler<K extends SessionEventName> = (arg: SessionEvents[K]) => void | Promise<void>;

/** Lifecycle of a {@link Session}. */
export type SessionState = 'idle' | 'connecting' | 'open' | 'closed';

/** A session-level failure that is not a server answer: a full queue or a closed session. */
export class SessionError extends Error {
  constructor(
    /** `queue_full`: too many unacknowledged sends; `closed`: the session ended; `protocol`: the server broke the protocol. */
    readonly code: 'queue_full' | 'closed' | 'protocol',
    message: string,
    /** For `closed`: why the session ended. */
    readonly reason?: TerminalReason,
  ) {
    super(message);
    this.name = 'SessionError';
  }
}

interface Conn {
  readonly id: number;
  readonly ws: WebSocketLike;
  /** The access token this socket authenticated with. */
  readonly token: string;
  ready: boolean;
  lastFrameAt: number;
  lastPingAt: number;
}

interface SendEntry {
  readonly reqId: string;
  readonly conversationId: string;
  readonly frame: ClientFrame;
  /** Id of the connection the frame was last written to (its ack can only come there). */
  sentOn: number | null;
  resolve(message: Message): void;
  reject(err: Error): void;
}

type AnyHandler = (arg: unknown) => void | Promise<void>;

const DURABLE = new Set<string>(DURABLE_EVENT_TYPES);
const CURSOR_RE = /^[0-9]{1,32}$/;
/** Close code the session uses when it drops a socket itself (any 4000–4999 code is the application's). */
const CLIENT_RESET = 4000;

/**
 * A realtime session over `/v1/ws`.
 *
 * - [CS1] Authenticates with the first frame (the token never goes in the
 *   URL) and validates every server frame against the protocol schemas.
 * - [CS2] Reconnects with exponential backoff and full jitter, at once after
 *   a server `reconnect` frame's delay; never after revocation or a refused
 *   token refresh (a terminal `closed` event says why).
 * - [CS3] Resumes from the cursor of the last durable event the app's
 *   handlers finished, so nothing is skipped or delivered twice.
 * - [CS4] {@link send} queues messages and resends them with the same
 *   `clientMsgId` after a reconnect (the server deduplicates).
 * - [CS5] Typed events; handlers run one at a time in server order.
 * - [CS6] Heartbeat: `ping` when idle, a silent socket is replaced.
 * - [CS7] Refreshes the access token when the server refuses it.
 *
 * @example
 * const session = new Session({ client, WebSocket });
 * session.on('message.created', async ({ message }) => render(message));
 * await session.start();
 * await session.send(conversationId, { type: 'text', text: 'hi' });
 */
export class Session {
  private readonly client: SecureConnectClient;
  private readonly WS: WebSocketConstructor;
  private readonly url: string;
  private readonly cursorStore: CursorStore | undefined;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly heartbeatMs: number;
  private readonly maxQueue: number;
  private readonly maxInFlight: number;
  private readonly ordered: boolean;
  private readonly framesPerSecond: number;
  private readonly frameBurst: number;
  private readonly maxHandlerAttempts: number;
  private readonly random: () => number;

  private readonly handlers = new Map<SessionEventName, AnyHandler[]>();
  private stateValue: SessionState = 'idle';
  private cursorValue: string | null = null;
  private lastReady: SessionReady | null = null;
  private conn: Conn | null = null;
  private connSeq = 0;
  private reqSeq = 0;
  /** Consecutive connection attempts that did not reach `ready`. */
  private attempt = 0;
  private refreshedSinceReady = false;
  private resyncPending = false;
  /** Bumped to discard queued events of a stream that is being replayed. */
  private handlerGen = 0;
  private failure: { cursor: string; count: number } | null = null;
  private chain: Promise<void> = Promise.resolve();
  private readonly outbox: SendEntry[] = [];
  private readonly byReq = new Map<string, SendEntry>();
  private readonly pendingReads = new Map<string, number>();
  private tokens = 0;
  private refilledAt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private pumpTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private startWaiters: { resolve(r: SessionReady): void; reject(e: Error): void }[] = [];

  constructor(options: SessionOptions) {
    this.client = options.client;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError('No WebSocket implementation: pass options.WebSocket (in Node, use createNodeSession from @secureconnect/sdk/node).');
    this.WS = WS;
    this.url = options.url ?? `${options.client.baseUrl.replace(/^http/, 'ws')}/v1/ws`;
    this.cursorStore = options.cursorStore;
    this.initialDelayMs = options.backoff?.initialMs ?? 500;
    this.maxDelayMs = options.backoff?.maxMs ?? 30_000;
    this.heartbeatMs = options.heartbeatMs ?? WS_LIMITS.heartbeatIntervalMs;
    this.maxQueue = options.maxQueue ?? 1_000;
    this.maxInFlight = options.maxInFlight ?? 32;
    this.ordered = options.ordered ?? true;
    this.framesPerSecond = options.framesPerSecond ?? 40;
    this.frameBurst = options.frameBurst ?? 80;
    this.maxHandlerAttempts = options.maxHandlerAttempts ?? 5;
    this.random = options.random ?? Math.random;
  }

  /** Where the session is in its lifecycle. */
  get state(): SessionState {
    return this.stateValue;
  }

  /** Cursor of the last durable event the handlers finished (null before the first `ready`). */
  get cursor(): string | null {
    return this.cursorValue;
  }

  /** Sends waiting for their ack. */
  get queued(): number {
    return this.outbox.length;
  }

  /**
   * Registers a handler; returns a function that removes it. Handlers of
   * all events run one at a time, in the order the server sent the events,
   * each awaited before the next.
   */
  on<K extends SessionEventName>(type: K, handler: SessionHandler<K>): () => void {
    const list = this.handlers.get(type) ?? [];
    const h = handler as unknown as AnyHandler;
    list.push(h);
    this.handlers.set(type, list);
    return () => {
      const current = this.handlers.get(type);
      const i = current?.indexOf(h) ?? -1;
      if (current && i >= 0) current.splice(i, 1);
    };
  }

  /**
   * Connects (loading the cursor from the cursor store first). Resolves at
   * the first `ready`, however many attempts it takes; rejects if the session
   * ends first. Calling it again while connected resolves at once.
   */
  async start(): Promise<SessionReady> {
    if (this.stateValue === 'closed') throw new SessionError('closed', 'The session is closed.', 'closed');
    if (this.stateValue === 'open' && this.lastReady) return this.lastReady;
    const ready = new Promise<SessionReady>((resolve, reject) => this.startWaiters.push({ resolve, reject }));
    if (this.stateValue === 'idle') {
      this.stateValue = 'connecting';
      try {
        const stored = this.cursorStore ? await this.cursorStore.load() : null;
        if (stored !== null && !CURSOR_RE.test(stored)) {
          // Starting over without it would silently skip events: the app must reload.
          this.resyncPending = true;
          this.report({ kind: 'cursor_store', error: new Error('The stored cursor is malformed; resynchronising.') });
        } else this.cursorValue = stored;
      } catch (err) {
        // Nothing started: the app may call start() again.
        this.stateValue = 'idle';
        for (const w of this.startWaiters.splice(0)) w.reject(toError(err));
        return ready;
      }
      this.connect();
    }
    return ready;
  }

  /**
   * Ends the session: closes the socket, rejects unacknowledged sends with
   * SessionError `closed` (their messages may still have been stored: retry
   * with the same clientMsgId to find out), and resolves once every event
   * handler has finished.
   */
  async close(): Promise<void> {
    this.terminate('closed', 1000, 'closed by the app');
    await this.chain;
  }

  /**
   * Sends a message. Resolves with the stored message when the server acks
   * it; while disconnected the send waits in the queue and goes out after
   * the next `ready`, with the same `clientMsgId`, so a send interrupted by
   * a disconnect is neither lost nor doubled. Rejects with the typed error
   * of the server's answer (e.g. NotFoundError), ValidationError before
   * sending an invalid or oversized frame, or SessionError (`queue_full`,
   * `closed`).
   */
  send(conversationId: string, content: Content, clientMsgId: string = newClientMsgId()): Promise<Message> {
    if (this.stateValue === 'closed') return Promise.reject(new SessionError('closed', 'The session is closed.', 'closed'));
    if (this.outbox.length >= this.maxQueue) {
      return Promise.reject(new SessionError('queue_full', `${this.outbox.length} sends are waiting for their ack; wait for some before sending more.`));
    }
    const reqId = `s${++this.reqSeq}`;
    const frame = { type: 'send' as const, reqId, conversationId, clientMsgId, content };
    if (!ClientFrameValidator.Check(frame)) {
      const first = [...ClientFrameValidator.Errors(frame)][0];
      const where = first ? ` at ${first.instancePath || '/'}: ${first.message}` : '';
      return Promise.reject(new ValidationError('validation_failed', `Invalid message${where}.`, ERRORS.validation_failed.status));
    }
    if (new TextEncoder().encode(JSON.stringify(frame)).length > WS_LIMITS.maxFrameBytes) {
      return Promise.reject(new ValidationError('payload_too_large', `The message is larger than ${WS_LIMITS.maxFrameBytes} bytes.`, ERRORS.payload_too_large.status));
    }
    return new Promise<Message>((resolve, reject) => {
      const entry: SendEntry = { reqId, conversationId, frame, sentOn: null, resolve, reject };
      this.outbox.push(entry);
      this.byReq.set(reqId, entry);
      this.pump();
    });
  }

  /** Tells the conversation you are typing. Ephemeral: dropped (returns false) when not connected. */
  typing(conversationId: string): boolean {
    const conn = this.conn;
    if (!conn?.ready || !this.takeToken()) return false;
    this.write(conn, { type: 'typing', conversationId });
    return true;
  }

  /** Moves your read position to `seq`; sent when connected (only the highest pending seq per conversation). */
  markRead(conversationId: string, seq: number): void {
    this.pendingReads.set(conversationId, Math.max(seq, this.pendingReads.get(conversationId) ?? 0));
    this.pump();
  }

  // ---- connection lifecycle ----

  private connect(): void {
    if (this.stateValue === 'closed') return;
    this.stateValue = 'connecting';
    this.emitInfo('state', { state: 'connecting', attempt: this.attempt });
    this.client.validAccessToken().then(
      (token) => this.open(token),
      (err: unknown) => {
        if (err instanceof AuthenticationError) this.terminate('unauthenticated', undefined, `No valid access token: ${err.message}`);
        else this.retry(undefined, `token refresh failed: ${errorMessage(err)}`, this.backoffDelay());
      },
    );
  }

  private open(token: string): void {
    if (this.stateValue === 'closed') return;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url);
    } catch (err) {
      this.report({ kind: 'connection', error: toError(err) });
      return this.retry(undefined, 'socket could not be created', this.backoffDelay());
    }
    const now = Date.now();
    const conn: Conn = { id: ++this.connSeq, ws, token, ready: false, lastFrameAt: now, lastPingAt: now };
    this.conn = conn;
    ws.onopen = () => {
      if (this.conn !== conn) return;
      conn.lastFrameAt = Date.now();
      this.tokens = this.frameBurst;
      this.refilledAt = Date.now();
      this.takeToken();
      const cursor = this.cursorValue;
      this.write(conn, { type: 'auth', token, protocolVersion: PROTOCOL_VERSION, ...(cursor !== null ? { cursor } : {}) });
    };
    ws.onmessage = (ev) => this.onFrame(conn, ev.data);
    ws.onclose = (ev) => this.onSocketClose(conn, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event always follows; its code says what happened.
    };
    this.heartbeatTimer ??= setInterval(() => this.beat(), Math.max(10, Math.floor(this.heartbeatMs / 4)));
  }

  private onSocketClose(conn: Conn, code: number, reason: string): void {
    if (this.conn !== conn) return;
    this.conn = null;
    const why = reason || `close code ${code}`;
    switch (code) {
      case CLOSE_CODES.sessionRevoked:
        return this.terminate('revoked', code, `The session was revoked (${why}).`);
      case CLOSE_CODES.badFrame:
        return this.terminate('protocol', code, `The server refused the protocol (${why}).`);
      case CLOSE_CODES.unauthenticated:
        return this.reauthenticate(conn, code, why);
      case CLOSE_CODES.cursorExpired:
        // The app reloads over REST after the next `ready`; until then, no cursor.
        this.cursorValue = null;
        this.resyncPending = true;
        this.enqueue(() => this.persistCursor());
        return this.retry(code, why, 0);
      default:
        return this.retry(code, why, this.backoffDelay());
    }
  }

  /** [CS7]: one refresh per run of failed attempts; a refused refresh is final. */
  private reauthenticate(conn: Conn, code: number, why: string): void {
    if (this.client.accessToken !== null && this.client.accessToken !== conn.token) return this.retry(code, why, 0);
    if (this.refreshedSinceReady) return this.terminate('unauthenticated', code, `The server refused a freshly refreshed token (${why}).`);
    this.refreshedSinceReady = true;
    this.client.refresh().then(
      () => this.retry(code, why, 0),
      (err: unknown) => {
        if (err instanceof AuthenticationError) this.terminate('unauthenticated', code, `Token refresh refused: ${err.message}`);
        else this.retry(code, `${why}; token refresh failed: ${errorMessage(err)}`, this.backoffDelay());
      },
    );
  }

  /** Drops the current socket on our side and reconnects. */
  private drop(conn: Conn, reason: string, delayMs: number = this.backoffDelay()): void {
    if (this.conn !== conn) return;
    this.conn = null;
    this.closeSocket(conn, CLIENT_RESET, reason);
    this.retry(undefined, reason, delayMs);
  }

  private retry(code: number | undefined, reason: string, delayMs: number): void {
    if (this.stateValue === 'closed') return;
    this.stateValue = 'connecting';
    this.emitInfo('state', { state: 'closed', willReconnect: true, ...(code !== undefined ? { code } : {}), reason, retryInMs: delayMs });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delayMs);
  }

  private backoffDelay(): number {
    const ceiling = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** this.attempt);
    this.attempt++;
    return Math.floor(this.random() * ceiling);
  }

  private terminate(reason: TerminalReason, code: number | undefined, message: string): void {
    if (this.stateValue === 'closed') return;
    this.stateValue = 'closed';
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.pumpTimer);
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    const conn = this.conn;
    this.conn = null;
    if (conn) this.closeSocket(conn, 1000, reason);
    const err = new SessionError('closed', `The session ended: ${message}`, reason);
    for (const e of this.outbox.splice(0)) e.reject(err);
    this.byReq.clear();
    for (const w of this.startWaiters.splice(0)) w.reject(err);
    const info: SessionClosed = { reason, message, ...(code !== undefined ? { code } : {}) };
    this.emitInfo('state', { state: 'closed', willReconnect: false, ...(code !== undefined ? { code } : {}), reason: message });
    this.emitInfo('closed', info);
  }

  private closeSocket(conn: Conn, code: number, reason: string): void {
    const ws = conn.ws;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    try {
      // `ws` can cut a dead socket at once; a browser waits for the closing handshake in the background.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (typeof terminate === 'function' && code !== 1000) terminate.call(ws);
      else ws.close(code, reason.slice(0, 120));
    } catch (err) {
      // A socket that is still connecting cannot be closed in some implementations; it is abandoned either way.
      this.report({ kind: 'connection', error: toError(err) });
    }
  }

  // ---- frames ----

  private onFrame(conn: Conn, data: unknown): void {
    if (this.conn !== conn) return;
    conn.lastFrameAt = Date.now();
    let raw: unknown;
    try {
      raw = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data as ArrayBuffer | Uint8Array));
    } catch {
      return this.protocolError(conn, 'The server sent a frame that is not JSON.');
    }
    if (!ServerFrameValidator.Check(raw)) {
      const first = [...ServerFrameValidator.Errors(raw)][0];
      return this.protocolError(conn, `The server sent an invalid frame${first ? ` (${first.instancePath || '/'}: ${first.message})` : ''}.`);
    }
    const frame: ServerFrame = raw;
    switch (frame.type) {
      case 'event': {
        const gen = this.handlerGen;
        this.enqueue(() => this.deliver(gen, frame.cursor, frame.event));
        return;
      }
      case 'ready':
        return this.onReady(conn, frame);
      case 'ack': {
        const entry = this.settle(frame.reqId);
        entry?.resolve(frame.message);
        return;
      }
      case 'error': {
        const err = wireError(frame.error);
        const entry = frame.reqId === undefined ? undefined : this.settle(frame.reqId);
        if (entry) entry.reject(err);
        else this.report({ kind: 'server', error: err });
        return;
      }
      case 'reconnect':
        // The server is going away: leave now and come back (to any node) after its delay.
        return this.drop(conn, 'the server asked to reconnect', frame.afterMs);
      case 'pong':
        return;
    }
  }

  private onReady(conn: Conn, frame: Extract<ServerFrame, { type: 'ready' }>): void {
    conn.ready = true;
    this.stateValue = 'open';
    this.attempt = this.failure?.count ?? 0;
    this.refreshedSinceReady = false;
    // Every unacknowledged send goes out again on this socket, with its original clientMsgId.
    for (const e of this.outbox) e.sentOn = null;
    this.pump();
    const gen = this.handlerGen;
    const info: SessionReady = { userId: frame.userId, sessionId: frame.sessionId, deviceId: frame.deviceId, cursor: frame.cursor, replayed: frame.replayed };
    this.enqueue(async () => {
      if (gen !== this.handlerGen || this.stateValue === 'closed') return;
      // A resumed session already holds the last replayed event's cursor; only a fresh start takes the server's.
      if (this.cursorValue === null) {
        this.cursorValue = frame.cursor;
        await this.persistCursor();
      }
      this.lastReady = info;
      if (this.resyncPending) {
        this.resyncPending = false;
        await this.emitSafely('resync', { cursor: frame.cursor });
      }
      await this.emitSafely('state', { state: 'open' });
      await this.emitSafely('ready', info);
      for (const w of this.startWaiters.splice(0)) w.resolve(info);
    });
  }

  private protocolError(conn: Conn, message: string): void {
    this.report({ kind: 'protocol', error: new SessionError('protocol', message) });
    this.drop(conn, 'protocol violation by the server');
  }

  private settle(reqId: string): SendEntry | undefined {
    const entry = this.byReq.get(reqId);
    if (!entry) return undefined;
    this.byReq.delete(reqId);
    this.outbox.splice(this.outbox.indexOf(entry), 1);
    this.pump();
    return entry;
  }

  // ---- events ([CS3], [CS5]) ----

  private async deliver(gen: number, cursor: string, event: ServerEvent): Promise<void> {
    if (gen !== this.handlerGen || this.stateValue === 'closed') return;
    const durable = DURABLE.has(event.type);
    // A resumed stream may repeat what an earlier socket delivered while this one was connecting.
    if (durable && this.cursorValue !== null && BigInt(cursor) <= BigInt(this.cursorValue)) return;
    try {
      await this.emit(event.type, event);
      await this.emit('event', event);
    } catch (err) {
      const error = toError(err);
      if (!durable) return this.emitSafely('error', { kind: 'handler', error, event, willRetry: false });
      const count = (this.failure?.cursor === cursor ? this.failure.count : 0) + 1;
      this.failure = { cursor, count };
      if (count < this.maxHandlerAttempts) {
        // Redeliver from the log: later events wait, so handlers still see server order.
        this.handlerGen++;
        this.attempt = Math.max(this.attempt, count);
        if (this.conn) this.drop(this.conn, 'replaying an event whose handler failed');
        return this.emitSafely('error', { kind: 'handler', error, event, willRetry: true });
      }
      await this.emitSafely('error', { kind: 'handler', error, event, willRetry: false });
    }
    if (!durable) return;
    this.failure = null;
    this.cursorValue = cursor;
    await this.persistCursor();
  }

  private async persistCursor(): Promise<void> {
    if (!this.cursorStore) return;
    try {
      await this.cursorStore.save(this.cursorValue);
    } catch (err) {
      await this.emitSafely('error', { kind: 'cursor_store', error: toError(err) });
    }
  }

  /** Runs the handlers of `type` one after another; the first failure propagates. */
  private async emit(type: SessionEventName, arg: unknown): Promise<void> {
    const list = this.handlers.get(type);
    if (!list?.length) return;
    for (const h of [...list]) await h(arg);
  }

  /** For the session's own events: a failing handler is reported, not fatal. */
  private async emitSafely<K extends SessionEventName>(type: K, arg: SessionEvents[K]): Promise<void> {
    try {
      await this.emit(type, arg);
    } catch (err) {
      // A failing error handler has nowhere left to report to.
      if (type !== 'error') await this.emitSafely('error', { kind: 'handler', error: toError(err), willRetry: false });
    }
  }

  private emitInfo<K extends SessionEventName>(type: K, arg: SessionEvents[K]): void {
    this.enqueue(() => this.emitSafely(type, arg));
  }

  private report(e: SessionErrorEvent): void {
    this.emitInfo('error', e);
  }

  private enqueue(task: () => Promise<void>): void {
    // Tasks handle their own failures; this only keeps one bug from stopping every later event.
    this.chain = this.chain.then(task).catch((err: unknown) => this.emitSafely('error', { kind: 'handler', error: toError(err), willRetry: false }));
  }

  // ---- writing ([CS4], [CS6]) ----

  private pump(): void {
    const conn = this.conn;
    if (!conn?.ready) return;
    for (const [conversationId, seq] of this.pendingReads) {
      if (!this.takeToken()) return this.pumpLater();
      this.pendingReads.delete(conversationId);
      this.write(conn, { type: 'read', conversationId, seq });
    }
    let inFlight = 0;
    /** Conversations with a send in flight: in ordered mode their next send waits for its ack. */
    const busy = new Set<string>();
    for (const e of this.outbox) {
      if (e.sentOn !== conn.id) continue;
      inFlight++;
      busy.add(e.conversationId);
    }
    for (const e of this.outbox) {
      if (inFlight >= this.maxInFlight) return;
      if (e.sentOn === conn.id || (this.ordered && busy.has(e.conversationId))) continue;
      if (!this.takeToken()) return this.pumpLater();
      e.sentOn = conn.id;
      inFlight++;
      busy.add(e.conversationId);
      if (!this.write(conn, e.frame)) return;
    }
  }

  private pumpLater(): void {
    if (this.pumpTimer !== undefined) return;
    const waitMs = Math.ceil(((1 - this.tokens) * 1000) / this.framesPerSecond);
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = undefined;
      this.pump();
    }, Math.max(1, waitMs));
  }

  private takeToken(): boolean {
    const now = Date.now();
    this.tokens = Math.min(this.frameBurst, this.tokens + ((now - this.refilledAt) * this.framesPerSecond) / 1000);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private write(conn: Conn, frame: ClientFrame): boolean {
    try {
      conn.ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      this.report({ kind: 'connection', error: toError(err) });
      this.drop(conn, 'write failed');
      return false;
    }
  }

  private beat(): void {
    const conn = this.conn;
    if (!conn) return;
    const now = Date.now();
    if (now - conn.lastFrameAt >= 2 * this.heartbeatMs) {
      this.report({ kind: 'connection', error: new Error(`No frame from the server for ${now - conn.lastFrameAt} ms; reconnecting.`) });
      return this.drop(conn, 'heartbeat timeout');
    }
    if (conn.ready && now - conn.lastFrameAt >= this.heartbeatMs && now - conn.lastPingAt >= this.heartbeatMs && this.takeToken()) {
      conn.lastPingAt = now;
      this.write(conn, { type: 'ping' });
    }
  }
}

/** The typed error for an error frame, as errorFromResponse builds it for an HTTP answer. */
function wireError(error: { code: string; message: string; requestId?: string | undefined }): SecureConnectError {
  const status = isErrorCode(error.code) ? ERRORS[error.code].status : 400;
  return errorFromResponse(status, { error }, null);
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
