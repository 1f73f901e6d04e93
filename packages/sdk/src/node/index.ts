/**
 * Node entry of the SDK (`@secureconnect/sdk/node`): everything the core
 * exports, plus what needs Node: the file-backed key store and a session
 * wired to the `ws` WebSocket client (Node 20 has no global WebSocket).
 */
import WebSocket from 'ws';
import { Session, type SessionOptions, type WebSocketConstructor } from '../session.js';

export * from '../index.js';
export { FileKeyStore } from './file-keystore.js';

/** Options of {@link createNodeSession}: those of Session, with the WebSocket implementation defaulting to `ws`. */
export type NodeSessionOptions = SessionOptions;

/** A {@link Session} that connects with the `ws` package unless `options.WebSocket` says otherwise. */
export function createNodeSession(options: NodeSessionOptions): Session {
  const WS: WebSocketConstructor = WebSocket;
  return new Session({ WebSocket: WS, ...options });
}
