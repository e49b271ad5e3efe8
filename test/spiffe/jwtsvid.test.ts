import { describe, expect, it } from 'vitest';
import { createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';
import { generateKey, mintJwtSvid, validateJwtSvid, type JwtAuthority, type KeyType } from '../../src/spiffe/index.js';
import { codeOfAsync as codeOf } from '../support/codes.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const nowS = Math.floor(NOW.getTime() / 1000);
const es = generateKey('ec-p256');
const es384 = generateKey('ec-p384');
const rsa = generateKey('rsa-2048');
const authorities: JwtAuthority[] = [
  { kid: 'es', publicKey: es.publicKey },
  { kid: 'es384', publicKey: es384.publicKey },
  { kid: 'rsa', publicKey: rsa.publicKey },
];
const keysFor = (td: string): JwtAuthority[] | undefined => (td === 'example.org' ? authorities : undefined);
const opts = { audience: 'spiffe://example.org/db', keysFor, now: NOW };

const b64 = (o: unknown): string => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)).toString('base64url');

/** Sign arbitrary header/claims with node:crypto (to build tokens Sigil would never mint). */
function forge(header: Record<string, unknown>, claims: Record<string, unknown>, key: KeyObject = es.privateKey): string {
  const input = `${b64(header)}.${b64(claims)}`;
  const alg = String(header.alg);
  let sig: Buffer;
  if (alg.startsWith('ES')) sig = sign(`sha${alg.slice(2)}`, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  else if (alg.startsWith('PS')) sig = sign(`sha${alg.slice(2)}`, Buffer.from(input), { key, padding: 6, saltLength: Number(alg.slice(2)) / 8 });
  else sig = sign(`sha${alg.slice(2)}`, Buffer.from(input), key);
  return `${input}.${sig.toString('base64url')}`;
}

const goodClaims = (): Record<string, unknown> => ({ sub: 'spiffe://example.org/web', aud: 'spiffe://example.org/db', exp: nowS + 300, iat: nowS });

describe('mintJwtSvid', () => {
  it.each([
    ['ec-p256', 'ES256'],
    ['ec-p384', 'ES384'],
    ['rsa-2048', 'RS256'],
  ] as [KeyType, string][])('%s: exact header and claims, verifiable by jose', async (t, alg) => {
    const k = t === 'ec-p256' ? es : t === 'ec-p384' ? es384 : rsa;
    const tok = await mintJwtSvid({ privateKey: k.privateKey, kid: 'kid-1', spiffeId: 'spiffe://example.org/web', audience: ['a1'], notAfter: new Date(NOW.getTime() + 300_000), now: NOW });
    const [h, p] = tok.split('.');
    expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg, kid: 'kid-1', typ: 'JWT' });
    expect(Object.keys(JSON.parse(Buffer.from(h!, 'base64url').toString()))).toEqual(['alg', 'kid', 'typ']);
    expect(JSON.parse(Buffer.from(p!, 'base64url').toString())).toEqual({ sub: 'spiffe://example.org/web', aud: 'a1', exp: nowS + 300, iat: nowS });
    const r = await jwtVerify(tok, k.publicKey, { algorithms: [alg], currentDate: NOW, audience: 'a1' });
    expect(r.payload.sub).toBe('spiffe://example.org/web');
  });

  it('uses an aud array for several audiences', async () => {
    const tok = await mintJwtSvid({ privateKey: es.privateKey, kid: 'es', spiffeId: 'spiffe://example.org/web', audience: ['a', 'b'], notAfter: new Date(NOW.getTime() + 60_000), now: NOW });
    expect(JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()).aud).toEqual(['a', 'b']);
    const r = await validateJwtSvid(tok, { ...opts, audience: 'b' });
    expect(r.claims.aud).toEqual(['a', 'b']);
  });

  it('validates its inputs', async () => {
    const base = { privateKey: es.privateKey, kid: 'es', spiffeId: 'spiffe://example.org/web', audience: ['a'], notAfter: new Date(NOW.getTime() + 60_000), now: NOW };
    expect(await codeOf(mintJwtSvid({ ...base, kid: '' }))).toBe('jwtsvid.missing_kid');
    expect(await codeOf(mintJwtSvid({ ...base, audience: [] }))).toBe('jwtsvid.missing_aud');
    expect(await codeOf(mintJwtSvid({ ...base, spiffeId: 'spiffe://Example.org/x' }))).toBe('spiffe.id_bad_trust_domain_char');
    expect(await codeOf(mintJwtSvid({ ...base, notAfter: NOW }))).toBe('jwtsvid.bad_time');
    expect(await codeOf(mintJwtSvid({ ...base, privateKey: es.publicKey }))).toBe('jwtsvid.bad_key');
  });
});

