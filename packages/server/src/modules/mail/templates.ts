import type { MailLocale } from '@secureconnect/protocol';
import { MAIL_LOCALES } from '@secureconnect/protocol';

export type MailTemplate = 'verify_email' | 'password_reset' | 'password_changed' | 'mfa_enabled' | 'mfa_disabled';

export interface MailVars {
  /** The recipient's display name: user input, so escaped in HTML. */
  name: string;
  /** Verification or reset link (carries the token in its fragment, never in a query string). */
  link?: string;
  /** The same token, for clients that paste it instead of following the link. */
  token?: string;
}

export interface RenderedMail {
  subject: string;
  text: string;
  html: string;
}

interface Strings {
  subject: string;
  greeting: (name: string) => string;
  lines: string[];
  action?: string;
  tokenLabel?: string;
  footer: string;
}

const STRINGS: Record<MailTemplate, Record<MailLocale, Strings>> = {
  verify_email: {
    en: {
      subject: 'Confirm your email address',
      greeting: (n) => `Hello ${n},`,
      lines: ['please confirm that this is your email address for SecureConnect. The link is valid for 24 hours and works once.'],
      action: 'Confirm email address',
      tokenLabel: 'Or enter this code in the app:',
      footer: 'If you did not create an account, ignore this message.',
    },
    cs: {
      subject: 'Potvrďte svou e-mailovou adresu',
      greeting: (n) => `Dobrý den, ${n},`,
      lines: ['potvrďte prosím, že tato e-mailová adresa patří k vašemu účtu SecureConnect. Odkaz platí 24 hodin a lze jej použít jen jednou.'],
      action: 'Potvrdit e-mailovou adresu',
      tokenLabel: 'Nebo zadejte v aplikaci tento kód:',
      footer: 'Pokud jste si účet nezaložili, tuto zprávu ignorujte.',
    },
  },
  password_reset: {
    en: {
      subject: 'Reset your password',
      greeting: (n) => `Hello ${n},`,
      lines: ['someone asked to reset the password of your SecureConnect account. The link is valid for 1 hour and works once. Resetting signs you out everywhere.'],
      action: 'Choose a new password',
      tokenLabel: 'Or enter this code in the app:',
      footer: 'If it was not you, ignore this message: your password stays as it is.',
    },
    cs: {
      subject: 'Obnovení hesla',
      greeting: (n) => `Dobrý den, ${n},`,
      lines: ['někdo požádal o obnovení hesla k vašemu účtu SecureConnect. Odkaz platí 1 hodinu a lze jej použít jen jednou. Obnovení vás odhlásí na všech zařízeních.'],
      action: 'Zvolit nové heslo',
      tokenLabel: 'Nebo zadejte v aplikaci tento kód:',
      footer: 'Pokud jste to nebyli vy, zprávu ignorujte: vaše heslo zůstává beze změny.',
    },
  },
  password_changed: {
    en: {
      subject: 'Your password was changed',
      greeting: (n) => `Hello ${n},`,
      lines: ['the password of your SecureConnect account was just changed, and your other sessions were signed out.'],
      footer: 'If this was not you, reset your password at once and review your sessions.',
    },
    cs: {
      subject: 'Vaše heslo bylo změněno',
      greeting: (n) => `Dobrý den, ${n},`,
      lines: ['heslo k vašemu účtu SecureConnect bylo právě změněno a ostatní relace byly odhlášeny.'],
      footer: 'Pokud jste to nebyli vy, ihned si heslo obnovte a zkontrolujte své relace.',
    },
  },
  mfa_enabled: {
    en: {
      subject: 'Two-factor authentication enabled',
      greeting: (n) => `Hello ${n},`,
      lines: ['two-factor authentication was just turned on for your SecureConnect account. Signing in now needs a code from your authenticator app.'],
      footer: 'If this was not you, reset your password at once and review your sessions.',
    },
    cs: {
      subject: 'Dvoufázové ověření zapnuto',
      greeting: (n) => `Dobrý den, ${n},`,
      lines: ['u vašeho účtu SecureConnect bylo právě zapnuto dvoufázové ověření. Přihlášení nyní vyžaduje kód z ověřovací aplikace.'],
      footer: 'Pokud jste to nebyli vy, ihned si heslo obnovte a zkontrolujte své relace.',
    },
  },
  mfa_disabled: {
    en: {
      subject: 'Two-factor authentication disabled',
      greeting: (n) => `Hello ${n},`,
      lines: ['two-factor authentication was just turned off for your SecureConnect account, and your other sessions were signed out.'],
      footer: 'If this was not you, reset your password at once and turn two-factor authentication on again.',
    },
    cs: {
      subject: 'Dvoufázové ověření vypnuto',
      greeting: (n) => `Dobrý den, ${n},`,
      lines: ['u vašeho účtu SecureConnect bylo právě vypnuto dvoufázové ověření a ostatní relace byly odhlášeny.'],
      footer: 'Pokud jste to nebyli vy, ihned si heslo obnovte a dvoufázové ověření znovu zapněte.',
    },
  },
};

/** `cs-CZ,cs;q=0.9,en;q=0.8` → 'cs'. The first supported language in preference order, else 'en'. */
export function pickLocale(acceptLanguage: string | undefined | null): MailLocale {
  if (!acceptLanguage) return 'en';
  const ranked = acceptLanguage
    .split(',')
    .slice(0, 20)
    .map((part, i) => {
      const [tag = '', ...params] = part.trim().split(';');
      const q = params.map((p) => /^\s*q=([0-9.]+)\s*$/.exec(p)?.[1]).find((v) => v !== undefined);
      return { lang: tag.trim().toLowerCase().split('-')[0] ?? '', q: q === undefined ? 1 : Number(q), i };
    })
    .filter((r) => Number.isFinite(r.q) && r.q > 0)
    .sort((a, b) => b.q - a.q || a.i - b.i);
  for (const r of ranked) if (isLocale(r.lang)) return r.lang;
  return 'en';
}

export function isLocale(s: string): s is MailLocale {
  return (MAIL_LOCALES as readonly string[]).includes(s);
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** [AC2] One template, two renderings: plain text and HTML with every variable escaped. */
export function renderMail(template: MailTemplate, locale: string, vars: MailVars): RenderedMail {
  const s = STRINGS[template][isLocale(locale) ? locale : 'en'];
  const text: string[] = [s.greeting(vars.name), '', ...s.lines, ''];
  const html: string[] = [`<p>${escapeHtml(s.greeting(vars.name))}</p>`, ...s.lines.map((l) => `<p>${escapeHtml(l)}</p>`)];
  if (s.action && vars.link) {
    text.push(`${s.action}: ${vars.link}`, '');
    html.push(`<p><a href="${escapeHtml(vars.link)}">${escapeHtml(s.action)}</a></p>`);
  }
  if (s.tokenLabel && vars.token) {
    text.push(s.tokenLabel, vars.token, '');
    html.push(`<p>${escapeHtml(s.tokenLabel)}<br><code>${escapeHtml(vars.token)}</code></p>`);
  }
  text.push(s.footer);
  html.push(`<p>${escapeHtml(s.footer)}</p>`);
  const lang = isLocale(locale) ? locale : 'en';
  return {
    subject: s.subject,
    text: text.join('\n'),
    html: `<!doctype html><html lang="${lang}"><head><meta charset="utf-8"><title>${escapeHtml(s.subject)}</title></head><body>${html.join('')}</body></html>`,
  };
}
