#!/usr/bin/env node
/**
 * Secret scan (AF-S1): checks every git-tracked file (and every untracked, not
 * ignored one: what the next commit could add) of the repository in the
 * current directory for committed secrets. No dependencies, so CI can run it
 * before `npm ci`.
 *
 *   node scripts/secret-scan.mjs        exit 0: clean, 1: findings, 2: cannot scan
 *
 * Exceptions live in `.secret-scan-allow` at the repository root, one
 * `path: reason` per line (`#` starts a comment). A path ending in `/` covers a
 * folder. Keep that list short: every entry is a file nobody scans.
 */
import { Buffer } from 'node:buffer';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';

const MAX_BYTES = 2 * 1024 * 1024;

/** Values that are obviously not real secrets (documentation, fixtures). */
const PLACEHOLDER = /^(?:\$|<|\{\{|%\(|process\.env)|\$\{|change[-_]?me|placeholder|example|redacted|dummy|fake|sample|your[-_]|x{4,}|\*{3,}|\.\.\.|^(?:password|secret|token|user|pass)$/i;

const isTestPath = (path) => /(^|\/)(test|tests|__tests__|fixtures|vectors)\//.test(path) || /\.(test|spec)\.[cm]?[jt]sx?$/.test(path);

/** Bits of entropy per character: random secrets score high, words and repeats low. */
function entropy(s) {
  const counts = new Map();
  for (const ch of s) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    h -= p * Math.log2(p);
  }
  return h;
}

/**
 * Each rule returns the secret-looking value found on a line, or null.
 * `file` gives access to the whole file for rules that need context.
 */
const RULES = [
  {
    id: 'private-key-pem',
    test: (line) => line.match(/-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----/)?.[0] ?? null,
  },
  {
    id: 'jwk-private-key',
    // Private JWK parameters next to a key type: OKP/EC "d", RSA "d"/"p"/"q".
    test: (line, file) => {
      if (file.isTest || !/["']?kty["']?\s*:\s*["'](?:OKP|EC|RSA)["']/.test(file.text)) return null;
      return line.match(/["']?\b(?:d|p|q|dp|dq|qi)["']?\s*:\s*["']([A-Za-z0-9_-]{32,})["']/)?.[1] ?? null;
    },
  },
  { id: 'aws-access-key-id', test: (line) => line.match(/\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[0-9A-Z]{16}\b/)?.[0] ?? null },
  {
    id: 'aws-secret-access-key',
    test: (line) => line.match(/aws_?secret_?(?:access_?)?key\w*["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})\b/i)?.[1] ?? null,
  },
  { id: 'slack-token', test: (line) => line.match(/\bxox[abposr]-[0-9A-Za-z-]{10,}/)?.[0] ?? null },
  { id: 'slack-webhook', test: (line) => line.match(/https:\/\/hooks\.slack\.com\/services\/T[A-Z0-9]+\/B[A-Z0-9]+\/[A-Za-z0-9]+/)?.[0] ?? null },
  { id: 'github-token', test: (line) => line.match(/\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b/)?.[0] ?? null },
  { id: 'stripe-or-openai-key', test: (line) => line.match(/\b(?:sk_live_[0-9a-zA-Z]{24,}|sk-(?:proj-)?[A-Za-z0-9_-]{40,})\b/)?.[0] ?? null },
  { id: 'google-api-key', test: (line) => line.match(/\bAIza[0-9A-Za-z_-]{35}\b/)?.[0] ?? null },
  {
    id: 'credentials-in-url',
    test: (line) => {
      for (const m of line.matchAll(/\b[a-z][a-z0-9+.-]{1,20}:\/\/([^\s:@/'"`]+):([^\s@/'"`]+)@[^\s'"`]+/gi)) {
        const password = decodeSafe(m[2]);
        if (password.length < 8 || PLACEHOLDER.test(password) || PLACEHOLDER.test(m[1])) continue;
        return m[0];
      }
      return null;
    },
  },
  {
    id: 'generic-secret-assignment',
    // `password = "…"`, `apiKey: '…'`, `SECRET_TOKEN="…"`: a long, random-looking literal.
    test: (line) => {
      const re = /\b[\w.-]*(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret|auth)[\w.-]*["']?\s*(?:[:=]|:=|=>)\s*(["'`])([^"'`\s]{16,})\1/gi;
      for (const m of line.matchAll(re)) {
        const value = m[2];
        if (PLACEHOLDER.test(value) || entropy(value) < 3.5) continue;
        if (isUnsignedJwt(value)) continue;
        // Readable phrases ("wrong-password-123") are fixtures; generated secrets are not made of words.
        if (value.split(/[-_.]/).every((part) => /^[a-z]*$/i.test(part) || /^[0-9]{1,6}$/.test(part))) continue;
        // Identifiers, paths and URLs are names of things, not secrets.
        if (/^(?:https?:)?\/\//.test(value) && !/:[^/]*@/.test(value)) continue;
        return value;
      }
      return null;
    },
  },
  {
    id: 'env-file-secret',
    // KEY=value lines in dotenv-style files: any non-placeholder value of a secret variable.
    test: (line, file) => {
      if (!file.isEnvFile) return null;
      const m = line.match(/^\s*(?:export\s+)?([A-Z0-9_]*(?:PASSWORD|PASS|SECRET|TOKEN|API_KEY|PRIVATE_KEY|SIGNING_KEYS?|CREDENTIALS))\s*=\s*(.+?)\s*$/);
      if (!m) return null;
      const value = m[2].replace(/^["']|["']$/g, '');
      return value === '' || PLACEHOLDER.test(value) ? null : value;
    },
  },
];

/** `alg: none` JWTs (test fixtures for rejecting them) carry no signature and grant nothing. */
function isUnsignedJwt(value) {
  const m = value.match(/^(eyJ[A-Za-z0-9_-]*)\.[A-Za-z0-9_-]*\.$/);
  if (!m) return false;
  try {
    return JSON.parse(Buffer.from(m[1], 'base64url').toString('utf8')).alg === 'none';
  } catch {
    return false;
  }
}

function decodeSafe(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function loadAllowlist(root) {
  const file = join(root, '.secret-scan-allow');
  if (!existsSync(file)) return [];
  const entries = [];
  for (const [i, raw] of readFileSync(file, 'utf8').split('\n').entries()) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    const idx = line.indexOf(':');
    const path = (idx === -1 ? line : line.slice(0, idx)).trim();
    const reason = idx === -1 ? '' : line.slice(idx + 1).trim();
    if (!reason) throw new Error(`.secret-scan-allow:${i + 1}: every entry needs "path: reason"`);
    entries.push(path);
  }
  return entries;
}

function allowed(path, allowlist) {
  return allowlist.some((a) => (a.endsWith('/') ? path.startsWith(a) : path === a));
}

function redact(value) {
  return value.length <= 8 ? '***' : `${value.slice(0, 4)}…(${value.length} chars)`;
}

function main() {
  let root;
  let files;
  try {
    root = execFileSync('git', ['rev-parse', '--show-toplevel'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).split('\0').filter(Boolean);
  } catch (err) {
    process.stderr.write(`secret-scan: not a git repository or git missing (${err.message.split('\n')[0]})\n`);
    return 2;
  }
  const allowlist = loadAllowlist(root);
  const findings = [];
  let scanned = 0;
  for (const path of files) {
    if (allowed(path, allowlist)) continue;
    const full = join(root, path);
    let buf;
    try {
      if (!statSync(full).isFile() || statSync(full).size > MAX_BYTES) continue;
      buf = readFileSync(full);
    } catch {
      // Tracked but deleted in the working tree: nothing to scan.
      continue;
    }
    if (buf.includes(0)) continue; // binary
    scanned++;
    const text = buf.toString('utf8');
    const base = path.split('/').pop();
    const file = { path, text, isTest: isTestPath(path), isEnvFile: base === '.env' || base.startsWith('.env.') || base.endsWith('.env') };
    const lines = text.split('\n');
    for (const [i, line] of lines.entries()) {
      if (line.length > 5_000) continue; // minified or generated
      for (const rule of RULES) {
        const hit = rule.test(line, file);
        if (hit) findings.push(`${path}:${i + 1}: ${rule.id}: ${redact(hit)}`);
      }
    }
  }
  if (findings.length > 0) {
    process.stderr.write(`secret-scan: ${findings.length} possible secret(s) in tracked files:\n${findings.map((f) => `  ${f}`).join('\n')}\n`);
    process.stderr.write('Remove them (and rotate them: they are in git history), or list a false positive in .secret-scan-allow with a reason.\n');
    return 1;
  }
  process.stdout.write(`secret-scan: ${scanned} files clean\n`);
  return 0;
}

process.exitCode = main();
