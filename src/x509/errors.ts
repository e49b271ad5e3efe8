/**
 * The toolkit's error vocabulary. Every failure is a SigilError with one of these codes; an
 * attestor that promised its own codes at its boundary (`nitro.cert_expired`, `tdx.cert_malformed`,
 * …) maps them with `remapX509Error`, so its tests and docs stay as they are.
 */
import { SigilError, errorMessage } from '../errors.js';

export const X509_CODES = {
  /** Not a DER certificate / CRL / PEM block, or a field breaks RFC 5280's encoding rules. */
  malformed: 'x509.malformed',
  /** PEM text that is not strict RFC 7468 (label, base64, text outside blocks). */
  pemMalformed: 'pem.malformed',
  /** Signature algorithm outside the allowlist. */
  unsupportedAlgorithm: 'x509.unsupported_algorithm',
  /** Public key type the caller's profile does not accept. */
  unsupportedKey: 'x509.unsupported_key',
  /** Verification time before notBefore. */
  notYetValid: 'x509.not_yet_valid',
  /** Verification time after notAfter. */
  expired: 'x509.expired',
  /** A certificate's issuer Name is not its parent's subject Name (byte for byte). */
  issuerMismatch: 'x509.issuer_mismatch',
  /** A certificate's signature does not verify under its parent's key. */
  signatureInvalid: 'x509.signature_invalid',
  /** An issuing certificate lacks basicConstraints cA=TRUE or keyUsage keyCertSign. */
  notACa: 'x509.not_a_ca',
  /** A pathLenConstraint is exceeded by the CAs below it. */
  pathLength: 'x509.path_length_exceeded',
  /** The verification time passed in is not a finite date (an Invalid Date, NaN, Infinity). */
  badTime: 'x509.bad_time',
  /** Empty chain. */
  chainEmpty: 'x509.chain_empty',
  /** Not a DER CertificateList (RFC 5280 §5.1), or nextUpdate missing. */
  crlMalformed: 'x509.crl_malformed',
  /** The CRL's issuer Name is not the expected issuer's subject. */
  crlIssuerMismatch: 'x509.crl_issuer_mismatch',
  /** The CRL's issuer has a keyUsage extension without cRLSign (RFC 5280 §4.2.1.3). */
  crlIssuerNotCrlSigner: 'x509.crl_issuer_not_crl_signer',
  /** The CRL's signature does not verify under its issuer's key. */
  crlSignatureInvalid: 'x509.crl_signature_invalid',
  /** Verification time before thisUpdate. */
  crlNotYetValid: 'x509.crl_not_yet_valid',
  /** Verification time after nextUpdate. */
  crlExpired: 'x509.crl_expired',
} as const;

export type X509Code = (typeof X509_CODES)[keyof typeof X509_CODES];

/** Toolkit code → the caller's code (codes not in the map are kept). */
export type X509CodeMap = Partial<Record<X509Code, string>>;

/**
 * Re-throwable error for `e` under the caller's vocabulary: a toolkit SigilError gets its code
 * mapped (message prefixed with `what`, the original as `cause`); another SigilError is returned
 * as it is; anything else becomes `fallbackCode`.
 */
export function remapX509Error(e: unknown, map: X509CodeMap, what: string, fallbackCode: string, status?: number): SigilError {
  if (e instanceof SigilError) {
    const code = map[e.code as X509Code];
    if (code === undefined) return e;
    return new SigilError(code, what ? `${what}: ${e.message}` : e.message, { status: status ?? e.status, cause: e });
  }
  return new SigilError(fallbackCode, `${what}: ${errorMessage(e)}`, { cause: e, ...(status === undefined ? {} : { status }) });
}
