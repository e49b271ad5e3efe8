/**
 * Attack review: the toolkit's time checks compared `at` with `<` / `>` only, so a verification
 * time that is not a number (an Invalid Date, NaN from a bad parse of a peer's timestamp) made
 * every comparison false: an expired or not-yet-valid certificate, and a stale CRL, passed. The
 * attestors guard their own `now` today; the one validity check must not depend on that.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { checkCrl, parseCertificate, parseCrl, validityProblem, verifyChain } from '../../src/x509/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { OID_BC, OID_KU, KU, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue } from '../../src/x509/ext.js';
import { TAG, tlv } from '../../src/x509/der.js';
import { spkiDer } from '../../src/spiffe/keys.js';

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
}

// A self-signed CA valid only during 2020.
const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const NAME = encodeName([['CN', 'expired root']]);
const der = encodeCertificate({
  subjectDer: NAME,
  subjectSpki: spkiDer(key.publicKey),
  serial: Buffer.from([7]),
  notBefore: new Date('2020-01-01T00:00:00Z'),
  notAfter: new Date('2020-12-31T00:00:00Z'),
  extensions: [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign))],
  signerKey: key.privateKey,
});
const cert = parseCertificate(der);

// A CRL by that CA for January 2020.
const ALG = Buffer.from('300a06082a8648ce3d040302', 'hex');
const utc = (s: string): Buffer => tlv(TAG.UTC_TIME, Buffer.from(s, 'latin1'));
const tbs = tlv(TAG.SEQUENCE, Buffer.from([0x02, 0x01, 0x01]), ALG, NAME, utc('200101000000Z'), utc('200201000000Z'));
const crl = parseCrl(tlv(TAG.SEQUENCE, tbs, ALG, tlv(TAG.BIT_STRING, Buffer.from([0]), sign('sha256', tbs, key.privateKey))));

describe('attack: a verification time that is not a number', () => {
  it('controls: the certificate is expired in 2030 and valid in mid-2020; the CRL is stale in 2030', () => {
    expect(codeOf(() => verifyChain([cert], { at: new Date('2030-01-01T00:00:00Z') }))).toBe('x509.expired');
    expect(codeOf(() => verifyChain([cert], { at: new Date('2020-06-01T00:00:00Z'), anchorSelfSigned: true }))).toBe('no error');
    expect(codeOf(() => checkCrl(crl, cert, new Date('2020-01-15T00:00:00Z')))).toBe('no error');
    expect(codeOf(() => checkCrl(crl, cert, new Date('2030-01-01T00:00:00Z')))).toBe('x509.crl_expired');
  });

  for (const [what, at] of [
    ['Invalid Date', new Date('not a date')],
    ['NaN', Number.NaN],
    ['Infinity', Number.POSITIVE_INFINITY],
  ] as const) {
    it(`${what}: verifyChain, validityProblem and checkCrl refuse with x509.bad_time`, () => {
      expect(codeOf(() => verifyChain([cert], { at }))).toBe('x509.bad_time');
      expect(codeOf(() => validityProblem(cert, at))).toBe('x509.bad_time');
      expect(codeOf(() => checkCrl(crl, cert, at))).toBe('x509.bad_time');
    });
  }
});
