/**
 * AMD SEV-SNP certificate handling, pure: the AMD VCEK/VLEK extensions under
 * 1.3.6.1.4.1.3704.1, AMD's RSASSA-PSS profile and the ARK → ASK → VCEK / ARK → ASVK → VLEK chain,
 * with the ARK pinned per product line.
 *
 * Parsing (canonical DER, raw TBS bytes), PEM, validity, signature checks (RSASSA-PSS through
 * node:crypto, synchronously) and the cache of verified links keyed by the two DER hashes are the
 * X.509 toolkit's (src/x509/); this file adds AMD's profile and maps the toolkit's codes to the
 * `sev.*` codes. AMD certificates use exactly RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length
 * 48, trailer 1: the toolkit checks the parameters are well-formed and SHA-2, this file requires
 * those values. The AMD extension values are decoded with @peculiar/asn1-schema.
 */
import type { KeyObject } from 'node:crypto';
import { AsnParser, AsnProp, AsnPropTypes, AsnSerializer, AsnType, AsnTypeTypes } from '@peculiar/asn1-schema';
import { SigilError, asSigilError, errorMessage } from '../errors.js';
import { CertCache, nameAttribute, publicKeyOf, type AnyKeyCertificate } from '../x509/cert.js';
import { LinkCache, signatureVerifies } from '../x509/chain.js';
import { TAG, children, decodeOid, readSingle } from '../x509/der.js';
import { remapX509Error, type X509CodeMap } from '../x509/errors.js';
import { KU, OID_BC, OID_KU } from '../x509/ext.js';
import { pemBlocks } from '../x509/pem.js';
import { OID_RSASSA_PSS } from '../x509/sigalg.js';
import { validityProblem } from '../x509/validity.js';
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
const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';

