import nodemailer from 'nodemailer';
import type { Config } from '../../config.js';
import type { Logger } from '../../infra/logger.js';

export interface OutgoingMail {
  to: string;
  subject: string;
  text: string;
  html: string;
  /** Stable per outbox row: a retry after a lost reply is recognisable as the same message. */
  messageId: string;
}

export interface MailTransport {
  /** 'smtp' delivers; 'log' (development and test without MAIL_SMTP_URL) only logs. */
  readonly kind: 'smtp' | 'log';
  send(mail: OutgoingMail): Promise<void>;
  close(): void;
}

/** Every SMTP phase has a deadline (AF-I6): a stalled server costs one attempt, never a stuck worker. */
export function smtpTransport(config: Config['mail']): MailTransport {
  if (!config.smtpUrl) throw new Error('smtpTransport needs MAIL_SMTP_URL');
  // Parsed here rather than passed as `url`: nodemailer 7 with an options object holding `url` never connected in our tests.
  const u = new URL(config.smtpUrl);
  const secure = u.protocol === 'smtps:';
  const transporter = nodemailer.createTransport({
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port ? Number(u.port) : secure ? 465 : 587,
    secure,
    ...(u.username ? { auth: { user: decodeURIComponent(u.username), pass: decodeURIComponent(u.password) } } : {}),
    connectionTimeout: config.connectTimeoutMs,
    greetingTimeout: config.connectTimeoutMs,
    socketTimeout: config.socketTimeoutMs,
    dnsTimeout: config.connectTimeoutMs,
  });
  const domain = /@([^>\s]+)>?\s*$/.exec(config.from)?.[1] ?? 'localhost';
  return {
    kind: 'smtp',
    async send(mail) {
      await transporter.sendMail({ from: config.from, to: mail.to, subject: mail.subject, text: mail.text, html: mail.html, messageId: `<${mail.messageId}@${domain}>` });
    },
    close() {
      transporter.close();
    },
  };
}

/**
 * Development default: nothing leaves the machine. The link is logged so a
 * developer can follow it; config refuses production without SMTP, so this
 * never runs there.
 */
export function logTransport(log: Logger): MailTransport {
  return {
    kind: 'log',
    send(mail) {
      const link = /https?:\/\/\S+/.exec(mail.text)?.[0] ?? null;
      log.info({ to: mail.to, subject: mail.subject, link }, 'mail (development: not sent, see GET /dev/outbox)');
      return Promise.resolve();
    },
    close() {},
  };
}
