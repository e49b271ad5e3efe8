/**
 * Decoding of a Nitro attestation document: COSE_Sign1 (RFC 9052 §4.2; tagged with 18 or
 * untagged) around a CBOR map (AWS attestation document spec, aws-nitro-enclaves-nsm-api
 * docs/attestation_process.md). CBOR is decoded by a strict decoder of its own (StrictCborReader);
 * every field is checked for presence, type and size. Nothing here checks signatures: see verify.ts.
 */
import { Tag } from 'cbor2';
import { SigilError, errorMessage } from '../errors.js';

/** Protected header bytes every Nitro document carries: {1: -35} = { alg: ES384 }. */
export const ES384_PROTECTED_HEADER = Buffer.from('a1013822', 'hex');
/** Payload is at most 16 KiB (AWS spec); the COSE envelope adds well under 1 KiB. */
export const MAX_PAYLOAD_BYTES = 16384;
export const MAX_DOCUMENT_BYTES = MAX_PAYLOAD_BYTES + 1024;
export const MAX_CABUNDLE_ENTRIES = 16;
export const MAX_USER_BYTES = 1024;

/** Deepest container nesting accepted (a Nitro document needs 3, an NSM message 4). */
export const MAX_CBOR_DEPTH = 8;

class CborReject extends Error {}

