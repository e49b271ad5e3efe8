import { createHash } from 'node:crypto';

const DOMAIN = Buffer.from('sigil-attest-v1', 'utf8');

/** binding = SHA-256("sigil-attest-v1" ‖ nonce ‖ SHA-256(SPKI DER of the CSR key)) — DESIGN §3. */
export function sessionBinding(nonce: Uint8Array, csrSpkiDer: Uint8Array): Buffer {
  const keyHash = createHash('sha256').update(csrSpkiDer).digest();
  return createHash('sha256').update(DOMAIN).update(nonce).update(keyHash).digest();
}
