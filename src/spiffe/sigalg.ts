/**
 * Signature algorithms accepted on certificates and CSRs: ECDSA and RSA PKCS#1 v1.5 with
 * SHA-256/384/512. (RSASSA-PSS, SHA-1 and MD5 are refused.)
 */
import { sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { TAG, children, decodeOid, type Tlv } from './der.js';
import { keyFamilyOf } from './keys.js';

export type SigHash = 'sha256' | 'sha384' | 'sha512';
export interface SigAlg {
  oid: string;
  family: 'ec' | 'rsa';
  hash: SigHash;
}

const ALGS: Record<string, SigAlg> = {
  '1.2.840.10045.4.3.2': { oid: '1.2.840.10045.4.3.2', family: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { oid: '1.2.840.10045.4.3.3', family: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { oid: '1.2.840.10045.4.3.4', family: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { oid: '1.2.840.113549.1.1.11', family: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { oid: '1.2.840.113549.1.1.12', family: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { oid: '1.2.840.113549.1.1.13', family: 'rsa', hash: 'sha512' },
};

/** AlgorithmIdentifier DER for the algorithms Sigil signs with. */
export const ALG_ID_DER = {
  ecdsaSha256: Buffer.from('300a06082a8648ce3d040302', 'hex'),
  ecdsaSha384: Buffer.from('300a06082a8648ce3d040303', 'hex'),
  rsaSha256: Buffer.from('300d06092a864886f70d01010b0500', 'hex'),
} as const;

/** Parse a signature AlgorithmIdentifier; `unsupportedCode` for algorithms outside the allowlist. */
export function parseSigAlg(buf: Uint8Array, t: Tlv, malformedCode: string, unsupportedCode: string): SigAlg {
  if (t.tag !== TAG.SEQUENCE) throw new SigilError(malformedCode, 'signature AlgorithmIdentifier is not a SEQUENCE');
  const parts = children(buf, t, malformedCode);
  if (parts.length < 1 || parts.length > 2) throw new SigilError(malformedCode, 'signature AlgorithmIdentifier must have one or two elements');
  const oid = decodeOid(buf, parts[0]!, malformedCode);
  const alg = ALGS[oid];
  if (!alg) throw new SigilError(unsupportedCode, `signature algorithm ${oid} is not accepted (ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512 only)`);
  const p = parts[1];
  if (alg.family === 'ec' && p) throw new SigilError(malformedCode, 'ECDSA AlgorithmIdentifier must not have parameters');
  if (alg.family === 'rsa' && p && (p.tag !== TAG.NULL || p.end !== p.valueStart)) {
    throw new SigilError(malformedCode, 'RSA signature AlgorithmIdentifier parameters must be NULL');
  }
  return alg;
}

/** The AlgorithmIdentifier and hash Sigil uses to sign with `key` (a private key). */
export function signingAlgFor(key: KeyObject): { algId: Buffer; hash: 'sha256' | 'sha384' } {
  const f = keyFamilyOf(key);
  if (f === 'ec-p256') return { algId: ALG_ID_DER.ecdsaSha256, hash: 'sha256' };
  if (f === 'ec-p384') return { algId: ALG_ID_DER.ecdsaSha384, hash: 'sha384' };
  return { algId: ALG_ID_DER.rsaSha256, hash: 'sha256' };
}

/** Verify `sig` over `data`; false on any mismatch (never throws for a bad signature). */
export function verifyWith(alg: SigAlg, data: Uint8Array, key: KeyObject, sig: Uint8Array): boolean {
  const kt = key.asymmetricKeyType;
  if ((alg.family === 'ec' && kt !== 'ec') || (alg.family === 'rsa' && kt !== 'rsa')) return false;
  try {
    return cryptoVerify(alg.hash, data, key, sig);
  } catch {
    return false;
  }
}

export function signWith(hash: string, data: Uint8Array, key: KeyObject): Buffer {
  return cryptoSign(hash, data, key);
}
