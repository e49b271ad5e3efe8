/**
 * X.509 v3 extensions (RFC 5280 §4.2.1) the toolkit decodes and the SVID issuer encodes:
 * basicConstraints, keyUsage, extKeyUsage, subjectAltName, subject/authority key identifiers.
 * Encoded values are byte-exact DER so they can be precomputed once per CA and spliced into every
 * TBSCertificate on the signing hot path.
 */
import { createHash } from 'node:crypto';
import { SigilError } from '../errors.js';
import { TAG, children, decodeOid, readSingle, tlv, type Tlv } from './der.js';

export const OID_SKI = '2.5.29.14';
export const OID_KU = '2.5.29.15';
export const OID_SAN = '2.5.29.17';
export const OID_BC = '2.5.29.19';
export const OID_NAME_CONSTRAINTS = '2.5.29.30';
export const OID_AKI = '2.5.29.35';
export const OID_EKU = '2.5.29.37';
export const OID_KP_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
export const OID_KP_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** Key usage named bits as flags (bit i of the BIT STRING → 1 << i). */
export const KU = {
  digitalSignature: 1 << 0,
  nonRepudiation: 1 << 1,
  keyEncipherment: 1 << 2,
  dataEncipherment: 1 << 3,
  keyAgreement: 1 << 4,
  keyCertSign: 1 << 5,
  cRLSign: 1 << 6,
  encipherOnly: 1 << 7,
  decipherOnly: 1 << 8,
} as const;

const OID_DER: Record<string, Buffer> = {
  [OID_SKI]: Buffer.from('551d0e', 'hex'),
  [OID_KU]: Buffer.from('551d0f', 'hex'),
  [OID_SAN]: Buffer.from('551d11', 'hex'),
  [OID_BC]: Buffer.from('551d13', 'hex'),
  [OID_AKI]: Buffer.from('551d23', 'hex'),
  [OID_EKU]: Buffer.from('551d25', 'hex'),
};
const TRUE = Buffer.from([0x01, 0x01, 0xff]);

/** Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }. */
export function encodeExtension(oid: string, critical: boolean, value: Uint8Array): Buffer {
  const o = OID_DER[oid];
  if (!o) throw new SigilError('x509svid.internal', `no encoder for extension ${oid}`);
  const id = tlv(TAG.OID, o);
  const v = tlv(TAG.OCTET_STRING, value);
  return critical ? tlv(TAG.SEQUENCE, id, TRUE, v) : tlv(TAG.SEQUENCE, id, v);
}

/** Any extension given its OID's DER content bytes (used by tests to build odd certificates). */
export function encodeExtensionRaw(oidContent: Uint8Array, critical: boolean, value: Uint8Array): Buffer {
  const id = tlv(TAG.OID, oidContent);
  const v = tlv(TAG.OCTET_STRING, value);
  return critical ? tlv(TAG.SEQUENCE, id, TRUE, v) : tlv(TAG.SEQUENCE, id, v);
}

export function encodeKeyUsageValue(flags: number): Buffer {
  if (flags <= 0 || flags >= 1 << 9) throw new SigilError('x509svid.internal', 'key usage flags out of range');
  let highest = 0;
  for (let i = 0; i < 9; i++) if (flags & (1 << i)) highest = i;
  const nbytes = (highest >> 3) + 1;
  const bytes = Buffer.alloc(nbytes);
  for (let i = 0; i <= highest; i++) if (flags & (1 << i)) bytes[i >> 3]! |= 0x80 >> (i & 7);
  const unused = 7 - (highest & 7);
  return tlv(TAG.BIT_STRING, Buffer.from([unused]), bytes);
}

export function encodeBasicConstraintsValue(ca: boolean, pathLen?: number): Buffer {
  if (!ca) return Buffer.from([0x30, 0x00]);
  const parts: Buffer[] = [TRUE];
  if (pathLen !== undefined) {
    if (!Number.isInteger(pathLen) || pathLen < 0 || pathLen > 127) throw new SigilError('x509svid.bad_path_len', 'pathLen must be an integer 0..127');
    parts.push(Buffer.from([TAG.INTEGER, 1, pathLen]));
  }
  return tlv(TAG.SEQUENCE, ...parts);
}

export const EKU_SERVER_CLIENT_VALUE = Buffer.from('301406082b0601050507030106082b06010505070302', 'hex');

