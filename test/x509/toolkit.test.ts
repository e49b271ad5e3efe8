/**
 * The X.509 toolkit (src/x509/): one parser, one PEM splitter, one validity check, one chain
 * verifier with a cache keyed by DER hashes, CRLs. The attacks first: a forged or misnamed link, a
 * cached link offered under another issuer, a leaf posing as a CA, a path longer than a CA allows.
 */
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { BasicConstraints } from '@peculiar/asn1-x509';
import {
  CertCache,
  asn1Extension,
  nameAttribute,
  LinkCache,
  certificatesFromBytes,
  certsToPem,
  checkCrl,
  checkValidity,
  derToPem,
  parseCertificate,
  parseCertificateAnyKey,
  parseCrl,
  pemBlocks,
  pemToDers,
  remapX509Error,
  verifyChain,
  type ParsedCertificate,
} from '../../src/x509/index.js';
import { TAG, encodeTime, tlv, tlvOf } from '../../src/x509/der.js';
import { KU, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue, OID_BC, OID_KU } from '../../src/x509/ext.js';
import { ALG_ID_DER } from '../../src/x509/sigalg.js';

const T0 = new Date('2025-06-01T00:00:00Z');
const DAY = 86_400_000;
const nb = new Date(T0.getTime() - DAY);
const na = new Date(T0.getTime() + DAY);

interface Node {
  key: { privateKey: KeyObject; publicKey: KeyObject };
  name: Buffer;
  der: Buffer;
}

const p256 = (): Node['key'] => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = (k: KeyObject): Buffer => k.export({ format: 'der', type: 'spki' });
const caExts = (pathLen?: number): Buffer[] => [
  encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true, pathLen)),
  encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign)),
];
const leafExts = (): Buffer[] => [encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature))];

let serial = 1;
function cert(cn: string, issuer: Node | undefined, exts: Buffer[], o: { notBefore?: Date; notAfter?: Date; key?: Node['key']; issuerName?: Buffer } = {}): Node {
  const key = o.key ?? p256();
  const name = encodeName([['O', 'toolkit test'], ['CN', cn]]);
  const der = encodeCertificate({
    ...(issuer || o.issuerName ? { issuerDer: o.issuerName ?? issuer!.name } : {}),
    subjectDer: name,
    subjectSpki: spki(key.publicKey),
    serial: Buffer.from([serial++ & 0x7f || 1]),
    notBefore: o.notBefore ?? nb,
    notAfter: o.notAfter ?? na,
    extensions: exts,
    signerKey: (issuer ?? { key }).key.privateKey,
  });
  return { key, name, der };
}

function pki(): { root: Node; inter: Node; leaf: Node } {
  const root = cert('root', undefined, caExts());
  const inter = cert('intermediate', root, caExts(0));
  const leaf = cert('leaf', inter, leafExts());
  return { root, inter, leaf };
}

const parsed = (...ns: Node[]): ParsedCertificate[] => ns.map((n) => parseCertificate(n.der));

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'accepted';
  } catch (e) {
    return e instanceof SigilError ? e.code : `non-sigil: ${String(e)}`;
  }
}

