/**
 * The SEV-SNP extended-report certificate table (GHCB specification, "cert_table"): what the
 * host attaches to a report — the configfs-tsm `auxblob`, or the certificate buffer of
 * SNP_GET_EXT_REPORT on /dev/sev-guest.
 *
 * Hand-written because it is a tiny fixed binary layout with no library in this stack:
 *   a sequence of 24-byte entries { GUID (16 bytes, RFC 4122 byte order as the string reads),
 *   offset u32 LE, length u32 LE }, terminated by an all-zero entry; offsets are from the start
 *   of the table; certificate bytes follow the entries. Trailing padding after the certificates
 *   is normal (the buffer is page-sized) and ignored.
 */
import { SigilError } from '../errors.js';

export const CERT_GUIDS = {
  vcek: '63da758d-e664-4564-adc5-f4b93be8accd',
  vlek: 'a8074bc2-a25a-483e-aae6-39c045a0b8a1',
  ask: '4ab7b379-bbac-4fe4-a02f-05aef327c782',
  ark: 'c0b406a4-a803-4952-9743-3fb6014cd0ae',
} as const;
export type CertTableKind = keyof typeof CERT_GUIDS;

export interface CertTableEntry {
  guid: string;
  /** Known kind, or undefined for a GUID this parser does not know (kept, not interpreted). */
  kind?: CertTableKind;
  data: Buffer;
}

export interface SnpCertBundle {
  vcek?: Buffer;
  vlek?: Buffer;
  /** ASK, or ASVK for VLEK hosts (the GHCB table uses the ASK GUID for both). */
  ask?: Buffer;
  ark?: Buffer;
}

const ENTRY = 24;
/** Upper bounds so hostile input cannot make us allocate or loop without limit. */
export const CERT_TABLE_MAX_BYTES = 1024 * 1024;
export const CERT_TABLE_MAX_ENTRIES = 64;

function fail(message: string): never {
  throw new SigilError('sev.cert_table_malformed', message);
}

function guidToString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function guidToBytes(g: string): Buffer {
  const h = g.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new SigilError('sev.cert_table_malformed', `bad GUID ${g}`);
  return Buffer.from(h, 'hex');
}

const KIND_BY_GUID = new Map<string, CertTableKind>(Object.entries(CERT_GUIDS).map(([k, g]) => [g, k as CertTableKind]));

/** Parse a certificate table. An empty buffer or one starting with the terminator yields no entries. */
export function parseCertTable(input: Uint8Array): CertTableEntry[] {
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  if (buf.length > CERT_TABLE_MAX_BYTES) fail(`certificate table is larger than ${CERT_TABLE_MAX_BYTES} bytes`);
  if (buf.length === 0) return [];
  const headers: { guid: string; offset: number; length: number }[] = [];
  let pos = 0;
  for (;;) {
    if (pos + ENTRY > buf.length) fail('certificate table has no terminating all-zero entry');
    const guidBytes = buf.subarray(pos, pos + 16);
    const offset = buf.readUInt32LE(pos + 16);
    const length = buf.readUInt32LE(pos + 20);
    const guidZero = guidBytes.every((x) => x === 0);
    if (guidZero) {
      if (offset !== 0 || length !== 0) fail(`certificate table entry ${headers.length} has a zero GUID but non-zero offset/length`);
      pos += ENTRY;
      break;
    }
    if (headers.length >= CERT_TABLE_MAX_ENTRIES) fail(`certificate table has more than ${CERT_TABLE_MAX_ENTRIES} entries`);
    headers.push({ guid: guidToString(guidBytes), offset, length });
    pos += ENTRY;
  }
  const tableEnd = pos;
  const seen = new Set<string>();
  return headers.map((h, i) => {
    if (seen.has(h.guid)) fail(`certificate table lists GUID ${h.guid} twice`);
    seen.add(h.guid);
    if (h.length === 0) fail(`certificate table entry ${i} (${h.guid}) has length 0`);
    if (h.offset < tableEnd) fail(`certificate table entry ${i} (${h.guid}) offset ${h.offset} points into the table itself`);
    if (h.offset + h.length > buf.length) {
      fail(`certificate table entry ${i} (${h.guid}) offset ${h.offset} + length ${h.length} runs past the ${buf.length}-byte buffer`);
    }
    const entry: CertTableEntry = { guid: h.guid, data: Buffer.from(buf.subarray(h.offset, h.offset + h.length)) };
    const kind = KIND_BY_GUID.get(h.guid);
    if (kind) entry.kind = kind;
    return entry;
  });
}

/** The VCEK/VLEK/ASK/ARK entries of a certificate table (unknown GUIDs are dropped). */
export function certBundleFromTable(input: Uint8Array): SnpCertBundle {
  const out: SnpCertBundle = {};
  for (const e of parseCertTable(input)) if (e.kind) out[e.kind] = e.data;
  return out;
}

/** Build a certificate table (what a host writes); used by tests and by tools that stage certificates. */
export function buildCertTable(entries: { guid: string; data: Uint8Array }[], padTo = 0): Buffer {
  const tableLen = (entries.length + 1) * ENTRY;
  const parts: Buffer[] = [];
  const header = Buffer.alloc(tableLen);
  let offset = tableLen;
  entries.forEach((e, i) => {
    guidToBytes(e.guid).copy(header, i * ENTRY);
    header.writeUInt32LE(offset, i * ENTRY + 16);
    header.writeUInt32LE(e.data.byteLength, i * ENTRY + 20);
    parts.push(Buffer.from(e.data));
    offset += e.data.byteLength;
  });
  const out = Buffer.concat([header, ...parts]);
  return out.length < padTo ? Buffer.concat([out, Buffer.alloc(padTo - out.length)]) : out;
}
