/**
 * EK certificate validation per the TCG EK Credential Profile for TPM 2.0:
 * the critical subjectAltName directoryName carrying tcg-at-tpmManufacturer /
 * tpmModel / tpmVersion (2.23.133.2.1/2/3) is parsed with @peculiar/asn1-x509;
 * any other unknown critical extension is rejected; the chain is built to the
 * configured `ekCa` certificates (hello intermediates are untrusted helpers),
 * with signatures, validity at the given time and issuer basicConstraints checked.
 * Pure: certificates and time in, typed result or SigilError out.
 */
import 'reflect-metadata';
import { createHash, createPublicKey } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  KeyUsage,
  KeyUsageFlags,
  Name as AsnName,
  SubjectAlternativeName,
} from '@peculiar/asn1-x509';
import { RSAPublicKey } from '@peculiar/asn1-rsa';
import { ECParameters } from '@peculiar/asn1-ecc';
import { X509Certificate } from '@peculiar/x509';
import { SigilError, errorMessage } from '../errors.js';
import { TAG, readTlv } from '../x509/der.js';
import { certificatesFromBytes as readCertificateBytes } from '../x509/pem.js';
import { validityProblem } from '../x509/validity.js';
import { CURVES } from './constants.js';
import { padTo } from './keys.js';
import type { TpmtPublic } from './structures.js';

const OID = {
  keyUsage: '2.5.29.15',
  basicConstraints: '2.5.29.19',
  subjectAltName: '2.5.29.17',
  extKeyUsage: '2.5.29.37',
  anyExtendedKeyUsage: '2.5.29.37.0',
  tcgKpEkCertificate: '2.23.133.8.1',
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
  rsaesOaep: '1.2.840.113549.1.1.7',
  ecPublicKey: '1.2.840.10045.2.1',
} as const;

/** Critical extensions Sigil understands on an EK (leaf) certificate. */
const LEAF_CRITICAL_OK = new Set<string>([OID.keyUsage, OID.basicConstraints, OID.subjectAltName, OID.extKeyUsage]);
/** Critical extensions Sigil understands on an issuing CA certificate. */
const CA_CRITICAL_OK = new Set<string>([OID.keyUsage, OID.basicConstraints]);

/** Limits for certificates sent by an agent. */
export const EK_LIMITS = { certBytes: 16 * 1024, intermediates: 8, depth: 8 } as const;

export interface ParsedCert {
  der: Buffer;
  sha256: string;
  asn: Certificate;
  x509: X509Certificate;
  subjectDer: Buffer;
  issuerDer: Buffer;
  selfIssued: boolean;
  notBefore: Date;
  notAfter: Date;
  criticalExtensions: string[];
  basicConstraints?: { cA: boolean; pathLen?: number };
  keyUsage?: number;
}

export interface TpmIdentity {
  manufacturer?: string;
  model?: string;
  version?: string;
}

export interface EkChainResult {
  /** Leaf first, then intermediates, ending with the trust anchor used. */
  chain: ParsedCert[];
  /** The configured certificate at the top of the path (selector `tpm:ek_ca`). */
  anchor: ParsedCert;
  identity: TpmIdentity;
}

/** Outer TLV length of a DER certificate (the toolkit's strict reader), or -1; used to cut zero padding some TPMs leave in NV. */
function derLength(buf: Buffer): number {
  try {
    const t = readTlv(buf, 0, buf.length, 'tpm.ek_cert_malformed');
    return t.tag === TAG.SEQUENCE ? t.end : -1;
  } catch {
    return -1;
  }
}

