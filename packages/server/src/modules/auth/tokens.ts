import { createHash, randomBytes } from 'node:crypto';
import { SignJWT, createLocalJWKSet, importJWK, jwtVerify, type CryptoKey, type JWTVerifyGetKey } from 'jose';
import type { Jwks } from '@secureconnect/protocol';
import type { JsonWebKeyWithKid } from '../../config.js';
import { AppError } from '../../infra/errors.js';

/** Fixed `iss` and `aud`: a token minted for another service or by another issuer never passes. */
export const TOKEN_ISSUER = 'secureconnect';
export const TOKEN_AUDIENCE = 'secureconnect-api';
const ALG = 'EdDSA';
/** Tolerates small clock differences between nodes, far below the 15 min lifetime. */
const CLOCK_TOLERANCE_SEC = 5;

export interface AccessClaims {
  userId: string;
  sessionId: string;
}

/**
 * The access-token keys ([S1]): the first configured key signs, every key
 * verifies, so a new key can be added before it becomes the signer and an old
 * one kept until the tokens it signed have expired.
 */
export class TokenKeys {
  private constructor(
    private readonly signer: { kid: string; key: CryptoKey | Uint8Array },
    private readonly keySet: JWTVerifyGetKey,
  ) {}

  static async load(keys: readonly JsonWebKeyWithKid[]): Promise<TokenKeys> {
    const first = keys[0];
    if (!first) throw new Error('no JWT signing key configured');
    const signer = { kid: first.kid, key: await importJWK({ ...first, alg: ALG }, ALG) };
    const publicKeys = publicJwks(keys);
    const local = createLocalJWKSet({ keys: publicKeys.keys.map((k) => ({ ...k })) });
    // Only tokens naming one of our keys: without a kid the set would fall back to "the only key".
    const keySet: JWTVerifyGetKey = (header, token) => {
      if (typeof header.kid !== 'string' || header.kid === '') throw new AppError('invalid_token');
      return local(header, token);
    };
    return new TokenKeys(signer, keySet);
  }

  async sign(claims: AccessClaims, ttlSec: number): Promise<string> {
    return new SignJWT({ sid: claims.sessionId })
      .setProtectedHeader({ alg: ALG, kid: this.signer.kid, typ: 'JWT' })
      .setSubject(claims.userId)
      .setIssuer(TOKEN_ISSUER)
      .setAudience(TOKEN_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(`${ttlSec}s`)
      .sign(this.signer.key);
  }

  /** Signature, algorithm, issuer, audience and lifetime; the session is checked by the caller. */
  async verify(token: string): Promise<AccessClaims> {
    try {
      const { payload } = await jwtVerify(token, this.keySet, {
        algorithms: [ALG],
        issuer: TOKEN_ISSUER,
        audience: TOKEN_AUDIENCE,
        requiredClaims: ['sub', 'sid', 'iat', 'exp'],
        clockTolerance: CLOCK_TOLERANCE_SEC,
      });
      if (typeof payload.sub !== 'string' || typeof payload.sid !== 'string') throw new AppError('invalid_token');
      return { userId: payload.sub, sessionId: payload.sid };
    } catch {
      // Every failure (forged, foreign key, alg none/HS256, expired, malformed) looks the same to the client.
      throw new AppError('invalid_token');
    }
  }
}

/** The public half of the keys: `kty`, `crv`, `x` and nothing else of the private JWK (never `d`). */
export function publicJwks(keys: readonly JsonWebKeyWithKid[]): Jwks {
  return { keys: keys.map((k) => ({ kty: k.kty, crv: k.crv ?? 'Ed25519', x: k.x ?? '', kid: k.kid, alg: ALG, use: 'sig' })) };
}

/** An opaque refresh token: 256 random bits. Only its hash is stored ([S2]). */
export function newRefreshToken(): string {
  return randomBytes(32).toString('base64url');
}

export function hashRefreshToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}
