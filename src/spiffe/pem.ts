/**
 * Strict PEM for certificates (RFC 7468 "strict" textual encoding): only CERTIFICATE blocks,
 * only whitespace between blocks, base64 with correct padding, each block one DER element.
 */
import { SigilError } from '../errors.js';
import { readSingle } from './der.js';

export const PEM_MAX_BYTES = 4 * 1024 * 1024;

export function certsToPem(ders: Buffer[]): string {
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
  throw new SigilError('pem.malformed', msg);
}

/** Parse one or more PEM CERTIFICATE blocks to DER. */
export function pemToDers(text: string): Buffer[] {
  if (typeof text !== 'string') bad('PEM input must be text');
  if (text.length > PEM_MAX_BYTES) bad(`PEM input is larger than ${PEM_MAX_BYTES} bytes`);
  const lines = text.split(/\r?\n/);
  const out: Buffer[] = [];
  let inBlock = false;
  let body: string[] = [];
  let lineNo = 0;
  for (const raw of lines) {
    lineNo++;
    const line = raw.replace(/[ \t]+$/, '');
    if (!inBlock) {
      if (line.trim() === '') continue;
      const m = /^-----BEGIN ([A-Z0-9 ]+)-----$/.exec(line);
      if (!m) bad(`line ${lineNo}: unexpected text outside a PEM block`);
      if (m[1] !== 'CERTIFICATE') bad(`line ${lineNo}: PEM block "${m[1]}" is not a CERTIFICATE`);
      inBlock = true;
      body = [];
      continue;
    }
    if (line.startsWith('-----END ')) {
      if (line !== '-----END CERTIFICATE-----') bad(`line ${lineNo}: END line does not match BEGIN CERTIFICATE`);
      const b64 = body.join('');
      if (b64.length === 0 || b64.length % 4 !== 0 || !B64_LINE.test(b64)) bad(`line ${lineNo}: invalid base64 in CERTIFICATE block`);
      const der = Buffer.from(b64, 'base64');
      if (der.toString('base64') !== b64) bad(`line ${lineNo}: non-canonical base64 in CERTIFICATE block`);
      readSingle(der, 'pem.malformed');
      out.push(der);
      inBlock = false;
      continue;
    }
    if (!B64_LINE.test(line) || line.length === 0) bad(`line ${lineNo}: invalid base64 line in CERTIFICATE block`);
    body.push(line);
  }
  if (inBlock) bad('PEM CERTIFICATE block is not terminated');
  if (out.length === 0) bad('no CERTIFICATE blocks found');
  return out;
}
