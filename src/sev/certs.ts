/**
 * AMD SEV-SNP certificate handling, pure: parsing (via @peculiar/asn1-x509 / asn1-schema),
 * the AMD VCEK/VLEK extensions under 1.3.6.1.4.1.3704.1, RSASSA-PSS signature checks and the
 * ARK → ASK → VCEK / ARK → ASVK → VLEK chain, with the ARK pinned per product line.
 *
 * Signature checks use node:crypto on the certificate's raw tbsCertificate bytes instead of
 * @peculiar/x509's `verify`. @peculiar/x509 2.2 does verify these PSS certificates correctly
 * (we checked), but it goes through async WebCrypto, needs `reflect-metadata` loaded first, and
 * takes the hash and salt length from whatever the certificate declares. AMD certificates use
 * exactly RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48, trailer 1; we require those
 * parameters and verify synchronously with RSA_PKCS1_PSS_PADDING, which also keeps the cached
 * path cheap.
 */
import { createHash, createPublicKey, verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import { AsnConvert, AsnParser, AsnProp, AsnPropTypes, AsnSerializer, AsnType, AsnTypeTypes } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier, BasicConstraints, Certificate, KeyUsage, KeyUsageFlags, Name, id_ce_basicConstraints, id_ce_keyUsage } from '@peculiar/asn1-x509';
import { RsaSaPssParams, id_RSASSA_PSS, id_mgf1, id_sha384 } from '@peculiar/asn1-rsa';
import { SigilError, asSigilError } from '../errors.js';
import type { SnpProduct, SnpSigningKey } from './report.js';
import { SNP_PRODUCTS, encodeTcb } from './report.js';

/**
 * SHA-256 of the DER of each product line's AMD Root Key (ARK) certificate, as published by
 * AMD KDS (`/vcek/v1/<Product>/cert_chain`). These are the trust anchors; certificates supplied
 * by an agent or a cache are only trusted if they chain to one of these.
 */
export const AMD_ARK_SHA256: Readonly<Record<SnpProduct, string>> = Object.freeze({
  milan: '69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd',
  genoa: '4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1',
  turin: '1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a',
});

/** Built-in pins with per-product overrides (config `arkSha256`, used for test chains). */
export function resolveArkPins(overrides?: Partial<Record<SnpProduct, string>>): Record<SnpProduct, string> {
  const pins = { ...AMD_ARK_SHA256 };
  for (const p of SNP_PRODUCTS) {
    const v = overrides?.[p];
    if (v !== undefined) {
      if (!/^[0-9a-fA-F]{64}$/.test(v)) throw new SigilError('sev.config_invalid', `arkSha256.${p} must be 64 hex digits`);
      pins[p] = v.toLowerCase();
    }
  }
  return pins;
}

export const AMD_OID = '1.3.6.1.4.1.3704.1';
const OID_STRUCT_VERSION = `${AMD_OID}.1`;
const OID_PRODUCT_NAME = `${AMD_OID}.2`;
const OID_TCB = `${AMD_OID}.3`;
const OID_HWID = `${AMD_OID}.4`;
const OID_CSPID = `${AMD_OID}.5`;
const OID_CN = '2.5.4.3';
const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';

export interface SevCert {
  der: Buffer;
  sha256: string;
  tbs: Buffer;
  signature: Buffer;
  subject: Buffer;
  issuer: Buffer;
  subjectCN: string | undefined;
  issuerCN: string | undefined;
  notBefore: Date;
  notAfter: Date;
  serialHex: string;
  spkiAlgorithm: string;
  publicKey: KeyObject;
  /** basicConstraints is present (whatever its cA value). */
  hasBasicConstraints: boolean;
  /** basicConstraints cA (false when the extension is absent). */
  isCA: boolean;
  /** keyUsage keyCertSign bit; undefined when the certificate has no keyUsage extension. */
  keyCertSign: boolean | undefined;
  extensions: Map<string, { critical: boolean; value: Buffer }>;
}

