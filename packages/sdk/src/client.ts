import type {
  AuthResult, BindDeviceBody, ClaimKeyPackagesBody, ClaimKeyPackagesResult, Content, Conversation, ConversationPage,
  CreateConversationBody, Device, DeviceList, KeyPackageStatus, Me, Member, Message, MessagePage, MlsCommitBody,
  MlsGroupStatus, MlsInitBody, Presence, PublicUser, RegisterDeviceBody, Role, Session, TokenPair, UpdateMeBody,
  UploadKeyPackagesBody, UserSearchResult, LoginResult, MfaStatus, ReauthResult, RecoveryCodes, TotpEnrolment,
} from '@secureconnect/protocol';
import { ServerError, errorFromResponse } from './errors.js';

/**
 * Thrown by {@link SecureConnectClient.login} when the account has two-factor
 * authentication: no session exists yet. Finish with
 * {@link SecureConnectClient.loginMfa} and `mfaToken` within `expiresIn` seconds.
 */
export class MfaRequiredError extends Error {
  constructor(readonly mfaToken: string, readonly expiresIn: number) {
    super('Two-factor authentication required: call loginMfa() with a code.');
    this.name = 'MfaRequiredError';
  }
}

/** A current authenticator code, or one of the account's single-use recovery codes. */
export type SecondFactor = { code: string } | { recoveryCode: string };

/** Access and refresh token of a signed-in session. */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
}

/** Options of {@link SecureConnectClient}. */
export interface ClientOptions {
  /** Server origin, e.g. `https://chat.example.com` (no trailing `/v1`). */
  baseUrl: string;
  /** Tokens of an existing session, e.g. restored from storage. */
  tokens?: Tokens;
  /** Called whenever the tokens change (login, rotation, logout → null): persist them here. */
  onTokens?: (tokens: Tokens | null) => void;
  /** A `fetch` implementation; defaults to the global one (Node 20+, browsers). */
  fetch?: typeof fetch;
  /** Per-request timeout in milliseconds (default 15 000). */
  timeoutMs?: number;
}

/** Query of {@link SecureConnectClient.history}. */
export type HistoryOptions = {
  beforeSeq?: number;
  afterSeq?: number;
  limit?: number;
};

/** Options of a conversation being created. */
export interface CreateOptions {
  /** `mls` makes it end-to-end encrypted; the creator then initialises the MLS group ({@link SecureConnectClient.mlsInit}). */
  encryption?: 'none' | 'mls';
}

/** Answer of {@link SecureConnectClient.mlsCommit}: the commit as sequenced in the log, and the epoch it created. */
export interface MlsCommitResult {
  message: Message;
  epoch: number;
}

