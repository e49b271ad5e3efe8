/**
 * X.509 path validation for Nitro attestation documents: `certificate` up through `cabundle` (in
 * reverse order) to a pinned root. Pure: DER bytes, the pin and the verification time in.
 *
 * Certificates are decoded with @peculiar/asn1-schema using a reduced schema (the fields this
 * module needs, with names and the public key kept as raw DER) so the raw TBS bytes, issuer and
 * subject are available for byte-exact checks. The only hand-written parsing is the check that the
 * outer DER TLV spans the whole input (the ASN.1 library ignores trailing bytes).
 *
 * Profile enforced (the AWS Nitro PKI): every certificate is X.509 v3, signed with
 * ecdsa-with-SHA384, carries an EC P-384 key, has no duplicate and no unrecognised critical
 * extensions; CA certificates carry a critical basicConstraints with cA=TRUE and keyUsage with
 * keyCertSign, and their pathLenConstraint holds for the path below them; the leaf is not a CA and
 * its keyUsage includes digitalSignature; each certificate's issuer equals its parent's subject
 * byte for byte and its signature verifies under the parent's key; every certificate (root
 * included) is within its validity period at the verification time.
 *
 * Intermediates are verified once and remembered in a bounded LRU cache keyed by (SHA-256 of their
 * DER, SHA-256 of the issuer's DER); validity periods are still checked on every call. The leaf's
 * issuer name, signature and validity are checked on every call (its decoding is memoised by DER
 * hash, see NitroCertCache).
 */
import 'reflect-metadata';
import { createHash, createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { AsnParser, AsnProp, AsnPropTypes } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier, BasicConstraints, Extensions, KeyUsage, Validity } from '@peculiar/asn1-x509';
import { SigilError } from '../errors.js';

const OID_ECDSA_SHA384 = '1.2.840.10045.4.3.3';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
/** Critical extensions this validator understands; any other critical extension fails the certificate. */
const UNDERSTOOD_CRITICAL = new Set([OID_BASIC_CONSTRAINTS, OID_KEY_USAGE]);
/** Certificates in a Nitro document are at most 1024 bytes (AWS attestation document spec). */
export const MAX_CERT_BYTES = 1024;

// Reduced X.509 schema (RFC 5280 §4.1), declared by calling the schema decorators directly so no
// decorator compilation mode is needed.
class TbsCertificateLite {
  version = 0;
  serialNumber: ArrayBuffer = new ArrayBuffer(0);
  signature = new AlgorithmIdentifier();
  issuer: ArrayBuffer = new ArrayBuffer(0);
  validity = new Validity();
  subject: ArrayBuffer = new ArrayBuffer(0);
  subjectPublicKeyInfo: ArrayBuffer = new ArrayBuffer(0);
  issuerUniqueID?: ArrayBuffer;
  subjectUniqueID?: ArrayBuffer;
  extensions?: Extensions;
}
{
  const p = TbsCertificateLite.prototype;
  AsnProp({ type: AsnPropTypes.Integer, context: 0, defaultValue: 0 })(p, 'version');
  AsnProp({ type: AsnPropTypes.Any })(p, 'serialNumber');
  AsnProp({ type: AlgorithmIdentifier })(p, 'signature');
  AsnProp({ type: AsnPropTypes.Any })(p, 'issuer');
  AsnProp({ type: Validity })(p, 'validity');
  AsnProp({ type: AsnPropTypes.Any })(p, 'subject');
  AsnProp({ type: AsnPropTypes.Any })(p, 'subjectPublicKeyInfo');
  AsnProp({ type: AsnPropTypes.BitString, context: 1, implicit: true, optional: true })(p, 'issuerUniqueID');
  AsnProp({ type: AsnPropTypes.BitString, context: 2, implicit: true, optional: true })(p, 'subjectUniqueID');
  AsnProp({ type: Extensions, context: 3, optional: true })(p, 'extensions');
}
class CertificateLite {
  tbsCertificate = new TbsCertificateLite();
  tbsCertificateRaw?: ArrayBuffer;
  signatureAlgorithm = new AlgorithmIdentifier();
  signatureValue: ArrayBuffer = new ArrayBuffer(0);
}
{
  const p = CertificateLite.prototype;
  AsnProp({ type: TbsCertificateLite, raw: true })(p, 'tbsCertificate');
  AsnProp({ type: AlgorithmIdentifier })(p, 'signatureAlgorithm');
  AsnProp({ type: AsnPropTypes.BitString })(p, 'signatureValue');
}

