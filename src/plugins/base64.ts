/**
 * The one base64 decoder for evidence and plugin payloads: standard alphabet, padded, canonical
 * length, bounded before decoding (Buffer.from alone skips junk characters and never fails).
 */
import { SigilError } from '../errors.js';

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export interface Base64Options {
  /** Error code on failure, e.g. `nitro.bad_response`. */
  code: string;
  /** Largest decoded size accepted. */
  maxBytes: number;
  /** Smallest decoded size accepted (default 1: empty is refused). */
  minBytes?: number;
  /** HTTP status of the error (default 400). */
  status?: number;
}

function fail(opts: Base64Options, what: string, why: string): never {
  throw new SigilError(opts.code, `${what} ${why}`, { status: opts.status ?? 400 });
}

/** Decode `value` (named `what` in the error) or throw SigilError(opts.code). */
export function decodeBase64(value: unknown, what: string, opts: Base64Options): Buffer {
  // (No closure for the failures: one per call was a measurable part of an attestation.)
  const min = opts.minBytes ?? 1;
  if (typeof value !== 'string') return fail(opts, what, 'must be a base64 string');
  if (value.length > Math.ceil(opts.maxBytes / 3) * 4) return fail(opts, what, `is larger than ${opts.maxBytes} bytes`);
  const b = Buffer.from(value, 'base64');
  // Buffer.from skips junk and takes base64url too, so the text must be checked. A text that is its
  // decoding's standard encoding (the usual case) is canonical: the pattern would accept it, and
  // re-encoding costs less than matching it. Any other text is judged by the pattern, as before
  // (it also accepts a last quantum with non-zero unused bits, which re-encoding would not give).
  if (b.toString('base64') !== value && !B64_RE.test(value)) return fail(opts, what, 'is not standard base64 (A–Z a–z 0–9 + /, padded with =)');
  if (b.length < min) return fail(opts, what, min === 1 ? 'must not be empty' : `must be at least ${min} bytes`);
  if (b.length > opts.maxBytes) return fail(opts, what, `is larger than ${opts.maxBytes} bytes`);
  return b;
}
