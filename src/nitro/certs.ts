/**
 * X.509 path validation for Nitro attestation documents: `certificate` up through `cabundle` (in
 * reverse order) to a pinned root. Pure: DER bytes, the pin and the verification time in.
 *
 * Parsing, the issuer links, validity and pathLenConstraint are the X.509 toolkit's (src/x509/:
 * `parseCertificate`, `verifyChain`, `LinkCache`); this file adds the AWS Nitro profile and maps
 * the toolkit's codes to the `nitro.*` codes this attestor has always answered with.
 *
 * Profile enforced (the AWS Nitro PKI): every certificate is X.509 v3 in canonical DER, at most
 * 1024 bytes, signed with ecdsa-with-SHA384, carries an EC P-384 key, has no duplicate and no
 * unrecognised critical extensions; CA certificates carry a critical basicConstraints with cA=TRUE
 * and keyUsage with keyCertSign, and their pathLenConstraint holds for the path below them; the
 * leaf is not a CA and its keyUsage includes digitalSignature; each certificate's issuer equals its
 * parent's subject byte for byte and its signature verifies under the parent's key; every
 * certificate (root included) is within its validity period at the verification time.
 *
 * Verified links are remembered by (SHA-256 of the DER, SHA-256 of the issuer's DER), intermediates
 * and leaves in separate bounded caches, and whole verified paths by the leaf's DER hash with the
 * exact bytes of every certificate in them (see NitroCertCache): the same enclave's next document
 * costs one SHA-256 of its leaf, byte compares and its COSE signature. Validity periods are checked
 * on every call.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import { parseCertificate, publicKeyOf, type ParsedCertificate } from '../x509/cert.js';
import { LinkCache, verifyChain } from '../x509/chain.js';
import { remapX509Error, type X509CodeMap } from '../x509/errors.js';
import { KU, OID_BC, OID_KU } from '../x509/ext.js';
import { Lru } from '../x509/lru.js';
import { pemBlocks } from '../x509/pem.js';

const OID_ECDSA_SHA384 = '1.2.840.10045.4.3.3';
/** Critical extensions this validator understands; any other critical extension fails the certificate. */
const UNDERSTOOD_CRITICAL = new Set([OID_BC, OID_KU]);
/** Certificates in a Nitro document are at most 1024 bytes (AWS attestation document spec). */
export const MAX_CERT_BYTES = 1024;

/** Toolkit codes → Nitro's. */
const NITRO_CODES: X509CodeMap = {
  'x509.malformed': 'nitro.cert_invalid',
  'x509.unsupported_algorithm': 'nitro.cert_invalid',
  'x509.unsupported_key': 'nitro.cert_invalid',
  'x509.issuer_mismatch': 'nitro.chain_invalid',
  'x509.not_a_ca': 'nitro.chain_invalid',
  'x509.path_length_exceeded': 'nitro.chain_invalid',
  'x509.chain_empty': 'nitro.chain_invalid',
  'x509.signature_invalid': 'nitro.cert_signature_invalid',
  'x509.not_yet_valid': 'nitro.cert_not_yet_valid',
  'x509.expired': 'nitro.cert_expired',
};

/** A parsed certificate whose Nitro profile has been checked (not its validity period). */
export interface NitroCert {
  cert: ParsedCertificate;
  der: Buffer;
  /** SHA-256 of the DER, lowercase hex. */
  sha256: string;
  notBefore: number;
  notAfter: number;
  key: KeyObject;
  isCA: boolean;
  /** basicConstraints pathLenConstraint, when present. */
  pathLen: number | undefined;
}

