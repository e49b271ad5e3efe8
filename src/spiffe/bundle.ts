/**
 * SPIFFE bundles (SPIFFE Trust Domain and Bundle standard §4, X509-SVID §6, JWT-SVID §6):
 * a JWK Set whose entries have `use` "x509-svid" (one CA certificate in `x5c`, no `kid`) or
 * "jwt-svid" (a public key with a `kid`), plus `spiffe_sequence` and `spiffe_refresh_hint`.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { parseCertificate } from './cert.js';
import { readTlv } from './der.js';
import { parseTrustDomain } from './id.js';
import { exportJwk, keyFamilyOf } from './keys.js';
import { certsToPem, pemToDers } from './pem.js';
import type { JwtAuthority } from './jwtsvid.js';

export const BUNDLE_MAX_JSON_BYTES = 4 * 1024 * 1024;
/**
 * Most entries a bundle may hold (JWKS `keys`, PEM or DER certificates). A trust domain publishes
 * a handful (its CAs and JWT keys across a rotation or two; federation takes at most 64), while
 * each entry costs a certificate parse or key import: ~26,000 small JWT keys fit in the byte cap
 * and took seconds to parse. Checked before any entry is looked at.
 */
export const BUNDLE_MAX_KEYS = 1024;
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

export interface SpiffeBundleJwks {
  keys: Record<string, unknown>[];
  spiffe_sequence?: number;
  spiffe_refresh_hint?: number;
}

function bad(msg: string): never {
  throw new SigilError('bundle.malformed', msg);
}

function checkCount(n: number, what: string): void {
  if (n > BUNDLE_MAX_KEYS) throw new SigilError('bundle.too_many_keys', `bundle holds ${n} ${what}; at most ${BUNDLE_MAX_KEYS} are accepted`);
}

function publicJwkOf(k: KeyObject): Record<string, string> {
  const j = exportJwk(k) as Record<string, unknown>;
  const out: Record<string, string> = {};
  for (const m of ['kty', 'crv', 'x', 'y', 'n', 'e']) if (typeof j[m] === 'string') out[m] = j[m] as string;
  return out;
}

function jwkOfCert(der: Buffer): Record<string, string> {
  const c = parseCertificate(der);
  if (c.spkiInfo.jwk) return { ...c.spkiInfo.jwk };
  return publicJwkOf(createPublicKey({ key: c.spki, format: 'der', type: 'spki' }));
}

function isSupportedKeyType(e: Record<string, unknown>): boolean {
  if (e.kty === 'RSA') return true;
  return e.kty === 'EC' && (e.crv === 'P-256' || e.crv === 'P-384');
}

function strictBase64(s: string, what: string): Buffer {
  if (s.length === 0 || s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) bad(`${what} is not standard base64`);
  const b = Buffer.from(s, 'base64');
  if (b.toString('base64') !== s) bad(`${what} is not canonical base64`);
  return b;
}

function optionalNonNegInt(v: unknown, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(`${name} must be a non-negative integer (within 2^53)`);
  return v;
}

export class SpiffeBundle {
  readonly trustDomain: string;
  x509Authorities: Buffer[];
  jwtAuthorities: JwtAuthority[];
  sequence: number;
  refreshHintSeconds?: number;

  constructor(
    trustDomain: string,
    init: { x509Authorities?: Buffer[]; jwtAuthorities?: JwtAuthority[]; sequence?: number; refreshHintSeconds?: number } = {},
  ) {
    this.trustDomain = parseTrustDomain(trustDomain);
    this.x509Authorities = init.x509Authorities ?? [];
    this.jwtAuthorities = init.jwtAuthorities ?? [];
    this.sequence = init.sequence ?? 0;
    if (init.refreshHintSeconds !== undefined) this.refreshHintSeconds = init.refreshHintSeconds;
  }

  /** JWK Set per the SPIFFE bundle format. */
  toJwks(): SpiffeBundleJwks {
    const keys: Record<string, unknown>[] = [];
    for (const der of this.x509Authorities) keys.push({ use: 'x509-svid', ...jwkOfCert(der), x5c: [der.toString('base64')] });
    for (const a of this.jwtAuthorities) {
      if (typeof a.kid !== 'string' || a.kid.length === 0) throw new SigilError('bundle.malformed', 'JWT authority without a kid');
      keys.push({ use: 'jwt-svid', ...publicJwkOf(a.publicKey), kid: a.kid });
    }
    const out: SpiffeBundleJwks = { keys, spiffe_sequence: this.sequence };
    if (this.refreshHintSeconds !== undefined) out.spiffe_refresh_hint = this.refreshHintSeconds;
    return out;
  }

