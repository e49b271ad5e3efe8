/**
 * What Sigil's TLS clients (the agent's verifier client, the agent's federated-bundle fetch, the
 * verifier's foreign bundle fetch) read from a peer: its URI SANs, and whether a TLS error means
 * "the peer's certificate is not trusted" rather than a network failure.
 */
import type { PeerCertificate } from 'node:tls';

/** The error codes Node gives when the peer's certificate does not verify against our trust. */
export const TLS_TRUST_ERRORS: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

/** The URI SANs of a peer certificate as Node formats them (`URI:a, DNS:b`). */
export function uriSans(cert: PeerCertificate): string[] {
  return (cert.subjectaltname ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}
