/**
 * The one chain verifier. A path is given leaf first, trust anchor last; the anchor is trusted by
 * the caller (a pinned DER hash or a configured certificate), everything below it is checked:
 * issuer Name equal to the parent's subject byte for byte, the signature under the parent's key,
 * the parent a CA (basicConstraints cA=TRUE, keyUsage keyCertSign when present) whose
 * pathLenConstraint holds, and every certificate (anchor included) valid at the time passed in.
 *
 * Verified links are remembered in a `LinkCache` keyed by (SHA-256 of the child's DER, SHA-256 of
 * the issuer's DER): a hit is only possible for the very bytes under the very issuer that were
 * verified. Validity is checked on every call, hit or miss; failures are never cached.
 * Callers keep their own profile checks (algorithms, key types, names, extensions) and map the
 * toolkit's codes to theirs with `remapX509Error`.
 */
import { SigilError } from '../errors.js';
import { publicKeyOf, type AnyKeyCertificate } from './cert.js';
import { X509_CODES } from './errors.js';
import { KU } from './ext.js';
import { Lru } from './lru.js';
import { sigAlgAllowed, verifyWith } from './sigalg.js';
import { checkValidity } from './validity.js';

type Cert = AnyKeyCertificate;

/** Verified (child, issuer) links, bounded, least recently used first out. */
export class LinkCache {
  readonly #lru: Lru<true>;
  hits = 0;
  misses = 0;

  constructor(maxEntries = 1024) {
    this.#lru = new Lru(maxEntries);
  }

  get size(): number {
    return this.#lru.size;
  }

  /** Run `verify` unless the link (child, issuer) verified before; remember it if it verifies now. */
  check(child: Pick<Cert, 'sha256'>, issuer: Pick<Cert, 'sha256'>, verify: () => boolean): boolean {
    if (this.hit(child, issuer)) return true;
    const ok = verify();
    if (ok) this.add(child, issuer);
    return ok;
  }

  /** Whether the link (child, issuer) verified before (counted as a hit or a miss). */
  hit(child: Pick<Cert, 'sha256'>, issuer: Pick<Cert, 'sha256'>): boolean {
    if (this.#lru.get(`${child.sha256}:${issuer.sha256}`)) {
      this.hits++;
      return true;
    }
    this.misses++;
    return false;
  }

  /** Remember a verified link. */
  add(child: Pick<Cert, 'sha256'>, issuer: Pick<Cert, 'sha256'>): void {
    this.#lru.set(`${child.sha256}:${issuer.sha256}`, true);
  }

  clear(): void {
    this.#lru.clear();
    this.hits = 0;
    this.misses = 0;
  }
}

/**
 * Signature of `child` under `issuer`'s key over the raw TBS bytes (false on any mismatch, and for
 * an algorithm outside `algorithms`; a SHA-1 signature is false unless `algorithms` names it).
 */
export function signatureVerifies(child: Cert, issuer: Cert, algorithms?: readonly string[]): boolean {
  if (!sigAlgAllowed(child.sigAlg, algorithms)) return false;
  return verifyWith(child.sigAlg, child.tbs, publicKeyOf(issuer), child.signature);
}

/**
 * `child` names `issuer` (byte-exact Name) and its signature verifies under the issuer's key
 * (through `links` when given). Throws `x509.issuer_mismatch` / `x509.signature_invalid`.
 */
export function checkIssuedBy(child: Cert, issuer: Cert, links?: LinkCache, what = 'certificate', algorithms?: readonly string[]): void {
  // Before the cache: a link remembered under another call's algorithm list proves nothing here.
  if (!sigAlgAllowed(child.sigAlg, algorithms)) {
    throw new SigilError(X509_CODES.unsupportedAlgorithm, `${what}: signature algorithm ${child.sigAlg.oid} is not accepted here`, { status: 403 });
  }
  // A remembered link was checked for these very bytes (names included).
  if (links?.hit(child, issuer)) return;
  if (!child.issuerDer.equals(issuer.subjectDer)) {
    throw new SigilError(X509_CODES.issuerMismatch, `${what}: issuer name does not equal its issuer's subject`, { status: 403 });
  }
  if (!signatureVerifies(child, issuer, algorithms)) throw new SigilError(X509_CODES.signatureInvalid, `${what}: signature does not verify under its issuer's key`, { status: 403 });
  links?.add(child, issuer);
}

/** Throw `x509.not_a_ca` unless `cert` may issue certificates. */
export function checkCanIssue(cert: Cert, what = 'certificate'): void {
  if (cert.basicConstraints?.ca !== true) throw new SigilError(X509_CODES.notACa, `${what} is not a CA (basicConstraints cA)`, { status: 403 });
  if (cert.keyUsage && (cert.keyUsage.flags & KU.keyCertSign) === 0) {
    throw new SigilError(X509_CODES.notACa, `${what} keyUsage lacks keyCertSign`, { status: 403 });
  }
}

export interface ChainOptions {
  /** Verification time. */
  at: number | Date;
  /** Remembers verified links; absent = every signature is checked. */
  links?: LinkCache;
  /** Remembers the leaf's link apart from the CAs' (default `links`), so many leaves cannot evict the CAs. */
  leafLinks?: LinkCache;
  /** Also require the anchor to be self-issued and self-signed (default false: trusted as given). */
  anchorSelfSigned?: boolean;
  /** Names for errors by position, leaf 0 (default `certificate <i>`). */
  names?: readonly string[] | ((i: number) => string);
  /**
   * This call's signature algorithm OIDs (default: every allowlisted one). SHA-1 signatures verify
   * only when this list names them; the TPM EK path is the one caller that does.
   */
  algorithms?: readonly string[];
}

/**
 * Verify `path` (leaf first, trust anchor last), from the anchor down. Throws
 * `x509.chain_empty`, `x509.not_a_ca`, `x509.path_length_exceeded`, `x509.issuer_mismatch`,
 * `x509.signature_invalid`, `x509.not_yet_valid`, `x509.expired`.
 */
export function verifyChain(path: readonly Cert[], opts: ChainOptions): void {
  const n = path.length;
  if (n === 0) throw new SigilError(X509_CODES.chainEmpty, 'certificate chain is empty');
  const names = opts.names;
  const name = (i: number): string => (typeof names === 'function' ? names(i) : names?.[i]) ?? `certificate ${i}`;
  const anchor = path[n - 1]!;
  if (opts.anchorSelfSigned === true) checkIssuedBy(anchor, anchor, opts.links, name(n - 1), opts.algorithms);
  for (let i = n - 1; i >= 0; i--) {
    const c = path[i]!;
    if (i < n - 1) checkIssuedBy(c, path[i + 1]!, i === 0 ? (opts.leafLinks ?? opts.links) : opts.links, name(i), opts.algorithms);
    checkValidity(c, opts.at, name(i));
    if (i > 0) {
      checkCanIssue(c, name(i));
      // The CAs strictly between this one and the leaf: i - 1 of them.
      const pathLen = c.basicConstraints?.pathLen;
      if (pathLen !== undefined && i - 1 > pathLen) {
        throw new SigilError(X509_CODES.pathLength, `${name(i)}: pathLenConstraint ${pathLen} is exceeded by ${i - 1} intermediates below it`, { status: 403 });
      }
    }
  }
}
