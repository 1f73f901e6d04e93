import { Type, type Static } from 'typebox';
import { Email, Obj, Password } from './common.js';

/** Single-use tokens mailed for verification and password reset: 32 random bytes, base64url ([AC3], [AC4]). */
export const AccountToken = Type.String({ minLength: 16, maxLength: 128, pattern: '^[A-Za-z0-9_-]+$' });

export const VerifyEmailBody = Obj({ token: AccountToken });
export type VerifyEmailBody = Static<typeof VerifyEmailBody>;

export const ForgotPasswordBody = Obj({ email: Email });
export type ForgotPasswordBody = Static<typeof ForgotPasswordBody>;

export const ResetPasswordBody = Obj({ token: AccountToken, newPassword: Password });
export type ResetPasswordBody = Static<typeof ResetPasswordBody>;

export const ChangePasswordBody = Obj({
  currentPassword: Type.String({ minLength: 1, maxLength: 128 }),
  newPassword: Password,
});
export type ChangePasswordBody = Static<typeof ChangePasswordBody>;

/** The one answer to a reset request, whether or not the address has an account ([AC4]). */
export const Accepted = Obj({ status: Type.Literal('accepted') });
export type Accepted = Static<typeof Accepted>;

/** Languages the mail templates are written in ([AC2]). */
export const MAIL_LOCALES = ['en', 'cs'] as const;
export type MailLocale = (typeof MAIL_LOCALES)[number];
