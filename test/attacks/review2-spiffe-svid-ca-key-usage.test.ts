/**
 * Attack review 2: verifyX509Svid accepted a signing certificate (intermediate or bundle
 * authority) with basicConstraints cA=TRUE and no keyUsage extension at all. The X509-SVID
 * standard §4.3: "The key usage extension MUST be set on all SVIDs" and "SVID signing certificates
 * MUST set keyCertSign" (RFC 5280 §4.2.1.3 likewise wants keyUsage on every CA certificate). A key
 * certified as a CA for some other purpose, without any usage restriction, could then mint SVIDs.
 * Now refused (`x509svid.bad_signing_cert`); issuing under such a CA is refused too
 * (`x509svid.issuer_not_ca`), since the SVIDs would not verify. The vendor chains (Nitro, SEV-SNP,
 * TDX, TPM EK) keep their own rules: the shared toolkit's checkCanIssue is unchanged.
 */
import { describe, expect, it } from 'vitest';
import { generateKey, issueCaCertificate, issueX509Svid, parseCertificate, spkiDer, verifyX509Svid } from '../../src/spiffe/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { KU, OID_BC, OID_KU, OID_SAN, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue, encodeSanExtensionValue } from '../../src/x509/ext.js';
import { checkCanIssue } from '../../src/x509/chain.js';
import { codeOf } from '../support/codes.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const DAY = 86_400_000;
const from = new Date(NOW.getTime() - DAY);
const until = new Date(NOW.getTime() + 10 * DAY);

type Key = ReturnType<typeof generateKey>;

/** A CA certificate for example.org, with keyUsage `usage` (undefined = no keyUsage extension). */
function ca(key: Key, usage: number | undefined, issuer?: { der: Buffer; key: Key }, cn = issuer ? 'intermediate' : 'root'): Buffer {
  const exts = [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true))];
  if (usage !== undefined) exts.push(encodeExtension(OID_KU, true, encodeKeyUsageValue(usage)));
  exts.push(encodeExtension(OID_SAN, false, encodeSanExtensionValue(['spiffe://example.org'], [])));
  const subjectDer = encodeName([['O', 'example.org'], ['CN', cn]]);
  return encodeCertificate({
    ...(issuer ? { issuerDer: parseCertificate(issuer.der).subjectDer } : {}),
    subjectDer,
    subjectSpki: spkiDer(key.publicKey),
    serial: Buffer.from([issuer ? 0x22 : 0x21]),
    notBefore: from,
    notAfter: until,
    extensions: exts,
    signerKey: (issuer?.key ?? key).privateKey,
  });
}

/** A well-formed SVID leaf signed by `signer` (built directly: issuance would refuse the CA). */
function leafUnder(signerDer: Buffer, signerKey: Key, cn: string): Buffer {
  const wk = generateKey('ec-p256');
  const okCa = ca(signerKey, KU.keyCertSign, undefined, cn); // same key and name, with keyUsage: only used to issue
  expect(parseCertificate(okCa).subjectDer.equals(parseCertificate(signerDer).subjectDer)).toBe(true);
  return issueX509Svid({ caCertDer: okCa, caKey: signerKey.privateKey, subjectSpki: spkiDer(wk.publicKey), spiffeId: 'spiffe://example.org/w', notBefore: new Date(NOW.getTime() - 60_000), notAfter: new Date(NOW.getTime() + 3_600_000) });
}

describe('attack: an SVID signing certificate without keyUsage', () => {
  const rootKey = generateKey('ec-p256');
  const root = ca(rootKey, KU.keyCertSign | KU.cRLSign);
  const bundleFor = (td: string): Buffer[] | undefined => (td === 'example.org' ? [root] : undefined);
  const midKey = generateKey('ec-p256');

  it('control: an intermediate with keyUsage keyCertSign verifies', () => {
    const mid = ca(midKey, KU.keyCertSign, { der: root, key: rootKey });
    expect(codeOf(() => verifyX509Svid([leafUnder(mid, midKey, 'intermediate'), mid], bundleFor, NOW))).toBe('no error');
  });

  it('an intermediate without keyUsage: refused (x509svid.bad_signing_cert)', () => {
    const mid = ca(midKey, undefined, { der: root, key: rootKey });
    const leaf = leafUnder(mid, midKey, 'intermediate');
    expect(codeOf(() => verifyX509Svid([leaf, mid], bundleFor, NOW))).toBe('x509svid.bad_signing_cert');
  });

  it('a bundle authority without keyUsage: refused', () => {
    const bareRootKey = generateKey('ec-p256');
    const bareRoot = ca(bareRootKey, undefined);
    const leaf = leafUnder(bareRoot, bareRootKey, 'root');
    expect(codeOf(() => verifyX509Svid([leaf], (td) => (td === 'example.org' ? [bareRoot] : undefined), NOW))).toBe('x509svid.bad_signing_cert');
  });

  it('issuance under a CA without keyUsage is refused (its SVIDs would not verify)', () => {
    const bareRootKey = generateKey('ec-p256');
    const bareRoot = ca(bareRootKey, undefined);
    const wk = generateKey('ec-p256');
    expect(codeOf(() => issueX509Svid({ caCertDer: bareRoot, caKey: bareRootKey.privateKey, subjectSpki: spkiDer(wk.publicKey), spiffeId: 'spiffe://example.org/w', notBefore: NOW, notAfter: until }))).toBe('x509svid.issuer_not_ca');
    expect(
      codeOf(() => issueCaCertificate({ subjectKey: wk.publicKey, signerKey: bareRootKey.privateKey, issuerCertDer: bareRoot, trustDomain: 'example.org', notBefore: NOW, notAfter: until, pathLen: 0 })),
    ).toBe('x509svid.issuer_not_ca');
  });

  it('the shared toolkit (vendor chains) still takes a CA without keyUsage: the rule is the SVID profile only', () => {
    expect(codeOf(() => checkCanIssue(parseCertificate(ca(generateKey('ec-p256'), undefined))))).toBe('no error');
  });
});
