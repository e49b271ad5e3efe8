import { describe, expect, it } from 'vitest';
import { generateKeyPairSync } from 'node:crypto';
import { exportJwk } from '../../src/spiffe/keys.js';
import {
  SpiffeBundle,
  certsToPem,
  createCsr,
  generateKey,
  issueX509Svid,
  mintJwtSvid,
  parseCsr,
  validateJwtSvid,
  verifyX509Svid,
  issueCaCertificate,
  pemToDers,
  spkiDer,
  splitConcatenatedDer,
  type JwtAuthority,
} from '../../src/spiffe/index.js';
import { codeOf } from '../support/codes.js';

const NOW = new Date('2030-06-01T12:00:00Z');


function ca(t: 'ec-p256' | 'ec-p384' | 'rsa-2048' = 'ec-p256'): Buffer {
  const k = generateKey(t);
  return issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', notBefore: NOW, notAfter: new Date(NOW.getTime() + 86400_000) });
}

const ca1 = ca('ec-p256');
const ca2 = ca('rsa-2048');
const ca3 = ca('ec-p384');
const j1 = generateKey('ec-p256');
const j2 = generateKey('rsa-2048');
const jwt: JwtAuthority[] = [
  { kid: 'kid-a', publicKey: j1.publicKey },
  { kid: 'kid-b', publicKey: j2.publicKey },
];

function sample(): SpiffeBundle {
  return new SpiffeBundle('example.org', { x509Authorities: [ca1, ca2, ca3], jwtAuthorities: jwt, sequence: 42, refreshHintSeconds: 300 });
}

