/**
 * Attack review 2: SpiffeBundle.fromJwks capped a bundle's bytes (4 MiB) but not its number of
 * keys. A JWKS of small jwt-svid entries fits about 26,000 keys in 4 MiB, and each costs a key
 * import (createPublicKey), so one parse took 1–3 s of the event loop — for the agent's persisted
 * bundle, the bundle the verifier sends, and any caller handing in a bundle. Passing the parsed
 * object (not text) skipped even the byte cap. The number of entries in `keys` is now capped
 * (BUNDLE_MAX_KEYS) before any entry is looked at: `bundle.too_many_keys`.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BUNDLE_MAX_JSON_BYTES, BUNDLE_MAX_KEYS, SpiffeBundle } from '../../src/spiffe/bundle.js';
import { certsToPem, generateKey, issueCaCertificate } from '../../src/spiffe/index.js';
import { codeOf } from '../support/codes.js';

const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = publicKey.export({ format: 'jwk' });
const jwtEntry = (i: number): Record<string, unknown> => ({ use: 'jwt-svid', kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, kid: `k${i}` });

/** As many jwt-svid keys as fit under the byte cap. */
function floodJwks(): { text: string; count: number } {
  const one = JSON.stringify(jwtEntry(100_000)).length + 1;
  const count = Math.floor((BUNDLE_MAX_JSON_BYTES - 64) / one);
  const text = JSON.stringify({ keys: Array.from({ length: count }, (_, i) => jwtEntry(i)), spiffe_sequence: 1 });
  return { text, count };
}

function timed<T>(f: () => T): { ms: number; value: T } {
  const t0 = performance.now();
  const value = f();
  return { ms: performance.now() - t0, value };
}

describe('attack: a bundle of tens of thousands of keys within the byte cap', () => {
  const flood = floodJwks();

  it('the flood fits the byte cap (the size check alone does not stop it)', () => {
    expect(Buffer.byteLength(flood.text)).toBeLessThanOrEqual(BUNDLE_MAX_JSON_BYTES);
    expect(flood.count).toBeGreaterThan(20_000);
  });

  it('as text: refused with bundle.too_many_keys, quickly (no key is imported)', () => {
    const r = timed(() => codeOf(() => SpiffeBundle.fromJwks('example.org', flood.text)));
    expect(r.value).toBe('bundle.too_many_keys');
    // JSON.parse of 4 MiB is all that is left; the old code spent 1-3 s importing the keys.
    expect(r.ms).toBeLessThan(750);
  });

  it('as a parsed object (no byte cap applies): refused the same way', () => {
    const doc = JSON.parse(flood.text) as unknown;
    const r = timed(() => codeOf(() => SpiffeBundle.fromJwks('example.org', doc)));
    expect(r.value).toBe('bundle.too_many_keys');
    expect(r.ms).toBeLessThan(250);
  });

  it('entries a parser would ignore (unknown use) count too: the cap is on the array', () => {
    const keys = Array.from({ length: BUNDLE_MAX_KEYS + 1 }, () => ({ use: 'other', kty: 'EC' }));
    expect(codeOf(() => SpiffeBundle.fromJwks('example.org', { keys }))).toBe('bundle.too_many_keys');
  });

  it('control: exactly BUNDLE_MAX_KEYS keys still parse, in bounded time, and the cap is far above a real trust domain', () => {
    expect(BUNDLE_MAX_KEYS).toBeGreaterThanOrEqual(256);
    const keys = Array.from({ length: BUNDLE_MAX_KEYS }, (_, i) => jwtEntry(i));
    const r = timed(() => SpiffeBundle.fromJwks('example.org', { keys }));
    expect(r.value.jwtAuthorities).toHaveLength(BUNDLE_MAX_KEYS);
    expect(r.ms).toBeLessThan(2000);
  });

  it('PEM and concatenated DER bundles are held to the same count', () => {
    const k = generateKey('ec-p256');
    const now = new Date('2030-01-01T00:00:00Z');
    const ca = issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', notBefore: now, notAfter: new Date(now.getTime() + 86_400_000) });
    const many = Array.from({ length: BUNDLE_MAX_KEYS + 1 }, () => ca);
    expect(codeOf(() => SpiffeBundle.fromPem('example.org', certsToPem(many)))).toBe('bundle.too_many_keys');
    expect(codeOf(() => SpiffeBundle.fromDer('example.org', Buffer.concat(many)))).toBe('bundle.too_many_keys');
    expect(SpiffeBundle.fromPem('example.org', certsToPem([ca, ca])).x509Authorities).toHaveLength(2);
    expect(SpiffeBundle.fromDer('example.org', Buffer.concat([ca, ca])).x509Authorities).toHaveLength(2);
  });
});
