/**
 * X.509-SVID issuance and verification (SPIFFE X509-SVID standard, RFC 5280 profile).
 *
 * Issuance encodes the TBSCertificate directly in DER: the parts that depend only on the CA
 * (issuer Name, AuthorityKeyIdentifier, signature AlgorithmIdentifier, fixed extensions) are
 * encoded once per CA certificate and cached, so that signing an SVID costs little more than
 * the signature itself. Signing uses node:crypto with the CA KeyObject.
 *
 * This hand-written encoder is kept (issue 12) because the benchmark shows it earns its place:
 * `bench/x509-sign.ts` measures issueX509Svid at 0.65–0.75 of a raw P-256 sign on this machine;
 * building the certificate through a generic ASN.1 schema serializer would add its object
 * allocation and encoding per SVID. Parsing, PEM and chain checks use the toolkit (src/x509/).
 */
import { randomFillSync, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { HANDLED_EXTENSIONS, parseCertificate, type ParsedCertificate } from './cert.js';
import { publicKeyOf } from '../x509/cert.js';
import { TAG, encodeTime, encodeUnsignedInteger, tlv, tlvOf } from '../x509/der.js';
import { SpiffeId, parseTrustDomain } from './id.js';
import { keyFamilyOf, spkiDer } from './keys.js';
import { signWith, signingAlgFor, verifyWith } from './sigalg.js';
import { classifySpki, inspectSpki } from '../x509/spki.js';
import { validityProblem } from '../x509/validity.js';
import {
  EKU_SERVER_CLIENT_VALUE,
  KU,
  OID_AKI,
  OID_BC,
  OID_EKU,
  OID_KU,
  OID_NAME_CONSTRAINTS,
  OID_SAN,
  OID_SKI,
  encodeAkiValue,
  encodeBasicConstraintsValue,
  encodeExtension,
  encodeKeyUsageValue,
  encodeSanExtensionValue,
  encodeSkiValue,
  keyIdentifier,
} from '../x509/ext.js';

export { parseCertificate, type ParsedCertificate } from './cert.js';
export { certsToPem, pemToDers } from '../x509/pem.js';

const VERSION_V3 = Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]);
/** Subject of every X.509-SVID: O=Sigil (the identity is the URI SAN). */
const SVID_SUBJECT = Buffer.from('3010310e300c060355040a0c05536967696c', 'hex');
const OID_O = Buffer.from('55040a', 'hex');
const OID_CN = Buffer.from('550403', 'hex');
const OID_SERIAL_NUMBER = Buffer.from('550405', 'hex');
const MAX_CHAIN = 16;
const MAX_DEPTH = 8;
/**
 * Candidate issuers (name matches) path building may examine per verification: a presented chain
 * of same-named, mutually issuing CAs would otherwise make the depth-first search walk every
 * ordering of them (exponential in the chain length).
 */
const MAX_PATH_WORK = 256;

function err(code: string, msg: string): SigilError {
  return new SigilError(code, msg);
}

/** A presented certificate's name for a message, cut short (subjects run to the 64 KiB certificate cap). */
function shown(name: string): string {
  return name.length > 120 ? `${name.slice(0, 117)}...` : name;
}

function checkDate(d: Date, what: string): void {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw err('x509svid.bad_validity', `${what} is not a valid date`);
}

/** Whole seconds (certificates carry second precision). */
function floorSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

// Serials come from a pool refilled from the CSPRNG (randomFillSync) 4 KiB at a time:
// one 16-byte randomBytes() call costs about as much as a tenth of a P-256 signature.
const serialPool = Buffer.alloc(4096);
let serialPoolOff = serialPool.length;

function randomSerial(): Buffer {
  if (serialPoolOff + 16 > serialPool.length) {
    randomFillSync(serialPool);
    serialPoolOff = 0;
  }
  const b = Buffer.from(serialPool.subarray(serialPoolOff, serialPoolOff + 16));
  serialPool.fill(0, serialPoolOff, serialPoolOff + 16);
  serialPoolOff += 16;
  b[0] = b[0]! & 0x7f || 0x01;
  return b;
}

