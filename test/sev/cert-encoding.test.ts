/**
 * Certificate encoding rules the SEV attestor gets from the X.509 toolkit (src/x509/): an empty
 * extensions SEQUENCE (RFC 5280: SIZE (1..MAX)) and a PEM block carrying bytes after its
 * certificate are refused with sev.cert_malformed. Both were accepted before the toolkit.
 */
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate, Extensions } from '@peculiar/asn1-x509';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseSevCert, pemToDerList } from '../../src/sev/certs.js';
import { derToPem } from '../../src/x509/pem.js';
import { makeSnpTestChain } from '../support/sev-synthetic.js';

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'accepted';
  } catch (e) {
    return e instanceof SigilError ? e.code : `non-sigil: ${String(e)}`;
  }
}

const milan = makeSnpTestChain('milan', { keyTag: 'encoding' });

describe('SEV certificate encoding', () => {
  it('the synthetic chain parses as it is', () => {
    expect(codeOf(() => parseSevCert(milan.intermediate, 'ASK'))).toBe('accepted');
    expect(pemToDerList(derToPem(milan.ark, 'CERTIFICATE'), 'chain')[0]!.equals(milan.ark)).toBe(true);
  });

  it('refuses a certificate whose extensions field is an empty SEQUENCE', () => {
    const c = AsnConvert.parse(milan.intermediate, Certificate);
    c.tbsCertificate.extensions = new Extensions([]);
    const der = Buffer.from(AsnConvert.serialize(c));
    expect(codeOf(() => parseSevCert(der, 'ASK'))).toBe('sev.cert_malformed');
  });

  it('refuses a PEM CERTIFICATE block with bytes after the certificate', () => {
    const pem = derToPem(Buffer.concat([milan.ark, Buffer.from([0x05, 0x00])]), 'CERTIFICATE');
    expect(codeOf(() => pemToDerList(pem, 'chain'))).toBe('sev.cert_malformed');
  });
});
