/**
 * Attack review: OBJECT IDENTIFIERs had no length bound, and the refusals name them. A presented
 * certificate with a critical extension (or a signature algorithm, or a key algorithm) whose OID
 * is 30 000 one-octet arcs made a 60 000-character error message for every refused handshake.
 * Real OIDs are a few dozen octets; anything over 128 is refused as malformed.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { verifyX509Svid, KU } from '../../src/spiffe/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { parseCertificate } from '../../src/x509/cert.js';
import { OID_BC, OID_KU, OID_SAN, encodeBasicConstraintsValue, encodeExtension, encodeExtensionRaw, encodeKeyUsageValue, encodeSanExtensionValue } from '../../src/x509/ext.js';
import { spkiDer } from '../../src/spiffe/keys.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const key = generateKeyPairSync('ec', { namedCurve: 'P-256' });

function leafWith(extra: Buffer): Buffer {
  return encodeCertificate({
    subjectDer: encodeName([['O', 'leaf']]),
    subjectSpki: spkiDer(key.publicKey),
    serial: Buffer.from([5]),
    notBefore: new Date(NOW.getTime() - 60_000),
    notAfter: new Date(NOW.getTime() + 60_000),
    extensions: [
      encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)),
      encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature)),
      encodeExtension(OID_SAN, true, encodeSanExtensionValue(['spiffe://example.org/w'], [])),
      extra,
    ],
    signerKey: key.privateKey,
  });
}

function refusal(f: () => unknown): { code: string; length: number } {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return { code: (e as SigilError).code, length: (e as SigilError).message.length };
  }
  return { code: 'no error', length: 0 };
}

describe('attack: very long OBJECT IDENTIFIERs', () => {
  it('control: a critical extension with an ordinary unknown OID is refused by name', () => {
    const der = leafWith(encodeExtensionRaw(Buffer.from('2b0601040182371508', 'hex'), true, Buffer.from([0x05, 0x00])));
    const r = refusal(() => verifyX509Svid([der], () => [der], NOW));
    expect(r.code).toBe('x509svid.unhandled_critical_extension');
  });

  it('a 30 000-octet extension OID: malformed, with a short message', () => {
    const der = leafWith(encodeExtensionRaw(Buffer.concat([Buffer.from([0x2b]), Buffer.alloc(30_000, 1)]), true, Buffer.from([0x05, 0x00])));
    const r = refusal(() => verifyX509Svid([der], () => [der], NOW));
    expect(r.length).toBeLessThan(1024);
    expect(r.code).toBe('x509svid.malformed');
    expect(refusal(() => parseCertificate(der)).code).toBe('x509.malformed');
  });
});
