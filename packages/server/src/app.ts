import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import cors from '@fastify/cors';
import helmet from '@fastify/helmet';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import { PROTOCOL_VERSION } from '@secureconnect/protocol';
import { Type } from 'typebox';
import type { Config } from './config.js';
import type { AppContext } from './context.js';
import { openBus } from './infra/bus/index.js';
import { openDatabase } from './infra/db/index.js';
import { migrateToLatest } from './infra/db/migrate.js';
import { EventLog } from './infra/eventlog.js';
import { createLogger, type Logger } from './infra/logger.js';
import { Limiters, consumeOrThrow } from './infra/ratelimit.js';
import { makeRequireAuth } from './http/auth-hook.js';
import { installErrorHandling } from './http/errors.js';
import type { ModuleOptions } from './http/module.js';
import { authRoutes, createAuthService } from './modules/auth/index.js';
import { createUsersService, usersRoutes } from './modules/users/index.js';
import { conversationsRoutes, createConversationsService } from './modules/conversations/index.js';
import { createMessagesService, messagesRoutes } from './modules/messages/index.js';
import { createPresenceService, presenceRoutes } from './modules/presence/index.js';
import { createDevicesService, devicesRoutes } from './modules/devices/index.js';
import { createMlsService, mlsRoutes } from './modules/mls/index.js';
import { createMailService, mailRoutes } from './modules/mail/index.js';
import { accountRoutes, createAccountService } from './modules/account/index.js';
import { createMfaService, mfaRoutes } from './modules/mfa/index.js';
import { Gateway } from './realtime/gateway.js';
import type { Services } from './services.js';

export type HttpApp = FastifyInstance;

export interface App {
  fastify: HttpApp;
  ctx: AppContext;
  services: Services;
  gateway: Gateway;
  /** Listens on config.host:config.port (0 = random); returns the base URL. */
  listen(): Promise<string>;
  /** Graceful shutdown: stop accepting, tell sockets to reconnect, drain, close (AF-O4, AF-R4). */
  close(): Promise<void>;
}

export interface BuildOptions {
  logger?: Logger;
}

