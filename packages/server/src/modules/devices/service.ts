import { createPublicKey, verify as verifySignature } from 'node:crypto';
import {
  E2EE_LIMITS, bindChallenge,
  type ClaimKeyPackagesBody, type ClaimKeyPackagesResult, type ClaimedKeyPackage, type CipherSuiteId, type Device, type KeyPackageStatus, type RegisterDeviceBody,
  type UploadKeyPackagesBody,
} from '@secureconnect/protocol';
import type { Transaction } from 'kysely';
import type { RateLimiterAbstract } from 'rate-limiter-flexible';
import { uuidv7 } from 'uuidv7';
import type { AppContext } from '../../context.js';
import { isUniqueViolation } from '../../infra/db/errors.js';
import type { DB } from '../../infra/db/schema.js';
import { AppError, badRequest, forbidden, notFound } from '../../infra/errors.js';
import type { EventEntry } from '../../infra/eventlog.js';
import { inspectKeyPackage, type KeyPackageRefusal } from '../../infra/mls/keypackage.js';
import { fromB64, toB64 } from '../../infra/mls/suites.js';
import { consumeOrThrow } from '../../infra/ratelimit.js';
import type { AuthContext, AuthService, ConversationsService, DevicesService, UsersService } from '../../services.js';
import { DevicesStore, type DeviceRow, type KeyPackageRow } from './store.js';

/** Claims per caller per minute ([K3]): each claim consumes other people's one-time keys. */
export const CLAIMS_PER_MINUTE = 120;
const ED25519_PUBLIC_KEY_BYTES = 32;
const DEVICE_NOT_FOUND = 'Device not found.';

type RevokeHook = (trx: Transaction<DB>, device: { userId: string; deviceId: string }) => Promise<void>;

const iso = (ms: number) => new Date(ms).toISOString();

function toDevice(r: DeviceRow): Device {
  return { id: r.id, userId: r.user_id, name: r.name, signatureKey: r.signature_key, createdAt: iso(r.created_at), lastSeenAt: r.last_seen_at === null ? null : iso(r.last_seen_at) };
}

/** Why an uploaded key package was refused: the inspector's reasons plus the uploader checks. */
type UploadRefusal = KeyPackageRefusal | 'not_this_device' | 'signature_key';

