/**
 * Measurement logs (the firmware event log, the IMA list) arrive as base64 text of tens of
 * kilobytes. Only canonical standard base64 is accepted: the one text that encodes the bytes
 * (alphabet A–Z a–z 0–9 + /, padded with "=" to a multiple of four, unused tail bits zero). Then a
 * text names its bytes, which the event log memo relies on (src/tpm/eventlog/cache.ts).
 *
 * Node's base64 decoder is lenient: it also takes the URL-safe alphabet ("-", "_"), skips
 * whitespace and other characters outside the alphabet, and ignores the tail bits. Canonical form
 * is therefore checked around it without encoding the bytes again (which cost a second ~50 KB
 * string per log, and the scavenges it brought):
 *   - the length is a multiple of four, with at most two "=", only at the end;
 *   - no "-" or "_" (the only characters outside the standard alphabet that the decoder maps to
 *     values);
 *   - the decoder wrote exactly 3/4 of the length less the padding: every other character it skips
 *     (or stops at) would leave fewer bytes;
 *   - the last character before the padding carries no bits beyond the data (its low 2 bits are 0
 *     with one "=", its low 4 bits with two).
 * test/tpm/log-text.test.ts checks this against re-encoding on many mutated texts.
 */
import { SigilError } from '../errors.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** Value of each standard base64 character by char code; -1 for others. */
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) VALUE[ALPHABET.charCodeAt(i)] = i;

// Outside decodeCanonicalInto: a closure over `field` there was made on every call, for a throw
// that canonical text never reaches.
function notCanonicalError(field: string): never {
  throw new SigilError('tpm.bad_response', `${field} is not canonical standard base64`);
}

/** Throws unless `v` is a non-empty string short enough to hold at most `maxBytes`. */
export function checkLogB64Length(v: unknown, field: string, maxBytes: number): asserts v is string {
  if (typeof v !== 'string' || v.length === 0) throw new SigilError('tpm.bad_response', `${field} must be a non-empty base64 string`);
  if (v.length > Math.ceil((maxBytes * 4) / 3) + 4) throw new SigilError('tpm.bad_response', `${field} is larger than ${maxBytes} bytes`);
}

/**
 * Decodes canonical base64 `text` into `target` (room for 3/4 of its length) and returns the number
 * of bytes; throws `tpm.bad_response` naming `field` for any other text.
 */
export function decodeCanonicalInto(text: string, target: Buffer, field: string): number {
  const len = text.length;
  if (len % 4 !== 0) return notCanonicalError(field);
  const eq = text.indexOf('=');
  const pad = eq < 0 ? 0 : len - eq;
  if (pad > 2 || (pad === 2 && text.charCodeAt(len - 1) !== 0x3d)) return notCanonicalError(field);
  if (text.indexOf('-') >= 0 || text.indexOf('_') >= 0) return notCanonicalError(field);
  // Node's decoder reads a character by its low byte, so 'š' (U+0161) decodes as 'a' would: only
  // ASCII text is base64 at all (one UTF-8 byte per character exactly when every one is ASCII).
  if (Buffer.byteLength(text, 'utf8') !== len) return notCanonicalError(field);
  const want = (len / 4) * 3 - pad;
  if (target.length < want) throw new RangeError(`decodeCanonicalInto: ${target.length} bytes of room for ${want}`);
  const n = target.write(text, 0, 'base64');
  if (n !== want) return notCanonicalError(field);
  if (pad > 0) {
    const last = VALUE[text.charCodeAt(len - pad - 1)] ?? -1;
    // One "=": the last character holds 2 bits beyond the data; two "=": 4 bits.
    if (last < 0 || (last & (pad === 1 ? 0x03 : 0x0f)) !== 0) return notCanonicalError(field);
  }
  return n;
}

/** A whole log text decoded into a new buffer (checked as `decodeCanonicalInto` does). */
export function decodeLogB64(v: unknown, field: string, maxBytes: number): Buffer {
  checkLogB64Length(v, field, maxBytes);
  const b = Buffer.alloc(Math.floor((v.length * 3) / 4));
  const n = decodeCanonicalInto(v, b, field);
  if (n > maxBytes) throw new SigilError('tpm.bad_response', `${field} is larger than ${maxBytes} bytes`);
  return n === b.length ? b : b.subarray(0, n);
}

/**
 * `decodeLogB64` into a buffer reused from call to call (grown as needed, up to the limit), for a
 * log whose bytes are not kept past the check that reads them: a log the verifier has not seen
 * then costs no new 40 KB buffer. The result is a view valid until the next call.
 */
export class LogDecoder {
  private scratch = Buffer.alloc(0);
  constructor(
    private readonly field: string,
    private readonly maxBytes: number,
  ) {}

  decode(v: unknown): Buffer {
    checkLogB64Length(v, this.field, this.maxBytes);
    // Canonical base64 of n bytes is 4·ceil(n/3) characters, so a text of that length decodes to at most 3/4 of it.
    const room = Math.floor((v.length * 3) / 4);
    if (this.scratch.length < room) this.scratch = Buffer.alloc(Math.max(room, Math.min(2 * this.scratch.length, Math.ceil(this.maxBytes / 3) * 3 + 3)));
    const n = decodeCanonicalInto(v, this.scratch, this.field);
    if (n > this.maxBytes) throw new SigilError('tpm.bad_response', `${this.field} is larger than ${this.maxBytes} bytes`);
    return this.scratch.subarray(0, n);
  }
}