/** Parse one DER certificate (trailing zero padding from TPM NV storage is tolerated, other trailing bytes are not). */
export function parseCertificate(input: Buffer, what: string, code = 'tpm.ek_cert_malformed'): ParsedCert {
  if (input.length > EK_LIMITS.certBytes) throw new SigilError(code, `${what} is ${input.length} bytes, more than ${EK_LIMITS.certBytes}`);
  const len = derLength(input);
  if (len < 0 || len > input.length) throw new SigilError(code, `${what} is not a DER certificate`);
  if (input.subarray(len).some((b) => b !== 0)) throw new SigilError(code, `${what} has trailing bytes after the certificate`);
  const der = Buffer.from(input.subarray(0, len));
  try {
    const asn = AsnConvert.parse(der, Certificate);
    const x509 = new X509Certificate(der);
    const tbs = asn.tbsCertificate;
    const subjectDer = Buffer.from(AsnConvert.serialize(tbs.subject));
    const issuerDer = Buffer.from(AsnConvert.serialize(tbs.issuer));
    const critical: string[] = [];
    let basicConstraints: ParsedCert['basicConstraints'];
    let keyUsage: number | undefined;
    const seen = new Set<string>();
    for (const ext of tbs.extensions ?? []) {
      if (seen.has(ext.extnID)) throw new SigilError(code, `${what} repeats extension ${ext.extnID}`);
      seen.add(ext.extnID);
      if (ext.critical) critical.push(ext.extnID);
      if (ext.extnID === OID.basicConstraints) {
        const bc = AsnConvert.parse(ext.extnValue.buffer, BasicConstraints);
        basicConstraints = bc.pathLenConstraint === undefined ? { cA: bc.cA } : { cA: bc.cA, pathLen: bc.pathLenConstraint };
      } else if (ext.extnID === OID.keyUsage) {
        keyUsage = AsnConvert.parse(ext.extnValue.buffer, KeyUsage).toNumber();
      }
    }
    const out: ParsedCert = {
      der,
      sha256: createHash('sha256').update(der).digest('hex'),
      asn,
      x509,
      subjectDer,
      issuerDer,
      selfIssued: subjectDer.equals(issuerDer),
      notBefore: x509.notBefore,
      notAfter: x509.notAfter,
      criticalExtensions: critical,
    };
    if (basicConstraints) out.basicConstraints = basicConstraints;
    if (keyUsage !== undefined) out.keyUsage = keyUsage;
    return out;
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError(code, `${what} could not be parsed: ${errorMessage(e)}`, { cause: e });
  }
}

/** Certificates from a file's bytes: one or more PEM blocks, or a single DER certificate (raw, hex or base64); the toolkit's reader. */
export function certificatesFromBytes(data: Buffer, what: string): Buffer[] {
  try {
    return readCertificateBytes(data);
  } catch (e) {
    throw new SigilError('tpm.ek_cert_malformed', `${what}: ${errorMessage(e)}`, { cause: e });
  }
}

