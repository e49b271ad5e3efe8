/**
 * PKCS#10 certification requests (RFC 2986).
 *
 * Parsed with the toolkit's strict DER reader (der.ts) rather than @peculiar/asn1-csr: the input
 * must be refused unless it is canonical DER (asn1-schema's parser accepts BER forms), and the
 * self-signature is checked over the exact CertificationRequestInfo bytes. The structure is
 * small: CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature BIT STRING },
 * info ::= SEQUENCE { version 0, subject Name, subjectPKInfo, attributes [0] }.
 */
import { type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { TAG, bytesOf, checkStrictDer, children, decodeOid, readSingle, tlv, type Tlv } from '../x509/der.js';
import { SpiffeId } from './id.js';
import { publicKeyOf, spkiDer } from './keys.js';
import { formatName } from './name.js';
import { parseSigAlg, signWith, signingAlgFor, verifyWith } from './sigalg.js';
import { importSpki, type SpkiFamily } from '../x509/spki.js';
import { encodeSanExtensionValue, parseGeneralNames, OID_SAN } from '../x509/ext.js';

export const CSR_MAX_BYTES = 64 * 1024;
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';

export interface ParsedCsr {
  /** SubjectPublicKeyInfo DER exactly as it appears in the request. */
  spki: Buffer;
  publicKey: KeyObject;
  keyFamily: SpkiFamily;
  /** RFC 4514 subject (informational; Sigil ignores CSR subjects when issuing). */
  subject: string;
  /** URI SANs requested in an extensionRequest attribute. */
  uris: string[];
  /** DNS SANs requested in an extensionRequest attribute. */
  dnsNames: string[];
}

function bad(msg: string): never {
  throw new SigilError('csr.malformed', msg);
}

/** Parse a DER PKCS#10 request, verifying its self-signature and key type. */
export function parseCsr(der: Uint8Array): ParsedCsr {
  if (!(der instanceof Uint8Array)) bad('CSR must be bytes');
  if (der.length === 0) bad('CSR is empty');
  if (der.length > CSR_MAX_BYTES) bad(`CSR is larger than ${CSR_MAX_BYTES} bytes`);
  const C = 'csr.malformed';
  checkStrictDer(der, C);
  const top = readSingle(der, C, TAG.SEQUENCE);
  const outer = children(der, top, C);
  if (outer.length !== 3) bad('CertificationRequest must have three elements');
  const [infoT, algT, sigT] = outer as [Tlv, Tlv, Tlv];
  if (infoT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING) bad('CertificationRequest has the wrong structure');
  if (der[sigT.valueStart] !== 0) bad('signature BIT STRING has unused bits');

  const info = children(der, infoT, C);
  if (info.length !== 4) bad('CertificationRequestInfo must have version, subject, subjectPKInfo and attributes');
  const [verT, subjT, spkiT, attrsT] = info as [Tlv, Tlv, Tlv, Tlv];
  if (verT.tag !== TAG.INTEGER || verT.end - verT.valueStart !== 1 || der[verT.valueStart] !== 0) bad('CSR version must be 0 (v1)');
  if (subjT.tag !== TAG.SEQUENCE) bad('CSR subject is not a Name');
  if (spkiT.tag !== TAG.SEQUENCE) bad('CSR subjectPKInfo is not a SEQUENCE');
  if (attrsT.tag !== 0xa0) bad('CSR attributes [0] are missing');

  const spki = Buffer.from(bytesOf(der, spkiT));
  const { info: ki, publicKey } = importSpki(spki, C, 'csr.unsupported_key');

  const alg = parseSigAlg(der, algT, C, 'csr.unsupported_algorithm');
  if ((alg.family === 'ec') !== (ki.family !== 'rsa')) {
    throw new SigilError('csr.bad_signature', `CSR signature algorithm (${alg.family}) does not match its ${ki.family} key`);
  }
  const sig = der.subarray(sigT.valueStart + 1, sigT.end);
  if (!verifyWith(alg, der.subarray(infoT.start, infoT.end), publicKey, sig)) {
    throw new SigilError('csr.bad_signature', 'CSR self-signature does not verify with the key it carries');
  }

  const subject = formatName(der, subjT, C);
  const uris: string[] = [];
  const dnsNames: string[] = [];
  let sawExtReq = false;
  for (const attr of children(der, attrsT, C)) {
    const av = children(der, attr, C);
    if (attr.tag !== TAG.SEQUENCE || av.length !== 2 || av[1]!.tag !== TAG.SET) bad('CSR attribute is malformed');
    const oid = decodeOid(der, av[0]!, C);
    if (oid !== OID_EXTENSION_REQUEST) continue;
    if (sawExtReq) bad('CSR has more than one extensionRequest attribute');
    sawExtReq = true;
    const vals = children(der, av[1]!, C);
    if (vals.length !== 1 || vals[0]!.tag !== TAG.SEQUENCE) bad('extensionRequest must hold exactly one Extensions value');
    const seen = new Set<string>();
    for (const ext of children(der, vals[0]!, C)) {
      const ef = children(der, ext, C);
      if (ext.tag !== TAG.SEQUENCE || ef.length < 2 || ef.length > 3) bad('requested Extension is malformed');
      const eoid = decodeOid(der, ef[0]!, C);
      if (seen.has(eoid)) bad(`extension ${eoid} requested twice`);
      seen.add(eoid);
      const valT = ef[ef.length - 1]!;
      if (valT.tag !== TAG.OCTET_STRING) bad('requested Extension value is not an OCTET STRING');
      if (ef.length === 3 && ef[1]!.tag !== TAG.BOOLEAN) bad('requested Extension critical flag is not a BOOLEAN');
      if (eoid === OID_SAN) {
        const names = parseGeneralNames(der.subarray(valT.valueStart, valT.end), C);
        uris.push(...names.uris);
        dnsNames.push(...names.dnsNames);
      }
    }
  }
  return { spki, publicKey, keyFamily: ki.family, subject, uris, dnsNames };
}

/**
 * Build a DER CSR for `key` (empty subject; with `spiffeId`, an extensionRequest carrying that
 * URI SAN). Used by agents; the verifier ignores everything but the key.
 */
export function createCsr(key: { privateKey: KeyObject; publicKey?: KeyObject }, opts: { spiffeId?: string } = {}): Buffer {
  if (key.privateKey.type !== 'private') throw new SigilError('keys.not_private', 'createCsr needs a private key');
  const pub = key.publicKey ?? publicKeyOf(key.privateKey);
  const spki = spkiDer(pub);
  let attrs: Buffer = Buffer.alloc(0);
  if (opts.spiffeId !== undefined) {
    const id = SpiffeId.parse(opts.spiffeId).toString();
    const ext = tlv(TAG.SEQUENCE, tlv(TAG.OID, Buffer.from([0x55, 0x1d, 0x11])), tlv(TAG.OCTET_STRING, encodeSanExtensionValue([id], [])));
    const extReqOid = Buffer.from('2a864886f70d01090e', 'hex');
    attrs = tlv(TAG.SEQUENCE, tlv(TAG.OID, extReqOid), tlv(TAG.SET, tlv(TAG.SEQUENCE, ext)));
  }
  const info = tlv(TAG.SEQUENCE, Buffer.from([0x02, 0x01, 0x00]), Buffer.from([0x30, 0x00]), spki, tlv(0xa0, attrs));
  const { algId, hash } = signingAlgFor(key.privateKey);
  const sig = signWith(hash, info, key.privateKey);
  return tlv(TAG.SEQUENCE, info, algId, tlv(TAG.BIT_STRING, Buffer.from([0]), sig));
}