// The validity SEQUENCE for the last few (notBefore, notAfter) pairs: SVIDs issued in the same
// second share it.
const validityCache = new Map<string, Buffer>();
function encodeValidity(notBefore: Date, notAfter: Date): Buffer {
  const k = `${notBefore.getTime()}/${notAfter.getTime()}`;
  let v = validityCache.get(k);
  if (!v) {
    v = tlv(TAG.SEQUENCE, encodeTime(notBefore), encodeTime(notAfter));
    if (validityCache.size >= 64) validityCache.clear();
    validityCache.set(k, v);
  }
  return v;
}

function checkSerial(serial: Buffer): Buffer {
  if (!Buffer.isBuffer(serial) || serial.length === 0 || serial.length > 20) throw err('x509svid.bad_serial', 'serial must be 1..20 bytes');
  if (serial.every((b) => b === 0)) throw err('x509svid.bad_serial', 'serial must be positive');
  return serial;
}

function nameAttr(oid: Buffer, value: string, stringTag: number): Buffer {
  return tlv(TAG.SET, tlv(TAG.SEQUENCE, tlv(TAG.OID, oid), tlv(stringTag, Buffer.from(value, 'utf8'))));
}

const DNS_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
function checkDnsName(n: string): void {
  const name = n.startsWith('*.') ? n.slice(2) : n;
  if (typeof n !== 'string' || n.length === 0 || n.length > 253 || !name.split('.').every((l) => DNS_LABEL.test(l))) {
    throw err('x509svid.bad_dns_name', `"${String(n).slice(0, 80)}" is not a valid DNS name`);
  }
}

export interface EncodeCertificateOptions {
  /** Issuer Name DER (defaults to subjectDer). */
  issuerDer?: Buffer;
  subjectDer: Buffer;
  subjectSpki: Buffer;
  serial: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** Encoded Extension SEQUENCEs (see x509ext.ts encodeExtension); none = no extensions field. */
  extensions: Buffer[];
  signerKey: KeyObject;
}

/**
 * Low-level: encode and sign a v3 certificate exactly as described, with no profile checks.
 * Used to build CA certificates and, in tests, deliberately non-conforming certificates.
 */
export function encodeCertificate(o: EncodeCertificateOptions): Buffer {
  const parts = [
    VERSION_V3,
    encodeUnsignedInteger(o.serial),
    signingAlgFor(o.signerKey).algId,
    o.issuerDer ?? o.subjectDer,
    tlv(TAG.SEQUENCE, encodeTime(o.notBefore), encodeTime(o.notAfter)),
    o.subjectDer,
    o.subjectSpki,
  ];
  if (o.extensions.length > 0) parts.push(tlv(0xa3, tlvOf(TAG.SEQUENCE, o.extensions)));
  return assemble(tlvOf(TAG.SEQUENCE, parts), o.signerKey);
}

/** Encode a Name from (type, value) pairs, one attribute per RDN, UTF8String values. */
export function encodeName(attrs: [type: 'C' | 'O' | 'OU' | 'CN' | 'serialNumber', value: string][]): Buffer {
  const OIDS = { C: '550406', O: OID_O.toString('hex'), OU: '55040b', CN: OID_CN.toString('hex'), serialNumber: OID_SERIAL_NUMBER.toString('hex') };
  return tlvOf(
    TAG.SEQUENCE,
    attrs.map(([t, v]) => nameAttr(Buffer.from(OIDS[t], 'hex'), v, t === 'C' || t === 'serialNumber' ? TAG.PRINTABLE_STRING : TAG.UTF8_STRING)),
  );
}

function assemble(tbs: Buffer, signerKey: KeyObject): Buffer {
  const { algId, hash } = signingAlgFor(signerKey);
  const sig = signWith(hash, tbs, signerKey);
  return tlv(TAG.SEQUENCE, tbs, algId, tlv(TAG.BIT_STRING, Buffer.from([0]), sig));
}

