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

/** Decode `value` (named `what` in the error) or throw SigilError(opts.code). */
export function decodeBase64(value: unknown, what: string, opts: Base64Options): Buffer {
  const min = opts.minBytes ?? 1;
  const fail = (why: string): never => {
    throw new SigilError(opts.code, `${what} ${why}`, { status: opts.status ?? 400 });
  };
  if (typeof value !== 'string') return fail('must be a base64 string');
  if (value.length > Math.ceil(opts.maxBytes / 3) * 4) return fail(`is larger than ${opts.maxBytes} bytes`);
  if (!B64_RE.test(value)) return fail('is not standard base64 (A–Z a–z 0–9 + /, padded with =)');
  const b = Buffer.from(value, 'base64');
  if (b.length < min) return fail(min === 1 ? 'must not be empty' : `must be at least ${min} bytes`);
  if (b.length > opts.maxBytes) return fail(`is larger than ${opts.maxBytes} bytes`);
  return b;
}
