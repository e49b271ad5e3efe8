/**
 * Attack review: name constraints are not implemented, and only a *critical* nameConstraints
 * extension made a signing certificate unacceptable. RFC 5280 requires CAs to mark it critical,
 * but many issue it non-critical; other verifiers still enforce it. An intermediate the upstream
 * meant to confine (here: permitted URI host other.org only) signed an SVID for
 * spiffe://example.org/… and Sigil accepted it, silently ignoring the constraint. A signing
 * certificate that carries nameConstraints at all must be refused while Sigil cannot apply it.
 */
import { describe, expect, it } from 'vitest';
import { generateKey, issueCaCertificate, issueX509Svid, parseCertificate, spkiDer, verifyX509Svid, KU } from '../../src/spiffe/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { OID_BC, OID_KU, encodeBasicConstraintsValue, encodeExtension, encodeExtensionRaw, encodeKeyUsageValue } from '../../src/x509/ext.js';
import { TAG, tlv } from '../../src/x509/der.js';
import { codeOf } from '../support/codes.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const DAY = 86_400_000;

describe('attack: a non-critical nameConstraints on an SVID intermediate', () => {
  const rootKey = generateKey('ec-p256');
  const root = issueCaCertificate({ subjectKey: rootKey.publicKey, signerKey: rootKey.privateKey, trustDomain: 'example.org', commonName: 'root', notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 30 * DAY) });
  const bundleFor = (td: string): Buffer[] | undefined => (td === 'example.org' ? [root] : undefined);
  // NameConstraints { permittedSubtrees [0] { GeneralSubtree { uniformResourceIdentifier "other.org" } } }
  const nc = tlv(TAG.SEQUENCE, tlv(0xa0, tlv(TAG.SEQUENCE, tlv(0x86, Buffer.from('other.org', 'latin1')))));

  function chainWith(critical: boolean | undefined): Buffer[] {
    const k = generateKey('ec-p256');
    const exts = [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign))];
    if (critical !== undefined) exts.push(encodeExtensionRaw(Buffer.from('551d1e', 'hex'), critical, nc));
    const mid = encodeCertificate({
      issuerDer: parseCertificate(root).subjectDer,
      subjectDer: encodeName([['CN', 'constrained intermediate']]),
      subjectSpki: spkiDer(k.publicKey),
      serial: Buffer.from([0x11]),
      notBefore: new Date(NOW.getTime() - DAY),
      notAfter: new Date(NOW.getTime() + 10 * DAY),
      extensions: exts,
      signerKey: rootKey.privateKey,
    });
    const wk = generateKey('ec-p256');
    const leaf = issueX509Svid({ caCertDer: mid, caKey: k.privateKey, subjectSpki: spkiDer(wk.publicKey), spiffeId: 'spiffe://example.org/outside', notBefore: new Date(NOW.getTime() - 60_000), notAfter: new Date(NOW.getTime() + 3_600_000) });
    return [leaf, mid];
  }

  it('control: the same intermediate without nameConstraints verifies', () => {
    expect(codeOf(() => verifyX509Svid(chainWith(undefined), bundleFor, NOW))).toBe('no error');
  });

  it('critical nameConstraints: refused (as before)', () => {
    expect(codeOf(() => verifyX509Svid(chainWith(true), bundleFor, NOW))).toBe('x509svid.unhandled_critical_extension');
  });

  it('non-critical nameConstraints excluding the leaf: refused, not ignored', () => {
    expect(codeOf(() => verifyX509Svid(chainWith(false), bundleFor, NOW))).toBe('x509svid.bad_signing_cert');
  });
});