// ---------------------------------------------------------------- CA certificates

export interface IssueCaOptions {
  /** Public key of the new CA. */
  subjectKey: KeyObject;
  /** Private key that signs: the new CA's own key (self-signed) or the upstream CA's. */
  signerKey: KeyObject;
  /** Upstream CA certificate; absent = self-signed root. */
  issuerCertDer?: Buffer;
  trustDomain: string;
  commonName?: string;
  notBefore: Date;
  notAfter: Date;
  pathLen?: number;
  serial?: Buffer;
}

/**
 * Issue a CA certificate for a trust domain: basicConstraints cA=true (critical), keyUsage
 * keyCertSign+cRLSign (critical), URI SAN spiffe://<td>, SKI/AKI. Subject is
 * O=<td>[, CN=<commonName>], serialNumber=<serial hex> so that successive CAs have distinct names.
 * Under an upstream CA, notAfter is clipped to the upstream certificate's notAfter; the upstream
 * certificate must be a CA with keyUsage keyCertSign (`x509svid.issuer_not_ca`).
 */
export function issueCaCertificate(opts: IssueCaOptions): Buffer {
  const td = parseTrustDomain(opts.trustDomain);
  checkDate(opts.notBefore, 'notBefore');
  checkDate(opts.notAfter, 'notAfter');
  if (opts.signerKey.type !== 'private') throw err('x509svid.key_mismatch', 'signerKey must be a private key');
  const subjectSpki = spkiDer(opts.subjectKey);
  const subjectInfo = inspectSpki(subjectSpki, 'x509svid.malformed', 'x509svid.unsupported_key');
  keyFamilyOf(opts.signerKey);
  const serial = opts.serial ? checkSerial(opts.serial) : randomSerial();
  const ski = keyIdentifier(subjectInfo.keyBits);

  let notAfter = floorSeconds(opts.notAfter);
  const notBefore = floorSeconds(opts.notBefore);
  let issuerDer: Buffer;
  let aki: Buffer;
  const subjectParts = [nameAttr(OID_O, td, TAG.UTF8_STRING)];
  if (opts.commonName !== undefined) subjectParts.push(nameAttr(OID_CN, opts.commonName, TAG.UTF8_STRING));
  subjectParts.push(nameAttr(OID_SERIAL_NUMBER, serial.toString('hex'), TAG.PRINTABLE_STRING));
  const subjectDer = tlv(TAG.SEQUENCE, ...subjectParts);

  if (opts.issuerCertDer) {
    const issuer = parseCertificate(opts.issuerCertDer);
    if (!issuer.basicConstraints?.ca) throw err('x509svid.issuer_not_ca', 'issuer certificate is not a CA (basicConstraints cA is not true)');
    if (!issuer.keyUsage || !(issuer.keyUsage.flags & KU.keyCertSign)) throw err('x509svid.issuer_not_ca', 'issuer certificate lacks keyUsage keyCertSign (X509-SVID §4.3)');
    if (!spkiDer(opts.signerKey).equals(issuer.spki)) throw err('x509svid.key_mismatch', 'signerKey does not match the issuer certificate');
    const ipl = issuer.basicConstraints.pathLen;
    if (ipl !== undefined) {
      if (ipl === 0) throw err('x509svid.path_len_exceeded', 'issuer certificate has pathLen 0 and cannot issue CA certificates');
      if (opts.pathLen === undefined || opts.pathLen > ipl - 1) {
        throw err('x509svid.path_len_exceeded', `pathLen must be set and at most ${ipl - 1} under this issuer`);
      }
    }
    issuerDer = issuer.subjectDer;
    aki = issuer.subjectKeyId ?? keyIdentifier(issuer.spkiInfo.keyBits);
    if (notAfter > issuer.notAfter) notAfter = issuer.notAfter;
  } else {
    if (!spkiDer(opts.signerKey).equals(subjectSpki)) throw err('x509svid.key_mismatch', 'self-signed CA: signerKey must be the private half of subjectKey');
    issuerDer = subjectDer;
    aki = ski;
  }
  if (notAfter.getTime() <= notBefore.getTime()) throw err('x509svid.bad_validity', 'notAfter must be after notBefore');

  const exts = [
    encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true, opts.pathLen)),
    encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign)),
    encodeExtension(OID_SAN, false, encodeSanExtensionValue([`spiffe://${td}`], [])),
    encodeExtension(OID_SKI, false, encodeSkiValue(ski)),
    encodeExtension(OID_AKI, false, encodeAkiValue(aki)),
  ];
  return encodeCertificate({
    issuerDer,
    subjectDer,
    subjectSpki,
    serial,
    notBefore,
    notAfter,
    extensions: exts,
    signerKey: opts.signerKey,
  });
}

