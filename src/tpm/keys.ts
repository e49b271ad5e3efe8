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

/**
 * The entry last found for a public area object, with a copy of the key bytes it was found by.
 * Callers hand in the same (memoized, frozen) area several times per attestation, and building the
 * text key (base64 of the modulus, then hashing it) cost more than the lookup saves. A hit is
 * still decided by the key bytes: the copy must equal the area's current ones, else the text-keyed
 * cache decides as before. Entries live only as long as their area objects.
 */
interface AreaHit {
  entry: CachedKey;
  type: TpmtPublic['type'];
  /** RSA: the exponent; ECC: the curve ID. */
  param: number;
  /** RSA: the modulus; ECC: x. */
  a: Buffer;
  /** ECC: y (empty for RSA). */
  b: Buffer;
}
const byArea = new WeakMap<TpmtPublic, AreaHit>();

function sameKeyBytes(hit: AreaHit, pub: TpmtPublic): boolean {
  if (pub.type === 'rsa') return hit.type === 'rsa' && hit.param === pub.exponent && hit.a.equals(pub.modulus);
  return hit.type === 'ecc' && hit.param === pub.curveId && hit.a.equals(pub.x) && hit.b.equals(pub.y);
}

function cached(pub: TpmtPublic): CachedKey {
  const seen = byArea.get(pub);
  if (seen !== undefined && sameKeyBytes(seen, pub)) return seen.entry;
  const entry = cachedByText(pub);
  byArea.set(
    pub,
    pub.type === 'rsa'
      ? { entry, type: 'rsa', param: pub.exponent, a: Buffer.from(pub.modulus), b: Buffer.alloc(0) }
      : { entry, type: 'ecc', param: pub.curveId, a: Buffer.from(pub.x), b: Buffer.from(pub.y) },
  );
  return entry;
}

function cachedByText(pub: TpmtPublic): CachedKey {
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