export interface SevCert {
  /** The toolkit's parse. */
  cert: AnyKeyCertificate;
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

/**
 * A name or string from a certificate (not yet verified: anyone can write it) as quoted in an error
 * message: as is when it is short printable ASCII, else JSON-escaped and cut to 64 characters.
 */
function shown(s: string | undefined): string {
  if (s === undefined) return 'none';
  if (/^[\x20-\x7e]{1,64}$/.test(s)) return s;
  return s.length > 64 ? `${JSON.stringify(s.slice(0, 64))}… (${s.length} characters)` : JSON.stringify(s);
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

const MAX_CERT_BYTES = 16 * 1024;
const MAX_CHAIN_CERTS = 16;
/** Parsed certificates by DER hash (the toolkit's cache). */
const parseCache = new CertCache(512);
const sevCache = new WeakMap<AnyKeyCertificate, SevCert>();

const PSS_ONLY = [OID_RSASSA_PSS];

/** Toolkit codes → SEV's. */
const SEV_CODES: X509CodeMap = {
  'x509.malformed': 'sev.cert_malformed',
  'x509.unsupported_key': 'sev.cert_malformed',
  'x509.unsupported_algorithm': 'sev.cert_algorithm_unsupported',
};

/** The algorithm OID of a SubjectPublicKeyInfo (already checked as DER by the parser). */
function spkiAlgorithmOf(spki: Buffer): string {
  const top = readSingle(spki, 'sev.cert_malformed', TAG.SEQUENCE);
  const alg = children(spki, children(spki, top, 'sev.cert_malformed')[0]!, 'sev.cert_malformed');
  return decodeOid(spki, alg[0]!, 'sev.cert_malformed');
}

/**
 * Parse one DER certificate. `label` names it in errors ("VCEK", "ASK", …). Requires AMD's
 * RSASSA-PSS parameters in both signature AlgorithmIdentifiers. Results are cached by SHA-256.
 */
export function parseSevCert(input: Uint8Array, label: string): SevCert {
  if (!(input instanceof Uint8Array) || input.byteLength === 0) fail('sev.cert_malformed', `${label} certificate is empty`);
  if (input.byteLength > MAX_CERT_BYTES) fail('sev.cert_malformed', `${label} certificate is larger than ${MAX_CERT_BYTES} bytes`);
  let cert: AnyKeyCertificate;
  try {
    cert = parseCache.parseAnyKey(input, { pss: true, algorithms: PSS_ONLY, maxBytes: MAX_CERT_BYTES });
  } catch (e) {
    const m = remapX509Error(e, SEV_CODES, `${label} certificate`, 'sev.cert_malformed');
    throw new SigilError(m.code, m.message, { status: BAD_INPUT_CODES.has(m.code) ? 400 : 403, cause: m.cause });
  }
  const hit = sevCache.get(cert);
  if (hit) return hit;
  const a = cert.sigAlg;
  if (a.oid !== OID_RSASSA_PSS) fail('sev.cert_algorithm_unsupported', `${label} certificate is not signed with RSASSA-PSS (algorithm ${a.oid})`);
  if (a.hash !== 'sha384' || a.saltLength !== 48) {
    fail('sev.cert_algorithm_unsupported', `${label} certificate RSASSA-PSS parameters are not SHA-384 / MGF1-SHA-384 / salt 48`);
  }
  const extensions = new Map<string, { critical: boolean; value: Buffer }>();
  for (const ext of cert.extensions) {
    extensions.set(ext.oid, { critical: ext.critical, value: ext.value });
    if (ext.critical && ext.oid !== OID_BC && ext.oid !== OID_KU) fail('sev.cert_malformed', `${label} certificate has unknown critical extension ${ext.oid}`);
  }
  let publicKey: KeyObject;
  try {
    publicKey = publicKeyOf(cert);
  } catch (e) {
    fail('sev.cert_malformed', `${label} certificate public key is unusable: ${errorMessage(e)}`);
  }
  const cn = (formatted: string): string | undefined => (/(?:^|,)CN=/.test(formatted) ? nameAttribute(formatted, 'CN') : undefined);
  const parsed: SevCert = {
    cert,
    der: cert.der,
    sha256: cert.sha256,
    tbs: cert.tbs,
    signature: cert.signature,
    subject: cert.subjectDer,
    issuer: cert.issuerDer,
    subjectCN: cn(cert.subject),
    issuerCN: cn(cert.issuer),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    serialHex: cert.serialHex,
    spkiAlgorithm: spkiAlgorithmOf(cert.spki),
    publicKey,
    hasBasicConstraints: cert.basicConstraints !== undefined,
    isCA: cert.basicConstraints?.ca === true,
    keyCertSign: cert.keyUsage === undefined ? undefined : (cert.keyUsage.flags & KU.keyCertSign) !== 0,
    extensions,
  };
  sevCache.set(cert, parsed);
  return parsed;
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
    fail('sev.vcek_extension_invalid', `productName ${shown(amd.productName)} is not Milan, Genoa or Turin`);
  }
  if (fromExt && fromIssuer && fromExt !== fromIssuer) {
    fail('sev.vcek_extension_invalid', `productName ${shown(amd.productName)} disagrees with issuer CN ${shown(cn)}`);
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

/** Verified (certificate, issuer) links, keyed by the two DER hashes (the toolkit's cache). Validity is still checked on every call. */
const signatureCache = new LinkCache(4096);

function checkSignedBy(cert: SevCert, issuer: SevCert, label: string, issuerLabel: string): void {
  if (!cert.issuer.equals(issuer.subject)) fail('sev.chain_incomplete', `${label} issuer (CN=${shown(cert.issuerCN)}) is not the ${issuerLabel} (CN=${shown(issuer.subjectCN)})`);
  if (!signatureCache.check(cert, issuer, () => signatureVerifies(cert.cert, issuer.cert))) {
    fail('sev.cert_signature_invalid', `${label} certificate signature does not verify under the ${issuerLabel}`);
  }
}

function checkValidity(cert: SevCert, label: string, now: Date): void {
  if (Number.isNaN(now.getTime())) fail('sev.time_invalid', 'verification time is not a valid date');
  const p = validityProblem(cert, now);
  if (p === 'x509.not_yet_valid') fail('sev.cert_not_yet_valid', `${label} certificate is not valid before ${cert.notBefore.toISOString()}`);
  if (p === 'x509.expired') fail('sev.cert_expired', `${label} certificate expired at ${cert.notAfter.toISOString()}`);
}

/**
 * Role rules for AMD's certificates (code sev.cert_usage_invalid). Every ARK, ASK and ASVK AMD KDS
 * serves carries basicConstraints cA TRUE and keyUsage with keyCertSign, both critical (checked
 * against the Milan, Genoa and Turin cert_chain files and the Milan VLEK chain: ARK keyUsage
 * keyCertSign + cRLSign, ASK/ASVK keyCertSign with pathLen 0). So an issuer without either
 * extension is refused rather than given the benefit of the doubt.
 */
function requireIssuerRole(cert: SevCert, label: string): void {
  const who = `${label} certificate (CN=${shown(cert.subjectCN)})`;
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
  const who = `${label} certificate (CN=${shown(cert.subjectCN)})`;
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
    fail('sev.chain_kind_mismatch', `${whose} CN=${shown(cand.subjectCN)}, which is not an ${interLabel}`);
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
    fail('sev.chain_incomplete', `no ${interLabel} certificate for ${label} issuer CN=${shown(leaf.issuerCN)} was supplied`);
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

/** Split a PEM text into DER certificates (only CERTIFICATE blocks; text between blocks is ignored). */
export function pemToDerList(text: string, what: string): Buffer[] {
  try {
    return pemBlocks(text, 'CERTIFICATE', { lax: true });
  } catch (e) {
    throw new SigilError('sev.cert_malformed', `${what}: ${errorMessage(e)}`, { status: 400, cause: e });
  }
}

/** DER or PEM bytes → DER certificates. */
export function certificatesFromFile(data: Uint8Array, what: string): Buffer[] {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const head = buf.subarray(0, Math.min(buf.length, 64)).toString('latin1');
  if (head.includes('-----BEGIN')) return pemToDerList(buf.toString('latin1'), what);
  return [Buffer.from(buf)];
}
