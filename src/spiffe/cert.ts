/**
 * Certificate parsing for SVIDs and bundles: the X.509 toolkit's parser (src/x509/cert.ts) under
 * the SPIFFE module's stable error codes (`x509svid.malformed`, `x509svid.unsupported_algorithm`,
 * `x509svid.unsupported_key`). Only Sigil's key types and ECDSA / RSA PKCS#1 v1.5 are accepted.
 */
import { parseCertificate as parseX509, type ParsedCertificate } from '../x509/cert.js';
import { remapX509Error, type X509CodeMap } from '../x509/errors.js';

export { CERT_MAX_BYTES, HANDLED_EXTENSIONS, type ParsedCertificate, type ParsedExtension } from '../x509/cert.js';

const CODES: X509CodeMap = {
  'x509.malformed': 'x509svid.malformed',
  'x509.unsupported_algorithm': 'x509svid.unsupported_algorithm',
  'x509.unsupported_key': 'x509svid.unsupported_key',
};

/** Parse one DER certificate. Throws `x509svid.malformed` / `x509svid.unsupported_*`. */
export function parseCertificate(input: Uint8Array): ParsedCertificate {
  try {
    return parseX509(input);
  } catch (e) {
    throw remapX509Error(e, CODES, '', 'x509svid.malformed');
  }
}
