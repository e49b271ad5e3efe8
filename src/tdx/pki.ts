/**
 * Intel SGX/TDX PKI, pure: the pinned Intel SGX Root CA, the three issuer chains DCAP uses
 * (PCK chain in the quote, TCB Signing chain of the TCB Info and QE Identity, PCK CRL issuer
 * chain), CRLs, and the Intel SGX extensions of the PCK certificate (OID 1.2.840.113741.1.13.1).
 *
 * Certificates are parsed with the repository's strict X.509 parser (src/spiffe/cert.ts, which
 * refuses non-DER) and signatures checked with its algorithm allowlist (src/spiffe/sigalg.ts);
 * CRLs and the Intel extension are read with the same strict DER reader (src/spiffe/der.ts).
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { parseCertificate, type ParsedCertificate } from '../spiffe/cert.js';
import { TAG, bytesOf, checkStrictDer, children, decodeOid, decodeTime, readSingle, valueOf, type Tlv } from '../spiffe/der.js';
import { pemToDers } from '../spiffe/pem.js';
import { parseSigAlg, verifyWith, type SigAlg } from '../spiffe/sigalg.js';
import { KU, OID_AKI, OID_BC, OID_KU, OID_SKI } from '../spiffe/x509ext.js';

/** SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, 2018-05-21 → 2049-12-31). */
export const INTEL_SGX_ROOT_CA_SHA256 = '44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3';

const OID_CRL_DP = '2.5.29.31';
const OID_CRL_NUMBER = '2.5.29.20';
const OID_SGX = '1.2.840.113741.1.13.1';
const KNOWN_EXTENSIONS = new Set([OID_AKI, OID_BC, OID_KU, OID_SKI, OID_CRL_DP, OID_SGX]);

export type ChainRole = 'pck' | 'tcb_signing' | 'pck_crl_issuer';

/** Expected subject common names, leaf to root, per chain role. */
const CHAIN_CNS: Record<ChainRole, string[][]> = {
  pck: [['Intel SGX PCK Certificate'], ['Intel SGX PCK Platform CA', 'Intel SGX PCK Processor CA'], ['Intel SGX Root CA']],
  tcb_signing: [['Intel SGX TCB Signing'], ['Intel SGX Root CA']],
  pck_crl_issuer: [['Intel SGX PCK Platform CA', 'Intel SGX PCK Processor CA'], ['Intel SGX Root CA']],
};

export interface IntelCert {
  cert: ParsedCertificate;
  sha256: string;
  cn: string;
  publicKey: KeyObject;
}

export interface VerifiedChain {
  /** Leaf first, root last. */
  certs: IntelCert[];
  leaf: IntelCert;
  root: IntelCert;
}

export interface IntelCrl {
  der: Buffer;
  issuerDer: Buffer;
  thisUpdate: Date;
  nextUpdate: Date;
  /** Revoked serial numbers (content octets, hex). */
  revoked: Set<string>;
  tbs: Buffer;
  sigAlg: SigAlg;
  signature: Buffer;
}

export interface SgxPckExtensions {
  ppid: Buffer;
  /** SGX TCB component SVNs 1..16. */
  compSvn: number[];
  pceSvn: number;
  cpuSvn: Buffer;
  pceId: Buffer;
  fmspc: Buffer;
  sgxType: number;
}

function fail(code: string, message: string, status = 403): never {
  throw new SigilError(code, message, { status });
}

const certCache = new Map<string, IntelCert>();
const CERT_CACHE_MAX = 256;

function cnOf(subject: string): string {
  const m = /(?:^|,)CN=([^,]*)/.exec(subject);
  return m ? m[1]! : '';
}