// ---------------------------------------------------------------- X.509-SVIDs

interface CaTemplate {
  caDer: Buffer;
  issuerDer: Buffer;
  akiExt: Buffer;
  notBefore: Date;
  notAfter: Date;
  caSpki: Buffer;
  trustDomain: string | undefined;
  /** CA private keys already checked against caSpki, with their signature algorithm. */
  keys: WeakMap<KeyObject, { algId: Buffer; hash: 'sha256' | 'sha384' }>;
}

const TEMPLATE_CACHE_MAX = 32;
const templates = new Map<string, CaTemplate>();
const templateByBuffer = new WeakMap<Buffer, CaTemplate>();

const EXT_BC_LEAF = encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false));
const EXT_KU_EC = encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature));
const EXT_KU_RSA = encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature | KU.keyEncipherment));
const EXT_EKU = encodeExtension(OID_EKU, false, EKU_SERVER_CLIENT_VALUE);
const SKI_PREFIX = Buffer.from('301d0603551d0e04160414', 'hex');
const SAN_OID_PART = Buffer.from('0603551d11', 'hex');

function templateFor(caCertDer: Buffer): CaTemplate {
  const direct = templateByBuffer.get(caCertDer);
  if (direct && direct.caDer.equals(caCertDer)) return direct;
  const key = caCertDer.toString('base64');
  let t = templates.get(key);
  if (!t) {
    const ca = parseCertificate(caCertDer);
    if (!ca.basicConstraints?.ca) throw err('x509svid.issuer_not_ca', 'CA certificate is not a CA (basicConstraints cA is not true)');
    if (!ca.keyUsage || !(ca.keyUsage.flags & KU.keyCertSign)) throw err('x509svid.issuer_not_ca', 'CA certificate lacks keyUsage keyCertSign (X509-SVID §4.3)');
    let trustDomain: string | undefined;
    const uri = ca.san?.uris[0];
    if (uri !== undefined && uri.startsWith('spiffe://')) trustDomain = SpiffeId.parse(uri).trustDomain;
    t = {
      caDer: Buffer.from(caCertDer),
      issuerDer: ca.subjectDer,
      akiExt: encodeExtension(OID_AKI, false, encodeAkiValue(ca.subjectKeyId ?? keyIdentifier(ca.spkiInfo.keyBits))),
      notBefore: ca.notBefore,
      notAfter: ca.notAfter,
      caSpki: ca.spki,
      trustDomain,
      keys: new WeakMap(),
    };
    if (templates.size >= TEMPLATE_CACHE_MAX) {
      const oldest = templates.keys().next().value;
      if (oldest !== undefined) templates.delete(oldest);
    }
    templates.set(key, t);
  }
  templateByBuffer.set(caCertDer, t);
  return t;
}

