import { randomBytes } from 'node:crypto';
import { hash, verify, type Options } from '@node-rs/argon2';
import { dictionary } from '@zxcvbn-ts/language-common';
import { AppError } from '../../infra/errors.js';

/** OWASP Password Storage Cheat Sheet, argon2id first choice: m=19 MiB, t=2, p=1. */
const ARGON2: Options = {
  // Algorithm.Argon2id: the enum is a `const enum`, which isolated modules cannot import.
  algorithm: 2,
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1,
};

export function hashPassword(password: string): Promise<string> {
  return hash(password, ARGON2);
}

export async function verifyPassword(passwordHash: string, password: string): Promise<boolean> {
  try {
    return await verify(passwordHash, password);
  } catch {
    // A malformed stored hash must read as "wrong password", never as a 500 that tells accounts apart.
    return false;
  }
}

/**
 * A hash of a random password with the same parameters, verified when the
 * login names no account, so an unknown login costs the same time as a wrong
 * password (AF-A2).
 */
export function makeDummyHash(): Promise<string> {
  return hashPassword(randomBytes(24).toString('base64url'));
}

/** ASVS 6.2.1: at least 8 characters (the schema caps at 128, ASVS 6.2.9 allows 64+). */
export const PASSWORD_MIN_CHARS = 8;

/**
 * ASVS 6.2.4 / [AC6]: the 49,233 most common passwords shipped by
 * @zxcvbn-ts/language-common (its `passwords-common` list, gathered from
 * public breach corpora). Compared case-insensitively.
 */
const COMMON = new Set(dictionary['passwords-common'].map((p) => p.toLowerCase()));

export function commonPasswordCount(): number {
  return COMMON.size;
}

/** Applied at registration, reset and change ([AC6]); `contextWords` are the account's email and username. */
export function checkPasswordPolicy(password: string, contextWords: string[]): void {
  if ([...password].length < PASSWORD_MIN_CHARS) throw new AppError('weak_password', `The password must have at least ${PASSWORD_MIN_CHARS} characters.`);
  const lower = password.toLowerCase();
  if (COMMON.has(lower)) throw new AppError('weak_password', 'This password is among the most commonly used ones; choose another.');
  if (contextWords.some((w) => w.length > 0 && lower === w)) throw new AppError('weak_password', 'The password must not be your email or username.');
}
