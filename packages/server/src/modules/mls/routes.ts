import type { FastifyPluginAsync } from 'fastify';
import { E2EE_LIMITS, ErrorResponse, Id, Message, MlsCommitBody, MlsGroupStatus, MlsInitBody, Obj } from '@secureconnect/protocol';
import { Type, type Static } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';

const ConvParams = Obj({ id: Id });
/** The sequenced commit and the epoch it created. */
const MlsCommitResult = Obj({ message: Message, epoch: Type.Integer({ minimum: 1 }) });
/** A commit, a GroupInfo with the ratchet tree and a Welcome, each up to the handshake limit; the server-wide default is sized for messages. */
const COMMIT_BODY_LIMIT = 3 * (E2EE_LIMITS.handshakeMaxChars + 16) + 1_024;
const INIT_BODY_LIMIT = E2EE_LIMITS.handshakeMaxChars + 1_024;
const errors = { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const common = { tags: ['mls'], security: [{ bearer: [] }] };

/** HTTP edge of the MLS delivery service: validation and status codes only; the rules live in the service. */
export const mlsRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const mls = services.mls;

  app.post<{ Params: Static<typeof ConvParams>; Body: Static<typeof MlsInitBody> }>(
    '/v1/conversations/:id/mls/init',
    {
      onRequest: requireAuth,
      bodyLimit: INIT_BODY_LIMIT,
      schema: {
        ...common,
        summary: "Record an encrypted conversation's MLS group at epoch 0 from its creator's GroupInfo (ratchet tree holding only the calling device)",
        params: ConvParams,
        body: MlsInitBody,
        response: { 201: MlsGroupStatus, ...errors },
      },
    },
    async (request, reply) => reply.status(201).send(await mls.init(caller(request), request.params.id, request.body)),
  );

  app.get<{ Params: Static<typeof ConvParams> }>(
    '/v1/conversations/:id/mls',
    {
      onRequest: requireAuth,
      schema: { ...common, summary: "The group's epoch, latest GroupInfo (for external joins) and leaf owners", params: ConvParams, response: { 200: MlsGroupStatus, ...errors } },
    },
    async (request) => mls.status(caller(request), request.params.id),
  );

  app.post<{ Params: Static<typeof ConvParams>; Body: Static<typeof MlsCommitBody> }>(
    '/v1/conversations/:id/mls/commit',
    {
      onRequest: requireAuth,
      bodyLimit: COMMIT_BODY_LIMIT,
      schema: {
        ...common,
        summary: 'Submit a commit for the current epoch with the next GroupInfo (and the Welcome for added devices); the first per epoch wins, later ones get 409 epoch_conflict',
        params: ConvParams,
        body: MlsCommitBody,
        response: { 201: MlsCommitResult, ...errors },
      },
    },
    async (request, reply) => reply.status(201).send(await mls.commit(caller(request), request.params.id, request.body)),
  );
  return Promise.resolve();
};