describe('SpiffeBundle JWKS', () => {
  it('produces the standard shape', () => {
    const j = sample().toJwks();
    expect(j.spiffe_sequence).toBe(42);
    expect(j.spiffe_refresh_hint).toBe(300);
    expect(j.keys).toHaveLength(5);
    const x = j.keys.filter((k) => k.use === 'x509-svid');
    expect(x).toHaveLength(3);
    for (const k of x) {
      expect(k).not.toHaveProperty('kid');
      expect(k.x5c).toHaveLength(1);
    }
    expect(x[0]).toMatchObject({ kty: 'EC', crv: 'P-256', x5c: [ca1.toString('base64')] });
    expect(x[1]).toMatchObject({ kty: 'RSA', e: 'AQAB' });
    expect(x[2]).toMatchObject({ kty: 'EC', crv: 'P-384' });
    const jw = j.keys.filter((k) => k.use === 'jwt-svid');
    expect(jw.map((k) => k.kid)).toEqual(['kid-a', 'kid-b']);
    for (const k of [...x, ...jw]) expect(k).not.toHaveProperty('d');
  });

  it('round-trips through JSON text and objects', () => {
    const b = sample();
    for (const input of [JSON.stringify(b.toJwks()), b.toJwks(), Buffer.from(JSON.stringify(b.toJwks()))]) {
      const r = SpiffeBundle.fromJwks('example.org', input);
      expect(r.trustDomain).toBe('example.org');
      expect(r.sequence).toBe(42);
      expect(r.refreshHintSeconds).toBe(300);
      expect(r.x509Authorities.map((d) => d.toString('hex'))).toEqual([ca1, ca2, ca3].map((d) => d.toString('hex')));
      expect(r.jwtAuthorities.map((a) => a.kid)).toEqual(['kid-a', 'kid-b']);
      expect(spkiDer(r.jwtAuthorities[0]!.publicKey).equals(spkiDer(j1.publicKey))).toBe(true);
      expect(spkiDer(r.jwtAuthorities[1]!.publicKey).equals(spkiDer(j2.publicKey))).toBe(true);
      expect(r.toJwks()).toEqual(b.toJwks());
    }
    const minimal = SpiffeBundle.fromJwks('spiffe://example.org', { keys: [] });
    expect(minimal.trustDomain).toBe('example.org');
    expect(minimal.sequence).toBe(0);
    expect(minimal.refreshHintSeconds).toBeUndefined();
    expect(minimal.toJwks()).toEqual({ keys: [], spiffe_sequence: 0 });
  });

  it('ignores entries with unknown use, unknown key types and x509-svid entries without x5c', () => {
    const j = sample().toJwks();
    const extra = [
      { use: 'sig', kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' },
      { use: 'x509-svid-v2', kty: 'RSA', n: 'AA', e: 'AQAB' },
      { use: 'jwt-svid', kty: 'OKP', crv: 'Ed25519', x: 'AA', kid: 'ed' },
      { use: 'jwt-svid', kty: 'EC', crv: 'P-521', x: 'AA', y: 'AA', kid: 'p521' },
      { use: 'x509-svid', kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' },
      { use: 'x509-svid', kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA', x5c: [] },
    ];
    const r = SpiffeBundle.fromJwks('example.org', { ...j, keys: [...extra, ...j.keys], unknown_top_level: true });
    expect(r.x509Authorities).toHaveLength(3);
    expect(r.jwtAuthorities.map((a) => a.kid)).toEqual(['kid-a', 'kid-b']);
  });

  it('rejects malformed bundles', () => {
    const j = sample().toJwks();
    const x0 = j.keys[0]!;
    const jw0 = j.keys[3]!;
    const cases: [string, unknown][] = [
      ['not JSON', '{"keys": ['],
      ['array', '[]'],
      ['null', 'null'],
      ['no keys', {}],
      ['keys not array', { keys: {} }],
      ['entry not object', { keys: ['x'] }],
      ['entry null', { keys: [null] }],
      ['no use', { keys: [{ kty: 'EC' }] }],
      ['no kty', { keys: [{ use: 'jwt-svid', kid: 'k' }] }],
      ['sequence string', { keys: [], spiffe_sequence: '1' }],
      ['sequence negative', { keys: [], spiffe_sequence: -1 }],
      ['sequence fractional', { keys: [], spiffe_sequence: 1.5 }],
      ['sequence too big', { keys: [], spiffe_sequence: 2 ** 60 }],
      ['refresh hint string', { keys: [], spiffe_refresh_hint: '300' }],
      ['x509 with kid', { keys: [{ ...x0, kid: 'k' }] }],
      ['x509 two certs', { keys: [{ ...x0, x5c: [ca1.toString('base64'), ca2.toString('base64')] }] }],
      ['x509 x5c not array', { keys: [{ ...x0, x5c: ca1.toString('base64') }] }],
      ['x509 x5c not base64', { keys: [{ ...x0, x5c: ['***'] }] }],
      ['x509 x5c base64url', { keys: [{ ...x0, x5c: [ca1.toString('base64url')] }] }],
      ['x509 x5c not a cert', { keys: [{ ...x0, x5c: [Buffer.from('hello world!').toString('base64')] }] }],
      ['x509 key mismatch', { keys: [{ ...x0, x5c: [ca3.toString('base64')] }] }],
      ['x509 key mismatch x', { keys: [{ ...x0, x: jw0.x }] }],
      ['private member d', { keys: [{ ...jw0, d: 'AAAA' }] }],
      ['jwt no kid', { keys: [{ ...jw0, kid: undefined }] }],
      ['jwt empty kid', { keys: [{ ...jw0, kid: '' }] }],
      ['jwt duplicate kid', { keys: [jw0, jw0] }],
      ['jwt bad point', { keys: [{ ...jw0, x: 'AAAA' }] }],
      ['jwt bad member type', { keys: [{ ...jw0, x: 5 }] }],
      ['jwt RSA 1024', { keys: [{ use: 'jwt-svid', kid: 'r', ...exportJwk(generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey) }] }],
    ];
    for (const [name, input] of cases) {
      expect([name, codeOf(() => SpiffeBundle.fromJwks('example.org', input))]).toEqual([name, 'bundle.malformed']);
    }
    expect(codeOf(() => SpiffeBundle.fromJwks('Example.org', { keys: [] }))).toBe('spiffe.id_bad_trust_domain_char');
  });
});

describe('SpiffeBundle PEM and DER', () => {
  it('round-trips PEM', () => {
    const pem = sample().toPem();
    expect(pem.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(3);
    const b = SpiffeBundle.fromPem('example.org', pem);
    expect(b.x509Authorities.map((d) => d.toString('hex'))).toEqual([ca1, ca2, ca3].map((d) => d.toString('hex')));
    expect(b.jwtAuthorities).toEqual([]);
    expect(SpiffeBundle.fromPem('example.org', pem.replace(/\n/g, '\r\n')).x509Authorities).toHaveLength(3);
  });

  it('round-trips concatenated DER', () => {
    const der = sample().toDer();
    expect(der.length).toBe(ca1.length + ca2.length + ca3.length);
    const b = SpiffeBundle.fromDer('example.org', der);
    expect(Buffer.concat(b.x509Authorities).equals(der)).toBe(true);
    expect(codeOf(() => splitConcatenatedDer(der.subarray(0, der.length - 1)))).toBe('bundle.malformed');
    expect(codeOf(() => splitConcatenatedDer(Buffer.concat([der, Buffer.from([0x30, 0x00])])))).toBe('bundle.malformed');
    expect(codeOf(() => splitConcatenatedDer(Buffer.alloc(0)))).toBe('bundle.malformed');
  });

  it('PEM parsing is strict', () => {
    const one = certsToPem([ca1]);
    expect(pemToDers(one)[0]!.equals(ca1)).toBe(true);
    expect(pemToDers(`\n\n${one}\n${one}\n`)).toHaveLength(2);
    const body = one.split('\n').slice(1, -2);
    const bad: [string, string][] = [
      ['empty', ''],
      ['text before', `hello\n${one}`],
      ['text after', `${one}trailer\n`],
      ['private key block', one.replace(/CERTIFICATE/g, 'PRIVATE KEY')],
      ['mismatched end', one.replace('-----END CERTIFICATE-----', '-----END X509 CRL-----')],
      ['unterminated', one.replace('-----END CERTIFICATE-----\n', '')],
      ['bad base64 char', `-----BEGIN CERTIFICATE-----\n${body.join('\n').replace(/^./, '*')}\n-----END CERTIFICATE-----\n`],
      ['base64 wrong length', `-----BEGIN CERTIFICATE-----\n${body.join('\n')}A\n-----END CERTIFICATE-----\n`],
      ['headers inside', `-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n${body.join('\n')}\n-----END CERTIFICATE-----\n`],
      ['not DER', `-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQh\n-----END CERTIFICATE-----\n`],
      ['padding in middle', `-----BEGIN CERTIFICATE-----\nAA==\nAAAA\n-----END CERTIFICATE-----\n`],
    ];
    for (const [name, text] of bad) expect([name, codeOf(() => pemToDers(text))]).toEqual([name, 'pem.malformed']);
  });
});

describe('bundles drive verification', () => {
  it('X.509 and JWT authorities parsed from JWKS verify SVIDs of their trust domain', async () => {
    const caKey = generateKey('ec-p384');
    const caDer = issueCaCertificate({ subjectKey: caKey.publicKey, signerKey: caKey.privateKey, trustDomain: 'example.org', notBefore: NOW, notAfter: new Date(NOW.getTime() + 86400_000) });
    const jwtKey = generateKey('ec-p256');
    const published = new SpiffeBundle('example.org', { x509Authorities: [caDer], jwtAuthorities: [{ kid: 'j1', publicKey: jwtKey.publicKey }], sequence: 1 });
    const received = SpiffeBundle.fromJwks('example.org', JSON.parse(JSON.stringify(published.toJwks())));
    const bundles = new Map([[received.trustDomain, received]]);
    const at = new Date(NOW.getTime() + 60_000);

    const svid = issueX509Svid({ caCertDer: caDer, caKey: caKey.privateKey, subjectSpki: parseCsr(createCsr(generateKey('ec-p256'))).spki, spiffeId: 'spiffe://example.org/a', notBefore: NOW, notAfter: new Date(NOW.getTime() + 3600_000) });
    expect(verifyX509Svid([svid], (td) => bundles.get(td)?.x509Authorities, at).spiffeId.toString()).toBe('spiffe://example.org/a');
    const viaDer = SpiffeBundle.fromDer('example.org', received.toDer());
    expect(verifyX509Svid([svid], () => viaDer.x509Authorities, at).spiffeId.path).toBe('/a');

    const tok = await mintJwtSvid({ privateKey: jwtKey.privateKey, kid: 'j1', spiffeId: 'spiffe://example.org/a', audience: ['b'], notAfter: new Date(NOW.getTime() + 300_000), now: at });
    const v = await validateJwtSvid(tok, { audience: 'b', keysFor: (td) => bundles.get(td)?.jwtAuthorities, now: at });
    expect(v.spiffeId.toString()).toBe('spiffe://example.org/a');
  });
});