  /**
   * Parse a bundle JWK Set (object or JSON text). Entries with an unknown `use`, an unknown key
   * type, or (x509-svid) no `x5c` are ignored as the standards require; anything malformed
   * (wrong types, private key members, x509-svid with a `kid` or several certificates, a
   * certificate whose key differs from the JWK members, jwt-svid without `kid`, duplicate kid)
   * is rejected with `bundle.malformed`; more than BUNDLE_MAX_KEYS entries with `bundle.too_many_keys`.
   */
  static fromJwks(trustDomain: string, json: unknown): SpiffeBundle {
    let doc = json;
    if (typeof doc === 'string' || doc instanceof Uint8Array) {
      // In bytes, and before decoding (a UTF-16 length undercounts multi-byte characters).
      const size = typeof doc === 'string' ? Buffer.byteLength(doc, 'utf8') : doc.byteLength;
      if (size > BUNDLE_MAX_JSON_BYTES) bad(`bundle JSON is larger than ${BUNDLE_MAX_JSON_BYTES} bytes`);
      const text = typeof doc === 'string' ? doc : Buffer.from(doc.buffer, doc.byteOffset, doc.byteLength).toString('utf8');
      try {
        doc = JSON.parse(text);
      } catch (e) {
        bad(`bundle is not valid JSON: ${(e as Error).message}`);
      }
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) bad('bundle must be a JSON object');
    const o = doc as Record<string, unknown>;
    if (!Array.isArray(o.keys)) bad('bundle "keys" must be an array');
    checkCount(o.keys.length, 'keys');
    const sequence = optionalNonNegInt(o.spiffe_sequence, 'spiffe_sequence') ?? 0;
    const refreshHint = optionalNonNegInt(o.spiffe_refresh_hint, 'spiffe_refresh_hint');
    const x509: Buffer[] = [];
    const jwt: JwtAuthority[] = [];
    const kids = new Set<string>();
    o.keys.forEach((entry: unknown, i: number) => {
      const where = `keys[${i}]`;
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) bad(`${where} is not an object`);
      const e = entry as Record<string, unknown>;
      if (typeof e.use !== 'string') bad(`${where} has no "use"`);
      if (typeof e.kty !== 'string') bad(`${where} has no "kty"`);
      for (const m of PRIVATE_MEMBERS) if (m in e) bad(`${where} contains private key member "${m}"`);
      if (e.use !== 'x509-svid' && e.use !== 'jwt-svid') return; // unknown use: ignored (bundle standard §4.2.2)
      if (!isSupportedKeyType(e)) return; // unknown key type: ignored (bundle standard §4.2.1)
      if (e.use === 'x509-svid') {
        if ('kid' in e) bad(`${where}: x509-svid entries must not have a kid`);
        if (e.x5c === undefined) return; // X509-SVID §6.2: entries without x5c are ignored
        if (!Array.isArray(e.x5c)) bad(`${where}: x5c must be an array`);
        if (e.x5c.length === 0) return;
        if (e.x5c.length !== 1) bad(`${where}: x5c must hold exactly one certificate, found ${e.x5c.length}`);
        if (typeof e.x5c[0] !== 'string') bad(`${where}: x5c[0] must be a string`);
        const der = strictBase64(e.x5c[0], `${where}.x5c[0]`);
        let certJwk: Record<string, string>;
        try {
          certJwk = jwkOfCert(der);
        } catch (err) {
          bad(`${where}: x5c certificate is invalid: ${(err as Error).message}`);
        }
        for (const m of ['kty', 'crv', 'x', 'y', 'n', 'e']) {
          if (certJwk[m] !== e[m]) bad(`${where}: JWK member "${m}" does not match the x5c certificate's key`);
        }
        x509.push(der);
        return;
      }
      // jwt-svid
      if (typeof e.kid !== 'string' || e.kid.length === 0) bad(`${where}: jwt-svid entries must have a kid`);
      if (kids.has(e.kid)) bad(`${where}: duplicate kid "${e.kid}"`);
      kids.add(e.kid);
      const pub: Record<string, unknown> = { kty: e.kty };
      for (const m of ['crv', 'x', 'y', 'n', 'e']) {
        if (e[m] !== undefined) {
          if (typeof e[m] !== 'string' || !/^[A-Za-z0-9_-]+$/.test(e[m] as string)) bad(`${where}: JWK member "${m}" is not base64url`);
          pub[m] = e[m];
        }
      }
      let key: KeyObject;
      try {
        key = createPublicKey({ key: pub as JsonWebKey, format: 'jwk' });
        keyFamilyOf(key);
      } catch (err) {
        bad(`${where}: invalid jwt-svid public key: ${(err as Error).message}`);
      }
      jwt.push({ kid: e.kid, publicKey: key });
    });
    const init: { x509Authorities: Buffer[]; jwtAuthorities: JwtAuthority[]; sequence: number; refreshHintSeconds?: number } = {
      x509Authorities: x509,
      jwtAuthorities: jwt,
      sequence,
    };
    if (refreshHint !== undefined) init.refreshHintSeconds = refreshHint;
    return new SpiffeBundle(trustDomain, init);
  }

  /** X.509 authorities as PEM CERTIFICATE blocks. */
  toPem(): string {
    return certsToPem(this.x509Authorities);
  }

  /** A bundle holding the X.509 authorities in `text` (strict PEM, certificates only). */
  static fromPem(trustDomain: string, text: string): SpiffeBundle {
    const ders = pemToDers(text);
    checkCount(ders.length, 'certificates');
    for (const d of ders) parseCertificate(d);
    return new SpiffeBundle(trustDomain, { x509Authorities: ders });
  }

  /** X.509 authorities as concatenated DER (the Workload API's bundle encoding). */
  toDer(): Buffer {
    return Buffer.concat(this.x509Authorities);
  }

  /** Split concatenated DER certificates (as the Workload API sends them). */
  static fromDer(trustDomain: string, der: Uint8Array): SpiffeBundle {
    return new SpiffeBundle(trustDomain, { x509Authorities: splitConcatenatedDer(der) });
  }
}

/** Split concatenated DER elements, each parsed as a certificate (at most BUNDLE_MAX_KEYS). */
export function splitConcatenatedDer(der: Uint8Array): Buffer[] {
  const out: Buffer[] = [];
  let p = 0;
  if (der.length === 0) bad('no certificates');
  while (p < der.length) {
    checkCount(out.length + 1, 'certificates or more');
    const t = readTlv(der, p, der.length, 'bundle.malformed');
    const one = Buffer.from(der.subarray(t.start, t.end));
    try {
      parseCertificate(one);
    } catch (e) {
      bad(`certificate #${out.length}: ${(e as Error).message}`);
    }
    out.push(one);
    p = t.end;
  }
  return out;
}