/** TPM manufacturer / model / version from the EK certificate's subjectAltName directoryName. */
export function tpmIdentity(cert: ParsedCert): TpmIdentity {
  const exts = (cert.asn.tbsCertificate.extensions ?? []).filter((e) => e.extnID === OID.subjectAltName);
  const ext = exts[0];
  if (!ext) return {};
  const id: TpmIdentity = {};
  let san: SubjectAlternativeName;
  try {
    san = AsnConvert.parse(ext.extnValue.buffer, SubjectAlternativeName);
  } catch (e) {
    throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName could not be parsed: ${errorMessage(e)}`, { cause: e });
  }
  const keys: Record<string, keyof TpmIdentity> = { [OID.tpmManufacturer]: 'manufacturer', [OID.tpmModel]: 'model', [OID.tpmVersion]: 'version' };
  for (const gn of san) {
    const dn: AsnName | undefined = gn.directoryName;
    if (!dn) continue;
    for (const rdn of dn) {
      for (const atv of rdn) {
        const key = keys[atv.type];
        if (!key) continue;
        const v = atv.value;
        const s = v.utf8String ?? v.printableString ?? v.ia5String ?? v.teletexString ?? v.bmpString ?? v.universalString;
        if (typeof s !== 'string' || s.length === 0 || s.length > 256 || [...s].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) {
          throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName attribute ${atv.type} is not a printable string`);
        }
        if (id[key] !== undefined) throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName repeats attribute ${atv.type}`);
        // "id:<hex>" values (manufacturer, version) are lowercased: selectors use lowercase hex
        id[key] = /^id:[0-9A-Fa-f]+$/.test(s) ? s.toLowerCase() : s;
      }
    }
  }
  if (ext.critical && id.manufacturer === undefined && id.model === undefined && id.version === undefined) {
    throw new SigilError('tpm.ek_cert_san_invalid', 'EK certificate has a critical subjectAltName without TPM manufacturer/model/version attributes');
  }
  return id;
}

function checkLeafExtensions(leaf: ParsedCert): void {
  for (const oid of leaf.criticalExtensions) {
    if (!LEAF_CRITICAL_OK.has(oid)) throw new SigilError('tpm.ek_cert_unknown_critical_extension', `EK certificate has unknown critical extension ${oid}`);
  }
  if (leaf.basicConstraints?.cA) throw new SigilError('tpm.ek_cert_invalid', 'EK certificate is a CA certificate (basicConstraints cA=TRUE)');
  const eku = (leaf.asn.tbsCertificate.extensions ?? []).find((e) => e.extnID === OID.extKeyUsage);
  if (eku?.critical) {
    let list: string[];
    try {
      list = AsnConvert.parse(eku.extnValue.buffer, ExtendedKeyUsage).map(String);
    } catch (e) {
      throw new SigilError('tpm.ek_cert_malformed', 'EK certificate extendedKeyUsage could not be parsed', { cause: e });
    }
    if (!list.includes(OID.tcgKpEkCertificate) && !list.includes(OID.anyExtendedKeyUsage)) {
      throw new SigilError('tpm.ek_cert_invalid', 'EK certificate has a critical extendedKeyUsage without tcg-kp-EKCertificate (2.23.133.8.1)');
    }
  }
}

function checkTime(c: ParsedCert, at: Date, role: string): void {
  const p = validityProblem(c, at);
  if (p === 'x509.not_yet_valid') {
    throw new SigilError('tpm.ek_cert_expired', `${role} (${c.x509.subject}) is not valid before ${c.notBefore.toISOString()} (checked at ${at.toISOString()})`);
  }
  if (p === 'x509.expired') {
    throw new SigilError('tpm.ek_cert_expired', `${role} (${c.x509.subject}) expired ${c.notAfter.toISOString()} (checked at ${at.toISOString()})`);
  }
}

function checkIssuer(ca: ParsedCert, intermediatesBelow: number, configured: boolean): string | null {
  if (!configured) {
    for (const oid of ca.criticalExtensions) if (!CA_CRITICAL_OK.has(oid)) return `has unknown critical extension ${oid}`;
  }
  if (!ca.basicConstraints?.cA) return 'is not a CA (basicConstraints cA is not TRUE)';
  if (ca.basicConstraints.pathLen !== undefined && intermediatesBelow > ca.basicConstraints.pathLen) {
    return `pathLenConstraint ${ca.basicConstraints.pathLen} is exceeded`;
  }
  if (ca.keyUsage !== undefined && (ca.keyUsage & KeyUsageFlags.keyCertSign) === 0) return 'keyUsage lacks keyCertSign';
  return null;
}

async function signedBy(child: ParsedCert, issuer: ParsedCert): Promise<boolean> {
  try {
    return await child.x509.verify({ publicKey: issuer.x509.publicKey, signatureOnly: true });
  } catch {
    return false;
  }
}

/** Trusted EK CA certificates (roots and intermediates named in the `ekCa` config). */
export class EkTrustStore {
  readonly certs: ParsedCert[];
  private readonly byDer: Set<string>;

  constructor(ders: Buffer[]) {
    if (ders.length === 0) throw new SigilError('tpm.config_invalid', 'ekCa holds no certificates');
    this.certs = ders.map((d, i) => parseCertificate(d, `ekCa certificate #${i + 1}`, 'tpm.config_invalid'));
    this.byDer = new Set(this.certs.map((c) => c.sha256));
  }

  isTrusted(c: ParsedCert): boolean {
    return this.byDer.has(c.sha256);
  }
}

interface CacheEntry {
  result: EkChainResult;
  notBefore: number;
  notAfter: number;
}

/**
 * Validates EK certificates against an EkTrustStore. Successful chains are cached per
 * (certificate, intermediates) so repeated attestations skip the signature checks; the
 * validity window is still checked against the session time on every call.
 */
export class EkCertVerifier {
  private readonly cache = new Map<string, CacheEntry>();

  constructor(
    readonly trust: EkTrustStore,
    private readonly maxCache = 4096,
  ) {}

