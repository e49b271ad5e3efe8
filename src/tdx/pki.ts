/**
 * Intel SGX/TDX PKI, pure: the pinned Intel SGX Root CA, the three issuer chains DCAP uses
 * (PCK chain in the quote, TCB Signing chain of the TCB Info and QE Identity, PCK CRL issuer
 * chain), CRLs, and the Intel SGX extensions of the PCK certificate (OID 1.2.840.113741.1.13.1).
 *
 * Certificates, CRLs, PEM, validity and the issuer links are the X.509 toolkit's (src/x509/:
 * `CertCache`, `verifyChain` with the anchor self-signed, `parseCrl`/`checkCrl`); this file adds
 * the Intel profile (chain lengths and common names, CA roles, understood critical extensions,
 * revocation by the issuer's CRL), maps the toolkit's codes to the `tdx.*` codes, and reads the
 * SGX extension with the toolkit's strict DER reader.
 */
import { SigilError, errorMessage } from '../errors.js';
import { CertCache, nameAttribute, publicKeyOf, type ParsedCertificate } from '../x509/cert.js';
import { LinkCache, verifyChain } from '../x509/chain.js';
import { checkCrl as checkX509Crl, crlSignatureVerifies, parseCrl as parseX509Crl, type ParsedCrl } from '../x509/crl.js';
import { TAG, children, decodeOid, readSingle, valueOf, type Tlv } from '../x509/der.js';
import { remapX509Error, type X509CodeMap } from '../x509/errors.js';
import { KU, OID_AKI, OID_BC, OID_KU, OID_SKI } from '../x509/ext.js';
import { Lru } from '../x509/lru.js';
import { pemToDers } from '../x509/pem.js';
import type { KeyObject } from 'node:crypto';

/** SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, 2018-05-21 → 2049-12-31). */
export const INTEL_SGX_ROOT_CA_SHA256 = '44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3';

const OID_CRL_DP = '2.5.29.31';
const OID_SGX = '1.2.840.113741.1.13.1';
const KNOWN_EXTENSIONS = new Set([OID_AKI, OID_BC, OID_KU, OID_SKI, OID_CRL_DP, OID_SGX]);

export type ChainRole = 'pck' | 'tcb_signing' | 'pck_crl_issuer';

/** Expected subject common names, leaf to root, per chain role. */
const CHAIN_CNS: Record<ChainRole, string[][]> = {
  pck: [['Intel SGX PCK Certificate'], ['Intel SGX PCK Platform CA', 'Intel SGX PCK Processor CA'], ['Intel SGX Root CA']],
  tcb_signing: [['Intel SGX TCB Signing'], ['Intel SGX Root CA']],
  pck_crl_issuer: [['Intel SGX PCK Platform CA', 'Intel SGX PCK Processor CA'], ['Intel SGX Root CA']],
};

/** Toolkit codes → TDX's, for certificates and chains. */
const TDX_CERT_CODES: X509CodeMap = {
  'x509.malformed': 'tdx.cert_malformed',
  'x509.unsupported_algorithm': 'tdx.cert_malformed',
  'x509.unsupported_key': 'tdx.cert_malformed',
  'x509.issuer_mismatch': 'tdx.cert_signature_invalid',
  'x509.signature_invalid': 'tdx.cert_signature_invalid',
  'x509.not_a_ca': 'tdx.cert_usage_invalid',
  'x509.path_length_exceeded': 'tdx.cert_usage_invalid',
  'x509.not_yet_valid': 'tdx.cert_not_yet_valid',
  'x509.expired': 'tdx.cert_expired',
};

