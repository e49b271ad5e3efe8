/**
 * Attack review: X.509-SVID path building must do bounded work. A peer presenting an SVID over
 * mTLS controls the intermediates: fifteen self-issued CA certificates with one subject Name and
 * one key (its own), each signed by that key, all "issue" each other, so a depth-first search
 * that tries every unused intermediate at every level walks every ordering up to the depth limit
 * (15·14·…·8 paths) and checks a signature at each step: one handshake pins a core.
 *
 * node:crypto's verify is wrapped to count signature checks (and to stop checking after a
 * ceiling, so that the unfixed code fails here instead of hanging the run).
 */
import { describe, expect, it, vi } from 'vitest';
import type * as Crypto from 'node:crypto';

const counter = vi.hoisted(() => ({ calls: 0, ceiling: 20_000 }));

vi.mock('node:crypto', async (importOriginal) => {
  const orig = await importOriginal<typeof Crypto>();
  const verify = ((...args: Parameters<typeof orig.verify>) => {
    counter.calls++;
    if (counter.calls > counter.ceiling) return false;
    return (orig.verify as (...a: unknown[]) => unknown)(...args);
  }) as typeof orig.verify;
  return { ...orig, verify, default: { ...orig, verify } };
});

const { generateKey, issueCaCertificate, issueX509Svid, parseCertificate, spkiDer, verifyX509Svid, KU } = await import('../../src/spiffe/index.js');
const { encodeCertificate, encodeName } = await import('../../src/spiffe/x509svid.js');
const { OID_BC, OID_KU, OID_SAN, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue, encodeSanExtensionValue } = await import('../../src/spiffe/x509ext.js');
const { SigilError } = await import('../../src/errors.js');

const NOW = new Date('2030-06-01T12:00:00Z');
const DAY = 86_400_000;

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'no error';
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as InstanceType<typeof SigilError>).code;
  }
}

describe('attack: X.509-SVID path building with many same-named intermediates', () => {
  const rootKey = generateKey('ec-p256');
  const root = issueCaCertificate({ subjectKey: rootKey.publicKey, signerKey: rootKey.privateKey, trustDomain: 'example.org', commonName: 'root', notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 30 * DAY) });
  const bundleFor = (td: string): Buffer[] | undefined => (td === 'example.org' ? [root] : undefined);

  it('fifteen mutually issuing intermediates: refused after a bounded number of signature checks', () => {
    const evil = generateKey('ec-p256');
    const evilSpki = spkiDer(evil.publicKey);
    const name = encodeName([['O', 'evil']]);
    const base = { issuerDer: name, subjectDer: name, subjectSpki: evilSpki, notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + DAY), signerKey: evil.privateKey };
    const caExts = [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign))];
    const intermediates = Array.from({ length: 15 }, (_, i) => encodeCertificate({ ...base, serial: Buffer.from([1, i + 1]), extensions: caExts }));
    const wk = generateKey('ec-p256');
    const leaf = encodeCertificate({
      ...base,
      subjectDer: encodeName([['O', 'leaf']]),
      subjectSpki: spkiDer(wk.publicKey),
      serial: Buffer.from([2]),
      extensions: [
        encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)),
        encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature)),
        encodeExtension(OID_SAN, true, encodeSanExtensionValue(['spiffe://example.org/w'], [])),
      ],
    });
    for (const d of [leaf, ...intermediates]) parseCertificate(d); // well-formed: the search is what costs
    counter.calls = 0;
    const t0 = Date.now();
    const code = codeOf(() => verifyX509Svid([leaf, ...intermediates], bundleFor, NOW));
    const ms = Date.now() - t0;
    expect(counter.calls, `signature checks made (${ms} ms)`).toBeLessThanOrEqual(16 * 16);
    expect(code).toBe('x509svid.path_search_exhausted');
  });

  it('an honest chain with a few decoys still verifies', () => {
    const key = generateKey('ec-p256');
    const mid = issueCaCertificate({ subjectKey: key.publicKey, signerKey: rootKey.privateKey, issuerCertDer: root, trustDomain: 'example.org', notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 10 * DAY) });
    const wk = generateKey('ec-p256');
    const leaf = issueX509Svid({ caCertDer: mid, caKey: key.privateKey, subjectSpki: spkiDer(wk.publicKey), spiffeId: 'spiffe://example.org/w', notBefore: new Date(NOW.getTime() - 60_000), notAfter: new Date(NOW.getTime() + 3_600_000) });
    // Decoys: the same subject Name as the real intermediate, another key.
    const decoyKey = generateKey('ec-p256');
    const midCert = parseCertificate(mid);
    const decoys = Array.from({ length: 6 }, (_, i) =>
      encodeCertificate({
        issuerDer: midCert.subjectDer,
        subjectDer: midCert.subjectDer,
        subjectSpki: spkiDer(decoyKey.publicKey),
        serial: Buffer.from([3, i + 1]),
        notBefore: new Date(NOW.getTime() - DAY),
        notAfter: new Date(NOW.getTime() + DAY),
        extensions: [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign))],
        signerKey: decoyKey.privateKey,
      }),
    );
    counter.calls = 0;
    const v = verifyX509Svid([leaf, ...decoys, mid], bundleFor, NOW);
    expect(v.spiffeId.toString()).toBe('spiffe://example.org/w');
    expect(v.chain.length).toBe(3);
    expect(counter.calls).toBeLessThanOrEqual(16 * 16);
  });
});
