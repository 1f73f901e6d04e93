import type { FastifyPluginAsync } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Accepted, ChangePasswordBody, ErrorResponse, ForgotPasswordBody, ResetPasswordBody, VerifyEmailBody } from '@secureconnect/protocol';
import { Type } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';
import { meta } from '../auth/routes.js';

const tags = ['account'];
const security = [{ bearer: [] }];
const NoContent = Type.Null({ description: 'No content' });
const errors = { 400: ErrorResponse, 429: ErrorResponse };

// Registers routes synchronously; FastifyPluginAsync only because app.ts awaits every module alike.
export const accountRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const account = services.account;

  r.post('/v1/account/verify', {
    schema: { tags, summary: 'Confirm the email address with the mailed token', body: VerifyEmailBody, response: { 204: NoContent, ...errors } },
  }, async (req, reply) => {
    await account.verifyEmail(req.body, meta(req));
    return reply.status(204).send(null);
  });

  r.post('/v1/account/verify/resend', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Mail a new verification link (rate limited)', response: { 204: NoContent, 401: ErrorResponse, 429: ErrorResponse } },
  }, async (req, reply) => {
    await account.resendVerification(caller(req));
    return reply.status(204).send(null);
  });

  r.post('/v1/account/password/forgot', {
    schema: { tags, summary: 'Mail a password reset link; the same answer for every address', body: ForgotPasswordBody, response: { 202: Accepted, ...errors } },
  }, async (req, reply) => reply.status(202).send(await account.forgotPassword(req.body, meta(req))));

  r.post('/v1/account/password/reset', {
    schema: { tags, summary: 'Set a new password with the mailed token; ends every session', body: ResetPasswordBody, response: { 204: NoContent, ...errors } },
  }, async (req, reply) => {
    await account.resetPassword(req.body, meta(req));
    return reply.status(204).send(null);
  });

  r.post('/v1/account/password', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Change the password; ends your other sessions', body: ChangePasswordBody, response: { 204: NoContent, 401: ErrorResponse, ...errors } },
  }, async (req, reply) => {
    await account.changePassword(caller(req), req.body, meta(req));
    return reply.status(204).send(null);
  });
  return Promise.resolve();
};