/** Parse one DER certificate (cached by SHA-256); malformed → `tdx.cert_malformed`. */
export function parseIntelCert(der: Uint8Array, what: string): IntelCert {
  const sha256 = createHash('sha256').update(der).digest('hex');
  const hit = certCache.get(sha256);
  if (hit) return hit;
  let cert: ParsedCertificate;
  try {
    cert = parseCertificate(der);
  } catch (e) {
    throw new SigilError('tdx.cert_malformed', `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: cert.spki, format: 'der', type: 'spki' });
  } catch (e) {
    throw new SigilError('tdx.cert_malformed', `${what}: public key unusable`, { cause: e });
  }
  const out: IntelCert = { cert, sha256, cn: cnOf(cert.subject), publicKey };
  if (certCache.size >= CERT_CACHE_MAX) certCache.delete(certCache.keys().next().value!);
  certCache.set(sha256, out);
  return out;
}

/** PEM text → DER list; not PEM → `tdx.<role>_chain_malformed`. */
export function chainFromPem(pem: string, role: ChainRole): Buffer[] {
  try {
    return pemToDers(pem);
  } catch (e) {
    throw new SigilError(`tdx.${role}_chain_malformed`, `${role.replace(/_/g, ' ')} chain: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

function checkValidAt(c: IntelCert, now: Date, what: string): void {
  const t = now.getTime();
  if (t < c.cert.notBefore.getTime()) fail('tdx.cert_not_yet_valid', `${what} "${c.cn}" is not valid before ${c.cert.notBefore.toISOString()}`);
  if (t > c.cert.notAfter.getTime()) fail('tdx.cert_expired', `${what} "${c.cn}" expired at ${c.cert.notAfter.toISOString()}`);
}

function checkRole(c: IntelCert, ca: boolean, what: string): void {
  for (const e of c.cert.extensions) {
    if (e.critical && !KNOWN_EXTENSIONS.has(e.oid)) fail('tdx.cert_usage_invalid', `${what} "${c.cn}" has unknown critical extension ${e.oid}`);
  }
  const bc = c.cert.basicConstraints;
  const ku = c.cert.keyUsage;
  if (ca) {
    if (!bc?.ca) fail('tdx.cert_usage_invalid', `${what} "${c.cn}" is not a CA (basicConstraints cA)`);
    if (!ku || (ku.flags & KU.keyCertSign) === 0) fail('tdx.cert_usage_invalid', `${what} "${c.cn}" lacks keyUsage keyCertSign`);
  } else {
    if (bc?.ca) fail('tdx.cert_usage_invalid', `${what} "${c.cn}" is a CA but is used as a leaf`);
    if (ku && (ku.flags & KU.digitalSignature) === 0) fail('tdx.cert_usage_invalid', `${what} "${c.cn}" lacks keyUsage digitalSignature`);
  }
}

const verifiedMemo = new Set<string>();
const VERIFIED_MEMO_MAX = 4096;

/**
 * Memoised signature check: `verify()` runs unless a check with the same `key` succeeded before.
 * `key` must name everything the result depends on (SHA-256 of the signed bytes, the signature and
 * the public key), so a hit is the same computation; only successes are remembered (bounded, oldest
 * first out). This is what keeps a cached PCK chain, collateral and per-platform QE report cheap.
 */
export function memoVerified(key: string, verify: () => boolean): boolean {
  if (verifiedMemo.has(key)) return true;
  const ok = verify();
  if (ok) {
    if (verifiedMemo.size >= VERIFIED_MEMO_MAX) verifiedMemo.delete(verifiedMemo.values().next().value!);
    verifiedMemo.add(key);
  }
  return ok;
}

/** Forget memoised signature checks (benchmarks measuring the uncached path). */
export function clearVerifiedMemo(): void {
  verifiedMemo.clear();
}

function signedBy(child: IntelCert, parent: IntelCert): boolean {
  if (!child.cert.issuerDer.equals(parent.cert.subjectDer)) return false;
  return memoVerified(`cert:${child.sha256}:${parent.sha256}`, () => verifyWith(child.cert.sigAlg, child.cert.tbs, parent.publicKey, child.cert.signature));
}

export interface ChainOptions {
  now: Date;
  /** SHA-256 (hex) of the root's DER; default the Intel SGX Root CA. */
  rootSha256?: string;
  /**
   * Verified CRLs: a certificate whose serial the CRL of its issuer lists is refused, and every
   * certificate below the root must have its issuer's CRL here (`tdx.crl_missing`). Absent = no
   * revocation check (the caller says so in its result).
   */
  crls?: readonly IntelCrl[];
}

/**
 * Verify an Intel issuer chain (leaf first, root last, nothing more or less): exact length and
 * common names for `role`, each certificate signed by the next, CA roles, validity at `now`, the
 * root self-signed and equal to the pinned root, and no certificate listed by a CRL of its issuer.
 */
export function verifyIntelChain(ders: readonly Uint8Array[], role: ChainRole, opts: ChainOptions): VerifiedChain {
  const name = role.replace(/_/g, ' ');
  const cns = CHAIN_CNS[role];
  if (ders.length !== cns.length) fail(`tdx.${role}_chain_malformed`, `${name} chain must hold ${cns.length} certificates (leaf to root), found ${ders.length}`, 400);
  const certs = ders.map((d, i) => parseIntelCert(d, `${name} chain certificate ${i}`));
  const pin = (opts.rootSha256 ?? INTEL_SGX_ROOT_CA_SHA256).toLowerCase();
  const root = certs[certs.length - 1]!;
  if (root.sha256 !== pin) fail('tdx.root_untrusted', `${name} chain ends in "${root.cn}" (SHA-256 ${root.sha256}), not the pinned Intel SGX Root CA`);
  for (let i = 0; i < certs.length; i++) {
    const c = certs[i]!;
    if (!cns[i]!.includes(c.cn)) fail(`tdx.${role}_chain_malformed`, `${name} chain certificate ${i} is "${c.cn}", expected ${cns[i]!.map((x) => `"${x}"`).join(' or ')}`, 400);
    const parent = certs[Math.min(i + 1, certs.length - 1)]!;
    if (!signedBy(c, parent)) fail('tdx.cert_signature_invalid', `${name} chain: "${c.cn}" is not signed by "${parent.cn}"`);
    checkRole(c, i > 0 || role === 'pck_crl_issuer', `${name} chain certificate`);
    checkValidAt(c, opts.now, `${name} chain certificate`);
  }
  if (opts.crls) checkRevocation(certs, opts.crls, name);
  return { certs, leaf: certs[0]!, root };
}

/** No certificate below the root is listed by its issuer's CRL; each has one. */
export function checkRevocation(certs: readonly IntelCert[], crls: readonly IntelCrl[], name: string): void {
  for (let i = 0; i < certs.length - 1; i++) {
    const c = certs[i]!;
    const crl = crls.find((x) => x.issuerDer.equals(c.cert.issuerDer));
    if (!crl) fail('tdx.crl_missing', `${name} chain: no CRL from the issuer of "${c.cn}"`);
    if (crl.revoked.has(c.cert.serialHex)) fail('tdx.cert_revoked', `${name} chain: "${c.cn}" (serial ${c.cert.serialHex}) is revoked by its issuer's CRL`);
  }
}

function crlBad(msg: string): never {
  fail('tdx.crl_malformed', `CRL: ${msg}`, 400);
}

/** Parse a DER CRL (RFC 5280 §5.1), strictly. PEM is accepted too and converted. */
export function parseCrl(input: Uint8Array): IntelCrl {
  let der = Buffer.from(input);
  const text = der.subarray(0, 32).toString('latin1');
  if (text.startsWith('-----BEGIN X509 CRL-----')) {
    const m = /^-----BEGIN X509 CRL-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END X509 CRL-----\s*$/.exec(der.toString('latin1'));
    if (!m) crlBad('malformed PEM');
    der = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
  }
  const C = 'tdx.crl_malformed';
  try {
    checkStrictDer(der, C);
  } catch (e) {
    throw new SigilError(C, `CRL: ${e instanceof Error ? e.message : String(e)}`, { cause: e, status: 400 });
  }
  const top = readSingle(der, C, TAG.SEQUENCE);
  const outer = children(der, top, C);
  if (outer.length !== 3) crlBad('CertificateList must have three elements');
  const [tbsT, algT, sigT] = outer as [Tlv, Tlv, Tlv];
  if (tbsT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING || der[sigT.valueStart] !== 0) crlBad('wrong structure');
  const sigAlg = parseSigAlg(der, algT, C, 'tdx.crl_malformed');
  const f = children(der, tbsT, C);
  let i = 0;
  if (f[i]?.tag === TAG.INTEGER) {
    if (f[i]!.end - f[i]!.valueStart !== 1 || der[f[i]!.valueStart] !== 1) crlBad('version must be v2');
    i++;
  }
  const innerAlg = f[i++];
  const issuerT = f[i++];
  const thisT = f[i++];
  if (!innerAlg || !issuerT || !thisT) crlBad('TBSCertList is missing fields');
  if (!bytesOf(der, innerAlg).equals(bytesOf(der, algT))) crlBad('inner and outer signature algorithms differ');
  if (issuerT.tag !== TAG.SEQUENCE) crlBad('issuer is not a Name');
  const thisUpdate = decodeTime(der, thisT, C);
  const nextT = f[i];
  if (!nextT || (nextT.tag !== TAG.UTC_TIME && nextT.tag !== TAG.GENERALIZED_TIME)) crlBad('nextUpdate is required');
  i++;
  const nextUpdate = decodeTime(der, nextT, C);
  const revoked = new Set<string>();
  if (f[i]?.tag === TAG.SEQUENCE) {
    for (const entry of children(der, f[i]!, C)) {
      const ef = children(der, entry, C);
      if (entry.tag !== TAG.SEQUENCE || ef.length < 2 || ef[0]!.tag !== TAG.INTEGER) crlBad('revoked certificate entry malformed');
      revoked.add(valueOf(der, ef[0]!).toString('hex'));
    }
    i++;
  }
  if (f[i]?.tag === 0xa0) {
    // crlExtensions: only CRL number / AKI are expected; an unknown critical one is refused.
    const w = children(der, f[i]!, C);
    for (const e of children(der, w[0]!, C)) {
      const ef = children(der, e, C);
      const oid = decodeOid(der, ef[0]!, C);
      if (ef.length === 3 && oid !== OID_CRL_NUMBER && oid !== OID_AKI) crlBad(`unknown critical CRL extension ${oid}`);
    }
    i++;
  }
  if (i !== f.length) crlBad('unexpected fields in TBSCertList');
  return {
    der,
    issuerDer: Buffer.from(bytesOf(der, issuerT)),
    thisUpdate,
    nextUpdate,
    revoked,
    tbs: Buffer.from(bytesOf(der, tbsT)),
    sigAlg,
    signature: Buffer.from(der.subarray(sigT.valueStart + 1, sigT.end)),
  };
}

/** The CRL is signed by `issuer`, names it as issuer, and `now` is inside thisUpdate..nextUpdate. */
export function checkCrl(crl: IntelCrl, issuer: IntelCert, now: Date, what: string): void {
  if (!crl.issuerDer.equals(issuer.cert.subjectDer)) fail('tdx.crl_issuer_mismatch', `${what} is not issued by "${issuer.cn}"`);
  const crlHash = createHash('sha256').update(crl.der).digest('hex');
  if (!memoVerified(`crl:${crlHash}:${issuer.sha256}`, () => verifyWith(crl.sigAlg, crl.tbs, issuer.publicKey, crl.signature))) fail('tdx.crl_signature_invalid', `${what} signature does not verify under "${issuer.cn}"`);
  const t = now.getTime();
  if (t < crl.thisUpdate.getTime()) fail('tdx.crl_not_yet_valid', `${what} is not valid before ${crl.thisUpdate.toISOString()}`);
  if (t > crl.nextUpdate.getTime()) fail('tdx.crl_expired', `${what} expired at its nextUpdate ${crl.nextUpdate.toISOString()}`);
}

function extBad(msg: string): never {
  fail('tdx.pck_extension_invalid', `PCK certificate SGX extension: ${msg}`, 400);
}

function smallInt(buf: Buffer, t: Tlv, what: string): number {
  if (t.tag !== TAG.INTEGER && t.tag !== 0x0a) extBad(`${what} is not an INTEGER`);
  const v = valueOf(buf, t);
  if (v.length === 0 || v.length > 3 || (v[0]! & 0x80) !== 0) extBad(`${what} is out of range`);
  let n = 0;
  for (const b of v) n = n * 256 + b;
  return n;
}

function octets(buf: Buffer, t: Tlv, len: number, what: string): Buffer {
  if (t.tag !== TAG.OCTET_STRING || t.end - t.valueStart !== len) extBad(`${what} must be an OCTET STRING of ${len} bytes`);
  return Buffer.from(valueOf(buf, t));
}

const pckExtCache = new WeakMap<IntelCert, SgxPckExtensions>();

/** Read the Intel SGX extension (PPID, TCB, PCE-ID, FMSPC, SGX type) of a PCK certificate (kept per parsed certificate). */
export function parsePckExtensions(pck: IntelCert): SgxPckExtensions {
  let v = pckExtCache.get(pck);
  if (!v) {
    v = readPckExtensions(pck);
    pckExtCache.set(pck, v);
  }
  return v;
}

function readPckExtensions(pck: IntelCert): SgxPckExtensions {
  const ext = pck.cert.extensions.find((e) => e.oid === OID_SGX);
  if (!ext) extBad('missing (OID 1.2.840.113741.1.13.1)');
  const C = 'tdx.pck_extension_invalid';
  const b = ext.value;
  let top: Tlv;
  try {
    top = readSingle(b, C, TAG.SEQUENCE);
  } catch (e) {
    throw new SigilError(C, `PCK certificate SGX extension: ${e instanceof Error ? e.message : String(e)}`, { status: 400 });
  }
  const fields = new Map<string, Tlv>();
  for (const item of children(b, top, C)) {
    const kv = children(b, item, C);
    if (kv.length !== 2) extBad('entry is not (OID, value)');
    const oid = decodeOid(b, kv[0]!, C);
    if (fields.has(oid)) extBad(`${oid} appears twice`);
    fields.set(oid, kv[1]!);
  }
  const need = (suffix: number): Tlv => fields.get(`${OID_SGX}.${suffix}`) ?? extBad(`${OID_SGX}.${suffix} is missing`);
  const tcbT = need(2);
  if (tcbT.tag !== TAG.SEQUENCE) extBad('TCB is not a SEQUENCE');
  const tcb = new Map<number, Tlv>();
  for (const item of children(b, tcbT, C)) {
    const kv = children(b, item, C);
    if (kv.length !== 2) extBad('TCB entry is not (OID, value)');
    const oid = decodeOid(b, kv[0]!, C);
    const m = new RegExp(`^${OID_SGX.replace(/\./g, '\\.')}\\.2\\.(\\d+)$`).exec(oid);
    if (!m) extBad(`unexpected TCB entry ${oid}`);
    const k = Number(m[1]);
    if (tcb.has(k)) extBad(`TCB entry ${oid} appears twice`);
    tcb.set(k, kv[1]!);
  }
  const compSvn: number[] = [];
  for (let k = 1; k <= 16; k++) {
    const t = tcb.get(k) ?? extBad(`TCB component ${k} is missing`);
    const v = smallInt(b, t, `SGX TCB component ${k}`);
    if (v > 255) extBad(`SGX TCB component ${k} is above 255`);
    compSvn.push(v);
  }
  const pceSvn = smallInt(b, tcb.get(17) ?? extBad('PCESVN is missing'), 'PCESVN');
  if (pceSvn > 65535) extBad('PCESVN is above 65535');
  const cpuSvn = octets(b, tcb.get(18) ?? extBad('CPUSVN is missing'), 16, 'CPUSVN');
  return {
    ppid: octets(b, need(1), 16, 'PPID'),
    compSvn,
    pceSvn,
    cpuSvn,
    pceId: octets(b, need(3), 2, 'PCE-ID'),
    fmspc: octets(b, need(4), 6, 'FMSPC'),
    sgxType: smallInt(b, need(5), 'SGX type'),
  };
}