export interface AmdCertExtensions {
  structVersion?: number;
  productName?: string;
  blSpl?: number;
  teeSpl?: number;
  snpSpl?: number;
  ucodeSpl?: number;
  fmcSpl?: number;
  /** spl_4 .. spl_7 (1.3.6.1.4.1.3704.1.3.4–.7), reserved TCB components. */
  reservedSpl: (number | undefined)[];
  hwId?: Buffer;
  cspId?: string;
}

// asn1-schema schemas for the AMD extension values, built without decorator syntax so the file
// compiles the same under tsc, tsx and vitest.
class AsnInteger {
  value = 0;
}
AsnProp({ type: AsnPropTypes.Integer })(AsnInteger.prototype, 'value');
AsnType({ type: AsnTypeTypes.Choice })(AsnInteger);
class AsnIa5 {
  value = '';
}
AsnProp({ type: AsnPropTypes.IA5String })(AsnIa5.prototype, 'value');
AsnType({ type: AsnTypeTypes.Choice })(AsnIa5);

/** Malformed input is a 400; a well-formed certificate that is not trusted or not valid is a 403. */
const BAD_INPUT_CODES = new Set(['sev.cert_malformed', 'sev.cert_algorithm_unsupported', 'sev.vcek_extension_invalid', 'sev.config_invalid', 'sev.time_invalid']);
function fail(code: string, message: string): never {
  throw new SigilError(code, message, { status: BAD_INPUT_CODES.has(code) ? 400 : 403 });
}

/** Parse a DER value with an asn1-schema type and require canonical DER with no trailing bytes (re-encoding must be identical). */
function parseExact<T>(data: Buffer, type: new () => T, what: string): T {
  let v: T;
  try {
    v = AsnParser.parse(data, type);
  } catch (e) {
    throw asSigilError(e, 'sev.vcek_extension_invalid', `${what} is not valid DER`);
  }
  const again = Buffer.from(AsnSerializer.serialize(v));
  if (!again.equals(data)) fail('sev.vcek_extension_invalid', `${what} is not canonical DER or has trailing bytes`);
  return v;
}

/** Length of the outermost DER TLV (tag 0x30 expected), to reject bytes after a certificate. */
function derOuterLength(b: Buffer): number {
  if (b.length < 2 || b[0] !== 0x30) return -1;
  const first = b[1]!;
  if (first < 0x80) return 2 + first;
  const n = first & 0x7f;
  if (n === 0 || n > 4 || b.length < 2 + n) return -1;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + b[2 + i]!;
  return 2 + n + len;
}

function commonName(name: Name): string | undefined {
  for (const rdn of name) {
    for (const atv of rdn) {
      if (atv.type === OID_CN) return atv.value.toString();
    }
  }
  return undefined;
}

const MAX_CERT_BYTES = 16 * 1024;
const MAX_CHAIN_CERTS = 16;
const parseCache = new Map<string, SevCert>();
const PARSE_CACHE_MAX = 512;

function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  if (map.size >= max) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  map.set(key, value);
}

/**
 * Parse one DER certificate. `label` names it in errors ("VCEK", "ASK", …). Requires AMD's
 * RSASSA-PSS parameters in both signature AlgorithmIdentifiers. Results are cached by SHA-256.
 */
