/**
 * The session binding: the value that ties an attestor's evidence to one attestation session (its
 * nonce) and to the key of the CSR the node SVID is issued for. Attestors put it where their
 * evidence carries caller data (TPM qualifyingData, Nitro nonce, SEV-SNP/TDX report data).
 * "binding" in Sigil means this only; the compiled C++ code under src/native is the native addon.
 */
import { digest } from '../util/digest.js';

const DOMAIN = Buffer.from('sigil-attest-v1', 'utf8');

/** binding = SHA-256("sigil-attest-v1" ‖ nonce ‖ SHA-256(SPKI DER of the CSR key)) — DESIGN §3. */
export function sessionBinding(nonce: Uint8Array, csrSpkiDer: Uint8Array): Buffer {
  return digest('sha256', Buffer.concat([DOMAIN, nonce, digest('sha256', csrSpkiDer)]));
}