export async function buildApp(config: Config, opts: BuildOptions = {}): Promise<App> {
  const log = opts.logger ?? createLogger({ level: config.logLevel, nodeId: config.nodeId });
  const database = openDatabase(config, log);
  if (config.autoMigrate) await migrateToLatest(database.db as never, database.dialect);
  const bus = openBus(config, log);
  const limiters = new Limiters(bus, config.redis.prefix);
  const events = new EventLog(database, bus, log);
  const ctx: AppContext = { config, log, database, bus, limiters, events };

  const auth = createAuthService(ctx);
  const users = createUsersService(ctx);
  const conversations = createConversationsService(ctx, { users });
  const messages = createMessagesService(ctx, { conversations });
  const presence = createPresenceService(ctx, { conversations, users });
  const devices = createDevicesService(ctx, { auth, users, conversations });
  const mls = createMlsService(ctx, { conversations, messages, devices });
  // The delivery service's rules run inside the other modules' operations ([DS6], [DS7]).
  conversations.onMemberRemoved((trx, c, u) => mls.markPendingRemoval(trx, { conversationId: c, userId: u }));
  devices.onRevoke((trx, d) => mls.markPendingRemoval(trx, { deviceId: d.deviceId }));
  messages.setContentCheck((a, c, content) => mls.checkContent(a, c, content));
  const mail = createMailService(ctx);
  const account = createAccountService(ctx, { auth, mail });
  const mfa = createMfaService(ctx, { auth, mail });
  const services: Services = { auth, users, conversations, messages, presence, devices, mls, mail, account, mfa };

  // Fastify's instance type is generic over the logger; widen once so plugins see the default type.
  const httpLog: FastifyBaseLogger = log;
  const fastify = Fastify({
    loggerInstance: httpLog,
    bodyLimit: config.bodyLimitBytes,
    trustProxy: config.trustedProxies.length > 0 ? config.trustedProxies : false,
    genReqId: () => randomUUID(),
    return503OnClosing: true,
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 10_000,
    routerOptions: { maxParamLength: 200 },
  });
  fastify.setValidatorCompiler(TypeBoxValidatorCompiler);
  fastify.decorateRequest('auth', null);
  installErrorHandling(fastify);
  fastify.addHook('onSend', async (request, reply) => {
    void reply.header('x-request-id', request.id);
  });

  const hsts = config.publicUrl?.startsWith('https:') ?? false;
  await fastify.register(helmet, {
    contentSecurityPolicy: { directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"], baseUri: ["'none'"], formAction: ["'none'"] } },
    hsts: hsts ? { maxAge: 31_536_000, includeSubDomains: true } : false,
    referrerPolicy: { policy: 'no-referrer' },
    crossOriginResourcePolicy: { policy: 'same-site' },
  });
  await fastify.register(cors, {
    // An explicit allowlist; an unlisted origin gets no CORS headers at all (AF-S5).
    origin: (origin, cb) => cb(null, origin !== undefined && config.corsOrigins.includes(origin)),
    credentials: false,
    methods: ['GET', 'POST', 'PATCH', 'PUT', 'DELETE'],
    allowedHeaders: ['authorization', 'content-type', 'x-request-id'],
    exposedHeaders: ['x-request-id', 'retry-after'],
    maxAge: 600,
  });

  // A per-IP ceiling on all HTTP traffic; routes add their own tighter limits.
  const ipLimiter = limiters.create({ name: 'http-ip', points: config.httpRateLimitPerMinute, durationSec: 60 });
  fastify.addHook('onRequest', async (request) => {
    if (request.url === '/healthz' || request.url === '/readyz') return;
    await consumeOrThrow(ipLimiter, request.ip);
  });

  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'SecureConnect API', version: `1.0.0 (ws protocol ${PROTOCOL_VERSION})`, description: 'Errors use the catalogue in docs/API.md.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
    },
  });
  await fastify.register(swaggerUi, { routePrefix: '/docs', staticCSP: true });
  fastify.get('/openapi.json', { schema: { hide: true } }, () => fastify.swagger());

  let shuttingDown = false;
  fastify.get('/healthz', { schema: { tags: ['ops'], response: { 200: Type.Object({ status: Type.Literal('ok') }) } } }, () => ({ status: 'ok' as const }));
  fastify.get('/readyz', { schema: { tags: ['ops'] } }, async (_req, reply) => {
    const timeoutMs = 1_000;
    const checks = await Promise.allSettled([database.ping(timeoutMs), bus.ping(timeoutMs)]);
    const result = {
      status: 'ok' as 'ok' | 'unavailable',
      checks: {
        database: checks[0].status === 'fulfilled' ? 'ok' : 'failed',
        bus: checks[1].status === 'fulfilled' ? 'ok' : 'failed',
        shuttingDown,
      },
    };
    if (shuttingDown || checks.some((c) => c.status === 'rejected')) {
      result.status = 'unavailable';
      return reply.status(503).send(result);
    }
    return result;
  });

  const moduleOpts: ModuleOptions = { ctx, services, requireAuth: makeRequireAuth(auth, config.emailVerification) };
  await fastify.register(authRoutes, moduleOpts);
  await fastify.register(usersRoutes, moduleOpts);
  await fastify.register(conversationsRoutes, moduleOpts);
  await fastify.register(messagesRoutes, moduleOpts);
  await fastify.register(presenceRoutes, moduleOpts);
  await fastify.register(devicesRoutes, moduleOpts);
  await fastify.register(mlsRoutes, moduleOpts);
  await fastify.register(mailRoutes, moduleOpts);
  await fastify.register(accountRoutes, moduleOpts);
  await fastify.register(mfaRoutes, moduleOpts);

  const gateway = new Gateway(ctx, services);
  await fastify.ready();

  await events.start();
  await auth.start();
  await presence.start();
  mail.start();
  account.start();
  mfa.start();

  // Retention (AF-R6, [E4]): the event log keeps EVENT_RETENTION_DAYS. Every node
  // runs it; pruning is idempotent and the floor only moves up.
  const retentionMs = config.eventRetentionDays * 86_400_000;
  const prune = () => {
    events
      .prune(Date.now() - retentionMs)
      .then((n) => n > 0 && log.info({ pruned: n }, 'event log pruned'))
      .catch((err: unknown) => log.error({ err }, 'event log pruning failed'));
  };
  const pruneTimer = setInterval(prune, 3_600_000);
  pruneTimer.unref();

  let closing: Promise<void> | undefined;
  return {
    fastify,
    ctx,
    services,
    gateway,
    async listen() {
      gateway.attach(fastify.server);
      const address = await fastify.listen({ host: config.host, port: config.port });
      log.info({ address, node: config.nodeId }, 'listening');
      return address;
    },
    close() {
      closing ??= (async () => {
        shuttingDown = true;
        clearInterval(pruneTimer);
        await gateway.shutdown(config.shutdownGraceMs);
        await fastify.close();
        await account.stop();
        mfa.stop();
        await mail.stop();
        await messages.stop();
        await presence.stop();
        await auth.stop();
        await events.stop();
        await bus.close();
        await database.close();
        log.info('closed');
      })();
      return closing;
    },
  };
}