export function parseSevCert(input: Uint8Array, label: string): SevCert {
  if (!(input instanceof Uint8Array) || input.byteLength === 0) fail('sev.cert_malformed', `${label} certificate is empty`);
  if (input.byteLength > MAX_CERT_BYTES) fail('sev.cert_malformed', `${label} certificate is larger than ${MAX_CERT_BYTES} bytes`);
  const der = Buffer.from(input);
  const sha256 = createHash('sha256').update(der).digest('hex');
  const hit = parseCache.get(sha256);
  if (hit) return hit;

  if (derOuterLength(der) !== der.length) fail('sev.cert_malformed', `${label} certificate is not a single DER SEQUENCE (bad length or trailing bytes)`);
  let cert: Certificate;
  try {
    cert = AsnConvert.parse(der, Certificate);
  } catch (e) {
    throw asSigilError(e, 'sev.cert_malformed', `${label} certificate is not valid X.509 DER`);
  }
  try {
    // Round trip: only canonical DER is accepted, so no unsigned byte of the certificate (outer
    // algorithm parameters, BIT STRING padding, lengths) can vary while the parsed value stays the same.
    if (!Buffer.from(AsnConvert.serialize(cert)).equals(der)) fail('sev.cert_malformed', `${label} certificate is not canonical DER`);
    const tbsRaw = cert.tbsCertificateRaw;
    if (!tbsRaw) fail('sev.cert_malformed', `${label} certificate has no tbsCertificate bytes`);
    const tbs = cert.tbsCertificate;
    const outerAlg = Buffer.from(AsnConvert.serialize(cert.signatureAlgorithm));
    const innerAlg = Buffer.from(AsnConvert.serialize(tbs.signature));
    if (!outerAlg.equals(innerAlg)) fail('sev.cert_malformed', `${label} certificate signature algorithms inside and outside tbsCertificate differ`);
    checkAmdPss(cert.signatureAlgorithm.algorithm, cert.signatureAlgorithm.parameters ?? null, label);

    const extensions = new Map<string, { critical: boolean; value: Buffer }>();
    let hasBasicConstraints = false;
    let isCA = false;
    let keyCertSign: boolean | undefined;
    for (const ext of tbs.extensions ?? []) {
      if (extensions.has(ext.extnID)) fail('sev.cert_malformed', `${label} certificate repeats extension ${ext.extnID}`);
      const value = Buffer.from(ext.extnValue.buffer);
      extensions.set(ext.extnID, { critical: ext.critical, value });
      if (ext.extnID === id_ce_basicConstraints) {
        hasBasicConstraints = true;
        isCA = AsnConvert.parse(value, BasicConstraints).cA;
      } else if (ext.extnID === id_ce_keyUsage) {
        const ku = AsnConvert.parse(value, KeyUsage);
        keyCertSign = (ku.toNumber() & KeyUsageFlags.keyCertSign) !== 0;
      } else if (ext.critical) {
        fail('sev.cert_malformed', `${label} certificate has unknown critical extension ${ext.extnID}`);
      }
    }

    const spkiDer = Buffer.from(AsnConvert.serialize(tbs.subjectPublicKeyInfo));
    let publicKey: KeyObject;
    try {
      publicKey = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
    } catch (e) {
      throw asSigilError(e, 'sev.cert_malformed', `${label} certificate public key is unusable`);
    }
    const parsed: SevCert = {
      der,
      sha256,
      tbs: Buffer.from(tbsRaw),
      signature: Buffer.from(cert.signatureValue),
      subject: Buffer.from(AsnConvert.serialize(tbs.subject)),
      issuer: Buffer.from(AsnConvert.serialize(tbs.issuer)),
      subjectCN: commonName(tbs.subject),
      issuerCN: commonName(tbs.issuer),
      notBefore: tbs.validity.notBefore.getTime(),
      notAfter: tbs.validity.notAfter.getTime(),
      serialHex: Buffer.from(tbs.serialNumber).toString('hex'),
      spkiAlgorithm: tbs.subjectPublicKeyInfo.algorithm.algorithm,
      publicKey,
      hasBasicConstraints,
      isCA,
      keyCertSign,
      extensions,
    };
    if (Number.isNaN(parsed.notBefore.getTime()) || Number.isNaN(parsed.notAfter.getTime())) {
      fail('sev.cert_malformed', `${label} certificate validity dates are invalid`);
    }
    remember(parseCache, sha256, parsed, PARSE_CACHE_MAX);
    return parsed;
  } catch (e) {
    throw asSigilError(e, 'sev.cert_malformed', `${label} certificate could not be parsed`);
  }
}