/** Text strings up to this many bytes are tried as ASCII first (see StrictCborReader). */
const SHORT_TEXT = 64;

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A strict CBOR (RFC 8949) decoder for the one shape this module reads, written for speed (the
 * general-purpose decoder cost as much CPU as the COSE signature check) and for strictness:
 * - definite lengths only (no indefinite-length items, no "break");
 * - every head in preferred (shortest) form, so equal values have equal bytes;
 * - maps decode as Map, and a key encoded twice (same bytes) is refused — with preferred heads
 *   that is every duplicate key, including `0x01` vs `0x18 0x01`;
 * - integers within ±(2^53 − 1) only; no floats, no simple values but false, true and null (no
 *   `undefined`); text must be well-formed UTF-8;
 * - tags are returned as cbor2 `Tag` objects, never interpreted (the caller checks COSE's 18);
 * - nesting depth at most MAX_CBOR_DEPTH; a length or count larger than the bytes left is refused
 *   before anything is allocated; trailing bytes after the one item are refused.
 * Byte strings are views into the input.
 */
class StrictCborReader {
  private pos = 0;

  constructor(private readonly b: Uint8Array) {}

  static decode(bytes: Uint8Array): unknown {
    const r = new StrictCborReader(bytes);
    const v = r.item(0);
    if (r.pos !== bytes.length) throw new CborReject(`${bytes.length - r.pos} trailing byte(s) after the item`);
    return v;
  }

  private byte(): number {
    if (this.pos >= this.b.length) throw new CborReject('truncated item');
    return this.b[this.pos++] as number;
  }

  /** The argument of a head with additional information `ai`, checked for preferred form. */
  private argument(ai: number): number {
    if (ai < 24) return ai;
    if (ai === 24) {
      const v = this.byte();
      if (v < 24) throw new CborReject('head not in preferred (shortest) form');
      return v;
    }
    if (ai === 25 || ai === 26 || ai === 27) {
      const n = ai === 25 ? 2 : ai === 26 ? 4 : 8;
      if (this.pos + n > this.b.length) throw new CborReject('truncated item');
      let v = 0;
      for (let i = 0; i < n; i++) v = v * 256 + (this.b[this.pos + i] as number);
      this.pos += n;
      const min = ai === 25 ? 0x100 : ai === 26 ? 0x10000 : 0x100000000;
      if (v < min) throw new CborReject('head not in preferred (shortest) form');
      // Above 2^53 the sum above is inexact; such a value is refused wherever it is used.
      return v;
    }
    if (ai === 31) throw new CborReject('indefinite-length items are not accepted');
    throw new CborReject(`reserved additional information ${ai}`);
  }

  private length(ai: number, unit: number, what: string): number {
    const n = this.argument(ai);
    if (n > (this.b.length - this.pos) / unit) throw new CborReject(`${what} length ${n} exceeds the bytes left`);
    return n;
  }

  private item(depth: number): unknown {
    const ib = this.byte();
    const major = ib >> 5;
    const ai = ib & 0x1f;
    switch (major) {
      case 0: {
        const v = this.argument(ai);
        if (v > Number.MAX_SAFE_INTEGER) throw new CborReject('integer out of the safe range');
        return v;
      }
      case 1: {
        const v = this.argument(ai);
        if (v >= Number.MAX_SAFE_INTEGER) throw new CborReject('negative integer out of the safe range');
        return -1 - v;
      }
      case 2: {
        const n = this.length(ai, 1, 'byte string');
        const v = this.b.subarray(this.pos, this.pos + n);
        this.pos += n;
        return v;
      }
      case 3: {
        const n = this.length(ai, 1, 'text string');
        const start = this.pos;
        this.pos += n;
        // Short ASCII text (every key and most values of a Nitro document) is built directly: ASCII
        // is well-formed UTF-8 that decodes to the same code units, so the result is identical.
        if (n <= SHORT_TEXT) {
          let s = '';
          let ascii = true;
          for (let i = start; i < start + n; i++) {
            const c = this.b[i] as number;
            if (c >= 0x80) {
              ascii = false;
              break;
            }
            s += String.fromCharCode(c);
          }
          if (ascii) return s;
        }
        try {
          return UTF8.decode(this.b.subarray(start, start + n));
        } catch {
          throw new CborReject('text string is not valid UTF-8');
        }
      }
      case 4: {
        if (depth >= MAX_CBOR_DEPTH) throw new CborReject(`nesting deeper than ${MAX_CBOR_DEPTH}`);
        const n = this.length(ai, 1, 'array');
        const out: unknown[] = new Array<unknown>(n);
        for (let i = 0; i < n; i++) out[i] = this.item(depth + 1);
        return out;
      }
      case 5: {
        if (depth >= MAX_CBOR_DEPTH) throw new CborReject(`nesting deeper than ${MAX_CBOR_DEPTH}`);
        const n = this.length(ai, 2, 'map');
        const out = new Map<unknown, unknown>();
        // Keys that decode to numbers, strings, booleans or null are equal exactly when their bytes
        // are (heads are in preferred form, text is UTF-8 checked), so `out.has` finds their
        // duplicates; other keys (byte strings, arrays, maps, tags) decode to fresh objects and are
        // compared by their encoded bytes.
        let seen: Set<string> | undefined;
        for (let i = 0; i < n; i++) {
          const start = this.pos;
          const key = this.item(depth + 1);
          if (typeof key === 'object' && key !== null) {
            const keyBytes = Buffer.from(this.b.buffer, this.b.byteOffset + start, this.pos - start).toString('latin1');
            seen ??= new Set<string>();
            if (seen.has(keyBytes)) throw new CborReject('duplicate map key');
            seen.add(keyBytes);
          } else if (out.has(key)) {
            throw new CborReject('duplicate map key');
          }
          out.set(key, this.item(depth + 1));
        }
        return out;
      }
      case 6: {
        if (depth >= MAX_CBOR_DEPTH) throw new CborReject(`nesting deeper than ${MAX_CBOR_DEPTH}`);
        const tag = this.argument(ai);
        if (tag > Number.MAX_SAFE_INTEGER) throw new CborReject('tag number out of the safe range');
        return new Tag(tag, this.item(depth + 1));
      }
      default: {
        if (ai === 20) return false;
        if (ai === 21) return true;
        if (ai === 22) return null;
        if (ai === 23) throw new CborReject('undefined is not accepted');
        if (ai === 25 || ai === 26 || ai === 27) throw new CborReject('floating-point numbers are not accepted');
        if (ai === 31) throw new CborReject('unexpected "break"');
        throw new CborReject('simple values other than false, true and null are not accepted');
      }
    }
  }
}

function bad(code: string, message: string): SigilError {
  return new SigilError(code, message, { status: 400 });
}

/** Decode one CBOR item under the strict profile (StrictCborReader); any failure becomes SigilError(code). */
export function decodeStrict(bytes: Uint8Array, what: string, code = 'nitro.cbor_invalid'): unknown {
  try {
    return StrictCborReader.decode(bytes);
  } catch (e) {
    throw bad(code, `${what} is not valid CBOR under the strict profile: ${errorMessage(e)}`);
  }
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

function view(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

export interface CoseSign1 {
  /** The protected header byte string exactly as received. */
  protectedHeader: Buffer;
  /** The payload byte string exactly as received. */
  payload: Buffer;
  /** Raw r‖s, 96 bytes. */
  signature: Buffer;
  tagged: boolean;
}

/** Parse the COSE_Sign1 envelope and check its headers. Byte strings are views into `bytes`. */
export function parseCoseSign1(bytes: Uint8Array): CoseSign1 {
  if (bytes.length === 0) throw bad('nitro.cbor_invalid', 'attestation document is empty');
  if (bytes.length > MAX_DOCUMENT_BYTES) {
    throw bad('nitro.too_large', `attestation document is ${bytes.length} bytes (limit ${MAX_DOCUMENT_BYTES})`);
  }
  let top = decodeStrict(bytes, 'attestation document');
  let tagged = false;
  if (top instanceof Tag) {
    if (top.tag !== 18 && top.tag !== 18n) throw bad('nitro.cose_invalid', `COSE tag ${String(top.tag)} is not COSE_Sign1 (18)`);
    top = top.contents;
    tagged = true;
  }
  if (!Array.isArray(top) || top.length !== 4) throw bad('nitro.cose_invalid', 'COSE_Sign1 must be an array of 4 items');
  const [prot, unprot, payload, sig] = top as unknown[];
  if (!isBytes(prot)) throw bad('nitro.cose_invalid', 'COSE_Sign1 protected header must be a byte string');
  if (!view(prot).equals(ES384_PROTECTED_HEADER)) {
    throw bad('nitro.bad_protected_header', `protected header must be exactly a1013822 ({alg: ES384}), got ${view(prot).subarray(0, 32).toString('hex')}`);
  }
  // AWS documents carry an empty map here ("We have nothing in unprotected"); COSE requires a map.
  if (!(unprot instanceof Map)) throw bad('nitro.bad_unprotected_header', 'unprotected header must be a map');
  if (unprot.size !== 0) throw bad('nitro.bad_unprotected_header', `unprotected header must be empty, has ${unprot.size} entries`);
  if (!isBytes(payload)) throw bad('nitro.cose_invalid', 'COSE_Sign1 payload must be a byte string (detached payloads are not accepted)');
  if (payload.length === 0 || payload.length > MAX_PAYLOAD_BYTES) {
    throw bad('nitro.cose_invalid', `payload is ${payload.length} bytes (must be 1..${MAX_PAYLOAD_BYTES})`);
  }
  if (!isBytes(sig)) throw bad('nitro.cose_invalid', 'COSE_Sign1 signature must be a byte string');
  if (sig.length !== 96) throw bad('nitro.cose_invalid', `ES384 signature must be 96 bytes (r‖s), got ${sig.length}`);
  return { protectedHeader: view(prot), payload: view(payload), signature: view(sig), tagged };
}

/** Bytes of a byte-string head for `len` (preferred form). */
function bstrHeadLength(len: number): number {
  return len < 24 ? 1 : len < 0x100 ? 2 : len < 0x10000 ? 3 : 5;
}

/** Write the byte-string head for `len` at `off`; returns the offset after it. */
function writeBstrHead(out: Buffer, off: number, len: number): number {
  if (len < 24) {
    out[off] = 0x40 | len;
    return off + 1;
  }
  if (len < 0x100) {
    out[off] = 0x58;
    out[off + 1] = len;
    return off + 2;
  }
  if (len < 0x10000) {
    out[off] = 0x59;
    out.writeUInt16BE(len, off + 1);
    return off + 3;
  }
  out[off] = 0x5a;
  out.writeUInt32BE(len, off + 1);
  return off + 5;
}

/** "Signature1" as a CBOR text string (0x6a = text, length 10). */
const SIGNATURE1 = Buffer.from('6a5369676e617475726531', 'hex');

function sigStructureLength(protectedHeader: Uint8Array, payload: Uint8Array): number {
  return 1 + SIGNATURE1.length + bstrHeadLength(protectedHeader.length) + protectedHeader.length + 1 + bstrHeadLength(payload.length) + payload.length;
}

function writeSigStructure(out: Buffer, protectedHeader: Uint8Array, payload: Uint8Array): number {
  out[0] = 0x84;
  let off = 1 + SIGNATURE1.copy(out, 1);
  off = writeBstrHead(out, off, protectedHeader.length);
  out.set(protectedHeader, off);
  off += protectedHeader.length;
  out[off++] = 0x40; // external_aad = h''
  off = writeBstrHead(out, off, payload.length);
  out.set(payload, off);
  return off + payload.length;
}

/**
 * Sig_structure = ["Signature1", protected, external_aad = h'', payload] (RFC 9052 §4.4), built by
 * writing CBOR heads and the received byte strings into one buffer, so nothing is ever re-encoded.
 */
export function sigStructure(protectedHeader: Uint8Array, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(sigStructureLength(protectedHeader, payload));
  writeSigStructure(out, protectedHeader, payload);
  return out;
}

/** Scratch space for the Sig_structure of any document within MAX_DOCUMENT_BYTES. */
const SIG_SCRATCH = Buffer.allocUnsafe(1 + SIGNATURE1.length + 5 + MAX_DOCUMENT_BYTES);

/**
 * `fn` applied to the Sig_structure of (protectedHeader, payload), built in a module-wide
 * preallocated buffer: no allocation and one copy of the payload per document. The view passed to
 * `fn` is only valid during the (synchronous) call; `fn` must not keep it.
 */
export function withSigStructure<T>(protectedHeader: Uint8Array, payload: Uint8Array, fn: (tbs: Buffer) => T): T {
  const len = sigStructureLength(protectedHeader, payload);
  if (len > SIG_SCRATCH.length) return fn(sigStructure(protectedHeader, payload));
  writeSigStructure(SIG_SCRATCH, protectedHeader, payload);
  return fn(SIG_SCRATCH.subarray(0, len));
}

/**
 * The decoded payload. Not authenticated by itself. `certificate` and `cabundle` are views into the
 * payload passed in (the certificate cache keeps its own copies); the PCR values, `publicKey`,
 * `userData` and `nonce` are copies (in one allocation), so a verified result never changes with
 * the caller's buffer.
 */
export interface NitroDocumentFields {
  moduleId: string;
  digest: 'SHA384';
  /** Milliseconds since the Unix epoch. */
  timestamp: number;
  /** PCR index → value, sorted by index. */
  pcrs: Map<number, Buffer>;
  certificate: Buffer;
  /** Root first, then intermediates (as AWS sends it). */
  cabundle: Buffer[];
  publicKey: Buffer | null;
  userData: Buffer | null;
  nonce: Buffer | null;
}

const REQUIRED = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle'] as const;
const OPTIONAL = ['public_key', 'user_data', 'nonce'] as const;
const ALLOWED = new Set<string>([...REQUIRED, ...OPTIONAL]);
/** The largest time value a JavaScript Date holds (ECMA-262 §21.4.1.1, year 275760). */
const MAX_TIMESTAMP_MS = 8.64e15;
/** module_id becomes the agent ID suffix, so it is limited to SPIFFE path-segment characters. */
const MODULE_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

function badField(field: string, msg: string): SigilError {
  return bad('nitro.payload_bad_field', `payload field "${field}" ${msg}`);
}

function optionalBytes(v: unknown, field: string, min: number, max: number): Buffer | null {
  if (v === null || v === undefined) return null; // CBOR null means absent
  if (!isBytes(v)) throw badField(field, 'must be a byte string or null');
  if (v.length < min || v.length > max) throw badField(field, `is ${v.length} bytes (must be ${min}..${max})`);
  return v as Buffer;
}

/** Decode and check the attestation document payload (the map inside COSE_Sign1). */
export function parseNitroPayload(payload: Uint8Array): NitroDocumentFields {
  // Decoded in place (byte strings are Buffer views into `payload`); the fields handed on are copied below.
  const m = decodeStrict(Buffer.isBuffer(payload) ? payload : view(payload), 'attestation document payload');
  if (!(m instanceof Map)) throw bad('nitro.payload_invalid', 'payload must be a CBOR map');
  for (const k of m.keys()) {
    if (typeof k !== 'string') throw bad('nitro.payload_unknown_field', 'payload has a non-text key');
    if (!ALLOWED.has(k)) throw bad('nitro.payload_unknown_field', `payload has unknown field "${k.slice(0, 64)}"`);
  }
  for (const k of REQUIRED) {
    const v: unknown = m.get(k);
    if (v === undefined || v === null) throw bad('nitro.payload_missing_field', `payload lacks required field "${k}"`);
  }
  const moduleId: unknown = m.get('module_id');
  if (typeof moduleId !== 'string' || !MODULE_ID_RE.test(moduleId) || moduleId === '.' || moduleId === '..') {
    throw badField('module_id', 'must be 1..128 characters of A-Z a-z 0-9 . _ -');
  }
  if (m.get('digest') !== 'SHA384') throw badField('digest', 'must be "SHA384"');
  const ts: unknown = m.get('timestamp');
  // At most the last instant a Date can hold, so every later use (messages, claims) has a valid time.
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts) || ts <= 0 || ts > MAX_TIMESTAMP_MS) {
    throw badField('timestamp', `must be a positive integer (ms since the epoch) of at most ${MAX_TIMESTAMP_MS}`);
  }
  const pcrsIn: unknown = m.get('pcrs');
  if (!(pcrsIn instanceof Map)) throw badField('pcrs', 'must be a map');
  if (pcrsIn.size < 1 || pcrsIn.size > 32) throw badField('pcrs', `has ${pcrsIn.size} entries (must be 1..32)`);
  let last = -1;
  let sorted = true;
  for (const [k, v] of pcrsIn as Map<unknown, unknown>) {
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > 31) throw badField('pcrs', 'has a key that is not an integer 0..31');
    if (!isBytes(v) || (v.length !== 32 && v.length !== 48 && v.length !== 64)) throw badField('pcrs', `entry ${k} must be a byte string of 32, 48 or 64 bytes`);
    if (k < last) sorted = false;
    last = k;
  }
  // AWS sends the PCRs in index order; any other order is sorted here.
  const pcrs = pcrsIn as Map<number, Buffer>;
  const certificate: unknown = m.get('certificate');
  if (!isBytes(certificate) || certificate.length < 1 || certificate.length > 1024) throw badField('certificate', 'must be a byte string of 1..1024 bytes');
  const cabundleIn: unknown = m.get('cabundle');
  if (!Array.isArray(cabundleIn) || cabundleIn.length < 1 || cabundleIn.length > MAX_CABUNDLE_ENTRIES) {
    throw badField('cabundle', `must be an array of 1..${MAX_CABUNDLE_ENTRIES} certificates`);
  }
  const cabundle = cabundleIn as Buffer[];
  cabundle.forEach((c: unknown, i) => {
    if (!isBytes(c) || c.length < 1 || c.length > 1024) throw badField('cabundle', `entry ${i} must be a byte string of 1..1024 bytes`);
  });
  const publicKey = optionalBytes(m.get('public_key'), 'public_key', 1, MAX_USER_BYTES);
  const userData = optionalBytes(m.get('user_data'), 'user_data', 0, MAX_USER_BYTES);
  const nonce = optionalBytes(m.get('nonce'), 'nonce', 0, MAX_USER_BYTES);

  // Copy the PCR values, public_key, user_data and nonce into one buffer (at most 32 × 64 + 3 × 1024 bytes).
  let total = (publicKey?.length ?? 0) + (userData?.length ?? 0) + (nonce?.length ?? 0);
  for (const v of pcrs.values()) total += v.length;
  const own = Buffer.allocUnsafe(total);
  let off = 0;
  const copy = (v: Buffer): Buffer => {
    v.copy(own, off);
    off += v.length;
    return own.subarray(off - v.length, off);
  };
  const ownPcrs = new Map<number, Buffer>();
  for (const [k, v] of sorted ? pcrs : [...pcrs.entries()].sort((a, b) => a[0] - b[0])) ownPcrs.set(k, copy(v));
  return {
    moduleId,
    digest: 'SHA384',
    timestamp: ts,
    pcrs: ownPcrs,
    certificate: certificate as Buffer,
    cabundle,
    publicKey: publicKey && copy(publicKey),
    userData: userData && copy(userData),
    nonce: nonce && copy(nonce),
  };
}