describe('x509 toolkit: parse', () => {
  it('keeps the exact TBS, Name and SPKI bytes and the DER hash', () => {
    const { root } = pki();
    const c = parseCertificate(root.der);
    expect(c.sha256).toBe(createHash('sha256').update(root.der).digest('hex'));
    expect(root.der.includes(c.tbs)).toBe(true);
    expect(c.subjectDer.equals(root.name)).toBe(true);
    expect(c.spki.equals(spki(root.key.publicKey))).toBe(true);
    expect(c.basicConstraints).toEqual({ ca: true, pathLen: undefined, critical: true });
    expect(c.subject).toBe('CN=root,O=toolkit test');
  });

  it('refuses trailing bytes, non-minimal lengths and a truncated certificate', () => {
    const { leaf } = pki();
    expect(codeOf(() => parseCertificate(Buffer.concat([leaf.der, Buffer.from([0])])))).toBe('x509.malformed');
    expect(codeOf(() => parseCertificate(leaf.der.subarray(0, leaf.der.length - 1)))).toBe('x509.malformed');
    // Same certificate with its outer length in long form with a leading zero octet.
    const len = leaf.der.length - 4;
    const nonMinimal = Buffer.concat([Buffer.from([0x30, 0x83, 0x00, len >> 8, len & 0xff]), leaf.der.subarray(4)]);
    expect(codeOf(() => parseCertificate(nonMinimal))).toBe('x509.malformed');
  });

  it('refuses RSASSA-PSS unless asked, and then requires explicit SHA-2 parameters', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pss = (params: Buffer): Buffer => {
      const alg = tlv(TAG.SEQUENCE, Buffer.from('06092a864886f70d01010a', 'hex'), params);
      const name = encodeName([['CN', 'pss']]);
      const tbs = tlvOf(TAG.SEQUENCE, [
        Buffer.from('a003020102', 'hex'),
        Buffer.from('020101', 'hex'),
        alg,
        name,
        tlv(TAG.SEQUENCE, encodeTime(nb), encodeTime(na)),
        name,
        spki(rsa.publicKey),
      ]);
      const sig = sign('sha384', tbs, { key: rsa.privateKey, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 48 });
      return tlv(TAG.SEQUENCE, tbs, alg, tlv(TAG.BIT_STRING, Buffer.from([0]), sig));
    };
    const sha384 = Buffer.from('300d06096086480165030402020500', 'hex');
    const mgf1sha384 = tlv(TAG.SEQUENCE, Buffer.from('06092a864886f70d010108', 'hex'), sha384);
    const amd = pss(tlv(TAG.SEQUENCE, tlv(0xa0, sha384), tlv(0xa1, mgf1sha384), tlv(0xa2, Buffer.from([2, 1, 48]))));
    expect(codeOf(() => parseCertificate(amd))).toBe('x509.unsupported_algorithm');
    const c = parseCertificate(amd, { pss: true });
    expect(c.sigAlg).toEqual({ oid: '1.2.840.113549.1.1.10', family: 'rsa-pss', hash: 'sha384', saltLength: 48 });
    // Self-signed: the one chain verifier checks it with PSS padding.
    expect(codeOf(() => verifyChain([c], { at: T0, anchorSelfSigned: true }))).toBe('accepted');
    const tampered = Buffer.from(amd);
    tampered[tampered.length - 1]! ^= 1;
    expect(codeOf(() => verifyChain([parseCertificate(tampered, { pss: true })], { at: T0, anchorSelfSigned: true }))).toBe('x509.signature_invalid');
    // Default parameters mean SHA-1: refused.
    expect(codeOf(() => parseCertificate(pss(Buffer.from('3000', 'hex')), { pss: true }))).toBe('x509.unsupported_algorithm');
  });

  it('accepts any importable key only when asked (TPM EK certificates)', () => {
    const ed = generateKeyPairSync('ed25519');
    const issuer = cert('ed-issuer', undefined, caExts());
    const der = encodeCertificate({ issuerDer: issuer.name, subjectDer: encodeName([['CN', 'ed']]), subjectSpki: spki(ed.publicKey), serial: Buffer.from([9]), notBefore: nb, notAfter: na, extensions: leafExts(), signerKey: issuer.key.privateKey });
    expect(codeOf(() => parseCertificate(der))).toBe('x509.unsupported_key');
    const c = parseCertificateAnyKey(der);
    expect(c.spkiInfo).toBeUndefined();
    expect(codeOf(() => verifyChain([c, parseCertificate(issuer.der)], { at: T0 }))).toBe('accepted');
  });

  it('decodes an extension value with an @peculiar/asn1-x509 schema on demand', () => {
    const { root } = pki();
    const c = parseCertificate(root.der);
    expect(asn1Extension(c, OID_BC, BasicConstraints)?.cA).toBe(true);
    expect(asn1Extension(c, '2.5.29.17', BasicConstraints)).toBeUndefined();
    // A keyUsage value read as basicConstraints does not decode: a typed error, not a library one.
    expect(codeOf(() => asn1Extension(c, OID_KU, BasicConstraints))).toBe('x509.malformed');
    expect(nameAttribute(c.subject)).toBe('root');
  });

  it('CertCache parses once per DER hash and never remembers a failure', () => {
    const { leaf } = pki();
    const cache = new CertCache(2);
    const a = cache.parse(leaf.der);
    expect(cache.parse(Buffer.from(leaf.der))).toBe(a);
    expect(cache.hits).toBe(1);
    const bad = Buffer.concat([leaf.der, Buffer.from([0])]);
    expect(codeOf(() => cache.parse(bad))).toBe('x509.malformed');
    expect(codeOf(() => cache.parse(bad))).toBe('x509.malformed');
    expect(cache.size).toBe(1);
  });
});

