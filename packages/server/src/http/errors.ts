import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERRORS, type ErrorBody, type ErrorCode } from '@secureconnect/protocol';
import { AppError } from '../infra/errors.js';

/** Fastify's own error codes mapped onto the catalogue. */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_TYPE: 'unsupported_media_type',
  FST_ERR_VALIDATION: 'validation_failed',
};

/** Codes whose details are meant for the client (e.g. the current epoch after a lost commit race, [DS2]); other details stay server-side. */
const PUBLIC_DETAILS = new Set<ErrorCode>(['rate_limited', 'validation_failed', 'epoch_conflict', 'invalid_key_package']);

export function sendError(reply: FastifyReply, request: FastifyRequest, code: ErrorCode, message?: string, details?: unknown): FastifyReply {
  const body: ErrorBody = { error: { code, message: message ?? ERRORS[code].message, requestId: request.id } };
  if (details !== undefined) body.error.details = details;
  return reply.status(ERRORS[code].status).type('application/json; charset=utf-8').send(body);
}

/** One error mechanism for every route (AF-I3, AF-Q2): catalogue codes, never a stack trace. */
export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | AppError | Error, request, reply) => {
    if (err instanceof AppError) {
      if (err.headers) void reply.headers(err.headers);
      return sendError(reply, request, err.code, err.message, PUBLIC_DETAILS.has(err.code) ? err.details : undefined);
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const details = fe.validation.slice(0, 10).map((v) => ({ path: v.instancePath || '/', message: v.message }));
      return sendError(reply, request, 'validation_failed', `Invalid ${fe.validationContext ?? 'request'}.`, details);
    }
    const mapped = fe.code ? FASTIFY_CODES[fe.code] : undefined;
    if (mapped) return sendError(reply, request, mapped);
    if (err instanceof SyntaxError && fe.statusCode === 400) return sendError(reply, request, 'invalid_json');
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
      request.log.info({ err }, 'client error');
      return sendError(reply, request, fe.statusCode === 404 ? 'not_found' : fe.statusCode === 413 ? 'payload_too_large' : 'bad_request');
    }
    request.log.error({ err }, 'unhandled error');
    return sendError(reply, request, 'internal');
  });
  // A known path with the wrong method is 405 with `Allow`, not 404: the client
  // has the right resource and the wrong verb. Fastify's router only reports
  // "no route", so keep the route table here to tell the two apart.
  const routes: { pattern: RegExp; methods: Set<string> }[] = [];
  app.addHook('onRoute', (route) => {
    if (route.url === '*' || route.url === '/*') return; // catch-alls (CORS preflight) would match everything
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).filter((m) => m !== 'HEAD' && m !== 'OPTIONS');
    if (methods.length === 0) return;
    const source = route.url
      .split('/')
      .map((seg) => (seg.startsWith(':') ? '[^/]+' : seg === '*' ? '.*' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
      .join('/');
    routes.push({ pattern: new RegExp(`^${source}/?$`), methods: new Set(methods) });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '/';
    const allowed = new Set<string>();
    for (const r of routes) if (r.pattern.test(path)) for (const m of r.methods) allowed.add(m);
    if (allowed.size > 0 && !allowed.has(request.method)) {
      void reply.header('allow', [...allowed].sort().join(', '));
      return sendError(reply, request, 'method_not_allowed', `${request.method} is not allowed on ${path}; use ${[...allowed].sort().join(', ')}.`);
    }
    return sendError(reply, request, 'not_found', `No route for ${request.method} ${path}.`);
  });
}