function checkAmdPss(algorithm: string, params: ArrayBuffer | null, label: string): void {
  if (algorithm !== id_RSASSA_PSS) {
    fail('sev.cert_algorithm_unsupported', `${label} certificate is not signed with RSASSA-PSS (algorithm ${algorithm})`);
  }
  if (params === null) fail('sev.cert_algorithm_unsupported', `${label} certificate RSASSA-PSS parameters are missing`);
  let p: RsaSaPssParams;
  try {
    p = AsnConvert.parse(params, RsaSaPssParams);
  } catch (e) {
    throw asSigilError(e, 'sev.cert_algorithm_unsupported', `${label} certificate RSASSA-PSS parameters are malformed`);
  }
  let mgfHash = '';
  try {
    if (p.maskGenAlgorithm.algorithm === id_mgf1 && p.maskGenAlgorithm.parameters) {
      mgfHash = AsnConvert.parse(p.maskGenAlgorithm.parameters, AlgorithmIdentifier).algorithm;
    }
  } catch {
    mgfHash = '';
  }
  if (p.hashAlgorithm.algorithm !== id_sha384 || mgfHash !== id_sha384 || p.saltLength !== 48 || p.trailerField !== 1) {
    fail('sev.cert_algorithm_unsupported', `${label} certificate RSASSA-PSS parameters are not SHA-384 / MGF1-SHA-384 / salt 48`);
  }
}

/** RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signature of `cert` by `issuerKey` over the raw TBS bytes. */
function pssSignedBy(cert: SevCert, issuerKey: KeyObject): boolean {
  const type = issuerKey.asymmetricKeyType;
  if (type !== 'rsa' && type !== 'rsa-pss') return false;
  const bits = issuerKey.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < 2048) return false;
  try {
    return cryptoVerify('sha384', cert.tbs, { key: issuerKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 }, cert.signature);
  } catch {
    return false;
  }
}

function splValue(exts: SevCert['extensions'], oid: string, name: string): number | undefined {
  const e = exts.get(oid);
  if (!e) return undefined;
  const v = parseExact(e.value, AsnInteger, `${name} extension`).value;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 255) fail('sev.vcek_extension_invalid', `${name} extension must be an INTEGER 0..255`);
  return v;
}

const amdCache = new WeakMap<SevCert, AmdCertExtensions>();

/** Parse the AMD extensions (1.3.6.1.4.1.3704.1.*) of a VCEK or VLEK certificate (memoised per parsed certificate). */
export function parseAmdExtensions(cert: SevCert): AmdCertExtensions {
  const hit = amdCache.get(cert);
  if (hit) return hit;
  const parsed = parseAmdExtensionsUncached(cert);
  Object.freeze(parsed.reservedSpl);
  Object.freeze(parsed);
  amdCache.set(cert, parsed);
  return parsed;
}

function parseAmdExtensionsUncached(cert: SevCert): AmdCertExtensions {
  const ex = cert.extensions;
  const out: AmdCertExtensions = { reservedSpl: [] };
  const sv = ex.get(OID_STRUCT_VERSION);
  if (sv) out.structVersion = parseExact(sv.value, AsnInteger, 'structVersion extension').value;
  const pn = ex.get(OID_PRODUCT_NAME);
  if (pn) out.productName = parseExact(pn.value, AsnIa5, 'productName extension').value;
  out.blSpl = splValue(ex, `${OID_TCB}.1`, 'blSPL');
  out.teeSpl = splValue(ex, `${OID_TCB}.2`, 'teeSPL');
  out.snpSpl = splValue(ex, `${OID_TCB}.3`, 'snpSPL');
  for (let i = 4; i <= 7; i++) out.reservedSpl.push(splValue(ex, `${OID_TCB}.${i}`, `spl_${i}`));
  out.ucodeSpl = splValue(ex, `${OID_TCB}.8`, 'ucodeSPL');
  out.fmcSpl = splValue(ex, `${OID_TCB}.9`, 'fmcSPL');
  // hwID's extnValue holds the raw chip ID octets (no inner DER wrapper), as AMD KDS issues it.
  const hw = ex.get(OID_HWID);
  if (hw) {
    if (hw.value.length !== 64 && hw.value.length !== 8) fail('sev.vcek_extension_invalid', `hwID extension must be 64 or 8 bytes, got ${hw.value.length}`);
    out.hwId = hw.value;
  }
  const csp = ex.get(OID_CSPID);
  if (csp) out.cspId = parseExact(csp.value, AsnIa5, 'cspID extension').value;
  return out;
}