describe('x509 toolkit: chain', () => {
  it('accepts a good path and checks every validity period at the time given', () => {
    const { root, inter, leaf } = pki();
    const path = parsed(leaf, inter, root);
    expect(codeOf(() => verifyChain(path, { at: T0 }))).toBe('accepted');
    expect(codeOf(() => verifyChain(path, { at: na.getTime() + 1 }))).toBe('x509.expired');
    expect(codeOf(() => verifyChain(path, { at: nb.getTime() - 1 }))).toBe('x509.not_yet_valid');
    expect(codeOf(() => verifyChain(path, { at: na }))).toBe('accepted'); // notAfter itself is inside
  });

  it('refuses a leaf signed by another key under the right issuer name (forged link)', () => {
    const { root, inter } = pki();
    const forger = p256();
    const forged = cert('leaf', undefined, leafExts(), { key: forger, issuerName: inter.name });
    expect(codeOf(() => verifyChain(parsed(forged, inter, root), { at: T0 }))).toBe('x509.signature_invalid');
  });

  it('refuses a link whose issuer name differs even if the signature verifies', () => {
    const { root, inter } = pki();
    const other = cert('leaf', undefined, leafExts(), { issuerName: encodeName([['CN', 'someone else']]) });
    // Re-sign with the intermediate's key so only the name is wrong.
    const wrongName = encodeCertificate({ issuerDer: encodeName([['CN', 'someone else']]), subjectDer: other.name, subjectSpki: spki(other.key.publicKey), serial: Buffer.from([5]), notBefore: nb, notAfter: na, extensions: leafExts(), signerKey: inter.key.privateKey });
    expect(codeOf(() => verifyChain([parseCertificate(wrongName), ...parsed(inter, root)], { at: T0 }))).toBe('x509.issuer_mismatch');
  });

  it('a cached link is not reused under another issuer with the same name (twin CA)', () => {
    const a = pki();
    const twinKey = p256();
    const twin = cert('intermediate', a.root, caExts(0), { key: twinKey });
    const links = new LinkCache();
    expect(codeOf(() => verifyChain(parsed(a.leaf, a.inter, a.root), { at: T0, links }))).toBe('accepted');
    expect(links.size).toBe(2);
    // A's leaf offered under the twin intermediate (same subject, other key and DER).
    expect(codeOf(() => verifyChain(parsed(a.leaf, twin, a.root), { at: T0, links }))).toBe('x509.signature_invalid');
    // A hit still checks validity.
    const before = links.misses;
    expect(codeOf(() => verifyChain(parsed(a.leaf, a.inter, a.root), { at: na.getTime() + 1, links }))).toBe('x509.expired');
    expect(links.misses).toBe(before);
  });

  it('refuses a leaf used as an issuer and a path longer than pathLenConstraint', () => {
    const { root, inter, leaf } = pki();
    const below = cert('below leaf', leaf, leafExts());
    expect(codeOf(() => verifyChain(parsed(below, leaf), { at: T0 }))).toBe('x509.not_a_ca');
    const inter2 = cert('intermediate 2', inter, caExts());
    const leaf2 = cert('leaf 2', inter2, leafExts());
    expect(codeOf(() => verifyChain(parsed(leaf2, inter2, inter, root), { at: T0 }))).toBe('x509.path_length_exceeded');
  });

  it('checks the anchor self-signature only when asked', () => {
    const { inter, leaf } = pki();
    // The intermediate is not self-signed: as an anchor it is trusted as given, unless anchorSelfSigned.
    expect(codeOf(() => verifyChain(parsed(leaf, inter), { at: T0 }))).toBe('accepted');
    expect(codeOf(() => verifyChain(parsed(leaf, inter), { at: T0, anchorSelfSigned: true }))).toBe('x509.issuer_mismatch');
    expect(codeOf(() => verifyChain([], { at: T0 }))).toBe('x509.chain_empty');
  });

  it('checkValidity names the certificate and takes the time as an input', () => {
    const { leaf } = pki();
    const c = parseCertificate(leaf.der);
    expect(() => checkValidity(c, na.getTime() + 1000, 'the leaf')).toThrow(/the leaf expired at/);
  });

  it('remapX509Error keeps a caller\'s codes stable at its boundary', () => {
    const e = new SigilError('x509.expired', 'leaf expired');
    const m = remapX509Error(e, { 'x509.expired': 'nitro.cert_expired' }, 'certificate (leaf)', 'nitro.cert_invalid', 401);
    expect([m.code, m.message, m.status, m.cause]).toEqual(['nitro.cert_expired', 'certificate (leaf): leaf expired', 401, e]);
    expect(remapX509Error(new SigilError('other.code', 'x'), {}, 'w', 'f')).toMatchObject({ code: 'other.code' });
    expect(remapX509Error(new TypeError('boom'), {}, 'w', 'f')).toMatchObject({ code: 'f', message: 'w: boom' });
  });
});

