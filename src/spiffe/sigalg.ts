/**
 * Signing with Sigil's own keys (the SVID issuance and CSR side). The verification allowlist
 * (`parseSigAlg`, `verifyWith`) lives in the X.509 toolkit (src/x509/sigalg.ts) and is re-exported here.
 */
import { sign as cryptoSign, type KeyObject } from 'node:crypto';
import { ALG_ID_DER } from '../x509/sigalg.js';
import { keyFamilyOf } from './keys.js';

export { ALG_ID_DER, parseSigAlg, verifyWith, type SigAlg, type SigHash } from '../x509/sigalg.js';

/** The AlgorithmIdentifier and hash Sigil uses to sign with `key` (a private key). */
export function signingAlgFor(key: KeyObject): { algId: Buffer; hash: 'sha256' | 'sha384' } {
  const f = keyFamilyOf(key);
  if (f === 'ec-p256') return { algId: ALG_ID_DER.ecdsaSha256, hash: 'sha256' };
  if (f === 'ec-p384') return { algId: ALG_ID_DER.ecdsaSha384, hash: 'sha384' };
  return { algId: ALG_ID_DER.rsaSha256, hash: 'sha256' };
}

export function signWith(hash: string, data: Uint8Array, key: KeyObject): Buffer {
  return cryptoSign(hash, data, key);
}
