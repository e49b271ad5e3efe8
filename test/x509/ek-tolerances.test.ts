/**
 * The toolkit's two opt-ins for TPM EK certificates: SHA-1 signatures only when a caller names
 * them in its own list (parse and chain verification), and BER read under `ber: true` only.
 * Everything here is refused by default.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseCertificate, parseCertificateAnyKey, signatureVerifies, verifyChain, DEFAULT_SIG_ALG_OIDS, OID_ECDSA_WITH_SHA1, OID_SHA1_WITH_RSA } from '../../src/x509/index.js';
import { EXT, buildCert, ext, genTime, name, oid, seq, utcTime, type SigKind, type TbsInput } from '../fixtures/tpm-ek/builder.js';

const AT = new Date('2025-06-01T00:00:00Z');

function code(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

function chain(sig: SigKind, rsa = false): { root: Buffer; leaf: Buffer } {
  const k = rsa ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rootName = name([[['2.5.4.3', 0x0c, `Tolerance Root ${sig}`]]]);
  const base = { notBefore: utcTime('200101000000Z'), notAfter: utcTime('400101000000Z') };
  const root = buildCert({ serial: Buffer.from([1]), sig, issuer: rootName, subject: rootName, spki: k.publicKey.export({ type: 'spki', format: 'der' }), extensions: [EXT.caBasicConstraints(), EXT.caKeyUsage()], ...base }, k.privateKey);
  const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const leaf = buildCert(
    { serial: Buffer.from([2]), sig, issuer: rootName, subject: name([[['2.5.4.3', 0x0c, 'leaf']]]), spki: leafKey.publicKey.export({ type: 'spki', format: 'der' }), extensions: [EXT.leafBasicConstraints()], ...base },
    k.privateKey,
  );
  return { root, leaf };
}

describe('SHA-1 signatures: only when the caller names them', () => {
  it('the default algorithm list has no SHA-1', () => {
    expect(DEFAULT_SIG_ALG_OIDS).not.toContain(OID_SHA1_WITH_RSA);
    expect(DEFAULT_SIG_ALG_OIDS).not.toContain(OID_ECDSA_WITH_SHA1);
  });

  for (const [sig, rsa, sha1] of [['rsa-sha1', true, OID_SHA1_WITH_RSA], ['ecdsa-sha1', false, OID_ECDSA_WITH_SHA1]] as const) {
    it(`${sig}: refused by parseCertificate and verifyChain unless listed for the call`, () => {
      const { root, leaf } = chain(sig, rsa);
      expect(code(() => parseCertificate(root))).toBe('x509.unsupported_algorithm');
      expect(code(() => parseCertificateAnyKey(leaf, { pss: true }))).toBe('x509.unsupported_algorithm');
      const list = [...DEFAULT_SIG_ALG_OIDS, sha1];
      const r = parseCertificateAnyKey(root, { algorithms: list });
      const l = parseCertificateAnyKey(leaf, { algorithms: list });
      expect(r.sigAlg.hash).toBe('sha1');
      // parsed under one call's list, verified under another's: refused
      expect(signatureVerifies(l, r)).toBe(false);
      expect(code(() => verifyChain([l, r], { at: AT }))).toBe('x509.unsupported_algorithm');
      expect(code(() => verifyChain([l, r], { at: AT, algorithms: DEFAULT_SIG_ALG_OIDS }))).toBe('x509.unsupported_algorithm');
      expect(signatureVerifies(l, r, list)).toBe(true);
      expect(code(() => verifyChain([l, r], { at: AT, algorithms: list, anchorSelfSigned: true }))).toBe('ok');
    });
  }

  it('a SHA-256 chain still verifies with and without a list, and not outside a narrower list', () => {
    const { root, leaf } = chain('ecdsa-sha256');
    const r = parseCertificate(root);
    const l = parseCertificate(leaf);
    expect(code(() => verifyChain([l, r], { at: AT }))).toBe('ok');
    expect(code(() => verifyChain([l, r], { at: AT, algorithms: ['1.2.840.10045.4.3.3'] }))).toBe('x509.unsupported_algorithm');
  });
});

describe('BER in certificates: read under ber only', () => {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const issuer = name([[['2.5.4.3', 0x0c, 'BER CA']]]);
  const base: TbsInput = {
    serial: Buffer.from([0x0a, 0x1b]),
    sig: 'ecdsa-sha256',
    issuer,
    subject: seq(),
    notBefore: utcTime('200101000000Z'),
    notAfter: utcTime('400101000000Z'),
    spki: k.publicKey.export({ type: 'spki', format: 'der' }),
    extensions: [EXT.leafBasicConstraints()],
  };
  const quirks: [string, Partial<TbsInput>, (c: ReturnType<typeof parseCertificateAnyKey>) => void][] = [
    ['non-minimal INTEGER serial', { serial: Buffer.from([0, 0x0a]) }, (c) => expect(c.serialHex).toBe('000a')],
    ['22-octet serial', { serial: Buffer.alloc(22, 0x11) }, (c) => expect(c.serial.length).toBe(22)],
    ['explicit critical FALSE', { extensions: [ext('2.5.29.37', 'false', seq(oid('2.23.133.8.1')))] }, (c) => expect(c.extensions[0]?.critical).toBe(false)],
    ['BOOLEAN TRUE as 01', { extensions: [ext('2.5.29.37', 'true01', seq(oid('2.23.133.8.1')))] }, (c) => expect(c.extensions[0]?.critical).toBe(true)],
    ['GeneralizedTime before 2050', { notBefore: genTime('20200101000000Z') }, (c) => expect(c.notBefore.toISOString()).toBe('2020-01-01T00:00:00.000Z')],
    ['UTCTime without seconds', { notBefore: utcTime('2001010000Z') }, (c) => expect(c.notBefore.toISOString()).toBe('2020-01-01T00:00:00.000Z')],
    ['v1 certificate', { v1: true, extensions: null }, (c) => expect(c.version).toBe(1)],
    ['non-minimal length', { subject: Buffer.from([0x30, 0x81, 0x00]) }, (c) => expect(c.subjectDer.length).toBe(3)],
    ['unsorted SET OF', { subject: name([[['2.5.4.3', 0x0c, 'zz longer value'], ['2.5.4.10', 0x13, 'O']]]) }, (c) => expect(c.subject).toContain('zz longer value')],
  ];
  for (const [what, change, check] of quirks) {
    it(`${what}: x509.malformed by default, read under ber`, () => {
      const der = buildCert({ ...base, ...change }, k.privateKey);
      expect(code(() => parseCertificateAnyKey(der))).toBe('x509.malformed');
      const c = parseCertificateAnyKey(der, { ber: true });
      check(c);
    });
  }

  it('still refuses indefinite lengths, trailing bytes and a differing inner signature algorithm under ber', () => {
    const der = buildCert(base, k.privateKey);
    expect(code(() => parseCertificateAnyKey(der, { ber: true }))).toBe('ok');
    expect(code(() => parseCertificateAnyKey(Buffer.concat([der, Buffer.from([0])]), { ber: true }))).toBe('x509.malformed');
    const indefinite = buildCert({ ...base, subject: Buffer.from([0x30, 0x80, 0x00, 0x00]) }, k.privateKey);
    expect(code(() => parseCertificateAnyKey(indefinite, { ber: true }))).toBe('x509.malformed');
    // the inner AlgorithmIdentifier says SHA-384, the outer SHA-256
    const tampered = Buffer.from(der);
    const inner = tampered.indexOf(Buffer.from('06082a8648ce3d040302', 'hex'));
    tampered[inner + 9] = 0x03;
    expect(code(() => parseCertificateAnyKey(tampered, { ber: true }))).toBe('x509.malformed');
  });
});