function productFromName(s: string | undefined): SnpProduct | undefined {
  if (!s) return undefined;
  const m = /^(milan|genoa|turin)(?:-.*)?$/i.exec(s);
  return m ? (m[1]!.toLowerCase() as SnpProduct) : undefined;
}

/** Product line named by a VCEK/VLEK: productName extension ("Milan-B0", "Turin"), else issuer CN ("SEV-Milan", "SEV-VLEK-Milan"). */
export function productFromEndorsementCert(cert: SevCert, amd: AmdCertExtensions): SnpProduct | undefined {
  const fromExt = productFromName(amd.productName);
  const cn = cert.issuerCN ?? '';
  const fromIssuer = productFromName(cn.replace(/^SEV-(VLEK-)?/i, ''));
  if (amd.productName !== undefined && fromExt === undefined) {
    fail('sev.vcek_extension_invalid', `productName "${amd.productName}" is not Milan, Genoa or Turin`);
  }
  if (fromExt && fromIssuer && fromExt !== fromIssuer) {
    fail('sev.vcek_extension_invalid', `productName ${amd.productName} disagrees with issuer CN ${cn}`);
  }
  return fromExt ?? fromIssuer;
}

export interface VerifiedEndorsement {
  kind: SnpSigningKey;
  product: SnpProduct;
  leaf: SevCert;
  amd: AmdCertExtensions;
  intermediate: SevCert;
  ark: SevCert;
}

export interface ChainOptions {
  now: Date;
  /** Product from the report (v3+ CPUID); the certificate must agree. */
  reportProduct?: SnpProduct;
  pins: Record<SnpProduct, string>;
}

/** Successful signature checks, keyed by "<subject sha256>:<issuer sha256>". Validity is still checked on every call. */
const signatureCache = new Map<string, true>();
const SIGNATURE_CACHE_MAX = 4096;

function checkSignedBy(cert: SevCert, issuer: SevCert, label: string, issuerLabel: string): void {
  const key = `${cert.sha256}:${issuer.sha256}`;
  if (signatureCache.has(key)) return;
  if (!cert.issuer.equals(issuer.subject)) fail('sev.chain_incomplete', `${label} issuer (CN=${cert.issuerCN}) is not the ${issuerLabel} (CN=${issuer.subjectCN})`);
  if (!pssSignedBy(cert, issuer.publicKey)) fail('sev.cert_signature_invalid', `${label} certificate signature does not verify under the ${issuerLabel}`);
  remember(signatureCache, key, true, SIGNATURE_CACHE_MAX);
}

function checkValidity(cert: SevCert, label: string, now: Date): void {
  const t = now.getTime();
  if (Number.isNaN(t)) fail('sev.time_invalid', 'verification time is not a valid date');
  if (t < cert.notBefore.getTime()) fail('sev.cert_not_yet_valid', `${label} certificate is not valid before ${cert.notBefore.toISOString()}`);
  if (t > cert.notAfter.getTime()) fail('sev.cert_expired', `${label} certificate expired at ${cert.notAfter.toISOString()}`);
}