/** A parsed certificate whose static properties have been checked (not its validity period). */
export interface NitroCert {
  der: Buffer;
  /** SHA-256 of the DER, lowercase hex. */
  sha256: string;
  tbs: Buffer;
  signature: Buffer;
  issuer: Buffer;
  subject: Buffer;
  notBefore: number;
  notAfter: number;
  key: KeyObject;
  isCA: boolean;
  /** basicConstraints pathLenConstraint, when present. */
  pathLen: number | undefined;
  digitalSignature: boolean;
  keyCertSign: boolean;
}

function certError(code: string, what: string, msg: string, cause?: unknown): SigilError {
  return new SigilError(code, `${what}: ${msg}`, { status: 401, ...(cause === undefined ? {} : { cause }) });
}

/** Length of the outer DER TLV at the start of `der` (header + content), or -1 if malformed. */
function outerTlvLength(der: Uint8Array): number {
  if (der.length < 2 || der[0] !== 0x30) return -1;
  const first = der[1] as number;
  if (first < 0x80) return 2 + first;
  const n = first & 0x7f;
  if (n === 0 || n > 3 || der.length < 2 + n) return -1;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + (der[2 + i] as number);
  return 2 + n + len;
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Decode a certificate and check its static profile for the given role. Throws nitro.cert_invalid / nitro.chain_invalid. */
export function parseNitroCert(derIn: Uint8Array, role: 'ca' | 'leaf', what: string): NitroCert {
  try {
    return parseCertInner(derIn, role, what);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw certError('nitro.cert_invalid', what, `certificate does not decode: ${e instanceof Error ? e.message : String(e)}`, e);
  }
}

function parseCertInner(derIn: Uint8Array, role: 'ca' | 'leaf', what: string): NitroCert {
  const der = Buffer.from(derIn);
  if (der.length === 0 || der.length > MAX_CERT_BYTES) {
    throw certError('nitro.cert_invalid', what, `certificate is ${der.length} bytes (must be 1..${MAX_CERT_BYTES})`);
  }
  if (outerTlvLength(der) !== der.length) {
    throw certError('nitro.cert_invalid', what, 'certificate is not a single DER SEQUENCE spanning the input');
  }
  let c: CertificateLite;
  try {
    c = AsnParser.parse(der, CertificateLite);
  } catch (e) {
    throw certError('nitro.cert_invalid', what, `certificate does not decode: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  const t = c.tbsCertificate;
  if (!c.tbsCertificateRaw) throw certError('nitro.cert_invalid', what, 'certificate has no TBS bytes');
  if (t.version !== 2) throw certError('nitro.cert_invalid', what, `certificate is X.509 v${t.version + 1}, expected v3`);
  for (const alg of [c.signatureAlgorithm, t.signature]) {
    if (alg.algorithm !== OID_ECDSA_SHA384 || (alg.parameters !== undefined && alg.parameters !== null)) {
      throw certError('nitro.cert_invalid', what, `signature algorithm ${alg.algorithm} is not ecdsa-with-SHA384`);
    }
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(t.subjectPublicKeyInfo), format: 'der', type: 'spki' });
  } catch (e) {
    throw certError('nitro.cert_invalid', what, 'subject public key does not decode', e);
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'secp384r1') {
    throw certError('nitro.cert_invalid', what, `subject public key is ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''}, expected EC P-384`.trim());
  }
  let bc: BasicConstraints | undefined;
  let bcCritical = false;
  let ku: Uint8Array | undefined;
  const seen = new Set<string>();
  try {
    for (const ext of t.extensions ?? []) {
      if (seen.has(ext.extnID)) throw certError('nitro.cert_invalid', what, `extension ${ext.extnID} appears twice`);
      seen.add(ext.extnID);
      if (ext.extnID === OID_BASIC_CONSTRAINTS) {
        bc = AsnParser.parse(ext.extnValue.buffer, BasicConstraints);
        bcCritical = ext.critical;
      } else if (ext.extnID === OID_KEY_USAGE) {
        const k = AsnParser.parse(ext.extnValue.buffer, KeyUsage);
        ku = new Uint8Array(k.value);
      } else if (ext.critical && !UNDERSTOOD_CRITICAL.has(ext.extnID)) {
        throw certError('nitro.cert_invalid', what, `unrecognised critical extension ${ext.extnID}`);
      }
    }
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw certError('nitro.cert_invalid', what, `extension does not decode: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  // KeyUsage bits (RFC 5280 §4.2.1.3): bit 0 digitalSignature = 0x80 of the first octet, bit 5 keyCertSign = 0x04.
  const ku0 = ku?.[0] ?? 0;
  const isCA = bc?.cA === true;
  const pathLen = isCA ? bc?.pathLenConstraint : undefined;
  const cert: NitroCert = {
    der,
    sha256: sha256Hex(der),
    tbs: Buffer.from(c.tbsCertificateRaw),
    signature: Buffer.from(c.signatureValue),
    issuer: Buffer.from(t.issuer),
    subject: Buffer.from(t.subject),
    notBefore: t.validity.notBefore.getTime().getTime(),
    notAfter: t.validity.notAfter.getTime().getTime(),
    key,
    isCA,
    pathLen,
    digitalSignature: (ku0 & 0x80) !== 0,
    keyCertSign: (ku0 & 0x04) !== 0,
  };
  if (!Number.isFinite(cert.notBefore) || !Number.isFinite(cert.notAfter)) {
    throw certError('nitro.cert_invalid', what, 'validity period does not decode');
  }
  if (role === 'ca') {
    if (!bc || !isCA) throw certError('nitro.chain_invalid', what, 'CA certificate lacks basicConstraints cA=TRUE');
    if (!bcCritical) throw certError('nitro.chain_invalid', what, 'CA certificate basicConstraints is not critical');
    if (pathLen !== undefined && (!Number.isSafeInteger(pathLen) || pathLen < 0)) {
      throw certError('nitro.chain_invalid', what, 'CA certificate pathLenConstraint is out of range');
    }
    if (!ku || !cert.keyCertSign) throw certError('nitro.chain_invalid', what, 'CA certificate keyUsage lacks keyCertSign');
  } else {
    if (isCA) throw certError('nitro.chain_invalid', what, 'signing certificate is a CA (basicConstraints cA=TRUE)');
    if (!ku || !cert.digitalSignature) throw certError('nitro.chain_invalid', what, 'signing certificate keyUsage lacks digitalSignature');
  }
  return cert;
}

/** Check that `child` names `parent` as issuer and that its signature verifies under the parent's key. */
function checkIssuedBy(child: NitroCert, parent: NitroCert, what: string): void {
  if (!child.issuer.equals(parent.subject)) {
    throw certError('nitro.chain_invalid', what, 'issuer name does not equal the next certificate\'s subject');
  }
  let ok = false;
  try {
    ok = cryptoVerify('sha384', child.tbs, { key: parent.key, dsaEncoding: 'der' }, child.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw certError('nitro.cert_signature_invalid', what, 'certificate signature does not verify under its issuer\'s key');
}

function checkValidity(cert: NitroCert, atMs: number, what: string): void {
  if (atMs < cert.notBefore) {
    throw certError('nitro.cert_not_yet_valid', what, `certificate is not valid until ${new Date(cert.notBefore).toISOString()} (verification time ${new Date(atMs).toISOString()})`);
  }
  if (atMs > cert.notAfter) {
    throw certError('nitro.cert_expired', what, `certificate expired at ${new Date(cert.notAfter).toISOString()} (verification time ${new Date(atMs).toISOString()})`);
  }
}

class Lru<V> {
  readonly #max: number;
  readonly #map = new Map<string, V>();
  constructor(max: number) {
    this.#max = max;
  }
  get size(): number {
    return this.#map.size;
  }
  get(key: string): V | undefined {
    const hit = this.#map.get(key);
    if (hit !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, hit);
    }
    return hit;
  }
  set(key: string, v: V): void {
    this.#map.set(key, v);
    if (this.#map.size > this.#max) this.#map.delete(this.#map.keys().next().value as string);
  }
  clear(): void {
    this.#map.clear();
  }
}

/**
 * Two bounded LRU caches (default 1024 entries each):
 * - CA certificates (pinned root, intermediates) that passed their static checks and, for
 *   intermediates, their issuer's signature — keyed by (SHA-256 of the DER, SHA-256 of the issuer's
 *   DER), so a hit is only possible under the very issuer it was verified against;
 * - signing (leaf) certificates that passed their static checks and their issuer's signature, keyed
 *   the same way (SHA-256 of the leaf's DER, SHA-256 of its issuer's DER): verifying another
 *   document of the same enclave costs one P-384 verification (the COSE signature), not two. Another
 *   leaf — even with the same subject and key — has another DER hash and is verified in full.
 * Failures are never cached. Validity periods are always checked at the verification time, and the
 * path above a hit is still walked (root pin, each CA's cached issuer link and validity), so a hit
 * is only possible under the very chain it was verified in. Each cache is bounded (constructor),
 * the least recently used entry going first.
 */
export class NitroCertCache {
  readonly #ca: Lru<NitroCert>;
  readonly #leaf: Lru<NitroCert>;
  hits = 0;
  misses = 0;

  /** `maxEntries` bounds the CA cache, `leafMaxEntries` (default the same) the leaf cache. */
  constructor(maxEntries = 1024, leafMaxEntries = maxEntries) {
    for (const n of [maxEntries, leafMaxEntries]) {
      if (!Number.isSafeInteger(n) || n < 1) throw new SigilError('nitro.bad_options', `cache size must be a positive integer, got ${String(n)}`);
    }
    this.#ca = new Lru(maxEntries);
    this.#leaf = new Lru(leafMaxEntries);
  }

  get size(): { ca: number; leaf: number } {
    return { ca: this.#ca.size, leaf: this.#leaf.size };
  }

  /** Return the cached entry for `key`, or compute, store and return it. */
  getOrAdd(kind: 'ca' | 'leaf', key: string, make: () => NitroCert): NitroCert {
    const lru = kind === 'ca' ? this.#ca : this.#leaf;
    const hit = lru.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const v = make();
    lru.set(key, v);
    return v;
  }

  clear(): void {
    this.#ca.clear();
    this.#leaf.clear();
    this.hits = 0;
    this.misses = 0;
  }
}

export interface ChainResult {
  leaf: NitroCert;
  root: NitroCert;
  /** Number of certificates in the path, leaf and root included. */
  length: number;
}

/**
 * Validate leaf ← cabundle[n-1] ← … ← cabundle[0] where cabundle[0] must hash to `rootSha256`.
 * All certificates must be valid at `atMs`.
 */
export function validateNitroChain(leafDer: Uint8Array, cabundle: readonly Uint8Array[], rootSha256: string, atMs: number, cache: NitroCertCache): ChainResult {
  const rootDer = cabundle[0];
  if (rootDer === undefined) throw certError('nitro.chain_invalid', 'cabundle', 'cabundle is empty');
  const rootHash = sha256Hex(rootDer);
  if (rootHash !== rootSha256) {
    throw new SigilError('nitro.untrusted_root', `cabundle[0] (SHA-256 ${rootHash}) is not the pinned root (SHA-256 ${rootSha256})`, { status: 401 });
  }
  const root = cache.getOrAdd('ca', `${rootHash}:anchor`, () => parseNitroCert(rootDer, 'ca', 'root (cabundle[0])'));
  checkValidity(root, atMs, 'root (cabundle[0])');
  const n = cabundle.length;
  // pathLenConstraint: a CA at cabundle[k] is followed by n-1-k intermediate CAs before the leaf.
  if (root.pathLen !== undefined && n - 1 > root.pathLen) {
    throw certError('nitro.chain_invalid', 'root (cabundle[0])', `pathLenConstraint ${root.pathLen} is exceeded by ${n - 1} intermediates`);
  }
  let parent = root;
  for (let k = 1; k < n; k++) {
    const der = cabundle[k] as Uint8Array;
    const what = `cabundle[${k}]`;
    const hash = sha256Hex(der);
    const p = parent;
    const cert = cache.getOrAdd('ca', `${hash}:${p.sha256}`, () => {
      const c = parseNitroCert(der, 'ca', what);
      checkIssuedBy(c, p, what);
      return c;
    });
    checkValidity(cert, atMs, what);
    if (cert.pathLen !== undefined && n - 1 - k > cert.pathLen) {
      throw certError('nitro.chain_invalid', what, `pathLenConstraint ${cert.pathLen} is exceeded by ${n - 1 - k} intermediates below it`);
    }
    parent = cert;
  }
  // The leaf is cached once its issuer's signature verified, under (its DER hash, its issuer's DER
  // hash): the same enclave's next document costs only its COSE signature. Its validity period is
  // checked at every verification time, hit or miss.
  const leafHash = sha256Hex(leafDer);
  const issuer = parent;
  const leaf = cache.getOrAdd('leaf', `${leafHash}:${issuer.sha256}`, () => {
    const c = parseNitroCert(leafDer, 'leaf', 'certificate (leaf)');
    checkIssuedBy(c, issuer, 'certificate (leaf)');
    return c;
  });
  checkValidity(leaf, atMs, 'certificate (leaf)');
  return { leaf, root, length: n + 1 };
}

/** Extract the single CERTIFICATE block of a PEM text as DER. Throws nitro.bad_root_cert. */
export function pemCertificateToDer(pem: string, what: string): Buffer {
  const blocks = [...pem.matchAll(/-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g)];
  if (blocks.length !== 1) {
    throw new SigilError('nitro.bad_root_cert', `${what}: expected exactly one PEM CERTIFICATE block, found ${blocks.length}`);
  }
  const b64 = (blocks[0]?.[1] ?? '').replace(/\s+/g, '');
  const der = Buffer.from(b64, 'base64');
  if (der.length === 0 || der.toString('base64') !== b64) {
    throw new SigilError('nitro.bad_root_cert', `${what}: PEM body is not valid base64`);
  }
  try {
    parseNitroCert(der, 'ca', what);
  } catch (e) {
    throw new SigilError('nitro.bad_root_cert', `${what}: not a usable root certificate: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  return der;
}