describe('validateJwtSvid', () => {
  it('accepts a minted token and returns the ID, claims and expiry', async () => {
    const tok = await mintJwtSvid({ privateKey: rsa.privateKey, kid: 'rsa', spiffeId: 'spiffe://example.org/web', audience: ['spiffe://example.org/db'], notAfter: new Date(NOW.getTime() + 300_000), now: NOW });
    const r = await validateJwtSvid(tok, opts);
    expect(r.spiffeId.toString()).toBe('spiffe://example.org/web');
    expect(r.expiresAt).toEqual(new Date((nowS + 300) * 1000));
    expect(r.claims.iat).toBe(nowS);
  });

  it('accepts every allowed family: ES256/ES384/RS256-512/PS256-512, typ JWT/JOSE/absent', async () => {
    for (const [alg, k, kid] of [
      ['ES256', es.privateKey, 'es'],
      ['ES384', es384.privateKey, 'es384'],
      ['RS256', rsa.privateKey, 'rsa'],
      ['RS384', rsa.privateKey, 'rsa'],
      ['RS512', rsa.privateKey, 'rsa'],
      ['PS256', rsa.privateKey, 'rsa'],
      ['PS384', rsa.privateKey, 'rsa'],
      ['PS512', rsa.privateKey, 'rsa'],
    ] as [string, KeyObject, string][]) {
      for (const typ of ['JWT', 'JOSE', undefined]) {
        const header: Record<string, unknown> = { alg, kid };
        if (typ) header.typ = typ;
        const r = await validateJwtSvid(forge(header, goodClaims(), k), opts);
        expect(r.spiffeId.path).toBe('/web');
      }
    }
  });

  it('rejects alg none and HS256', async () => {
    const none = `${b64({ alg: 'none', kid: 'es', typ: 'JWT' })}.${b64(goodClaims())}.`;
    expect(await codeOf(validateJwtSvid(none, opts))).toBe('jwtsvid.bad_alg');
    const hsInput = `${b64({ alg: 'HS256', kid: 'es', typ: 'JWT' })}.${b64(goodClaims())}`;
    // HMAC keyed with the public key bytes: the classic key-confusion attack.
    const secret = es.publicKey.export({ type: 'spki', format: 'pem' });
    const hs = `${hsInput}.${createHmac('sha256', secret).update(hsInput).digest('base64url')}`;
    expect(await codeOf(validateJwtSvid(hs, opts))).toBe('jwtsvid.bad_alg');
    for (const alg of ['HS384', 'HS512', 'EdDSA', 'ES256K', 'es256', '', 42]) {
      const t = `${b64({ alg, kid: 'es' })}.${b64(goodClaims())}.AAAA`;
      expect(await codeOf(validateJwtSvid(t, opts))).toBe('jwtsvid.bad_alg');
    }
  });

  it('rejects extra header parameters, a missing kid and a bad typ', async () => {
    for (const extra of [{ jku: 'https://evil' }, { jwk: { kty: 'EC' } }, { x5c: ['AAAA'] }, { crit: ['exp'] }, { cty: 'JWT' }, { b64: false }]) {
      expect(await codeOf(validateJwtSvid(forge({ alg: 'ES256', kid: 'es', typ: 'JWT', ...extra }, goodClaims()), opts))).toBe('jwtsvid.bad_header');
    }
    expect(await codeOf(validateJwtSvid(forge({ alg: 'ES256', typ: 'JWT' }, goodClaims()), opts))).toBe('jwtsvid.missing_kid');
    expect(await codeOf(validateJwtSvid(forge({ alg: 'ES256', kid: '' }, goodClaims()), opts))).toBe('jwtsvid.missing_kid');
    expect(await codeOf(validateJwtSvid(forge({ alg: 'ES256', kid: 7 }, goodClaims()), opts))).toBe('jwtsvid.missing_kid');
    expect(await codeOf(validateJwtSvid(forge({ alg: 'ES256', kid: 'es', typ: 'at+jwt' }, goodClaims()), opts))).toBe('jwtsvid.bad_typ');
  });

  it('requires aud and exp, and a SPIFFE ID subject', async () => {
    const h = { alg: 'ES256', kid: 'es', typ: 'JWT' };
    const { aud: _a, ...noAud } = goodClaims();
    const { exp: _e, ...noExp } = goodClaims();
    const { sub: _s, ...noSub } = goodClaims();
    expect(await codeOf(validateJwtSvid(forge(h, noAud), opts))).toBe('jwtsvid.missing_aud');
    expect(await codeOf(validateJwtSvid(forge(h, noExp), opts))).toBe('jwtsvid.missing_exp');
    expect(await codeOf(validateJwtSvid(forge(h, noSub), opts))).toBe('jwtsvid.bad_subject');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), sub: 'web' }), opts))).toBe('jwtsvid.bad_subject');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), sub: 'spiffe://example.org/a/../b' }), opts))).toBe('jwtsvid.bad_subject');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), exp: String(nowS + 60) }), opts))).toBe('jwtsvid.malformed');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), aud: [] }), opts))).toBe('jwtsvid.malformed');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), aud: [1] }), opts))).toBe('jwtsvid.malformed');
  });

  it('applies the expiry leeway (default 30 s)', async () => {
    const h = { alg: 'ES256', kid: 'es' };
    const tok = forge(h, { ...goodClaims(), exp: nowS - 20 });
    expect((await validateJwtSvid(tok, opts)).spiffeId.path).toBe('/web');
    expect(await codeOf(validateJwtSvid(tok, { ...opts, leewaySeconds: 10 }))).toBe('jwtsvid.expired');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), exp: nowS - 31 }), opts))).toBe('jwtsvid.expired');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), exp: nowS - 3600 }), opts))).toBe('jwtsvid.expired');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), nbf: nowS + 120 }), opts))).toBe('jwtsvid.not_yet_valid');
  });

  it('rejects the wrong audience', async () => {
    const tok = await mintJwtSvid({ privateKey: es.privateKey, kid: 'es', spiffeId: 'spiffe://example.org/web', audience: ['x', 'y'], notAfter: new Date(NOW.getTime() + 60_000), now: NOW });
    expect(await codeOf(validateJwtSvid(tok, opts))).toBe('jwtsvid.audience_mismatch');
  });

  it('looks the key up by kid in the subject’s trust domain', async () => {
    const h = { alg: 'ES256', kid: 'es' };
    expect(await codeOf(validateJwtSvid(forge({ ...h, kid: 'nope' }, goodClaims()), opts))).toBe('jwtsvid.unknown_kid');
    expect(await codeOf(validateJwtSvid(forge(h, { ...goodClaims(), sub: 'spiffe://other.org/web' }), opts))).toBe('jwtsvid.no_bundle');
    // Signed by a key that is not the authority's key.
    const rogue = generateKey('ec-p256');
    expect(await codeOf(validateJwtSvid(forge(h, goodClaims(), rogue.privateKey), opts))).toBe('jwtsvid.bad_signature');
    // alg that does not fit the authority's key type.
    expect(await codeOf(validateJwtSvid(forge({ alg: 'RS256', kid: 'es' }, goodClaims(), rsa.privateKey), opts))).toBe('jwtsvid.key_mismatch');
    expect(await codeOf(validateJwtSvid(forge({ alg: 'ES384', kid: 'es' }, goodClaims(), es384.privateKey), opts))).toBe('jwtsvid.key_mismatch');
    // A token from jose with a foreign key and our kid.
    const ed = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const joseTok = await new SignJWT(goodClaims()).setProtectedHeader({ alg: 'ES256', kid: 'es', typ: 'JWT' }).sign(ed.privateKey);
    expect(await codeOf(validateJwtSvid(joseTok, opts))).toBe('jwtsvid.bad_signature');
  });

  it('rejects tampering and malformed tokens', async () => {
    const tok = await mintJwtSvid({ privateKey: es.privateKey, kid: 'es', spiffeId: 'spiffe://example.org/web', audience: ['spiffe://example.org/db'], notAfter: new Date(NOW.getTime() + 60_000), now: NOW });
    const [h, , s] = tok.split('.');
    const swapped = `${h}.${b64({ ...goodClaims(), sub: 'spiffe://example.org/admin' })}.${s}`;
    expect(await codeOf(validateJwtSvid(swapped, opts))).toBe('jwtsvid.bad_signature');
    for (const bad of ['', 'a.b', 'a.b.c.d', '!!!.e30.AAAA', `${b64('[]')}.${b64('{}')}.AAAA`, `${b64('{')}.e30.AAAA`, `${h}.${b64('"str"')}.AAAA`, 'x'.repeat(20000)]) {
      expect(await codeOf(validateJwtSvid(bad, opts))).toBe('jwtsvid.malformed');
    }
    expect(await codeOf(validateJwtSvid(`${h}.${b64(goodClaims())}.`, opts))).toBe('jwtsvid.malformed');
  });
});
