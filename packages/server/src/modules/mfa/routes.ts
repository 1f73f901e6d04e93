import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { AuthResult, ConfirmTotpBody, DisableTotpBody, ErrorResponse, LoginMfaBody, MfaStatus, ReauthBody, ReauthResult, RecoveryCodes, TotpEnrolment } from '@secureconnect/protocol';
import { Type } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';
import { meta } from '../auth/routes.js';

const security = [{ bearer: [] }];
const NoContent = Type.Null({ description: 'No content' });
const errors = { 400: ErrorResponse, 401: ErrorResponse, 429: ErrorResponse };
const guarded = { ...errors, 403: ErrorResponse, 409: ErrorResponse };

// Registers routes synchronously; FastifyPluginAsync only because app.ts awaits every module alike.
export const mfaRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const mfa = services.mfa;

  r.post('/v1/auth/login/mfa', {
    schema: { tags: ['auth'], summary: 'Second login step: the challenge from /v1/auth/login with a TOTP or recovery code', body: LoginMfaBody, response: { 200: AuthResult, ...errors } },
  }, async (req) => mfa.loginMfa(req.body, meta(req)));

  r.post('/v1/auth/reauth', {
    onRequest: requireAuth,
    schema: { tags: ['auth'], security, summary: 'Confirm the password (and 2FA code) again; security settings may then be changed for a few minutes', body: ReauthBody, response: { 200: ReauthResult, ...errors } },
  }, async (req) => mfa.reauth(caller(req), req.body, meta(req)));

  r.get('/v1/account/mfa', {
    onRequest: requireAuth,
    schema: { tags: ['account'], security, summary: 'Whether 2FA is on and how many recovery codes are left', response: { 200: MfaStatus, 401: ErrorResponse } },
  }, async (req) => mfa.status(caller(req)));

  r.post('/v1/account/mfa/totp', {
    onRequest: requireAuth,
    schema: { tags: ['account'], security, summary: 'Start TOTP enrolment (needs a recent re-authentication)', response: { 200: TotpEnrolment, ...guarded } },
  }, async (req) => mfa.enrol(caller(req)));

  r.post('/v1/account/mfa/totp/confirm', {
    onRequest: requireAuth,
    schema: { tags: ['account'], security, summary: 'Activate TOTP with a first code; returns the recovery codes once', body: ConfirmTotpBody, response: { 200: RecoveryCodes, ...guarded } },
  }, async (req) => mfa.confirm(caller(req), req.body, meta(req)));

  r.delete('/v1/account/mfa/totp', {
    onRequest: requireAuth,
    schema: { tags: ['account'], security, summary: 'Turn 2FA off (re-authentication and a current code); ends your other sessions', body: DisableTotpBody, response: { 204: NoContent, ...guarded } },
  }, async (req, reply) => {
    await mfa.disable(caller(req), req.body, meta(req));
    return reply.status(204).send(null);
  });

  r.post('/v1/account/mfa/recovery-codes', {
    onRequest: requireAuth,
    schema: { tags: ['account'], security, summary: 'Replace the recovery codes (needs a recent re-authentication)', response: { 200: RecoveryCodes, ...guarded } },
  }, async (req) => mfa.regenerateRecoveryCodes(caller(req)));
  return Promise.resolve();
};
