import type { FastifyPluginAsync } from 'fastify';
import {
  BindDeviceBody, ClaimKeyPackagesBody, E2EE_LIMITS, ClaimKeyPackagesResult, Device, DeviceList, ErrorResponse, Id, KeyPackageStatus, Obj, RegisterDeviceBody,
  UploadKeyPackagesBody,
} from '@secureconnect/protocol';
import { Type, type Static } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';

const DeviceParams = Obj({ deviceId: Id });
const UserParams = Obj({ userId: Id });
/** A full batch of the largest packages fits; the server-wide default is sized for messages. */
const UPLOAD_BODY_LIMIT = (E2EE_LIMITS.keyPackagesPerUpload + 1) * (E2EE_LIMITS.keyPackageMaxChars + 4) + 1_024;
const NoContent = Type.Null({ description: 'No content' });
const errors = { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse, 429: ErrorResponse };
const devices = { tags: ['devices'], security: [{ bearer: [] }] };
const keyPackages = { tags: ['key packages'], security: [{ bearer: [] }] };

/** HTTP edge of the key directory: validation and status codes only; the rules live in the service. */
export const devicesRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const svc = services.devices;

  app.post<{ Body: Static<typeof RegisterDeviceBody> }>(
    '/v1/devices',
    {
      onRequest: requireAuth,
      schema: { ...devices, summary: 'Register a device (its MLS signature key) and bind the calling session to it', body: RegisterDeviceBody, response: { 201: Device, ...errors } },
    },
    async (request, reply) => reply.status(201).send(await svc.register(caller(request), request.body)),
  );

  app.post<{ Params: Static<typeof DeviceParams>; Body: Static<typeof BindDeviceBody> }>(
    '/v1/devices/:deviceId/bind',
    {
      onRequest: requireAuth,
      schema: {
        ...devices,
        summary: "Bind the calling session to one of your devices, proven by the device key's Ed25519 signature over `sc-bind:<sessionId>`",
        params: DeviceParams,
        body: BindDeviceBody,
        response: { 200: Device, ...errors },
      },
    },
    async (request) => svc.bind(caller(request), request.params.deviceId, request.body.signature),
  );

  app.delete<{ Params: Static<typeof DeviceParams> }>(
    '/v1/devices/:deviceId',
    {
      onRequest: requireAuth,
      schema: { ...devices, summary: 'Revoke one of your devices: its sessions end, its key packages go, its groups are told', params: DeviceParams, response: { 204: NoContent, ...errors } },
    },
    async (request, reply) => {
      await svc.revoke(caller(request), request.params.deviceId);
      return reply.status(204).send(null);
    },
  );

  app.get<{ Params: Static<typeof UserParams> }>(
    '/v1/users/:userId/devices',
    {
      onRequest: requireAuth,
      schema: { ...devices, summary: "A user's active devices with their public signature keys", params: UserParams, response: { 200: DeviceList, ...errors } },
    },
    async (request) => ({ items: await svc.list(caller(request), request.params.userId) }),
  );

  app.post<{ Body: Static<typeof UploadKeyPackagesBody> }>(
    '/v1/key-packages',
    {
      onRequest: requireAuth,
      bodyLimit: UPLOAD_BODY_LIMIT,
      schema: { ...keyPackages, summary: "Publish key packages of the session's device (each is verified; one refusal stores none)", body: UploadKeyPackagesBody, response: { 200: KeyPackageStatus, ...errors } },
    },
    async (request) => svc.uploadKeyPackages(caller(request), request.body),
  );

  app.get(
    '/v1/key-packages',
    { onRequest: requireAuth, schema: { ...keyPackages, summary: "Unclaimed key packages of the session's device, per cipher suite", response: { 200: KeyPackageStatus, ...errors } } },
    async (request) => svc.keyPackageStatus(caller(request)),
  );

  app.post<{ Body: Static<typeof ClaimKeyPackagesBody> }>(
    '/v1/key-packages/claim',
    {
      onRequest: requireAuth,
      schema: {
        ...keyPackages,
        summary: 'Claim one key package per active device of each user (yourself or people you share a conversation with); each is handed out once',
        body: ClaimKeyPackagesBody,
        response: { 200: ClaimKeyPackagesResult, ...errors },
      },
    },
    async (request) => svc.claim(caller(request), request.body),
  );
  return Promise.resolve();
};
