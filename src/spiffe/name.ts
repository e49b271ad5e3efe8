/**
 * X.501 Name → RFC 4514 string (most specific RDN first), for display and logging only.
 * Walks the DER with der.ts; Sigil never makes trust decisions on subject names except by
 * byte-comparing DER (issuer/subject chaining).
 */
import { SigilError } from '../errors.js';
import { TAG, children, decodeOid, type Tlv } from './der.js';

const SHORT: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.9': 'STREET',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.45': 'x500UniqueIdentifier',
  '0.9.2342.19200300.100.1.1': 'UID',
  '0.9.2342.19200300.100.1.25': 'DC',
  '1.2.840.113549.1.9.1': 'emailAddress',
};

function escapeValue(s: string): string {
  let out = s.replace(/[\\"+,;<>=]/g, (c) => `\\${c}`);
  // eslint-disable-next-line no-control-regex
  out = out.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  if (out.startsWith(' ') || out.startsWith('#')) out = `\\${out}`;
  if (out.endsWith(' ') && out.length > 1) out = `${out.slice(0, -1)}\\ `;
  return out;
}

function decodeString(buf: Uint8Array, t: Tlv): string | undefined {
  const v = Buffer.from(buf.subarray(t.valueStart, t.end));
  switch (t.tag) {
    case TAG.UTF8_STRING:
      return v.toString('utf8');
    case TAG.PRINTABLE_STRING:
    case TAG.IA5_STRING:
    case 0x14 /* TeletexString */:
    case 0x1a /* VisibleString */:
      return v.toString('latin1');
    case 0x1e /* BMPString */: {
      if (v.length % 2 !== 0) return undefined;
      const sw = Buffer.from(v);
      sw.swap16();
      return sw.toString('utf16le');
    }
    default:
      return undefined;
  }
}

/** Format a DER Name (the TLV `name` inside `buf`). Throws with `code` on bad structure. */
export function formatName(buf: Uint8Array, name: Tlv, code: string): string {
  if (name.tag !== TAG.SEQUENCE) throw new SigilError(code, 'Name is not a SEQUENCE');
  const rdns = children(buf, name, code);
  const parts: string[] = [];
  for (const rdn of rdns) {
    if (rdn.tag !== TAG.SET) throw new SigilError(code, 'Name: RDN is not a SET');
    const avas = children(buf, rdn, code).map((ava) => {
      const kv = children(buf, ava, code);
      if (ava.tag !== TAG.SEQUENCE || kv.length !== 2) throw new SigilError(code, 'Name: AttributeTypeAndValue is malformed');
      const oid = decodeOid(buf, kv[0]!, code);
      const key = SHORT[oid] ?? oid;
      const s = decodeString(buf, kv[1]!);
      const value = s === undefined ? `#${Buffer.from(buf.subarray(kv[1]!.start, kv[1]!.end)).toString('hex')}` : escapeValue(s);
      return `${key}=${value}`;
    });
    parts.push(avas.join('+'));
  }
  return parts.reverse().join(',');
}
