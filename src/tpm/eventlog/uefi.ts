/**
 * UEFI structures carried in event data (UEFI 2.x spec; TCG PC Client PFP §10.2.6):
 * UEFI_VARIABLE_DATA (variable GUID, name, data) and EFI_SIGNATURE_LIST (db, dbx, KEK, PK).
 * Every length is checked against the bytes given; errors are `tpm.eventlog_bad_event`.
 */
import { SigilError } from '../../errors.js';

/** GUIDs in their textual (RFC 4122 / UEFI) form, lowercase. */
export const GUID = {
  EFI_GLOBAL_VARIABLE: '8be4df61-93ca-11d2-aa0d-00e098032b8c',
  EFI_IMAGE_SECURITY_DATABASE: 'd719b2cb-3d3a-4596-a3bc-dad00e67656f',
  SHIM_LOCK: '605dab50-e046-4300-abb6-3dd810dd8b23',
  EFI_CERT_X509: 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072',
  EFI_CERT_SHA256: 'c1c41626-504c-4092-aca9-41f936934328',
} as const;

/** A mixed-endian EFI_GUID (u32, u16, u16 little-endian, then 8 bytes) as text. */
export function guidText(b: Buffer, off = 0): string {
  if (off < 0 || off + 16 > b.length) throw new RangeError(`a GUID at byte ${off} does not fit in ${b.length} bytes`);
  // One hex conversion, the first three fields byte-swapped from it.
  const h = b.toString('hex', off, off + 16);
  return `${h.slice(6, 8)}${h.slice(4, 6)}${h.slice(2, 4)}${h.slice(0, 2)}-${h.slice(10, 12)}${h.slice(8, 10)}-${h.slice(14, 16)}${h.slice(12, 14)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export interface UefiVariable {
  readonly guid: string;
  readonly name: string;
  readonly data: Buffer;
  /** Bytes of the event data the structure occupies (≤ the event data length). */
  readonly length: number;
}

function bad(msg: string): never {
  throw new SigilError('tpm.eventlog_bad_event', `event log: ${msg}`);
}

/**
 * Parse UEFI_VARIABLE_DATA. With `exact` the structure must fill `b` exactly; without, bytes after
 * it are left to the caller (a named quirk decides whether they are tolerated).
 */
export function parseUefiVariable(b: Buffer, what: string, exact = true): UefiVariable {
  if (b.length < 32) bad(`${what}: UEFI_VARIABLE_DATA of ${b.length} bytes is shorter than its 32-byte header`);
  const guid = guidText(b, 0);
  const nameLen = b.readBigUInt64LE(16);
  const dataLen = b.readBigUInt64LE(24);
  const rest = BigInt(b.length - 32);
  if (nameLen * 2n > rest || dataLen > rest - nameLen * 2n) bad(`${what}: UEFI_VARIABLE_DATA declares ${nameLen} name characters and ${dataLen} data bytes, more than its ${rest} bytes`);
  const n = Number(nameLen);
  const end = 32 + n * 2 + Number(dataLen);
  if (exact && end !== b.length) bad(`${what}: ${b.length - end} byte(s) after UEFI_VARIABLE_DATA`);
  const nameBytes = b.subarray(32, 32 + n * 2);
  let name = '';
  for (let i = 0; i < n; i++) {
    const c = nameBytes.readUInt16LE(i * 2);
    if (c === 0 && i === n - 1) break; // some firmware counts the terminating NUL
    if (c < 0x20 || c > 0x7e) bad(`${what}: variable name has character 0x${c.toString(16)}`);
    name += String.fromCharCode(c);
  }
  return { guid, name, data: b.subarray(32 + n * 2, end), length: end };
}

export interface SignatureEntry {
  /** Signature type GUID of the list it is in (text). */
  readonly type: string;
  /** The entry after its 16-byte owner GUID (a view into the input). */
  readonly data: Buffer;
}

/**
 * Walk a sequence of EFI_SIGNATURE_LISTs (the content of PK, KEK, db, dbx), calling `each` for
 * every signature (type GUID text, the signature data after its owner GUID). Returns the count.
 * At most `max` entries; nothing is copied.
 */
export function walkSignatureLists(b: Buffer, what: string, each?: (type: string, data: Buffer) => void, max = 100_000): number {
  let off = 0;
  let count = 0;
  while (off < b.length) {
    if (b.length - off < 28) bad(`${what}: EFI_SIGNATURE_LIST header truncated at byte ${off}`);
    const listSize = b.readUInt32LE(off + 16);
    const headerSize = b.readUInt32LE(off + 20);
    const sigSize = b.readUInt32LE(off + 24);
    if (listSize < 28 || listSize > b.length - off) bad(`${what}: EFI_SIGNATURE_LIST size ${listSize} at byte ${off} does not fit`);
    if (sigSize < 16 || headerSize > listSize - 28) bad(`${what}: EFI_SIGNATURE_LIST at byte ${off} has signature size ${sigSize} / header size ${headerSize}`);
    const body = listSize - 28 - headerSize;
    if (body % sigSize !== 0) bad(`${what}: EFI_SIGNATURE_LIST at byte ${off}: ${body} bytes is not a multiple of the signature size ${sigSize}`);
    const n = body / sigSize;
    if (count + n > max) bad(`${what}: more than ${max} signatures`);
    count += n;
    if (each) {
      const type = guidText(b, off);
      for (let p = off + 28 + headerSize; p < off + listSize; p += sigSize) each(type, b.subarray(p + 16, p + sigSize));
    }
    off += listSize;
  }
  return count;
}

/** Parse a sequence of EFI_SIGNATURE_LISTs into entries (views into `b`). */
export function parseSignatureLists(b: Buffer, what: string, max = 100_000): SignatureEntry[] {
  const out: SignatureEntry[] = [];
  walkSignatureLists(b, what, (type, data) => out.push({ type, data }), max);
  return out;
}

/** True when `b` is exactly one DER SEQUENCE (the outer shape of an X.509 certificate). */
export function isDerSequence(b: Buffer): boolean {
  if (b.length < 2 || b[0] !== 0x30) return false;
  const l0 = b[1]!;
  if (l0 < 0x80) return 2 + l0 === b.length;
  const n = l0 & 0x7f;
  if (n === 0 || n > 4 || b.length < 2 + n) return false;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + b[2 + i]!;
  return 2 + n + len === b.length;
}

/** UTF-16LE text without a trailing NUL, or undefined if it is not printable. */
export function utf16Text(b: Buffer): string | undefined {
  if (b.length % 2 !== 0) return undefined;
  let s = '';
  for (let i = 0; i < b.length; i += 2) {
    const c = b.readUInt16LE(i);
    if (c === 0 && i === b.length - 2) break;
    if (c < 0x20 || c > 0x7e) return undefined;
    s += String.fromCharCode(c);
  }
  return s;
}

/** Printable ASCII without a trailing NUL, or undefined. */
export function asciiText(b: Buffer): string | undefined {
  const t = b.length > 0 && b[b.length - 1] === 0 ? b.subarray(0, b.length - 1) : b;
  for (const c of t) if (c < 0x20 || c > 0x7e) return undefined;
  return t.toString('latin1');
}
