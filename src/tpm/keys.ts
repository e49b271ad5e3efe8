/** Conversion of TPMT_PUBLIC (RSA / ECC) to node:crypto KeyObjects and SPKI DER. */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { digestHex } from '../util/digest.js';
import { SigilError, errorMessage } from '../errors.js';
import { curveById, type CurveInfo } from './constants.js';
import type { EccPublic, TpmtPublic } from './structures.js';

function b64url(b: Buffer): string {
  return b.toString('base64url');
}

function stripLeadingZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** Left-pad an unsigned big-endian integer to `size` bytes; throws when it does not fit. */
export function padTo(b: Buffer, size: number, what: string, code = 'tpm.malformed_public'): Buffer {
  const v = stripLeadingZeros(b);
  if (v.length > size) throw new SigilError(code, `${what} is ${v.length} bytes, more than ${size}`);
  if (v.length === size) return Buffer.from(v);
  return Buffer.concat([Buffer.alloc(size - v.length), v]);
}

export function eccCurve(pub: EccPublic): CurveInfo {
  const c = curveById(pub.curveId);
  if (!c) throw new SigilError('tpm.unsupported_algorithm', `ECC curve 0x${pub.curveId.toString(16)} is not supported (NIST P-256, P-384, P-521)`);
  return c;
}

function exponentBytes(e: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(e >>> 0);
  return stripLeadingZeros(b);
}

interface CachedKey {
  key: KeyObject;
  spki?: Buffer;
  spkiHash?: string;
}

/**
 * Converted keys by public-area bytes. Agents present the same EK/AK on every attestation;
 * creating a KeyObject from JWK costs more than the RSA operation itself. Bounded LRU.
 */
const keyCache = new Map<string, CachedKey>();
const KEY_CACHE_MAX = 4096;

function cached(pub: TpmtPublic): CachedKey {
  const id = pub.type === 'rsa' ? `rsa:${pub.exponent}:${pub.modulus.toString('base64')}` : `ecc:${pub.curveId}:${pub.x.toString('base64')}:${pub.y.toString('base64')}`;
  const hit = keyCache.get(id);
  if (hit) {
    keyCache.delete(id);
    keyCache.set(id, hit);
    return hit;
  }
  const entry: CachedKey = { key: makeKeyObject(pub) };
  if (keyCache.size >= KEY_CACHE_MAX) {
    const oldest = keyCache.keys().next().value;
    if (oldest !== undefined) keyCache.delete(oldest);
  }
  keyCache.set(id, entry);
  return entry;
}

/** node:crypto public KeyObject for an RSA or ECC TPMT_PUBLIC (point validated by OpenSSL). */
export function publicToKeyObject(pub: TpmtPublic): KeyObject {
  return cached(pub).key;
}

function makeKeyObject(pub: TpmtPublic): KeyObject {
  try {
    if (pub.type === 'rsa') {
      return createPublicKey({ key: { kty: 'RSA', n: b64url(stripLeadingZeros(pub.modulus)), e: b64url(exponentBytes(pub.exponent)) }, format: 'jwk' });
    }
    const c = eccCurve(pub);
    const x = padTo(pub.x, c.size, 'ECC x coordinate');
    const y = padTo(pub.y, c.size, 'ECC y coordinate');
    return createPublicKey({ key: { kty: 'EC', crv: c.jwk, x: b64url(x), y: b64url(y) }, format: 'jwk' });
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError('tpm.malformed_public', `public key is not a valid ${pub.type.toUpperCase()} key: ${errorMessage(e)}`, { cause: e });
  }
}

/** DER SubjectPublicKeyInfo of a TPMT_PUBLIC. */
export function publicToSpkiDer(pub: TpmtPublic): Buffer {
  const c = cached(pub);
  c.spki ??= c.key.export({ type: 'spki', format: 'der' });
  return Buffer.from(c.spki);
}

/** Lowercase hex SHA-256 of the SPKI DER (the `tpm:ek_pubhash` value). */
export function spkiHash(pub: TpmtPublic): string {
  const c = cached(pub);
  c.spkiHash ??= digestHex('sha256', publicToSpkiDer(pub));
  return c.spkiHash;
}