function refused(index: number | 'lastResort', reason: UploadRefusal): AppError {
  return new AppError('invalid_key_package', `Key package ${index === 'lastResort' ? 'lastResort' : `#${index}`} was refused: ${reason}.`, { index, reason });
}

export interface DevicesDeps {
  auth: AuthService;
  users: UsersService;
  conversations: ConversationsService;
}

/** The key directory (docs/SPEC.md [K1]–[K6]). */
export class DevicesServiceImpl implements DevicesService {
  private readonly store: DevicesStore;
  private readonly claimLimiter: RateLimiterAbstract;
  private readonly revokeHooks: RevokeHook[] = [];

  constructor(private readonly ctx: AppContext, private readonly deps: DevicesDeps) {
    this.store = new DevicesStore(ctx.database);
    this.claimLimiter = ctx.limiters.create({ name: 'kp-claim', points: CLAIMS_PER_MINUTE, durationSec: 60 });
  }

  onRevoke(hook: RevokeHook): void {
    this.revokeHooks.push(hook);
  }

  // ---- devices ----

  /** [K1] */
  async register(auth: AuthContext, body: RegisterDeviceBody): Promise<Device> {
    if (auth.deviceId !== null) throw new AppError('conflict', 'This session already speaks for a device.');
    const key = fromB64(body.signatureKey);
    if (key.length !== ED25519_PUBLIC_KEY_BYTES) throw badRequest('signatureKey must be an Ed25519 public key (32 bytes, base64).');
    const now = Date.now();
    const row: DeviceRow = { id: uuidv7(), user_id: auth.userId, name: body.name, signature_key: toB64(key), created_at: now, last_seen_at: now, revoked_at: null };
    const device = toDevice(row);
    const audience = [auth.userId, ...(await this.deps.conversations.peersOf(auth.userId))];
    try {
      await this.store.tx(async (trx) => {
        await this.store.lockUserDevices(trx, auth.userId);
        if ((await this.store.countActive(trx, auth.userId)) >= E2EE_LIMITS.devicesPerUser) throw new AppError('device_limit');
        await this.store.insertDevice(trx, row);
        await this.deps.auth.bindDevice(auth.sessionId, row.id, trx);
        await this.ctx.events.append(trx, audience.map((userId): EventEntry => ({ conversationId: null, userId, event: { type: 'device.added', device } })));
      });
    } catch (err) {
      // The only unique column besides the fresh id: the key belongs to another device.
      if (isUniqueViolation(err)) throw new AppError('conflict', 'This signature key is already registered.');
      throw err;
    }
    this.ctx.events.notify();
    // Committed: now announce the binding to this node's cache and every other node.
    await this.deps.auth.bindDevice(auth.sessionId, row.id);
    return device;
  }

  /** [K1] Proof of possession: the device's key signs this session's id. */
  async bind(auth: AuthContext, deviceId: string, signature: string): Promise<Device> {
    const found = await this.store.get(deviceId);
    if (!found || found.user_id !== auth.userId || found.revoked_at !== null) throw notFound(DEVICE_NOT_FOUND);
    if (auth.deviceId !== null && auth.deviceId !== deviceId) throw new AppError('conflict', 'This session already speaks for another device.');
    if (!verifyEd25519(found.signature_key, bindChallenge(auth.sessionId), signature)) throw forbidden('The signature does not prove possession of the device key.');
    const now = Date.now();
    await this.store.tx(async (trx) => {
      // Under the device row's lock: a revocation either sees this binding or happens before it and refuses it.
      const locked = await this.store.lockDevice(trx, deviceId);
      if (!locked || locked.revoked_at !== null) throw notFound(DEVICE_NOT_FOUND);
      await this.deps.auth.bindDevice(auth.sessionId, deviceId, trx);
    });
    await this.deps.auth.bindDevice(auth.sessionId, deviceId);
    await this.store.touch(deviceId, now);
    return toDevice({ ...found, last_seen_at: now });
  }

  /** [K6] Public keys are public: any signed-in user may list any user's devices. */
  async list(auth: AuthContext, userId: string): Promise<Device[]> {
    if (userId !== auth.userId && !(await this.deps.users.exists(userId))) throw notFound('User not found.');
    return (await this.store.activeOf([userId])).map(toDevice);
  }

  /** [K5] */
  async revoke(auth: AuthContext, deviceId: string): Promise<void> {
    const found = await this.store.get(deviceId);
    if (!found || found.user_id !== auth.userId) throw notFound(DEVICE_NOT_FOUND);
    if (found.revoked_at === null) {
      const audience = [auth.userId, ...(await this.deps.conversations.peersOf(auth.userId))];
      const revoked = await this.store.tx(async (trx) => {
        if (!(await this.store.markRevoked(trx, deviceId, Date.now()))) return false;
        await this.store.deleteKeyPackages(trx, deviceId);
        for (const hook of this.revokeHooks) await hook(trx, { userId: auth.userId, deviceId });
        await this.ctx.events.append(trx, audience.map((userId): EventEntry => ({ conversationId: null, userId, event: { type: 'device.revoked', userId: auth.userId, deviceId } })));
        return true;
      });
      if (revoked) this.ctx.events.notify();
    }
    // Also on a repeat: a revocation interrupted after its commit finishes here.
    await this.deps.auth.revokeDeviceSessions(auth.userId, deviceId);
  }

  async activeDevices(deviceIds: readonly string[], trx?: Transaction<DB>): Promise<Map<string, { userId: string; signatureKey: string }>> {
    const rows = await this.store.activeByIds([...new Set(deviceIds)], trx);
    return new Map(rows.map((r) => [r.id, { userId: r.user_id, signatureKey: r.signature_key }]));
  }

  // ---- key packages ----

  /** The caller's device, which must be active ([K2]). */
  private async requireDevice(auth: AuthContext): Promise<DeviceRow> {
    if (auth.deviceId === null) throw new AppError('device_required');
    const device = await this.store.get(auth.deviceId);
    // A revoked device's sessions end; one racing that gets the same answer as no device.
    if (!device || device.revoked_at !== null) throw new AppError('device_required', 'This session\'s device has been revoked.');
    return device;
  }

  /** [K2] Every package is verified before any is stored; one refusal stores nothing. */
  async uploadKeyPackages(auth: AuthContext, body: UploadKeyPackagesBody): Promise<KeyPackageStatus> {
    const device = await this.requireDevice(auth);
    const now = Date.now();
    const check = async (b64: string, index: number | 'lastResort'): Promise<KeyPackageRow> => {
      const r = await inspectKeyPackage(fromB64(b64), now);
      if (!r.ok) throw refused(index, r.reason);
      if (r.identity.userId !== auth.userId || r.identity.deviceId !== device.id) throw refused(index, 'not_this_device');
      if (r.signatureKey !== device.signature_key) throw refused(index, 'signature_key');
      return { ref: r.ref, device_id: device.id, user_id: auth.userId, cipher_suite: r.cipherSuite, last_resort: index === 'lastResort' ? 1 : 0, data: b64, created_at: now, expires_at: r.notAfter };
    };
    const rows: KeyPackageRow[] = [];
    for (const [i, kp] of body.keyPackages.entries()) rows.push(await check(kp, i));
    const lastResort = body.lastResort === undefined ? undefined : await check(body.lastResort, 'lastResort');
    const unique = [...new Map(rows.map((r) => [r.ref, r])).values()].filter((r) => r.ref !== lastResort?.ref);

    await this.store.tx(async (trx) => {
      // Concurrent uploads of one device take turns, so the cap holds.
      const locked = await this.store.lockDevice(trx, device.id);
      if (!locked || locked.revoked_at !== null) throw new AppError('device_required', 'This session\'s device has been revoked.');
      await this.store.deleteExpired(trx, device.id, now);
      const held = await this.store.countUnclaimed(trx, device.id);
      if (held + unique.length > E2EE_LIMITS.keyPackagesPerDevice) {
        throw new AppError('conflict', `A device holds at most ${E2EE_LIMITS.keyPackagesPerDevice} unclaimed key packages; it has ${held}.`, { held, max: E2EE_LIMITS.keyPackagesPerDevice });
      }
      await this.store.insertKeyPackages(trx, unique);
      if (lastResort) await this.store.replaceLastResort(trx, lastResort);
    });
    await this.store.touch(device.id, now);
    return this.status(device.id, now);
  }

  async keyPackageStatus(auth: AuthContext): Promise<KeyPackageStatus> {
    const device = await this.requireDevice(auth);
    return this.status(device.id, Date.now());
  }

  private async status(deviceId: string, now: number): Promise<KeyPackageStatus> {
    const bySuite = new Map<CipherSuiteId, { cipherSuite: CipherSuiteId; available: number; lastResort: boolean }>();
    for (const r of await this.store.stock(deviceId, now)) {
      const suite = r.cipher_suite as CipherSuiteId;
      const s = bySuite.get(suite) ?? { cipherSuite: suite, available: 0, lastResort: false };
      if (r.last_resort === 1) s.lastResort = true;
      else s.available = r.available;
      bySuite.set(suite, s);
    }
    return { deviceId, stock: [...bySuite.values()].sort((a, b) => a.cipherSuite - b.cipherSuite) };
  }

  /** Only the caller and users who share a conversation with them; anyone else is "not found" ([K3]). */
  private async requireClaimable(auth: AuthContext, userIds: readonly string[]): Promise<void> {
    await consumeOrThrow(this.claimLimiter, auth.userId);
    const others = userIds.filter((u) => u !== auth.userId);
    if (others.length === 0) return;
    const peers = new Set(await this.deps.conversations.peersOf(auth.userId));
    if (others.some((u) => !peers.has(u))) throw notFound('User not found.');
  }

  /** [K3], [K4] */
  async claim(auth: AuthContext, body: ClaimKeyPackagesBody): Promise<ClaimKeyPackagesResult> {
    await this.requireClaimable(auth, body.userIds);
    const order = new Map(body.userIds.map((u, i) => [u, i]));
    const devices = (await this.store.activeOf(body.userIds))
      .filter((d) => d.id !== auth.deviceId)
      .sort((a, b) => order.get(a.user_id)! - order.get(b.user_id)!);
    const suite = body.cipherSuite;
    const result: ClaimKeyPackagesResult = { keyPackages: [], missing: [] };
    const now = Date.now();
    const low = await this.store.tx(async (trx) => {
      const warnings: EventEntry[] = [];
      for (const d of devices) {
        const taken = await this.store.takeOne(trx, d.id, suite, now);
        const data = taken ?? (await this.store.lastResort(trx, d.id, suite, now));
        if (data === undefined) result.missing.push({ userId: d.user_id, deviceId: d.id });
        else result.keyPackages.push({ userId: d.user_id, deviceId: d.id, keyPackage: data, lastResort: taken === undefined } satisfies ClaimedKeyPackage);
        const available = taken === undefined ? 0 : await this.store.available(trx, d.id, suite, now);
        if (available < E2EE_LIMITS.keyPackagesLowWater) {
          warnings.push({ conversationId: null, userId: d.user_id, deviceId: d.id, event: { type: 'key_packages.low', deviceId: d.id, cipherSuite: suite, available } });
        }
      }
      await this.ctx.events.append(trx, warnings);
      return warnings.length;
    });
    if (low > 0) this.ctx.events.notify();
    return result;
  }
}

/** Ed25519 over `message` with a raw 32-byte public key (base64); false for any malformed input. */
function verifyEd25519(publicKeyB64: string, message: Uint8Array, signatureB64: string): boolean {
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKeyB64, 'base64').toString('base64url') }, format: 'jwk' });
    return verifySignature(null, message, key, Buffer.from(signatureB64, 'base64'));
  } catch {
    return false;
  }
}

export function createDevicesService(ctx: AppContext, deps: DevicesDeps): DevicesService {
  return new DevicesServiceImpl(ctx, deps);
}
