import { Type, type Static } from 'typebox';
import { AuthResult } from './api.js';
import { Obj } from './common.js';

/** A TOTP code as an authenticator app shows it: 6 digits ([MF3]). */
export const TotpCode = Type.String({ pattern: '^[0-9]{6}$' });
/** A recovery code as issued (`xxxx-xxxx-xxxx-xxxx`, base32); case, spaces and dashes are ignored ([MF4]). */
export const RecoveryCode = Type.String({ minLength: 16, maxLength: 40, pattern: '^[A-Za-z2-7 -]+$' });

/** [MF2] The first login step when the account has 2FA: no tokens yet, only a short-lived single-use challenge. */
export const MfaChallenge = Obj({
  mfaRequired: Type.Literal(true),
  mfaToken: Type.String({ description: 'single use; send it with a code to POST /v1/auth/login/mfa' }),
  expiresIn: Type.Integer({ description: 'seconds the challenge is valid' }),
});
export type MfaChallenge = Static<typeof MfaChallenge>;

/** [MF2] What POST /v1/auth/login answers: tokens, or a challenge when the account has 2FA. */
export const LoginResult = Type.Union([AuthResult, MfaChallenge]);
export type LoginResult = Static<typeof LoginResult>;

/** True when a login answer is the 2FA challenge rather than tokens. */
export function isMfaChallenge(r: LoginResult): r is MfaChallenge {
  return (r as Partial<MfaChallenge>).mfaRequired === true;
}

/** [MF2] Exactly one of `code` and `recoveryCode`. */
export const LoginMfaBody = Obj({
  mfaToken: Type.String({ minLength: 16, maxLength: 128, pattern: '^[A-Za-z0-9_-]+$' }),
  code: Type.Optional(TotpCode),
  recoveryCode: Type.Optional(RecoveryCode),
});
export type LoginMfaBody = Static<typeof LoginMfaBody>;

/** [MF5] The password, and a code when the account has 2FA. */
export const ReauthBody = Obj({
  password: Type.String({ minLength: 1, maxLength: 128 }),
  code: Type.Optional(TotpCode),
  recoveryCode: Type.Optional(RecoveryCode),
});
export type ReauthBody = Static<typeof ReauthBody>;

export const ReauthResult = Obj({ reauthUntil: Type.String({ format: 'date-time' }) });
export type ReauthResult = Static<typeof ReauthResult>;

/** [MF1] A secret not yet active: enter it in an authenticator app, then confirm with a code. */
export const TotpEnrolment = Obj({
  secret: Type.String({ description: 'base32' }),
  otpauthUri: Type.String({ description: 'otpauth://totp/… for a QR code' }),
});
export type TotpEnrolment = Static<typeof TotpEnrolment>;

export const ConfirmTotpBody = Obj({ code: TotpCode });
export type ConfirmTotpBody = Static<typeof ConfirmTotpBody>;

/** [MF1]/[MF4] Shown once; only hashes are kept. */
export const RecoveryCodes = Obj({ recoveryCodes: Type.Array(Type.String(), { minItems: 1, maxItems: 20 }) });
export type RecoveryCodes = Static<typeof RecoveryCodes>;

/** [MF6] A current code or a recovery code. */
export const DisableTotpBody = Obj({
  code: Type.Optional(TotpCode),
  recoveryCode: Type.Optional(RecoveryCode),
});
export type DisableTotpBody = Static<typeof DisableTotpBody>;

/** [MF4] */
export const MfaStatus = Obj({
  totp: Type.Boolean(),
  recoveryCodesRemaining: Type.Integer({ minimum: 0 }),
});
export type MfaStatus = Static<typeof MfaStatus>;
