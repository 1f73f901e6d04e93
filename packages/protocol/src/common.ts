import { Type, type Static, type TProperties } from 'typebox';

/** Objects on the wire reject unknown fields (AF-I1). */
export const Obj = <T extends TProperties>(props: T, opts: { description?: string; $id?: string } = {}) =>
  Type.Object(props, { additionalProperties: false, ...opts });

/** UUID (we issue v7). A pattern, not a format, so every validator agrees. */
export const Id = Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', maxLength: 36 });
export type Id = Static<typeof Id>;

export const Timestamp = Type.String({ description: 'ISO 8601 UTC timestamp', maxLength: 40 });

export const Username = Type.String({ minLength: 3, maxLength: 32, pattern: '^[a-zA-Z0-9_.]+$' });
export const Email = Type.String({ minLength: 3, maxLength: 254, pattern: '^[^\\s@]+@[^\\s@]+\\.[^\\s@]+$' });
/** ASVS 6.2.1: at least 8 characters; 128 bounds hashing cost. */
export const Password = Type.String({ minLength: 8, maxLength: 128 });
export const DisplayName = Type.String({ minLength: 1, maxLength: 64 });

export const ErrorResponse = Obj({
  error: Obj({
    code: Type.String(),
    message: Type.String(),
    requestId: Type.Optional(Type.String()),
    details: Type.Optional(Type.Unknown()),
  }),
});