export interface IssueX509SvidOptions {
  caCertDer: Buffer;
  caKey: KeyObject;
  /** SubjectPublicKeyInfo DER of the workload key (e.g. `parseCsr(der).spki`). */
  subjectSpki: Buffer;
  spiffeId: string;
  notBefore: Date;
  notAfter: Date;
  dnsNames?: string[];
  serial?: Buffer;
}

/**
 * Issue an X.509-SVID: exactly one URI SAN (the SPIFFE ID), basicConstraints cA=false
 * (critical), keyUsage digitalSignature (+ keyEncipherment for RSA keys) critical, EKU
 * serverAuth+clientAuth, SKI/AKI, a random 16-byte positive serial unless given, and notAfter
 * clipped to the CA's notAfter. The SPIFFE ID must have a path and, when the CA certificate
 * carries a SPIFFE ID, belong to the CA's trust domain.
 */
export function issueX509Svid(opts: IssueX509SvidOptions): Buffer {
  const t = templateFor(opts.caCertDer);
  let alg = t.keys.get(opts.caKey);
  if (alg === undefined) {
    if (opts.caKey.type !== 'private') throw err('x509svid.key_mismatch', 'caKey must be a private key');
    if (!spkiDer(opts.caKey).equals(t.caSpki)) throw err('x509svid.key_mismatch', 'caKey does not match the CA certificate');
    alg = signingAlgFor(opts.caKey);
    t.keys.set(opts.caKey, alg);
  }
  const id = SpiffeId.parse(opts.spiffeId);
  if (id.isTrustDomainId) throw err('x509svid.id_no_path', `X.509-SVID SPIFFE ID ${id.toString()} must have a path`);
  if (t.trustDomain !== undefined && id.trustDomain !== t.trustDomain) {
    throw err('x509svid.wrong_trust_domain', `SPIFFE ID ${id.toString()} is not in the CA's trust domain ${t.trustDomain}`);
  }
  checkDate(opts.notBefore, 'notBefore');
  checkDate(opts.notAfter, 'notAfter');
  const notBefore = floorSeconds(opts.notBefore);
  let notAfter = floorSeconds(opts.notAfter);
  if (notAfter > t.notAfter) notAfter = t.notAfter;
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw err('x509svid.bad_validity', 'notAfter (after clipping to the CA notAfter) must be after notBefore');
  }
  const info = classifySpki(opts.subjectSpki, 'x509svid.malformed', 'x509svid.unsupported_key');
  const dns = opts.dnsNames ?? [];
  for (const d of dns) checkDnsName(d);
  const serial = opts.serial ? checkSerial(opts.serial) : randomSerial();

  const san = encodeSanExtensionValue([id.toString()], dns);
  const sanExt = tlv(TAG.SEQUENCE, SAN_OID_PART, tlv(TAG.OCTET_STRING, san));
  const skiExt = Buffer.concat([SKI_PREFIX, keyIdentifier(info.keyBits)]);
  const exts = tlv(
    0xa3,
    tlv(TAG.SEQUENCE, EXT_BC_LEAF, info.family === 'rsa' ? EXT_KU_RSA : EXT_KU_EC, EXT_EKU, sanExt, skiExt, t.akiExt),
  );
  const { algId, hash } = alg;
  const tbs = tlvOf(TAG.SEQUENCE, [
    VERSION_V3,
    encodeUnsignedInteger(serial),
    algId,
    t.issuerDer,
    encodeValidity(notBefore, notAfter),
    SVID_SUBJECT,
    opts.subjectSpki,
    exts,
  ]);
  const sig = signWith(hash, tbs, opts.caKey);
  return tlvOf(TAG.SEQUENCE, [tbs, algId, bitStringPrefix(sig.length), sig]);
}

function bitStringPrefix(sigLen: number): Buffer {
  const len = sigLen + 1;
  if (len < 0x80) return Buffer.from([TAG.BIT_STRING, len, 0]);
  if (len < 0x100) return Buffer.from([TAG.BIT_STRING, 0x81, len, 0]);
  return Buffer.from([TAG.BIT_STRING, 0x82, len >> 8, len & 0xff, 0]);
}
// ---------------------------------------------------------------- verification