  async verify(ekCertDer: Buffer, intermediatesDer: Buffer[], at: Date): Promise<EkChainResult> {
    if (intermediatesDer.length > EK_LIMITS.intermediates) {
      throw new SigilError('tpm.ek_cert_malformed', `more than ${EK_LIMITS.intermediates} EK intermediate certificates`);
    }
    const h = createHash('sha256');
    for (const d of [ekCertDer, ...intermediatesDer]) h.update(`${d.length}:`).update(d);
    const key = h.digest('hex');
    const hit = this.cache.get(key);
    const t = at.getTime();
    if (hit && t >= hit.notBefore && t <= hit.notAfter) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit.result;
    }
    const result = await verifyEkChain(ekCertDer, intermediatesDer, this.trust, at);
    if (this.cache.size >= this.maxCache) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(key, {
      result,
      notBefore: Math.max(...result.chain.map((c) => c.notBefore.getTime())),
      notAfter: Math.min(...result.chain.map((c) => c.notAfter.getTime())),
    });
    return result;
  }
}

/** Build and check the EK certificate path to a configured certificate (uncached). */
export async function verifyEkChain(ekCertDer: Buffer, intermediatesDer: Buffer[], trust: EkTrustStore, at: Date): Promise<EkChainResult> {
  const leaf = parseCertificate(ekCertDer, 'EK certificate');
  checkLeafExtensions(leaf);
  const identity = tpmIdentity(leaf);
  const helpers = intermediatesDer.map((d, i) => parseCertificate(d, `EK intermediate certificate #${i + 1}`));
  checkTime(leaf, at, 'EK certificate');

  const chain: ParsedCert[] = [leaf];
  let current = leaf;
  let reachedTrust = trust.isTrusted(leaf);
  const reasons: string[] = [];
  while (chain.length <= EK_LIMITS.depth) {
    if (reachedTrust && current.selfIssued) break;
    // Once a configured certificate is reached, keep climbing only through configured
    // certificates so `tpm:ek_ca` names the topmost configured CA (normally the root).
    const pool = reachedTrust ? trust.certs : [...trust.certs, ...helpers];
    let next: ParsedCert | undefined;
    for (const cand of pool) {
      if (cand.sha256 === current.sha256 || chain.some((c) => c.sha256 === cand.sha256)) continue;
      if (!cand.subjectDer.equals(current.issuerDer)) continue;
      const configured = trust.isTrusted(cand);
      const problem = checkIssuer(cand, chain.length - 1, configured);
      if (problem) {
        reasons.push(`issuer ${cand.x509.subject} ${problem}`);
        continue;
      }
      if (!(await signedBy(current, cand))) {
        reasons.push(`signature of ${current.x509.subject} does not verify with ${cand.x509.subject}`);
        continue;
      }
      next = cand;
      break;
    }
    if (!next) break;
    checkTime(next, at, trust.isTrusted(next) ? 'EK CA certificate' : 'EK intermediate certificate');
    chain.push(next);
    current = next;
    if (trust.isTrusted(next)) reachedTrust = true;
  }
  if (!reachedTrust) {
    const why = reasons.length > 0 ? `: ${reasons.join('; ')}` : `: no configured ekCa certificate issued ${current.x509.subject} (issuer ${current.x509.issuer})`;
    throw new SigilError('tpm.ek_untrusted', `EK certificate does not chain to a configured ekCa certificate${why}`);
  }
  return { chain, anchor: current, identity };
}

function bufFromArrayBuffer(b: ArrayBuffer): Buffer {
  return Buffer.from(new Uint8Array(b));
}

function mismatch(why: string): never {
  throw new SigilError('tpm.ek_public_mismatch', `EK public key sent by the agent differs from the EK certificate: ${why}`);
}

type CertKey = { kind: 'rsa'; n: Buffer; e: Buffer } | { kind: 'ec'; curveOid: string | undefined; x: string; y: string } | { kind: 'other'; alg: string };

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** Key material of a certificate, computed once per parsed certificate (cached chains reuse it). */
const certKeys = new WeakMap<ParsedCert, CertKey>();

