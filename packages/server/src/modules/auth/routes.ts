import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { AuthResult, ErrorResponse, Id, Jwks, LoginBody, LoginResult, Obj, RefreshBody, RegisterBody, SessionList, TokenPair } from '@secureconnect/protocol';
import { Type } from 'typebox';
import { caller } from '../../http/auth-hook.js';
import type { ModuleOptions } from '../../http/module.js';
import type { ClientMeta } from '../../services.js';
import { pickLocale } from '../mail/templates.js';

const tags = ['auth'];
const security = [{ bearer: [] }];
const NoContent = Type.Null({ description: 'No content' });
const errors = { 400: ErrorResponse, 401: ErrorResponse, 429: ErrorResponse };

export function meta(request: FastifyRequest): ClientMeta {
  const ua = request.headers['user-agent'];
  return { ip: request.ip, userAgent: typeof ua === 'string' && ua.length > 0 ? ua : null, locale: pickLocale(request.headers['accept-language']) };
}

// Registers routes synchronously; FastifyPluginAsync only because app.ts awaits every module alike.
export const authRoutes: FastifyPluginAsync<ModuleOptions> = (app, { services, requireAuth }) => {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const auth = services.auth;

  r.get('/.well-known/jwks.json', {
    schema: { tags, summary: 'Public keys that verify access tokens', response: { 200: Jwks } },
  }, async (_req, reply) => {
    void reply.header('cache-control', 'public, max-age=300');
    return auth.jwks();
  });

  r.post('/v1/auth/register', {
    schema: { tags, summary: 'Create an account and its first session', body: RegisterBody, response: { 201: AuthResult, 409: ErrorResponse, ...errors } },
  }, async (req, reply) => reply.status(201).send(await auth.register(req.body, meta(req))));

  r.post('/v1/auth/login', {
    schema: { tags, summary: 'Open a session with email or username and password; accounts with 2FA get a challenge instead (POST /v1/auth/login/mfa)', body: LoginBody, response: { 200: LoginResult, ...errors } },
  }, async (req) => auth.login(req.body, meta(req)));

  r.post('/v1/auth/refresh', {
    schema: { tags, summary: 'Rotate the refresh token and get a new access token', body: RefreshBody, response: { 200: TokenPair, ...errors } },
  }, async (req) => auth.refresh(req.body.refreshToken, meta(req)));

  r.post('/v1/auth/logout', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Revoke the current session', response: { 204: NoContent, 401: ErrorResponse } },
  }, async (req, reply) => {
    await auth.logout(caller(req));
    return reply.status(204).send(null);
  });

  r.get('/v1/auth/sessions', {
    onRequest: requireAuth,
    schema: { tags, security, summary: "The caller's live sessions", response: { 200: SessionList, 401: ErrorResponse } },
  }, async (req) => ({ items: await auth.listSessions(caller(req)) }));

  r.delete('/v1/auth/sessions/:id', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Revoke one of your sessions', params: Obj({ id: Id }), response: { 204: NoContent, 401: ErrorResponse, 404: ErrorResponse } },
  }, async (req, reply) => {
    await auth.revokeSession(caller(req), req.params.id);
    return reply.status(204).send(null);
  });

  r.delete('/v1/auth/sessions', {
    onRequest: requireAuth,
    schema: { tags, security, summary: 'Revoke all your sessions except the current one', response: { 204: NoContent, 401: ErrorResponse } },
  }, async (req, reply) => {
    await auth.revokeOtherSessions(caller(req));
    return reply.status(204).send(null);
  });
  return Promise.resolve();
};
