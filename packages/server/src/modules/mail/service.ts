import type { Transaction } from 'kysely';
import { uuidv7 } from 'uuidv7';
import type { AppContext } from '../../context.js';
import type { Database } from '../../infra/db/index.js';
import type { DB } from '../../infra/db/schema.js';
import { MailStore, type OutboxRow } from './store.js';
import { renderMail, type MailTemplate, type MailVars } from './templates.js';
import { logTransport, smtpTransport, type MailTransport } from './transport.js';

export interface MailRequest {
  to: string;
  template: MailTemplate;
  locale: string;
  vars: MailVars;
}

/** What an operator sees of a mail: no bodies (they carry tokens). */
export interface OutboxEntry {
  id: string;
  to: string;
  template: string;
  locale: string;
  subject: string;
  status: OutboxRow['status'];
  attempts: number;
  lastError: string | null;
  createdAt: string;
  nextAttemptAt: string | null;
  sentAt: string | null;
}

/** Mails claimed per round and per node. */
const BATCH = 20;
/** A claimed mail is another worker's again after this, should this node die mid-send. */
const LEASE_MS = 5 * 60_000;
const RETRY_MAX_MS = 6 * 3600_000;
const LIST_MAX = 500;

/**
 * [AC1] The transactional outbox and its per-node worker. Producers call
 * enqueue() inside their own transaction; the worker claims due rows, sends
 * them and retries failures with exponential backoff until MAIL_MAX_ATTEMPTS,
 * after which a mail is a dead letter kept with its last error.
 */
export class MailService {
  private readonly store: MailStore;
  private readonly transport: MailTransport;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = true;

  constructor(private readonly ctx: AppContext, transport?: MailTransport) {
    this.store = new MailStore(ctx.database);
    this.transport = transport ?? (ctx.config.mail.smtpUrl ? smtpTransport(ctx.config.mail) : logTransport(ctx.log));
  }

  /** Renders and stores a mail in `trx`. Call kick() after the commit for prompt delivery. */
  async enqueue(trx: Transaction<DB>, req: MailRequest): Promise<string> {
    const id = uuidv7();
    const r = renderMail(req.template, req.locale, req.vars);
    await this.store.enqueue(trx, { id, to_addr: req.to, template: req.template, locale: req.locale, subject: r.subject, text_body: r.text, html_body: r.html, created_at: Date.now() });
    return id;
  }

  /** Start a delivery round now instead of at the next poll. */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.drain().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  start(): void {
    this.stopped = false;
    this.timer = setInterval(() => this.kick(), this.ctx.config.mail.pollIntervalMs);
    this.timer.unref();
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
    this.transport.close();
  }

  /** Dead letters, newest first: for operators (`secureconnect mail:dead`) until there is an admin API. */
  async deadLetters(limit = 100): Promise<OutboxEntry[]> {
    return (await this.store.list('dead', Math.min(limit, LIST_MAX))).map(toEntry);
  }

  /** Development only (the route exists only when NODE_ENV=development): recent mails with their bodies. */
  async devOutbox(limit = 50): Promise<(OutboxEntry & { text: string; html: string })[]> {
    if (this.ctx.config.nodeEnv !== 'development') return [];
    return (await this.store.list(null, Math.min(limit, LIST_MAX))).map((r) => ({ ...toEntry(r), text: r.text_body, html: r.html_body }));
  }

  /** Delivers due mails until none are left; one round's failure is logged, never thrown. */
  private async drain(): Promise<void> {
    try {
      for (;;) {
        if (this.stopped) return;
        const rows = await this.store.claim(Date.now(), BATCH, LEASE_MS);
        for (const row of rows) await this.deliver(row);
        if (rows.length < BATCH) return;
      }
    } catch (err) {
      this.ctx.log.error({ err }, 'mail worker round failed');
    }
  }

  private async deliver(row: OutboxRow): Promise<void> {
    try {
      await this.transport.send({ to: row.to_addr, subject: row.subject, text: row.text_body, html: row.html_body, messageId: row.id });
      await this.store.markSent(row.id, Date.now(), this.transport.kind === 'log');
    } catch (err) {
      const attempts = row.attempts + 1;
      const { maxAttempts, retryBaseMs } = this.ctx.config.mail;
      const dead = attempts >= maxAttempts;
      const next = dead ? null : Date.now() + Math.min(retryBaseMs * 2 ** (attempts - 1), RETRY_MAX_MS);
      const message = err instanceof Error ? err.message : String(err);
      await this.store.markFailed(row.id, attempts, next, message);
      // The recipient address is personal data; the id finds the row.
      if (dead) this.ctx.log.error({ mailId: row.id, attempts, error: message }, 'mail is a dead letter');
      else this.ctx.log.warn({ mailId: row.id, attempts, retryInMs: next! - Date.now(), error: message }, 'mail delivery failed; will retry');
    }
  }
}

/** For the `mail:dead` CLI command, which has a database but no running app. */
export async function listDeadLetters(database: Database, limit: number): Promise<OutboxEntry[]> {
  return (await new MailStore(database).list('dead', Math.min(limit, LIST_MAX))).map(toEntry);
}

function toEntry(r: OutboxRow): OutboxEntry {
  return {
    id: r.id,
    to: r.to_addr,
    template: r.template,
    locale: r.locale,
    subject: r.subject,
    status: r.status,
    attempts: r.attempts,
    lastError: r.last_error,
    createdAt: new Date(r.created_at).toISOString(),
    nextAttemptAt: r.status === 'pending' ? new Date(r.next_attempt_at).toISOString() : null,
    sentAt: r.sent_at === null ? null : new Date(r.sent_at).toISOString(),
  };
}