/** Toolkit codes → TDX's, for CRLs. */
const TDX_CRL_CODES: X509CodeMap = {
  'x509.crl_malformed': 'tdx.crl_malformed',
  'x509.crl_issuer_mismatch': 'tdx.crl_issuer_mismatch',
  'x509.crl_issuer_not_crl_signer': 'tdx.cert_usage_invalid',
  'x509.crl_signature_invalid': 'tdx.crl_signature_invalid',
  'x509.crl_not_yet_valid': 'tdx.crl_not_yet_valid',
  'x509.crl_expired': 'tdx.crl_expired',
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

/** A parsed CRL (the toolkit's type). */
export type IntelCrl = ParsedCrl;

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

/** Text from unverified input (a common name, a parser's message) as quoted in a refusal: at most 100 characters. */
export function clipText(s: string, max = 100): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`;
}

const certCache = new CertCache(256);
const intelCache = new Lru<IntelCert>(256);

/** Parse one DER certificate (cached by SHA-256 of the DER); malformed → `tdx.cert_malformed`. */
export function parseIntelCert(der: Uint8Array, what: string): IntelCert {
  let cert: ParsedCertificate;
  try {
    cert = certCache.parse(der);
  } catch (e) {
    throw remapX509Error(e, TDX_CERT_CODES, what, 'tdx.cert_malformed');
  }
  const hit = intelCache.get(cert.sha256);
  if (hit && hit.cert === cert) return hit;
  let publicKey: KeyObject;
  try {
    publicKey = publicKeyOf(cert);
  } catch (e) {
    throw new SigilError('tdx.cert_malformed', `${what}: public key unusable`, { cause: e });
  }
  const out: IntelCert = { cert, sha256: cert.sha256, cn: nameAttribute(cert.subject, 'CN'), publicKey };
  intelCache.set(cert.sha256, out);
  return out;
}

/** PEM text → DER list; not PEM → `tdx.<role>_chain_malformed`. */
export function chainFromPem(pem: string, role: ChainRole): Buffer[] {
  try {
    return pemToDers(pem);
  } catch (e) {
    throw new SigilError(`tdx.${role}_chain_malformed`, `${role.replace(/_/g, ' ')} chain: ${clipText(errorMessage(e), 300)}`, { cause: e });
  }
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
/** Verified certificate links of the Intel chains (the toolkit's cache, keyed by the two DER hashes). */
const intelLinks = new LinkCache(1024);

/**
 * Memoised signature check: `verify()` runs unless a check with the same `key` succeeded before.
 * `key` must name everything the result depends on (SHA-256 of the signed bytes, the signature and
 * the public key), so a hit is the same computation; only successes are remembered (bounded, oldest
 * first out). This is what keeps collateral and the per-platform QE report cheap.
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

/** Forget memoised signature checks and verified certificate links (benchmarks measuring the uncached path). */
export function clearVerifiedMemo(): void {
  verifiedMemo.clear();
  intelLinks.clear();
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
 * common names for `role`, CA roles, the root equal to the pinned root, then the toolkit's chain
 * verifier (the root self-signed, each certificate signed by the next, validity at `now`), and no
 * certificate listed by a CRL of its issuer.
 */
export function verifyIntelChain(ders: readonly Uint8Array[], role: ChainRole, opts: ChainOptions): VerifiedChain {
  const name = role.replace(/_/g, ' ');
  const cns = CHAIN_CNS[role];
  if (ders.length !== cns.length) fail(`tdx.${role}_chain_malformed`, `${name} chain must hold ${cns.length} certificates (leaf to root), found ${ders.length}`, 400);
  const certs = ders.map((d, i) => parseIntelCert(d, `${name} chain certificate ${i}`));
  const pin = (opts.rootSha256 ?? INTEL_SGX_ROOT_CA_SHA256).toLowerCase();
  const root = certs[certs.length - 1]!;
  if (root.sha256 !== pin) fail('tdx.root_untrusted', `${name} chain ends in "${clipText(root.cn)}" (SHA-256 ${root.sha256}), not the pinned Intel SGX Root CA`);
  for (let i = 0; i < certs.length; i++) {
    const c = certs[i]!;
    if (!cns[i]!.includes(c.cn)) fail(`tdx.${role}_chain_malformed`, `${name} chain certificate ${i} is "${clipText(c.cn)}", expected ${cns[i]!.map((x) => `"${x}"`).join(' or ')}`, 400);
    checkRole(c, i > 0 || role === 'pck_crl_issuer', `${name} chain certificate`);
  }
  try {
    verifyChain(
      certs.map((c) => c.cert),
      { at: opts.now, links: intelLinks, anchorSelfSigned: true, names: certs.map((c) => `${name} chain certificate "${c.cn}"`) },
    );
  } catch (e) {
    throw remapX509Error(e, TDX_CERT_CODES, '', 'tdx.cert_malformed');
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

/** Parse a DER CRL (RFC 5280 §5.1), strictly. PEM is accepted too and converted. Malformed → `tdx.crl_malformed`. */
export function parseCrl(input: Uint8Array): IntelCrl {
  try {
    return parseX509Crl(input);
  } catch (e) {
    throw remapX509Error(e, TDX_CRL_CODES, '', 'tdx.crl_malformed', 400);
  }
}

/** The CRL is signed by `issuer`, names it as issuer, and `now` is inside thisUpdate..nextUpdate. */
export function checkCrl(crl: IntelCrl, issuer: IntelCert, now: Date, what: string): void {
  try {
    checkX509Crl(crl, issuer.cert, now, what, () => memoVerified(`crl:${crl.sha256}:${issuer.sha256}`, () => crlSignatureVerifies(crl, issuer.cert)));
  } catch (e) {
    throw remapX509Error(e, TDX_CRL_CODES, '', 'tdx.crl_malformed');
  }
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
    throw new SigilError(C, `PCK certificate SGX extension: ${errorMessage(e)}`, { status: 400 });
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