/**
 * Role rules for AMD's certificates (code sev.cert_usage_invalid). Every ARK, ASK and ASVK AMD KDS
 * serves carries basicConstraints cA TRUE and keyUsage with keyCertSign, both critical (checked
 * against the Milan, Genoa and Turin cert_chain files and the Milan VLEK chain: ARK keyUsage
 * keyCertSign + cRLSign, ASK/ASVK keyCertSign with pathLen 0). So an issuer without either
 * extension is refused rather than given the benefit of the doubt.
 */
function requireIssuerRole(cert: SevCert, label: string): void {
  const who = `${label} certificate (CN=${cert.subjectCN ?? 'none'})`;
  if (!cert.hasBasicConstraints) fail('sev.cert_usage_invalid', `${who} has no basicConstraints extension; an AMD ${label} must say CA:TRUE`);
  if (!cert.isCA) fail('sev.cert_usage_invalid', `${who} has basicConstraints CA:FALSE; an AMD ${label} must say CA:TRUE`);
  if (cert.keyCertSign === undefined) fail('sev.cert_usage_invalid', `${who} has no keyUsage extension; an AMD ${label} must have keyUsage keyCertSign`);
  if (!cert.keyCertSign) fail('sev.cert_usage_invalid', `${who} keyUsage lacks keyCertSign; an AMD ${label} must be allowed to sign certificates`);
}

/**
 * The VCEK/VLEK is an end-entity certificate: AMD issues it with neither basicConstraints nor
 * keyUsage. Refuse one that claims CA:TRUE or keyCertSign (it could otherwise pose as an issuer).
 */
function requireEndEntityRole(cert: SevCert, label: string): void {
  const who = `${label} certificate (CN=${cert.subjectCN ?? 'none'})`;
  if (cert.isCA) fail('sev.cert_usage_invalid', `${who} has basicConstraints CA:TRUE; a ${label} must be an end-entity (non-CA) certificate`);
  if (cert.keyCertSign === true) fail('sev.cert_usage_invalid', `${who} keyUsage includes keyCertSign; a ${label} must not be allowed to sign certificates`);
}

/** The pinned ARK: a CA allowed to sign certificates, self-signed, valid at `now`. */
function checkArk(ark: SevCert, now: Date): void {
  requireIssuerRole(ark, 'ARK');
  checkSignedBy(ark, ark, 'ARK', 'ARK itself');
  checkValidity(ark, 'ARK', now);
}

/**
 * An ASK (`kind` vcek) or ASVK (vlek) under `ark`: named as that kind (CN SEV-<Product> /
 * SEV-VLEK-<Product>), a CA allowed to sign certificates, signed by the ARK, valid at `now`.
 */
function checkIntermediate(cand: SevCert, ark: SevCert, kind: SnpSigningKey, now: Date, whose: string): void {
  const interLabel = kind === 'vcek' ? 'ASK' : 'ASVK';
  const interIsVlek = /^SEV-VLEK-/i.test(cand.subjectCN ?? '');
  if (interIsVlek !== (kind === 'vlek')) {
    fail('sev.chain_kind_mismatch', `${whose} CN=${cand.subjectCN}, which is not an ${interLabel}`);
  }
  requireIssuerRole(cand, interLabel);
  checkSignedBy(cand, ark, interLabel, 'ARK');
  checkValidity(cand, interLabel, now);
}

/**
 * Check an ASK+ARK (`kind` vcek) or ASVK+ARK (vlek) chain on its own, with no VCEK/VLEK: exactly
 * two certificates, in any order; one is the pinned ARK of `product`, a CA allowed to sign
 * certificates, self-signed and valid at `now`; the other is an ASK/ASVK with the same role,
 * signed by that ARK and valid at `now`. The verifier uses it to decide whether a chain fetched
 * from AMD KDS may be cached, independent of the leaf the agent sent (a made-up VCEK must not make
 * the verifier fetch the genuine chain again on every session).
 */