/** Random client message id for idempotent sends (retries reuse it). */
export function newClientMsgId(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * Typed client of the SecureConnect REST API. Works in Node 20+ and browsers
 * (only `fetch` and `crypto.randomUUID`). An expired access token is renewed
 * once with the refresh token, transparently; failures throw the typed errors
 * of `errors.ts`.
 */
export class SecureConnectClient {
  private tokens: Tokens | null;
  private refreshing: Promise<void> | null = null;
  private readonly fetchImpl: typeof fetch;
  /** Server origin without a trailing slash, as given in {@link ClientOptions.baseUrl}. */
  readonly baseUrl: string;
  private readonly timeoutMs: number;

  constructor(private readonly options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.tokens = options.tokens ?? null;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.timeoutMs = options.timeoutMs ?? 15_000;
  }

  /** The current access token (for the WebSocket `auth` frame), or null when signed out. */
  get accessToken(): string | null {
    return this.tokens?.accessToken ?? null;
  }

  /** Id of the signed-in session (the access token's `sid` claim), e.g. for `bindChallenge` of @secureconnect/protocol; null when signed out. */
  get sessionId(): string | null {
    const sid = this.tokens ? jwtClaims(this.tokens.accessToken)?.sid : undefined;
    return typeof sid === 'string' ? sid : null;
  }

  /**
   * An access token that stays valid for at least `minValiditySec` more
   * seconds by its `exp` claim, refreshing first when it would not (e.g. before
   * opening a WebSocket). A token whose expiry cannot be read is returned as
   * is: the server is the judge. Throws AuthenticationError when signed out or
   * when the refresh token is refused.
   */
  async validAccessToken(minValiditySec = 30): Promise<string> {
    const current = this.tokens;
    if (!current) throw errorFromResponse(401, { error: { code: 'unauthorized' } }, null);
    const exp = jwtClaims(current.accessToken)?.exp;
    if (typeof exp === 'number' && exp - Date.now() / 1000 < minValiditySec) await this.refresh();
    const token = this.tokens?.accessToken;
    if (!token) throw errorFromResponse(401, { error: { code: 'unauthorized' } }, null);
    return token;
  }

  // ---- auth ----

  /** Creates an account and signs in. */
  async register(body: { email: string; username: string; password: string; displayName?: string; device?: string }): Promise<AuthResult> {
    return this.adopt(await this.request<AuthResult>('POST', '/v1/auth/register', body, false));
  }

  /**
   * Signs in with email or username. Accounts with two-factor authentication
   * get {@link MfaRequiredError} (carrying the challenge) instead of a session.
   */
  async login(login: string, password: string, device?: string): Promise<AuthResult> {
    const result = await this.request<LoginResult>('POST', '/v1/auth/login', { login, password, ...(device ? { device } : {}) }, false);
    if ('mfaRequired' in result) throw new MfaRequiredError(result.mfaToken, result.expiresIn);
    return this.adopt(result);
  }

  /** Second sign-in step: the challenge from {@link MfaRequiredError} with a code or a recovery code. */
  async loginMfa(mfaToken: string, factor: SecondFactor): Promise<AuthResult> {
    return this.adopt(await this.request<AuthResult>('POST', '/v1/auth/login/mfa', { mfaToken, ...factor }, false));
  }

  /** Confirms the password (and a second factor when 2FA is on); 2FA settings may then be changed for a few minutes. */
  async reauth(password: string, factor?: SecondFactor): Promise<ReauthResult> {
    return this.request<ReauthResult>('POST', '/v1/auth/reauth', { password, ...factor });
  }

  /** Whether 2FA is on and how many recovery codes are left. */
  mfaStatus(): Promise<MfaStatus> {
    return this.request<MfaStatus>('GET', '/v1/account/mfa');
  }

  /** Starts TOTP enrolment (needs {@link reauth} first): show `otpauthUri` as a QR code. */
  enrolTotp(): Promise<TotpEnrolment> {
    return this.request<TotpEnrolment>('POST', '/v1/account/mfa/totp');
  }

  /** Activates TOTP with a first code; the recovery codes are returned this once. */
  confirmTotp(code: string): Promise<RecoveryCodes> {
    return this.request<RecoveryCodes>('POST', '/v1/account/mfa/totp/confirm', { code });
  }

  /** Turns 2FA off (needs {@link reauth} first); the account's other sessions end. */
  async disableTotp(factor: SecondFactor): Promise<void> {
    await this.request<void>('DELETE', '/v1/account/mfa/totp', factor);
  }

  /** Replaces the recovery codes (needs {@link reauth} first). */
  regenerateRecoveryCodes(): Promise<RecoveryCodes> {
    return this.request<RecoveryCodes>('POST', '/v1/account/mfa/recovery-codes');
  }

  /** Rotates the refresh token and renews the access token. */
  async refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      const current = this.tokens;
      if (!current) throw errorFromResponse(401, { error: { code: 'unauthorized' } }, null);
      try {
        const pair = await this.request<TokenPair>('POST', '/v1/auth/refresh', { refreshToken: current.refreshToken }, false);
        this.setTokens({ accessToken: pair.accessToken, refreshToken: pair.refreshToken });
      } catch (err) {
        // A refused refresh token is final (expired, revoked or reused): sign out locally.
        if ((err as { status?: number }).status === 401) this.setTokens(null);
        throw err;
      }
    })().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  /** Ends this session on the server and forgets the tokens. */
  async logout(): Promise<void> {
    try {
      await this.request<void>('POST', '/v1/auth/logout');
    } finally {
      this.setTokens(null);
    }
  }

  /** This account's live sessions (devices). */
  async sessions(): Promise<Session[]> {
    return (await this.request<{ items: Session[] }>('GET', '/v1/auth/sessions')).items;
  }

  /** Ends one of this account's sessions. */
  async revokeSession(sessionId: string): Promise<void> {
    await this.request<void>('DELETE', `/v1/auth/sessions/${enc(sessionId)}`);
  }

  /** Ends every session of this account except the current one. */
  async revokeOtherSessions(): Promise<void> {
    await this.request<void>('DELETE', '/v1/auth/sessions');
  }

  // ---- users ----

  /** The signed-in user's own profile (with email). */
  me(): Promise<Me> {
    return this.request<Me>('GET', '/v1/me');
  }

  /** Updates display name, avatar URL or status text. */
  updateMe(body: UpdateMeBody): Promise<Me> {
    return this.request<Me>('PATCH', '/v1/me', body);
  }

  /** Public profile of a user (never their email). */
  user(userId: string): Promise<PublicUser> {
    return this.request<PublicUser>('GET', `/v1/users/${enc(userId)}`);
  }

  /** Username prefix search, paginated with `nextCursor`. */
  searchUsers(query: string, opts: { limit?: number; cursor?: string } = {}): Promise<UserSearchResult> {
    return this.request<UserSearchResult>('GET', `/v1/users${qs({ query, ...opts })}`);
  }

  /** Online state and last seen of users who share a conversation with you. */
  async presence(userIds: string[]): Promise<Presence[]> {
    return (await this.request<{ items: Presence[] }>('GET', `/v1/presence${qs({ userIds: userIds.join(',') })}`)).items;
  }

  // ---- conversations ----

  /**
   * Opens (or returns the existing) direct conversation with a user. A pair
   * may have one plaintext and one encrypted (`{ encryption: 'mls' }`) direct
   * conversation.
   */
  direct(userId: string, opts: CreateOptions = {}): Promise<Conversation> {
    return this.createConversation({ type: 'direct', userId, ...encryption(opts) });
  }

  /** Creates a group; you are its owner. */
  createGroup(title: string, memberIds: string[], opts: CreateOptions = {}): Promise<Conversation> {
    return this.createConversation({ type: 'group', title, memberIds, ...encryption(opts) });
  }

  /** Creates a direct conversation or a group from a full request body. */
  createConversation(body: CreateConversationBody): Promise<Conversation> {
    return this.request<Conversation>('POST', '/v1/conversations', body);
  }

  /** Your conversations by last activity, with last message and unread count. */
  conversations(opts: { cursor?: string; limit?: number } = {}): Promise<ConversationPage> {
    return this.request<ConversationPage>('GET', `/v1/conversations${qs(opts)}`);
  }

  /** One conversation (NotFoundError unless you are a member). */
  conversation(id: string): Promise<Conversation> {
    return this.request<Conversation>('GET', `/v1/conversations/${enc(id)}`);
  }

  /** Renames a group (owners and admins). */
  renameGroup(id: string, title: string): Promise<Conversation> {
    return this.request<Conversation>('PATCH', `/v1/conversations/${enc(id)}`, { title });
  }

  /** Adds a member to a group (owners and admins). */
  addMember(id: string, userId: string, role?: Role): Promise<Member> {
    return this.request<Member>('POST', `/v1/conversations/${enc(id)}/members`, { userId, ...(role ? { role } : {}) });
  }

  /** Changes a member's role (owners). */
  setRole(id: string, userId: string, role: Role): Promise<Member> {
    return this.request<Member>('PATCH', `/v1/conversations/${enc(id)}/members/${enc(userId)}`, { role });
  }

  /** Removes a member; pass your own id to leave. */
  async removeMember(id: string, userId: string): Promise<void> {
    await this.request<void>('DELETE', `/v1/conversations/${enc(id)}/members/${enc(userId)}`);
  }

  // ---- messages ----

  /**
   * Sends a message. Retrying with the same `clientMsgId` returns the
   * original message instead of a duplicate, so a send whose answer was lost
   * can always be retried safely.
   */
  send(conversationId: string, content: Content, clientMsgId: string = newClientMsgId()): Promise<Message> {
    return this.request<Message>('POST', `/v1/conversations/${enc(conversationId)}/messages`, { clientMsgId, content });
  }

  /** A page of messages, ascending by seq: latest by default, `afterSeq` forward, `beforeSeq` back. */
  async history(conversationId: string, opts: HistoryOptions = {}): Promise<Message[]> {
    return (await this.request<MessagePage>('GET', `/v1/conversations/${enc(conversationId)}/messages${qs(opts)}`)).items;
  }

  /** Edits your own message (same content type). */
  edit(conversationId: string, messageId: string, content: Content): Promise<Message> {
    return this.request<Message>('PATCH', `/v1/conversations/${enc(conversationId)}/messages/${enc(messageId)}`, { content });
  }

  /** Deletes your own message; returns the tombstone. */
  deleteMessage(conversationId: string, messageId: string): Promise<Message> {
    return this.request<Message>('DELETE', `/v1/conversations/${enc(conversationId)}/messages/${enc(messageId)}`);
  }

  /** Moves your read position forward to `seq`. */
  async markRead(conversationId: string, seq: number): Promise<void> {
    await this.request<void>('POST', `/v1/conversations/${enc(conversationId)}/read`, { seq });
  }

  // ---- devices and key packages (E2EE key directory) ----

  /** Registers a device for this account and binds the current session to it. */
  registerDevice(body: RegisterDeviceBody): Promise<Device> {
    return this.request<Device>('POST', '/v1/devices', body);
  }

  /**
   * Binds the current session to an existing device of this account.
   * `signature` (base64) is the device key's signature over
   * `bindChallenge(sessionId)` ({@link sessionId}).
   */
  bindDevice(deviceId: string, signature: string): Promise<Device> {
    const body: BindDeviceBody = { signature };
    return this.request<Device>('POST', `/v1/devices/${enc(deviceId)}/bind`, body);
  }

  /** A user's active devices with their signature public keys. */
  async devices(userId: string): Promise<Device[]> {
    return (await this.request<DeviceList>('GET', `/v1/users/${enc(userId)}/devices`)).items;
  }

  /** Revokes one of your devices: its sessions end, its key packages are deleted, its groups are told. */
  async revokeDevice(deviceId: string): Promise<void> {
    await this.request<void>('DELETE', `/v1/devices/${enc(deviceId)}`);
  }

  /** Publishes key packages of the current session's device (verified by the server). */
  uploadKeyPackages(body: UploadKeyPackagesBody): Promise<KeyPackageStatus> {
    return this.request<KeyPackageStatus>('POST', '/v1/key-packages', body);
  }

  /** The current device's stock of unclaimed key packages per cipher suite. */
  keyPackageStatus(): Promise<KeyPackageStatus> {
    return this.request<KeyPackageStatus>('GET', '/v1/key-packages');
  }

  /** Claims one key package per active device of each user (each package is handed out once). */
  claimKeyPackages(body: ClaimKeyPackagesBody): Promise<ClaimKeyPackagesResult> {
    return this.request<ClaimKeyPackagesResult>('POST', '/v1/key-packages/claim', body);
  }

  // ---- MLS delivery service ----

  /** Records a new MLS group at epoch 0 for an encrypted conversation. */
  mlsInit(conversationId: string, body: MlsInitBody): Promise<MlsGroupStatus> {
    return this.request<MlsGroupStatus>('POST', `/v1/conversations/${enc(conversationId)}/mls/init`, body);
  }

  /** The server's view of a conversation's MLS group: epoch, latest GroupInfo, leaves. */
  mlsStatus(conversationId: string): Promise<MlsGroupStatus> {
    return this.request<MlsGroupStatus>('GET', `/v1/conversations/${enc(conversationId)}/mls`);
  }

  /**
   * Submits a commit for the group's current epoch. Another commit that won
   * the epoch first gives ConflictError `epoch_conflict` with
   * `details.currentEpoch`: process the winning commit, then retry.
   */
  mlsCommit(conversationId: string, body: MlsCommitBody): Promise<MlsCommitResult> {
    return this.request<MlsCommitResult>('POST', `/v1/conversations/${enc(conversationId)}/mls/commit`, body);
  }

  // ---- plumbing ----

  private adopt(result: AuthResult): AuthResult {
    this.setTokens({ accessToken: result.accessToken, refreshToken: result.refreshToken });
    return result;
  }

  private setTokens(tokens: Tokens | null): void {
    this.tokens = tokens;
    this.options.onTokens?.(tokens);
  }

  private async request<T>(method: string, path: string, body?: unknown, authenticated = true, retried = false): Promise<T> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (authenticated && this.tokens) headers.authorization = `Bearer ${this.tokens.accessToken}`;
    let res: Response;
    try {
      res = await this.fetchImpl(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new ServerError('unavailable', `request failed: ${err instanceof Error ? err.message : String(err)}`, 0);
    }
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // A proxy's HTML error page: the status alone decides the error class.
      parsed = null;
    }
    if (res.ok) return parsed as T;
    const error = errorFromResponse(res.status, parsed, res.headers.get('retry-after'));
    if (authenticated && !retried && error.code === 'invalid_token' && this.tokens) {
      await this.refresh();
      return this.request<T>(method, path, body, authenticated, true);
    }
    throw error;
  }
}

function encryption(opts: CreateOptions): { encryption?: 'none' | 'mls' } {
  return opts.encryption ? { encryption: opts.encryption } : {};
}

/** The payload of a JWT, unverified (only to read `exp` and `sid`; the server verifies). */
function jwtClaims(token: string): Record<string, unknown> | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
    return typeof json === 'object' && json !== null ? (json as Record<string, unknown>) : undefined;
  } catch {
    // Not a JWT we can read: callers fall back to letting the server decide.
    return undefined;
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function qs(params: Record<string, string | number | undefined>): string {
  const entries = Object.entries(params).filter((e): e is [string, string | number] => e[1] !== undefined);
  return entries.length ? `?${new URLSearchParams(entries.map(([k, v]): [string, string] => [k, String(v)])).toString()}` : '';
}
