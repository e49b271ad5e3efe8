/**
 * The one error class Sigil throws on purpose. `code` is stable (users and tests
 * match on it); `message` is a one-line human reason naming the check that failed.
 *
 * Codes are `area.reason` in snake_case, e.g. `spiffe.id_bad_scheme`,
 * `nitro.signature_invalid`, `tpm.quote_nonce_mismatch`. The full list lives in
 * docs/errors.md; add a row there whenever you add a code.
 */
export class SigilError extends Error {
  readonly code: string;
  /** HTTP status a service should answer with when this error reaches the edge. */
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, opts: { status?: number; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'SigilError';
    this.code = code;
    this.status = opts.status ?? 400;
    this.details = opts.details;
  }

  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isSigilError(e: unknown): e is SigilError {
  return e instanceof SigilError;
}

/** The message of anything thrown: an Error's message, otherwise its string form. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Log fields for anything thrown, one shape everywhere: `err` is the one-line message, `code` the
 * SigilError code, and `stack` only for errors Sigil did not throw on purpose (bugs, or a library's
 * exception wrapped as the cause of a SigilError).
 */
export function errorFields(e: unknown): { err: string; code?: string; stack?: string } {
  if (e instanceof SigilError) {
    // A SigilError wrapping a library's exception (asSigilError) keeps that exception's stack.
    const c: unknown = e.cause;
    if (c instanceof Error && !(c instanceof SigilError) && c.stack !== undefined) return { err: e.message, code: e.code, stack: c.stack };
    return { err: e.message, code: e.code };
  }
  if (e instanceof Error && e.stack !== undefined) return { err: e.message, stack: e.stack };
  return { err: errorMessage(e) };
}

/** Wrap anything thrown by a library into a SigilError with the given code, keeping SigilErrors as they are. */
export function asSigilError(e: unknown, code: string, prefix: string): SigilError {
  if (e instanceof SigilError) return e;
  const msg = errorMessage(e);
  return new SigilError(code, `${prefix}: ${msg}`, { cause: e });
}