export function verifyIssuerChain(
  chainDers: readonly Uint8Array[],
  product: SnpProduct,
  kind: SnpSigningKey,
  opts: { now: Date; pins: Record<SnpProduct, string> },
): { ark: SevCert; intermediate: SevCert } {
  const interLabel = kind === 'vcek' ? 'ASK' : 'ASVK';
  if (chainDers.length !== 2) fail('sev.chain_incomplete', `a ${product} ${interLabel}+ARK chain must hold exactly 2 certificates, got ${chainDers.length}`);
  const chain = chainDers.map((d, i) => parseSevCert(d, `chain certificate #${i + 1}`));
  const pin = opts.pins[product];
  const ark = chain.find((c) => c.sha256 === pin);
  if (!ark) fail('sev.ark_untrusted', `no certificate of the ${product} ${interLabel}+ARK chain is the pinned ${product} ARK (sha256 ${pin})`);
  const intermediate = chain.find((c) => c !== ark);
  if (!intermediate || intermediate.sha256 === ark.sha256) fail('sev.chain_incomplete', `the ${product} chain holds the ARK twice and no ${interLabel}`);
  checkArk(ark, opts.now);
  checkIntermediate(intermediate, ark, kind, opts.now, `the ${product} chain's ${interLabel} slot holds`);
  return { ark, intermediate };
}

/**
 * The 8-byte REPORTED_TCB a VCEK/VLEK was issued for, from its SPL extensions in `product`'s
 * layout (spl_4..spl_7 name the reserved TCB bytes 2..5 on Milan/Genoa; Turin has no place for
 * them, so they must be 0 there). Missing or misplaced SPLs → sev.vcek_extension_invalid.
 */
export function endorsementTcb(amd: AmdCertExtensions, product: SnpProduct, label: string): Buffer {
  if (amd.blSpl === undefined || amd.teeSpl === undefined || amd.snpSpl === undefined || amd.ucodeSpl === undefined) {
    fail('sev.vcek_extension_invalid', `${label} lacks one of blSPL, teeSPL, snpSPL, ucodeSPL`);
  }
  if (product === 'turin' && amd.fmcSpl === undefined) fail('sev.vcek_extension_invalid', 'Turin VCEK lacks fmcSPL');
  if (product !== 'turin' && amd.fmcSpl !== undefined) fail('sev.vcek_extension_invalid', `${product} certificate must not carry fmcSPL`);
  const tcb = encodeTcb({ bootloader: amd.blSpl, tee: amd.teeSpl, snp: amd.snpSpl, microcode: amd.ucodeSpl, fmc: amd.fmcSpl }, product);
  amd.reservedSpl.forEach((v, i) => {
    if (v === undefined) return;
    if (product === 'turin') {
      if (v !== 0) fail('sev.vcek_extension_invalid', `Turin certificate spl_${i + 4} must be 0`);
    } else {
      tcb[2 + i] = v;
    }
  });
  return tcb;
}

/**
 * Verify a VCEK/VLEK against candidate chain certificates (ASK/ASVK and ARK, any order) and the
 * pinned ARK for its product line. Returns the verified leaf with its AMD extensions.
 */