export interface VerifiedX509Svid {
  spiffeId: SpiffeId;
  leafDer: Buffer;
  notAfter: Date;
  /** The verified path, leaf first, ending with the bundle root. */
  chain: Buffer[];
}

// Parsed signing certificates (bundle authorities, intermediates) by Buffer identity, so that a
// bundle held by the caller is parsed and its keys imported once. The cached copy is compared
// byte-for-byte before use, so a Buffer mutated in place is simply parsed again.
const signingCertCache = new WeakMap<Buffer, ParsedCertificate>();

function parseSigningCert(der: Buffer, what: string): ParsedCertificate {
  const hit = Buffer.isBuffer(der) ? signingCertCache.get(der) : undefined;
  if (hit && hit.der.equals(der)) return hit;
  const c = parseOrWrap(der, what);
  if (Buffer.isBuffer(der)) signingCertCache.set(der, c);
  return c;
}

function parseOrWrap(der: Buffer, what: string): ParsedCertificate {
  try {
    return parseCertificate(der);
  } catch (e) {
    if (e instanceof SigilError) throw err(e.code, `${what}: ${e.message}`);
    throw err('x509svid.malformed', `${what}: ${(e as Error).message}`);
  }
}

/** The toolkit's validity check (src/x509/validity.ts) under the SVID codes. */
function validityIssue(c: ParsedCertificate, now: Date): Problem | undefined {
  const p = validityProblem(c, now);
  if (p === 'x509.not_yet_valid') return { code: 'x509svid.not_yet_valid', msg: `is not valid before ${c.notBefore.toISOString()}` };
  if (p === 'x509.expired') return { code: 'x509svid.expired', msg: `expired at ${c.notAfter.toISOString()}` };
  return undefined;
}

function checkValidity(c: ParsedCertificate, now: Date, what: string): void {
  const p = validityIssue(c, now);
  if (p) throw err(p.code, `${what} ${p.msg}`);
}

function checkCriticalExtensions(c: ParsedCertificate, what: string): void {
  for (const e of c.extensions) {
    if (e.critical && !HANDLED_EXTENSIONS.has(e.oid)) throw err('x509svid.unhandled_critical_extension', `${what} has unhandled critical extension ${e.oid}`);
  }
}

function publicKeyOfCert(c: ParsedCertificate): KeyObject {
  try {
    return publicKeyOf(c);
  } catch (e) {
    throw err('x509svid.malformed', (e as Error).message);
  }
}

function signedBy(child: ParsedCertificate, issuer: ParsedCertificate): boolean {
  if (!child.issuerDer.equals(issuer.subjectDer)) return false;
  if (child.authorityKeyId && issuer.subjectKeyId && !child.authorityKeyId.equals(issuer.subjectKeyId)) return false;
  return verifyWith(child.sigAlg, child.tbs, publicKeyOfCert(issuer), child.signature);
}

interface Problem {
  code: string;
  msg: string;
}

/**
 * Why `der` cannot sign in an X.509-SVID chain with `belowCaCount` CA certificates under it (the
 * checks verifyX509Svid applies to intermediates and roots), or undefined. For configuration checks
 * such as an upstream CA chain, so that it is refused when loaded rather than when SVIDs are verified.
 */
export function signingCertificateProblem(der: Buffer, now: Date, belowCaCount: number): string | undefined {
  const p = signingCertProblem(parseCertificate(der), now, belowCaCount);
  return p === undefined ? undefined : `${p.code}: ${p.msg}`;
}