describe('x509 toolkit: PEM', () => {
  it('round-trips certificates and refuses other labels, bad base64 and stray text (strict)', () => {
    const { root, leaf } = pki();
    const pem = certsToPem([leaf.der, root.der]);
    expect(pemToDers(pem).map((d) => d.toString('hex'))).toEqual([leaf.der, root.der].map((d) => d.toString('hex')));
    expect(codeOf(() => pemToDers(derToPem(root.der, 'PUBLIC KEY')))).toBe('pem.malformed');
    expect(codeOf(() => pemToDers(pem.replace(/[A-Za-z]{4}\n/, '!!!!\n')))).toBe('pem.malformed');
    expect(codeOf(() => pemToDers(`Bag Attributes\n${pem}`))).toBe('pem.malformed');
    expect(pemBlocks(`Bag Attributes\n${pem}`, 'CERTIFICATE', { lax: true })).toHaveLength(2);
  });

  it('reads certificates from file bytes: PEM, raw DER, hex, base64', () => {
    const { root } = pki();
    for (const bytes of [Buffer.from(certsToPem([root.der])), root.der, Buffer.from(root.der.toString('hex')), Buffer.from(root.der.toString('base64'))]) {
      expect(certificatesFromBytes(bytes)[0]!.equals(root.der)).toBe(true);
    }
    expect(codeOf(() => certificatesFromBytes(Buffer.from('not a certificate')))).toBe('pem.malformed');
  });
});

describe('x509 toolkit: CRL', () => {
  function crl(key: KeyObject, issuer: Buffer, revoked: Buffer[], thisUpdate: Date, nextUpdate: Date): Buffer {
    const entries = revoked.map((s) => tlv(TAG.SEQUENCE, tlv(TAG.INTEGER, s), encodeTime(thisUpdate)));
    const tbs = tlvOf(TAG.SEQUENCE, [tlv(TAG.INTEGER, Buffer.from([1])), ALG_ID_DER.ecdsaSha256, issuer, encodeTime(thisUpdate), encodeTime(nextUpdate), ...(entries.length ? [tlvOf(TAG.SEQUENCE, entries)] : [])]);
    return tlv(TAG.SEQUENCE, tbs, ALG_ID_DER.ecdsaSha256, tlv(TAG.BIT_STRING, Buffer.from([0]), sign('sha256', tbs, key)));
  }

  it('parses, checks issuer, signature and window, and lists revoked serials', () => {
    const { root, inter } = pki();
    const rootC = parseCertificate(root.der);
    const interC = parseCertificate(inter.der);
    const good = parseCrl(crl(root.key.privateKey, root.name, [interC.serial], nb, na));
    expect(good.revoked.has(interC.serialHex)).toBe(true);
    expect(codeOf(() => checkCrl(good, rootC, T0))).toBe('accepted');
    expect(codeOf(() => checkCrl(good, rootC, na.getTime() + 1))).toBe('x509.crl_expired');
    expect(codeOf(() => checkCrl(good, rootC, nb.getTime() - 1))).toBe('x509.crl_not_yet_valid');
    expect(codeOf(() => checkCrl(good, interC, T0))).toBe('x509.crl_issuer_mismatch');
    const forged = parseCrl(crl(inter.key.privateKey, root.name, [], nb, na));
    expect(codeOf(() => checkCrl(forged, rootC, T0))).toBe('x509.crl_signature_invalid');
    expect(parseCrl(Buffer.from(derToPem(good.der, 'X509 CRL'))).der.equals(good.der)).toBe(true);
    expect(codeOf(() => parseCrl(Buffer.concat([good.der, Buffer.from([0])])))).toBe('x509.crl_malformed');
  });
});
