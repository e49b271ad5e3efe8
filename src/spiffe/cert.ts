/**
 * X.509 certificate parsing for SVID verification (RFC 5280 §4.1).
 *
 * Parsed with the strict DER reader (der.ts): verification needs the exact TBSCertificate
 * bytes, byte-exact issuer/subject Names for chaining, and rejection of non-DER input, none of
 * which @peculiar/asn1-x509 provides. Only the fields SVID validation needs are decoded;
 * every extension is listed so unknown critical extensions can be refused.
 */
import { SigilError } from '../errors.js';
import { TAG, bytesOf, checkStrictDer, children, decodeOid, decodeTime, readSingle, type Tlv } from './der.js';
import { formatName } from './name.js';
import { parseSigAlg, type SigAlg } from './sigalg.js';
import { inspectSpki, type SpkiInfo } from './spki.js';
import {
  OID_AKI,
  OID_BC,
  OID_EKU,
  OID_KU,
  OID_SAN,
  OID_SKI,
  parseAkiValue,
  parseBasicConstraintsValue,
  parseExtKeyUsageValue,
  parseGeneralNames,
  parseKeyUsageValue,
  parseSkiValue,
} from './x509ext.js';

export const CERT_MAX_BYTES = 64 * 1024;
const C = 'x509svid.malformed';

export interface ParsedExtension {
  oid: string;
  critical: boolean;
  value: Buffer;
}

export interface ParsedCertificate {
  der: Buffer;
  /** TBSCertificate bytes (what the signature covers). */
  tbs: Buffer;
  version: number;
  /** Serial number content octets (two's complement, as encoded). */
  serial: Buffer;
  serialHex: string;
  sigAlg: SigAlg;
  signature: Buffer;
  issuerDer: Buffer;
  subjectDer: Buffer;
  issuer: string;
  subject: string;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  spkiInfo: SpkiInfo;
  extensions: ParsedExtension[];
  basicConstraints: { ca: boolean; pathLen: number | undefined; critical: boolean } | undefined;
  keyUsage: { flags: number; critical: boolean } | undefined;
  extKeyUsage: string[] | undefined;
  san: { uris: string[]; dnsNames: string[]; others: number; critical: boolean } | undefined;
  subjectKeyId: Buffer | undefined;
  authorityKeyId: Buffer | undefined;
}

function bad(msg: string): never {
  throw new SigilError(C, `certificate: ${msg}`);
}