/** Checks on any certificate that signs another (intermediate or root). */
function signingCertProblem(c: ParsedCertificate, now: Date, belowCaCount: number): Problem | undefined {
  const bad = (msg: string): Problem => ({ code: 'x509svid.bad_signing_cert', msg });
  if (!c.basicConstraints?.ca) return bad('is not a CA (basicConstraints cA is not true)');
  // X509-SVID §4.3: keyUsage MUST be set on every SVID and signing certificates MUST set
  // keyCertSign; a CA certificate without keyUsage (which RFC 5280 would read as "any use") is refused.
  // The vendor chains (Nitro, SEV-SNP, TDX, TPM EK) have their own rules in their own files.
  if (!c.keyUsage) return bad('has no keyUsage extension (signing certificates must set keyCertSign)');
  if (!(c.keyUsage.flags & KU.keyCertSign)) return bad('lacks keyCertSign');
  if (c.basicConstraints.pathLen !== undefined && belowCaCount > c.basicConstraints.pathLen) return bad('has its pathLenConstraint exceeded');
  const v = validityIssue(c, now);
  if (v) return v;
  for (const e of c.extensions) {
    if (e.critical && !HANDLED_EXTENSIONS.has(e.oid)) return { code: 'x509svid.unhandled_critical_extension', msg: `has unhandled critical extension ${e.oid}` };
    // Not applied, so not ignored either (RFC 5280 wants it critical; many CAs mark it non-critical).
    if (e.oid === OID_NAME_CONSTRAINTS) return bad('has a nameConstraints extension, which Sigil does not apply');
  }
  const uri = c.san?.uris.find((u) => u.startsWith('spiffe://'));
  if (uri !== undefined) {
    try {
      if (!SpiffeId.parse(uri).isTrustDomainId) return bad('has a SPIFFE ID with a path (signing certificates must not)');
    } catch {
      return bad('has an invalid SPIFFE ID');
    }
  }
  return undefined;
}

/**
 * Verify an X.509-SVID chain (leaf first, then any intermediates) against the X.509 authorities
 * of the leaf's trust domain. Enforces the SVID leaf profile and RFC 5280 path rules (validity,
 * signatures, and for every signing certificate, bundle authorities included: cA, a keyUsage
 * with keyCertSign, pathLen, unknown critical extensions).
 */
