/**
 * Attack review: parseCrl reads crlExtensions [0] without checking its shape. An empty [0]
 * wrapper, an empty Extension SEQUENCE, or an extension whose first element is not an OID made
 * it index `undefined` and throw a TypeError (not a SigilError: a stack trace for whoever handed
 * in the CRL) before any signature is looked at.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { TAG, tlv } from '../../src/x509/der.js';
import { parseCrl } from '../../src/x509/crl.js';

const ALG = Buffer.from('300a06082a8648ce3d040302', 'hex'); // ecdsa-with-SHA256
const ISSUER = Buffer.from('3010310e300c060355040a0c05536967696c', 'hex');
const utc = (s: string): Buffer => tlv(TAG.UTC_TIME, Buffer.from(s, 'latin1'));

function crlWith(crlExtensions: Buffer | undefined): Buffer {
  const parts = [Buffer.from([0x02, 0x01, 0x01]), ALG, ISSUER, utc('300101000000Z'), utc('300201000000Z')];
  if (crlExtensions) parts.push(crlExtensions);
  const tbs = tlv(TAG.SEQUENCE, ...parts);
  return tlv(TAG.SEQUENCE, tbs, ALG, tlv(TAG.BIT_STRING, Buffer.from([0]), Buffer.from('3006020101020101', 'hex')));
}

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e, String(e)).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
}

const CRL_NUMBER = tlv(TAG.SEQUENCE, tlv(TAG.OID, Buffer.from('551d14', 'hex')), tlv(TAG.OCTET_STRING, Buffer.from([0x02, 0x01, 0x05])));

describe('attack: CRL extensions of the wrong shape', () => {
  it('a well-formed crlExtensions field parses (control)', () => {
    expect(codeOf(() => parseCrl(crlWith(tlv(0xa0, tlv(TAG.SEQUENCE, CRL_NUMBER)))))).toBe('no error');
  });

  const cases: [string, Buffer][] = [
    ['empty [0] wrapper', tlv(0xa0)],
    ['[0] wrapping an empty Extensions', tlv(0xa0, tlv(TAG.SEQUENCE))],
    ['an empty Extension SEQUENCE', tlv(0xa0, tlv(TAG.SEQUENCE, tlv(TAG.SEQUENCE)))],
    ['[0] wrapping a primitive', tlv(0xa0, tlv(TAG.OCTET_STRING, Buffer.from([1])))],
    ['Extension without extnValue', tlv(0xa0, tlv(TAG.SEQUENCE, tlv(TAG.SEQUENCE, tlv(TAG.OID, Buffer.from('551d14', 'hex')))))],
    ['Extension whose first element is not an OID', tlv(0xa0, tlv(TAG.SEQUENCE, tlv(TAG.SEQUENCE, Buffer.from([0x05, 0x00]), tlv(TAG.OCTET_STRING, Buffer.from([1])))))],
    ['two Extensions values in [0]', tlv(0xa0, tlv(TAG.SEQUENCE, CRL_NUMBER), tlv(TAG.SEQUENCE, CRL_NUMBER))],
  ];
  for (const [what, ext] of cases) {
    it(`${what}: x509.crl_malformed`, () => {
      expect(codeOf(() => parseCrl(crlWith(ext)))).toBe('x509.crl_malformed');
    });
  }
});