export function verifyEndorsementChain(leafDer: Uint8Array, chainDers: readonly Uint8Array[], opts: ChainOptions): VerifiedEndorsement {
  const leaf = parseSevCert(leafDer, 'VCEK/VLEK');
  const amd = parseAmdExtensions(leaf);
  let kind: SnpSigningKey;
  if (amd.hwId && amd.cspId === undefined) kind = 'vcek';
  else if (amd.cspId !== undefined && !amd.hwId) kind = 'vlek';
  else fail('sev.vcek_extension_invalid', 'endorsement certificate must carry exactly one of hwID (VCEK) or cspID (VLEK)');
  const label = kind.toUpperCase();
  requireEndEntityRole(leaf, label);

  const certProduct = productFromEndorsementCert(leaf, amd);
  if (opts.reportProduct && certProduct && opts.reportProduct !== certProduct) {
    fail('sev.product_mismatch', `report CPUID says ${opts.reportProduct} but the ${label} is for ${certProduct}`);
  }
  const product = opts.reportProduct ?? certProduct;
  if (!product) fail('sev.product_unknown', `cannot tell the product line: report has no CPUID and the ${label} names none`);

  if (leaf.spkiAlgorithm !== OID_EC_PUBLIC_KEY || leaf.publicKey.asymmetricKeyDetails?.namedCurve !== 'secp384r1') {
    fail('sev.vcek_key_invalid', `${label} public key is not ECDSA P-384`);
  }

  if (chainDers.length > MAX_CHAIN_CERTS) fail('sev.cert_malformed', `at most ${MAX_CHAIN_CERTS} chain certificates are accepted, got ${chainDers.length}`);
  const chain = chainDers.map((d, i) => parseSevCert(d, `chain certificate #${i + 1}`));
  const pin = opts.pins[product];
  const ark = chain.find((c) => c.sha256 === pin);
  if (!ark) {
    const other = chain.find((c) => SNP_PRODUCTS.some((p) => p !== product && opts.pins[p] === c.sha256));
    if (other) {
      const otherProduct = SNP_PRODUCTS.find((p) => opts.pins[p] === other.sha256);
      fail('sev.chain_wrong_product', `the supplied ARK is the ${otherProduct} root, but the report is from ${product}`);
    }
    if (chain.length === 0) fail('sev.chain_incomplete', `no ASK/ARK certificates supplied for ${product}`);
    fail('sev.ark_untrusted', `no supplied certificate is the pinned ${product} ARK (sha256 ${pin})`);
  }
  const interLabel = kind === 'vcek' ? 'ASK' : 'ASVK';
  const candidates = chain.filter((c) => c !== ark && c.sha256 !== ark.sha256 && c.subject.equals(leaf.issuer));
  if (candidates.length === 0) {
    fail('sev.chain_incomplete', `no ${interLabel} certificate for ${label} issuer CN=${leaf.issuerCN} was supplied`);
  }

  checkArk(ark, opts.now);

  // ASK/ASVK: signed by the ARK; a CA allowed to sign certificates; the kind matching the leaf. Several certificates may carry the
  // issuer's name (e.g. agent-supplied and cached); the first that passes every check is used.
  let intermediate: SevCert | undefined;
  let firstError: unknown;
  for (const cand of candidates) {
    try {
      checkIntermediate(cand, ark, kind, opts.now, `${label} is issued by`);
      // VCEK/VLEK: signed by the ASK/ASVK.
      checkSignedBy(leaf, cand, label, interLabel);
      intermediate = cand;
      break;
    } catch (e) {
      firstError ??= e;
    }
  }
  if (!intermediate) throw firstError;
  checkValidity(leaf, label, opts.now);

  return { kind, product, leaf, amd, intermediate, ark };
}

/** Split a PEM text into DER certificates (only CERTIFICATE blocks; anything else is an error). */
export function pemToDerList(text: string, what: string): Buffer[] {
  const out: Buffer[] = [];
  const re = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    if (m[1] !== 'CERTIFICATE') fail('sev.cert_malformed', `${what} contains a ${m[1]} block, expected only CERTIFICATE`);
    const body = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body)) fail('sev.cert_malformed', `${what} has a PEM block that is not base64`);
    out.push(Buffer.from(body, 'base64'));
  }
  if (out.length === 0) fail('sev.cert_malformed', `${what} has no PEM CERTIFICATE block`);
  return out;
}

/** DER or PEM bytes → DER certificates. */
export function certificatesFromFile(data: Uint8Array, what: string): Buffer[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const head = buf.subarray(0, Math.min(buf.length, 64)).toString('latin1');
  if (head.includes('-----BEGIN')) return pemToDerList(buf.toString('latin1'), what);
  return [Buffer.from(buf)];
}
