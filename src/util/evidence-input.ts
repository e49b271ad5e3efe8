import { SigilError } from '../errors.js';

/**
 * Evidence files may be raw bytes, hex or base64 (DESIGN §9). Text is only
 * interpreted as hex/base64 when every byte is in that alphabet (after trimming
 * whitespace); anything else is taken as raw bytes.
 */
export function decodeEvidenceBytes(data: Uint8Array): Buffer {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length === 0) throw new SigilError('input.empty', 'evidence input is empty');
  const text = buf.toString('latin1').replace(/\s+/g, '');
  if (text.length > 0 && /^[0-9a-fA-F]+$/.test(text) && text.length % 2 === 0) {
    return Buffer.from(text, 'hex');
  }
  if (text.length > 0 && /^[A-Za-z0-9+/_-]+={0,2}$/.test(text) && text.length % 4 !== 1) {
    const b = Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (b.length > 0) return b;
  }
  return Buffer.from(buf);
}

export function parseHexArg(name: string, value: string, expectedLen?: number): Buffer {
  const v = value.trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]*$/.test(v) || v.length % 2 !== 0) {
    throw new SigilError('input.bad_hex', `${name} must be hex (even number of 0-9a-f digits)`);
  }
  const b = Buffer.from(v, 'hex');
  if (expectedLen !== undefined && b.length !== expectedLen) {
    throw new SigilError('input.bad_length', `${name} must be ${expectedLen} bytes, got ${b.length}`);
  }
  return b;
}