export function encodeSanExtensionValue(uris: string[], dnsNames: string[]): Buffer {
  const names: Buffer[] = [];
  for (const u of uris) names.push(tlv(0x86, Buffer.from(u, 'latin1')));
  for (const d of dnsNames) names.push(tlv(0x82, Buffer.from(d, 'latin1')));
  return tlv(TAG.SEQUENCE, ...names);
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
export function keyIdentifier(subjectPublicKeyBits: Uint8Array): Buffer {
  return createHash('sha1').update(subjectPublicKeyBits).digest();
}

export function encodeSkiValue(keyId: Uint8Array): Buffer {
  return tlv(TAG.OCTET_STRING, keyId);
}

export function encodeAkiValue(keyId: Uint8Array): Buffer {
  return tlv(TAG.SEQUENCE, tlv(0x80, keyId));
}

// ---------------------------------------------------------------- decoders

function isIa5(b: Uint8Array): boolean {
  for (const c of b) if (c > 0x7f) return false;
  return true;
}

export interface GeneralNamesInfo {
  uris: string[];
  dnsNames: string[];
  /** Count of names of other kinds (email, IP, directoryName, ...). */
  others: number;
}

/** GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName (only URI and DNS are decoded). */
export function parseGeneralNames(value: Uint8Array, code: string): GeneralNamesInfo {
  const top = readSingle(value, code, TAG.SEQUENCE);
  const out: GeneralNamesInfo = { uris: [], dnsNames: [], others: 0 };
  const names = children(value, top, code);
  if (names.length === 0) throw new SigilError(code, 'subjectAltName has no names');
  for (const n of names) {
    const v = value.subarray(n.valueStart, n.end);
    if (n.tag === 0x86 || n.tag === 0x82) {
      if (!isIa5(v)) throw new SigilError(code, 'subjectAltName URI/DNS name is not IA5');
      const s = Buffer.from(v).toString('latin1');
      (n.tag === 0x86 ? out.uris : out.dnsNames).push(s);
    } else {
      out.others++;
    }
  }
  return out;
}

export function parseKeyUsageValue(value: Uint8Array, code: string, ber = false): number {
  const t = readSingle(value, code, TAG.BIT_STRING, ber);
  const len = t.end - t.valueStart;
  if (len < 1 || len > 3) throw new SigilError(code, 'keyUsage BIT STRING has a bad length');
  let flags = 0;
  for (let j = 0; j < len - 1; j++) {
    const byte = value[t.valueStart + 1 + j]!;
    for (let k = 0; k < 8; k++) if (byte & (0x80 >> k)) flags |= 1 << (j * 8 + k);
  }
  return flags;
}

/** `ber` (TPM EK certificates only): an explicit cA FALSE and non-minimal lengths are read. */
export function parseBasicConstraintsValue(value: Uint8Array, code: string, ber = false): { ca: boolean; pathLen: number | undefined } {
  const t = readSingle(value, code, TAG.SEQUENCE, ber);
  const kids = children(value, t, code, ber);
  let i = 0;
  let ca = false;
  let pathLen: number | undefined;
  if (kids[i]?.tag === TAG.BOOLEAN) {
    const b = kids[i]!;
    if (b.end - b.valueStart !== 1) throw new SigilError(code, 'basicConstraints cA is not a one-octet BOOLEAN');
    if (value[b.valueStart] === 0 && !ber) throw new SigilError(code, 'basicConstraints cA=FALSE must be omitted in DER');
    ca = value[b.valueStart] !== 0;
    i++;
  }
  if (kids[i]?.tag === TAG.INTEGER) {
    const k = kids[i]!;
    if (k.end - k.valueStart > 2 || (value[k.valueStart]! & 0x80) !== 0) throw new SigilError(code, 'basicConstraints pathLenConstraint out of range');
    pathLen = 0;
    for (let p = k.valueStart; p < k.end; p++) pathLen = pathLen * 256 + value[p]!;
    i++;
  }
  if (i !== kids.length) throw new SigilError(code, 'basicConstraints has unexpected content');
  return { ca, pathLen };
}

export function parseExtKeyUsageValue(value: Uint8Array, code: string, ber = false): string[] {
  const t = readSingle(value, code, TAG.SEQUENCE, ber);
  const out = children(value, t, code, ber).map((k: Tlv) => decodeOid(value, k, code));
  if (out.length === 0) throw new SigilError(code, 'extKeyUsage is empty');
  return out;
}

export function parseSkiValue(value: Uint8Array, code: string): Buffer {
  const t = readSingle(value, code, TAG.OCTET_STRING);
  return Buffer.from(value.subarray(t.valueStart, t.end));
}

export function parseAkiValue(value: Uint8Array, code: string): Buffer | undefined {
  const t = readSingle(value, code, TAG.SEQUENCE);
  for (const k of children(value, t, code)) {
    if (k.tag === 0x80) return Buffer.from(value.subarray(k.valueStart, k.end));
  }
  return undefined;
}
