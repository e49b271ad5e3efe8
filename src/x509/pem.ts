/**
 * PEM (RFC 7468): the one splitter. Strict by default: only blocks of the expected label, only
 * whitespace between blocks, base64 with correct padding and canonical, each block exactly one
 * DER element. `lax` accepts explanatory text between blocks (RFC 7468 §5.2, as `openssl x509`
 * writes "Bag Attributes" and certificate dumps); blocks themselves are always strict.
 */
import { SigilError } from '../errors.js';
import { readSingle } from './der.js';
import { X509_CODES } from './errors.js';

export const PEM_MAX_BYTES = 4 * 1024 * 1024;

export function certsToPem(ders: readonly Uint8Array[]): string {
  return ders.map((d) => derToPem(d, 'CERTIFICATE')).join('');
}

export function derToPem(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

const B64_LINE = /^[A-Za-z0-9+/]*={0,2}$/;

function bad(msg: string): never {
  throw new SigilError(X509_CODES.pemMalformed, msg);
}

export interface PemOptions {
  /** Accept text outside blocks (default false). */
  lax?: boolean;
}

/** `s` without trailing spaces and tabs (a loop: /[ \t]+$/ is quadratic in a run of blanks followed by other text). */
function trimTrailingBlanks(s: string): string {
  let e = s.length;
  while (e > 0 && (s.charCodeAt(e - 1) === 0x20 || s.charCodeAt(e - 1) === 0x09)) e--;
  return e === s.length ? s : s.slice(0, e);
}

/** DER of every `label` block of `text` (at least one). Throws `pem.malformed`. */
export function pemBlocks(text: string, label: string, opts: PemOptions = {}): Buffer[] {
  if (typeof text !== 'string') bad('PEM input must be text');
  if (text.length > PEM_MAX_BYTES) bad(`PEM input is larger than ${PEM_MAX_BYTES} bytes`);
  const lines = text.split(/\r?\n/);
  const out: Buffer[] = [];
  let inBlock = false;
  let body: string[] = [];
  let lineNo = 0;
  for (const raw of lines) {
    lineNo++;
    const line = trimTrailingBlanks(raw);
    if (!inBlock) {
      if (line.trim() === '') continue;
      const m = /^-----BEGIN ([A-Z0-9 ]+)-----$/.exec(line);
      if (!m) {
        if (opts.lax === true && !line.includes('-----')) continue;
        bad(`line ${lineNo}: unexpected text outside a PEM block`);
      }
      if (m[1] !== label) bad(`line ${lineNo}: PEM block "${m[1]}" is not a ${label}`);
      inBlock = true;
      body = [];
      continue;
    }
    if (line.startsWith('-----END ')) {
      if (line !== `-----END ${label}-----`) bad(`line ${lineNo}: END line does not match BEGIN ${label}`);
      const b64 = body.join('');
      if (b64.length === 0 || b64.length % 4 !== 0 || !B64_LINE.test(b64)) bad(`line ${lineNo}: invalid base64 in ${label} block`);
      const der = Buffer.from(b64, 'base64');
      if (der.toString('base64') !== b64) bad(`line ${lineNo}: non-canonical base64 in ${label} block`);
      readSingle(der, X509_CODES.pemMalformed);
      out.push(der);
      inBlock = false;
      continue;
    }
    if (!B64_LINE.test(line) || line.length === 0) bad(`line ${lineNo}: invalid base64 line in ${label} block`);
    body.push(line);
  }
  if (inBlock) bad(`PEM ${label} block is not terminated`);
  if (out.length === 0) bad(`no ${label} blocks found`);
  return out;
}

/** Parse one or more PEM CERTIFICATE blocks (strict) to DER. */
export function pemToDers(text: string): Buffer[] {
  return pemBlocks(text, 'CERTIFICATE');
}

/**
 * Certificates from a file's bytes: PEM CERTIFICATE blocks (lax: text between blocks allowed), or
 * one DER certificate given raw, as hex or as base64. Throws `pem.malformed`.
 */
export function certificatesFromBytes(data: Uint8Array): Buffer[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const text = buf.toString('latin1');
  if (text.includes('-----BEGIN ')) return pemBlocks(text, 'CERTIFICATE', { lax: true });
  if (buf[0] === 0x30) return [Buffer.from(buf)];
  const t = text.replace(/\s+/g, '');
  if (t.length > 0 && /^[0-9a-fA-F]+$/.test(t) && t.length % 2 === 0) return [Buffer.from(t, 'hex')];
  if (t.length > 0 && t.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(t)) return [Buffer.from(t, 'base64')];
  bad('neither PEM nor DER');
}