export function verifyX509Svid(
  chainDer: Buffer[],
  bundleFor: (trustDomain: string) => Buffer[] | undefined,
  now: Date,
): VerifiedX509Svid {
  if (!Array.isArray(chainDer) || chainDer.length === 0) throw err('x509svid.empty_chain', 'no certificates presented');
  if (chainDer.length > MAX_CHAIN) throw err('x509svid.chain_too_long', `more than ${MAX_CHAIN} certificates presented`);
  checkDate(now, 'now');
  const leaf = parseOrWrap(chainDer[0]!, 'leaf certificate');

  // --- leaf profile (X509-SVID §4, §5.2)
  const uris = leaf.san?.uris ?? [];
  if (uris.length === 0) throw err('x509svid.no_uri_san', 'leaf certificate has no URI SAN');
  if (uris.length > 1) throw err('x509svid.multiple_uri_sans', `leaf certificate has ${uris.length} URI SANs; exactly one is allowed`);
  let spiffeId: SpiffeId;
  try {
    spiffeId = SpiffeId.parse(uris[0]!);
  } catch (e) {
    throw err('x509svid.bad_spiffe_id', `leaf URI SAN is not a valid SPIFFE ID: ${(e as Error).message}`);
  }
  if (spiffeId.isTrustDomainId) throw err('x509svid.id_no_path', `leaf SPIFFE ID ${spiffeId.toString()} has no path`);
  if (leaf.basicConstraints?.ca) throw err('x509svid.leaf_is_ca', 'leaf certificate has basicConstraints cA=true');
  if (!leaf.keyUsage) throw err('x509svid.leaf_key_usage', 'leaf certificate has no keyUsage extension');
  if (!leaf.keyUsage.critical) throw err('x509svid.leaf_key_usage', 'leaf keyUsage extension is not critical');
  if (!(leaf.keyUsage.flags & KU.digitalSignature)) throw err('x509svid.leaf_key_usage', 'leaf keyUsage lacks digitalSignature');
  if (leaf.keyUsage.flags & (KU.keyCertSign | KU.cRLSign)) throw err('x509svid.leaf_key_usage', 'leaf keyUsage has keyCertSign or cRLSign');
  if (leaf.subjectDer.length <= 2 && !leaf.san?.critical) throw err('x509svid.malformed', 'leaf has an empty subject but a non-critical SAN');
  checkCriticalExtensions(leaf, 'leaf certificate');
  checkValidity(leaf, now, 'leaf certificate');

  // --- trust anchors of the leaf's trust domain
  const rootDers = bundleFor(spiffeId.trustDomain);
  if (!rootDers || rootDers.length === 0) throw err('x509svid.no_bundle', `no X.509 authorities for trust domain ${spiffeId.trustDomain}`);
  const roots = rootDers.map((d, i) => parseSigningCert(d, `bundle authority #${i}`));
  const intermediates = chainDer.slice(1).map((d, i) => parseSigningCert(d, `intermediate #${i + 1}`));

  // --- path building: depth-first from the leaf, preferring the presented order.
  let last: Problem = { code: 'x509svid.untrusted', msg: 'no bundle authority or presented intermediate issued the chain' };
  const path: ParsedCertificate[] = [leaf];
  const used = new Set<number>();
  // Bounded search: every name-matching candidate counts, and each (child, issuer) signature is checked once.
  let work = 0;
  const spend = (): void => {
    if (++work > MAX_PATH_WORK) {
      throw err('x509svid.path_search_exhausted', `path building gave up after ${MAX_PATH_WORK} candidate issuers (too many presented certificates share issuer names)`);
    }
  };
  const verdicts = new Map<ParsedCertificate, Map<ParsedCertificate, boolean>>();
  const signedByOnce = (child: ParsedCertificate, issuer: ParsedCertificate): boolean => {
    let m = verdicts.get(child);
    if (!m) verdicts.set(child, (m = new Map()));
    let v = m.get(issuer);
    if (v === undefined) m.set(issuer, (v = signedBy(child, issuer)));
    return v;
  };
  const build = (child: ParsedCertificate, caCountBelow: number): boolean => {
    for (const r of roots) {
      if (!child.issuerDer.equals(r.subjectDer)) continue;
      spend();
      const p = signingCertProblem(r, now, caCountBelow);
      if (p !== undefined) {
        last = { code: p.code, msg: `bundle authority ${shown(r.subject)} ${p.msg}` };
        continue;
      }
      if (signedByOnce(child, r)) {
        path.push(r);
        return true;
      }
      last = { code: 'x509svid.bad_signature', msg: `signature of ${child === leaf ? 'the leaf' : shown(child.subject)} does not verify with bundle authority ${shown(r.subject)}` };
    }
    if (path.length > MAX_DEPTH) return false;
    for (let i = 0; i < intermediates.length; i++) {
      if (used.has(i)) continue;
      const c = intermediates[i]!;
      if (!child.issuerDer.equals(c.subjectDer)) continue;
      spend();
      const p = signingCertProblem(c, now, caCountBelow);
      if (p !== undefined) {
        last = { code: p.code, msg: `intermediate ${shown(c.subject)} ${p.msg}` };
        continue;
      }
      if (!signedByOnce(child, c)) {
        last = { code: 'x509svid.bad_signature', msg: `signature of ${child === leaf ? 'the leaf' : shown(child.subject)} does not verify with intermediate ${shown(c.subject)}` };
        continue;
      }
      used.add(i);
      path.push(c);
      if (build(c, caCountBelow + 1)) return true;
      path.pop();
      used.delete(i);
    }
    return false;
  };
  if (!build(leaf, 0)) throw err(last.code, `cannot build a path to a ${spiffeId.trustDomain} authority: ${last.msg}`);
  return { spiffeId, leafDer: leaf.der, notAfter: leaf.notAfter, chain: path.map((c) => c.der) };
}