function certKey(cert: ParsedCert): CertKey {
  const hit = certKeys.get(cert);
  if (hit) return hit;
  const spki = cert.asn.tbsCertificate.subjectPublicKeyInfo;
  const alg = spki.algorithm.algorithm;
  let k: CertKey;
  if (alg === OID.rsaEncryption || alg === OID.rsaesOaep) {
    try {
      const r = AsnConvert.parse(spki.subjectPublicKey, RSAPublicKey);
      k = { kind: 'rsa', n: stripZeros(bufFromArrayBuffer(r.modulus)), e: stripZeros(bufFromArrayBuffer(r.publicExponent)) };
    } catch (err) {
      throw new SigilError('tpm.ek_cert_malformed', 'EK certificate RSA public key could not be parsed', { cause: err });
    }
  } else if (alg === OID.ecPublicKey) {
    try {
      const params = spki.algorithm.parameters ? AsnConvert.parse(spki.algorithm.parameters, ECParameters) : undefined;
      const jwk = createPublicKey({ key: Buffer.from(AsnConvert.serialize(spki)), format: 'der', type: 'spki' }).export({ format: 'jwk' });
      k = { kind: 'ec', curveOid: params?.namedCurve, x: jwk.x ?? '', y: jwk.y ?? '' };
    } catch (err) {
      throw new SigilError('tpm.ek_cert_malformed', 'EK certificate EC public key could not be parsed', { cause: err });
    }
  } else {
    k = { kind: 'other', alg };
  }
  certKeys.set(cert, k);
  return k;
}

/** Throws `tpm.ek_public_mismatch` unless the certificate's public key equals the TPM EK public area. */
export function checkEkPublicMatches(cert: ParsedCert, ek: TpmtPublic): void {
  const k = certKey(cert);
  if (k.kind === 'rsa') {
    if (ek.type !== 'rsa') mismatch(`certificate holds an RSA key, TPM EK is ${ek.type.toUpperCase()}`);
    const eb = Buffer.alloc(4);
    eb.writeUInt32BE(ek.exponent >>> 0);
    if (!k.n.equals(stripZeros(ek.modulus))) mismatch('RSA modulus differs');
    if (!k.e.equals(stripZeros(eb))) mismatch('RSA exponent differs');
    return;
  }
  if (k.kind === 'ec') {
    if (ek.type !== 'ecc') mismatch(`certificate holds an EC key, TPM EK is ${ek.type.toUpperCase()}`);
    const curve = CURVES.find((c) => c.oid === k.curveOid);
    if (!curve || curve.id !== ek.curveId) mismatch(`certificate curve ${k.curveOid ?? 'unnamed'} differs from the TPM EK curve`);
    const x = padTo(ek.x, curve.size, 'EK x');
    const y = padTo(ek.y, curve.size, 'EK y');
    if (k.x !== x.toString('base64url') || k.y !== y.toString('base64url')) mismatch('EC point differs');
    return;
  }
  throw new SigilError('tpm.ek_cert_invalid', `EK certificate public key algorithm ${k.alg} is not RSA or EC`);
}

/** DER SPKI of the certificate's key in node's canonical encoding (RSAES-OAEP keys re-encoded as rsaEncryption). */
export function certPublicSpkiDer(cert: ParsedCert): Buffer {
  const spki = cert.asn.tbsCertificate.subjectPublicKeyInfo;
  try {
    if (spki.algorithm.algorithm === OID.rsaesOaep) {
      const k = AsnConvert.parse(spki.subjectPublicKey, RSAPublicKey);
      const jwk = { kty: 'RSA', n: stripZeros(bufFromArrayBuffer(k.modulus)).toString('base64url'), e: stripZeros(bufFromArrayBuffer(k.publicExponent)).toString('base64url') };
      return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    }
    return createPublicKey({ key: Buffer.from(AsnConvert.serialize(spki)), format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' });
  } catch (e) {
    throw new SigilError('tpm.ek_cert_malformed', `EK certificate public key could not be read: ${errorMessage(e)}`, { cause: e });
  }
}

/** Key kind of a certificate's public key, as the native binding names EK algorithms. */
export function certKeyKind(cert: ParsedCert): 'rsa' | 'ecc-p256' | 'ecc-p384' | 'ecc-p521' | 'other' {
  const spki = cert.asn.tbsCertificate.subjectPublicKeyInfo;
  const alg = spki.algorithm.algorithm;
  if (alg === OID.rsaEncryption || alg === OID.rsaesOaep) return 'rsa';
  if (alg !== OID.ecPublicKey || !spki.algorithm.parameters) return 'other';
  try {
    const curve = CURVES.find((c) => c.oid === AsnConvert.parse(spki.algorithm.parameters as ArrayBuffer, ECParameters).namedCurve);
    if (curve?.jwk === 'P-256') return 'ecc-p256';
    if (curve?.jwk === 'P-384') return 'ecc-p384';
    if (curve?.jwk === 'P-521') return 'ecc-p521';
  } catch {
    return 'other';
  }
  return 'other';
}