function certError(code: string, what: string, msg: string, cause?: unknown): SigilError {
  return new SigilError(code, `${what}: ${msg}`, { status: 401, ...(cause === undefined ? {} : { cause }) });
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Decode a certificate and check its static profile for the given role. Throws nitro.cert_invalid / nitro.chain_invalid. */
export function parseNitroCert(derIn: Uint8Array, role: 'ca' | 'leaf', what: string): NitroCert {
  if (derIn.length === 0 || derIn.length > MAX_CERT_BYTES) {
    throw certError('nitro.cert_invalid', what, `certificate is ${derIn.length} bytes (must be 1..${MAX_CERT_BYTES})`);
  }
  let cert: ParsedCertificate;
  try {
    cert = parseCertificate(derIn, { maxBytes: MAX_CERT_BYTES });
  } catch (e) {
    throw remapX509Error(e, NITRO_CODES, what, 'nitro.cert_invalid', 401);
  }
  if (cert.sigAlg.oid !== OID_ECDSA_SHA384) throw certError('nitro.cert_invalid', what, `signature algorithm ${cert.sigAlg.oid} is not ecdsa-with-SHA384`);
  if (cert.spkiInfo.family !== 'ec-p384') throw certError('nitro.cert_invalid', what, `subject public key is ${cert.spkiInfo.family}, expected EC P-384`);
  for (const e of cert.extensions) {
    if (e.critical && !UNDERSTOOD_CRITICAL.has(e.oid)) throw certError('nitro.cert_invalid', what, `unrecognised critical extension ${e.oid}`);
  }
  let key: KeyObject;
  try {
    key = publicKeyOf(cert);
  } catch (e) {
    throw certError('nitro.cert_invalid', what, 'subject public key does not decode', e);
  }
  const bc = cert.basicConstraints;
  const flags = cert.keyUsage?.flags;
  const isCA = bc?.ca === true;
  if (role === 'ca') {
    if (!isCA) throw certError('nitro.chain_invalid', what, 'CA certificate lacks basicConstraints cA=TRUE');
    if (!bc.critical) throw certError('nitro.chain_invalid', what, 'CA certificate basicConstraints is not critical');
    if (flags === undefined || (flags & KU.keyCertSign) === 0) throw certError('nitro.chain_invalid', what, 'CA certificate keyUsage lacks keyCertSign');
  } else {
    if (isCA) throw certError('nitro.chain_invalid', what, 'signing certificate is a CA (basicConstraints cA=TRUE)');
    if (flags === undefined || (flags & KU.digitalSignature) === 0) throw certError('nitro.chain_invalid', what, 'signing certificate keyUsage lacks digitalSignature');
  }
  return {
    cert,
    der: cert.der,
    sha256: cert.sha256,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
    key,
    isCA,
    pathLen: isCA ? bc.pathLen : undefined,
  };
}

/**
 * The caches of one Nitro verifier, all bounded (least recently used first out) and keyed by DER
 * hashes, so a hit is only possible for the very bytes that were checked:
 * - `links` / `leafLinks` (toolkit LinkCaches): verified (certificate, issuer) links, CAs and leaves
 *   apart (`maxEntries`, `leafMaxEntries`) so a stream of new enclaves cannot evict the
 *   intermediates. A leaf's link only counts under the issuer it was verified against: the same
 *   enclave's next document costs one P-384 verification (the COSE signature); another leaf, even
 *   with the same subject and key, has another DER hash and is verified in full.
 * - parsed, profile-checked certificates by (DER hash, role); a pinned root counts as a CA entry.
 * - `paths`: whole verified paths (leaf, cabundle, pin), `leafMaxEntries` of them, indexed by the
 *   leaf's DER hash. An entry holds its own copies of every certificate's DER and is used only when
 *   the document's leaf and every cabundle entry equal them byte for byte and the pin is the same;
 *   its validity window (latest notBefore, earliest notAfter over the path) is compared with the
 *   verification time on every use, and when the time falls outside it the path is verified again
 *   step by step, so the refusal names the certificate.
 * Failures are never cached. Validity periods are always checked at the verification time.
 */
const PINNED = { sha256: 'pinned' } as const;

interface VerifiedPath {
  leafDer: Buffer;
  /** cabundle as received (root first). */
  cabundle: Buffer[];
  pin: string;
  /** Latest notBefore and earliest notAfter over the path (ms): the path is valid in between, both included. */
  notBefore: number;
  notAfter: number;
  result: ChainResult;
}

function samePath(p: VerifiedPath, leafDer: Uint8Array, cabundle: readonly Uint8Array[], pin: string): boolean {
  if (p.pin !== pin || p.cabundle.length !== cabundle.length || !p.leafDer.equals(leafDer)) return false;
  for (let i = 0; i < cabundle.length; i++) if (!p.cabundle[i]!.equals(cabundle[i]!)) return false;
  return true;
}

export class NitroCertCache {
  readonly links: LinkCache;
  readonly leafLinks: LinkCache;
  readonly #parsed: Lru<NitroCert>;
  readonly #paths: Lru<VerifiedPath>;
  /** Documents whose whole path came from `paths` (no certificate step run). */
  pathHits = 0;
  /** Lookups in `paths` that found no entry for these exact bytes under this pin. */
  pathMisses = 0;

  /** `maxEntries` bounds the CA caches, `leafMaxEntries` (default the same) the leaf caches. */
  constructor(maxEntries = 1024, leafMaxEntries = maxEntries) {
    for (const n of [maxEntries, leafMaxEntries]) {
      if (!Number.isSafeInteger(n) || n < 1) throw new SigilError('nitro.bad_options', `cache size must be a positive integer, got ${String(n)}`);
    }
    this.links = new LinkCache(maxEntries);
    this.leafLinks = new LinkCache(leafMaxEntries);
    this.#parsed = new Lru(maxEntries + leafMaxEntries);
    this.#paths = new Lru(leafMaxEntries);
  }

  get size(): { ca: number; leaf: number; paths: number } {
    return { ca: this.links.size, leaf: this.leafLinks.size, paths: this.#paths.size };
  }

  /** Link cache hits (CAs and leaves), counted when a path is verified step by step. */
  get hits(): number {
    return this.links.hits + this.leafLinks.hits;
  }

  get misses(): number {
    return this.links.misses + this.leafLinks.misses;
  }

  /** The pinned root, parsed and profile-checked once per DER hash (recorded in `links` as the link (root, pin)). */
  anchor(der: Uint8Array, hash: string, what: string): NitroCert {
    const c = this.parsed(der, 'ca', what, hash);
    this.links.check(c, PINNED, () => true);
    return c;
  }

  /** A certificate below the root, parsed and profile-checked once per (DER hash, role). */
  parsed(der: Uint8Array, role: 'ca' | 'leaf', what: string, hash = sha256Hex(der)): NitroCert {
    const key = `${hash}:${role}`;
    let c = this.#parsed.get(key);
    if (!c) {
      c = parseNitroCert(der, role, what);
      this.#parsed.set(key, c);
    }
    return c;
  }

  /**
   * The verified path for exactly these bytes under this pin, when one is cached and `atMs` is inside
   * its validity window; otherwise undefined (then the caller verifies the path step by step).
   */
  path(leafHash: string, leafDer: Uint8Array, cabundle: readonly Uint8Array[], pin: string, atMs: number): ChainResult | undefined {
    const p = this.#paths.get(leafHash);
    if (p === undefined || !samePath(p, leafDer, cabundle, pin)) {
      this.pathMisses++;
      return undefined;
    }
    // The same path outside its window: verified step by step, so the refusal names the certificate.
    if (atMs < p.notBefore || atMs > p.notAfter) return undefined;
    this.pathHits++;
    return p.result;
  }

  /**
   * Remember a path that has just verified in full (`path` is leaf first, root last). The bytes kept
   * are the parsed certificates' own DER copies (never the caller's buffers), shared with the
   * parse cache.
   */
  rememberPath(leafHash: string, pin: string, path: readonly NitroCert[], result: ChainResult): void {
    let notBefore = -Infinity;
    let notAfter = Infinity;
    for (const c of path) {
      notBefore = Math.max(notBefore, c.notBefore);
      notAfter = Math.min(notAfter, c.notAfter);
    }
    // cabundle order: root first, then the intermediates from the top down.
    const cabundle = path.slice(1).reverse().map((c) => c.der);
    this.#paths.set(leafHash, { leafDer: path[0]!.der, cabundle, pin, notBefore, notAfter, result });
  }

  clear(): void {
    this.links.clear();
    this.leafLinks.clear();
    this.#parsed.clear();
    this.#paths.clear();
    this.pathHits = 0;
    this.pathMisses = 0;
  }
}

const LEAF = 'certificate (leaf)';
const ROOT = 'root (cabundle[0])';

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
  const leafHash = sha256Hex(leafDer);
  const hit = cache.path(leafHash, leafDer, cabundle, rootSha256, atMs);
  if (hit !== undefined) return hit;
  const rootDer = cabundle[0];
  if (rootDer === undefined) throw certError('nitro.chain_invalid', 'cabundle', 'cabundle is empty');
  const rootHash = sha256Hex(rootDer);
  if (rootHash !== rootSha256) {
    throw new SigilError('nitro.untrusted_root', `cabundle[0] (SHA-256 ${rootHash}) is not the pinned root (SHA-256 ${rootSha256})`, { status: 401 });
  }
  const n = cabundle.length;
  const root = cache.anchor(rootDer, rootHash, ROOT);
  // Leaf first, root last, as the toolkit's verifier takes a path.
  const path: NitroCert[] = [cache.parsed(leafDer, 'leaf', LEAF, leafHash)];
  for (let k = n - 1; k >= 1; k--) path.push(cache.parsed(cabundle[k] as Uint8Array, 'ca', `cabundle[${k}]`));
  path.push(root);
  const certs: ParsedCertificate[] = path.map((c) => c.cert);
  try {
    verifyChain(certs, { at: atMs, links: cache.links, leafLinks: cache.leafLinks, names: (i) => (i === 0 ? LEAF : i === n ? ROOT : `cabundle[${n - i}]`) });
  } catch (e) {
    throw remapX509Error(e, NITRO_CODES, '', 'nitro.chain_invalid', 401);
  }
  const result: ChainResult = { leaf: path[0]!, root, length: n + 1 };
  cache.rememberPath(leafHash, rootSha256, path, result);
  return result;
}

/** Extract the single CERTIFICATE block of a PEM text as DER. Throws nitro.bad_root_cert. */
export function pemCertificateToDer(pem: string, what: string): Buffer {
  let blocks: Buffer[];
  try {
    blocks = pemBlocks(pem, 'CERTIFICATE', { lax: true });
  } catch (e) {
    throw new SigilError('nitro.bad_root_cert', `${what}: ${errorMessage(e)}`, { cause: e });
  }
  if (blocks.length !== 1) {
    throw new SigilError('nitro.bad_root_cert', `${what}: expected exactly one PEM CERTIFICATE block, found ${blocks.length}`);
  }
  const der = blocks[0]!;
  try {
    parseNitroCert(der, 'ca', what);
  } catch (e) {
    throw new SigilError('nitro.bad_root_cert', `${what}: not a usable root certificate: ${errorMessage(e)}`, { cause: e });
  }
  return der;
}
