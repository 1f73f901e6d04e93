import { randomBytes } from 'node:crypto';
import { hash, verify, type Options } from '@node-rs/argon2';

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
