/**
 * Attack review: the strict DER walk stops at an extension's OCTET STRING, and the decoders of
 * the extensions that decide trust read their contents loosely. keyUsage read every bit of its
 * last octet, padding included: "03 02 07 84" (one named bit, digitalSignature, and the rest
 * padding that DER requires to be zero) came out as digitalSignature + keyCertSign, a CA to Sigil
 * and not to any DER reader. basicConstraints took a BOOLEAN 01 as TRUE and a padded pathLen.
 * Outside the TPM EK (BER) path these must be refused like the rest of the certificate.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseCertificate, parseCertificateAnyKey } from '../../src/x509/cert.js';
import { OID_BC, OID_EKU, OID_KU, OID_SAN, encodeExtension } from '../../src/x509/ext.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { spkiDer } from '../../src/spiffe/keys.js';

const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });

function certWith(exts: Buffer[]): Buffer {
  return encodeCertificate({
    subjectDer: encodeName([['CN', 'odd CA']]),
    subjectSpki: spkiDer(key.publicKey),
    serial: Buffer.from([9]),
    notBefore: new Date('2025-01-01T00:00:00Z'),
    notAfter: new Date('2035-01-01T00:00:00Z'),
    extensions: exts,
    signerKey: key.privateKey,
  });
}

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
}

const BC_CA = encodeExtension(OID_BC, true, Buffer.from('30030101ff', 'hex'));
const hex = (h: string): Buffer => Buffer.from(h, 'hex');

describe('attack: non-DER contents of the extensions that decide trust', () => {
  it('controls: canonical values parse', () => {
    const c = parseCertificate(certWith([BC_CA, encodeExtension(OID_KU, true, hex('03020204'))]));
    expect(c.basicConstraints?.ca).toBe(true);
    expect(c.keyUsage?.flags).toBe(1 << 5); // keyCertSign
  });

  const cases: [string, Buffer[]][] = [
    ['keyUsage with keyCertSign hidden in the padding bits', [BC_CA, encodeExtension(OID_KU, true, hex('03020784'))]],
    ['basicConstraints cA as BOOLEAN 01', [encodeExtension(OID_BC, true, hex('3003010101'))]],
    ['basicConstraints pathLen with a leading zero octet', [encodeExtension(OID_BC, true, hex('30070101ff02020005'))]],
    ['extKeyUsage OID with a non-minimal arc', [BC_CA, encodeExtension(OID_EKU, false, hex('300b06092b8006010505070301'))]],
    ['subjectAltName with a constructed IA5String inside a directoryName', [BC_CA, encodeExtension(OID_SAN, false, hex('3016a41430123110300e0603550403360716056162636465'))]],
  ];
  for (const [what, exts] of cases) {
    it(`${what}: x509.malformed (strict), still read under BER`, () => {
      const der = certWith(exts);
      expect(codeOf(() => parseCertificate(der))).toBe('x509.malformed');
      expect(codeOf(() => parseCertificateAnyKey(der, { ber: true }))).toBe('no error');
    });
  }
});