/** Parse one DER certificate. Throws `x509svid.malformed` / `x509svid.unsupported_*`. */
export function parseCertificate(input: Uint8Array): ParsedCertificate {
  if (!(input instanceof Uint8Array) || input.length === 0) bad('empty input');
  if (input.length > CERT_MAX_BYTES) bad(`larger than ${CERT_MAX_BYTES} bytes`);
  const der = Buffer.from(input);
  checkStrictDer(der, C);
  const top = readSingle(der, C, TAG.SEQUENCE);
  const outer = children(der, top, C);
  if (outer.length !== 3) bad('Certificate must have three elements');
  const [tbsT, algT, sigT] = outer as [Tlv, Tlv, Tlv];
  if (tbsT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING) bad('wrong structure');
  if (der[sigT.valueStart] !== 0) bad('signature BIT STRING has unused bits');
  const sigAlg = parseSigAlg(der, algT, C, 'x509svid.unsupported_algorithm');

  const f = children(der, tbsT, C);
  let i = 0;
  let version = 1;
  if (f[i]?.tag === 0xa0) {
    const v = children(der, f[i]!, C);
    if (v.length !== 1 || v[0]!.tag !== TAG.INTEGER || v[0]!.end - v[0]!.valueStart !== 1) bad('bad version');
    version = der[v[0]!.valueStart]! + 1;
    if (version === 1) bad('explicit v1 version must be omitted in DER');
    i++;
  }
  if (version !== 3) bad(`version ${version} is not v3`);
  const serialT = f[i++];
  const innerAlgT = f[i++];
  const issuerT = f[i++];
  const validityT = f[i++];
  const subjectT = f[i++];
  const spkiT = f[i++];
  if (!serialT || !innerAlgT || !issuerT || !validityT || !subjectT || !spkiT) bad('TBSCertificate is missing fields');
  if (serialT.tag !== TAG.INTEGER) bad('serialNumber is not an INTEGER');
  const serialLen = serialT.end - serialT.valueStart;
  if (serialLen > 21) bad('serialNumber longer than 20 octets');
  if (!bytesOf(der, innerAlgT).equals(bytesOf(der, algT))) bad('TBSCertificate signature algorithm differs from the outer one');
  if (issuerT.tag !== TAG.SEQUENCE || subjectT.tag !== TAG.SEQUENCE || validityT.tag !== TAG.SEQUENCE) bad('wrong TBSCertificate structure');
  const vt = children(der, validityT, C);
  if (vt.length !== 2) bad('validity must have two times');
  const notBefore = decodeTime(der, vt[0]!, C);
  const notAfter = decodeTime(der, vt[1]!, C);
  // RFC 5280: dates through 2049 MUST be UTCTime.
  for (const [t, d] of [[vt[0]!, notBefore], [vt[1]!, notAfter]] as const) {
    const y = d.getUTCFullYear();
    if (t.tag === TAG.GENERALIZED_TIME && y >= 1950 && y < 2050) bad('GeneralizedTime used for a date before 2050');
  }
  const spki = Buffer.from(bytesOf(der, spkiT));
  const spkiInfo = inspectSpki(spki, C, 'x509svid.unsupported_key');

  const extensions: ParsedExtension[] = [];
  while (i < f.length) {
    const t = f[i++]!;
    if (t.tag === 0xa1 || t.tag === 0xa2 || t.tag === 0x81 || t.tag === 0x82) continue; // unique identifiers (ignored)
    if (t.tag !== 0xa3) bad(`unexpected TBSCertificate field tag 0x${t.tag.toString(16)}`);
    if (i !== f.length) bad('fields after extensions');
    const w = children(der, t, C);
    if (w.length !== 1 || w[0]!.tag !== TAG.SEQUENCE) bad('extensions wrapper malformed');
    const exts = children(der, w[0]!, C);
    if (exts.length === 0) bad('empty extensions');
    const seen = new Set<string>();
    for (const e of exts) {
      const ef = children(der, e, C);
      if (e.tag !== TAG.SEQUENCE || ef.length < 2 || ef.length > 3) bad('Extension malformed');
      const oid = decodeOid(der, ef[0]!, C);
      if (seen.has(oid)) bad(`extension ${oid} appears twice`);
      seen.add(oid);
      let critical = false;
      if (ef.length === 3) {
        if (ef[1]!.tag !== TAG.BOOLEAN) bad('Extension critical is not a BOOLEAN');
        if (der[ef[1]!.valueStart] === 0) bad('Extension critical=FALSE must be omitted in DER');
        critical = true;
      }
      const vT = ef[ef.length - 1]!;
      if (vT.tag !== TAG.OCTET_STRING) bad('Extension value is not an OCTET STRING');
      extensions.push({ oid, critical, value: Buffer.from(der.subarray(vT.valueStart, vT.end)) });
    }
  }

  const cert: ParsedCertificate = {
    der,
    tbs: Buffer.from(bytesOf(der, tbsT)),
    version,
    serial: Buffer.from(der.subarray(serialT.valueStart, serialT.end)),
    serialHex: Buffer.from(der.subarray(serialT.valueStart, serialT.end)).toString('hex'),
    sigAlg,
    signature: Buffer.from(der.subarray(sigT.valueStart + 1, sigT.end)),
    issuerDer: Buffer.from(bytesOf(der, issuerT)),
    subjectDer: Buffer.from(bytesOf(der, subjectT)),
    issuer: formatName(der, issuerT, C),
    subject: formatName(der, subjectT, C),
    notBefore,
    notAfter,
    spki,
    spkiInfo,
    extensions,
    basicConstraints: undefined,
    keyUsage: undefined,
    extKeyUsage: undefined,
    san: undefined,
    subjectKeyId: undefined,
    authorityKeyId: undefined,
  };
  for (const e of extensions) {
    switch (e.oid) {
      case OID_BC:
        cert.basicConstraints = { ...parseBasicConstraintsValue(e.value, C), critical: e.critical };
        break;
      case OID_KU:
        cert.keyUsage = { flags: parseKeyUsageValue(e.value, C), critical: e.critical };
        break;
      case OID_EKU:
        cert.extKeyUsage = parseExtKeyUsageValue(e.value, C);
        break;
      case OID_SAN:
        cert.san = { ...parseGeneralNames(e.value, C), critical: e.critical };
        break;
      case OID_SKI:
        cert.subjectKeyId = parseSkiValue(e.value, C);
        break;
      case OID_AKI:
        cert.authorityKeyId = parseAkiValue(e.value, C);
        break;
      default:
        break;
    }
  }
  return cert;
}

/** Extensions this module understands; a critical extension outside this set is refused by the verifier. */
export const HANDLED_EXTENSIONS: ReadonlySet<string> = new Set([OID_BC, OID_KU, OID_EKU, OID_SAN, OID_SKI, OID_AKI]);
