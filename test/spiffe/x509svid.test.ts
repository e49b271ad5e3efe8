import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  certsToPem,
  createCsr,
  generateKey,
  issueCaCertificate,
  issueX509Svid,
  parseCertificate,
  parseCsr,
  pemToDers,
  spkiDer,
  verifyX509Svid,
  KU,
  type KeyType,
} from '../../src/spiffe/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import {
  EKU_SERVER_CLIENT_VALUE,
  OID_AKI,
  OID_BC,
  OID_EKU,
  OID_KP_CLIENT_AUTH,
  OID_KP_SERVER_AUTH,
  OID_KU,
  OID_SAN,
  OID_SKI,
  encodeAkiValue,
  encodeBasicConstraintsValue,
  encodeExtension,
  encodeExtensionRaw,
  encodeKeyUsageValue,
  encodeSanExtensionValue,
  encodeSkiValue,
  keyIdentifier,
} from '../../src/spiffe/x509ext.js';
import { inspectSpki } from '../../src/spiffe/spki.js';
import { SigilError } from '../../src/errors.js';
import { codeOf } from '../support/codes.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const HOUR = 3600_000;
const DAY = 24 * HOUR;
const at = (ms: number): Date => new Date(NOW.getTime() + ms);


interface Ca {
  key: { privateKey: KeyObject; publicKey: KeyObject };
  der: Buffer;
}

function makeRoot(td = 'example.org', t: KeyType = 'ec-p256', notAfter = at(30 * DAY)): Ca {
  const key = generateKey(t);
  const der = issueCaCertificate({ subjectKey: key.publicKey, signerKey: key.privateKey, trustDomain: td, commonName: 'root', notBefore: at(-DAY), notAfter });
  return { key, der };
}

function makeIntermediate(parent: Ca, td = 'example.org', t: KeyType = 'ec-p256', extra: { pathLen?: number; notAfter?: Date } = {}): Ca {
  const key = generateKey(t);
  const o = {
    subjectKey: key.publicKey,
    signerKey: parent.key.privateKey,
    issuerCertDer: parent.der,
    trustDomain: td,
    notBefore: at(-DAY),
    notAfter: extra.notAfter ?? at(10 * DAY),
    ...(extra.pathLen !== undefined ? { pathLen: extra.pathLen } : {}),
  };
  return { key, der: issueCaCertificate(o) };
}

function leafFor(ca: Ca, id = 'spiffe://example.org/workload', t: KeyType = 'ec-p256', extra: { dnsNames?: string[]; notAfter?: Date; notBefore?: Date } = {}): Buffer {
  const wk = generateKey(t);
  const csr = parseCsr(createCsr(wk));
  return issueX509Svid({
    caCertDer: ca.der,
    caKey: ca.key.privateKey,
    subjectSpki: csr.spki,
    spiffeId: id,
    notBefore: extra.notBefore ?? at(-60_000),
    notAfter: extra.notAfter ?? at(HOUR),
    ...(extra.dnsNames ? { dnsNames: extra.dnsNames } : {}),
  });
}

const bundleOf =
  (...cas: Ca[]) =>
  (td: string): Buffer[] | undefined =>
    td === 'example.org' ? cas.map((c) => c.der) : undefined;

/** A leaf with arbitrary extensions, signed by `ca`, for building non-conforming SVIDs. */
function craftedLeaf(ca: Ca, extensions: (spki: Buffer) => Buffer[], opts: { subject?: Buffer; notBefore?: Date; notAfter?: Date } = {}): Buffer {
  const wk = generateKey('ec-p256');
  const spki = spkiDer(wk.publicKey);
  const caCert = parseCertificate(ca.der);
  return encodeCertificate({
    issuerDer: caCert.subjectDer,
    subjectDer: opts.subject ?? encodeName([['O', 'Test']]),
    subjectSpki: spki,
    serial: Buffer.from([0x01, 0x23, 0x45]),
    notBefore: opts.notBefore ?? at(-60_000),
    notAfter: opts.notAfter ?? at(HOUR),
    extensions: extensions(spki),
    signerKey: ca.key.privateKey,
  });
}

function standardExts(spki: Buffer, ca: Ca, o: { ca?: boolean; ku?: number; kuCritical?: boolean; uris?: string[]; skipKu?: boolean; extra?: Buffer[] } = {}): Buffer[] {
  const caCert = parseCertificate(ca.der);
  const exts: Buffer[] = [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(o.ca ?? false))];
  if (!o.skipKu) exts.push(encodeExtension(OID_KU, o.kuCritical ?? true, encodeKeyUsageValue(o.ku ?? KU.digitalSignature)));
  exts.push(encodeExtension(OID_EKU, false, EKU_SERVER_CLIENT_VALUE));
  const uris = o.uris ?? ['spiffe://example.org/crafted'];
  if (uris.length > 0) exts.push(encodeExtension(OID_SAN, false, encodeSanExtensionValue(uris, [])));
  exts.push(encodeExtension(OID_SKI, false, encodeSkiValue(keyIdentifier(inspectSpki(spki, 'x', 'y').keyBits))));
  exts.push(encodeExtension(OID_AKI, false, encodeAkiValue(caCert.subjectKeyId!)));
  exts.push(...(o.extra ?? []));
  return exts;
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-x509svid-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function opensslVerify(rootDers: Buffer[], intermediates: Buffer[], leaf: Buffer, when: Date = NOW): { ok: boolean; out: string } {
  const name = Math.random().toString(36).slice(2);
  const bundle = join(dir, `${name}-bundle.pem`);
  const inter = join(dir, `${name}-inter.pem`);
  const svid = join(dir, `${name}-svid.pem`);
  writeFileSync(bundle, certsToPem(rootDers));
  writeFileSync(svid, certsToPem([leaf]));
  const args = ['verify', '-attime', String(Math.floor(when.getTime() / 1000)), '-CAfile', bundle];
  if (intermediates.length > 0) {
    writeFileSync(inter, certsToPem(intermediates));
    args.push('-untrusted', inter);
  }
  args.push(svid);
  try {
    const out = execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    return { ok: true, out };
  } catch (e) {
    const ee = e as { stdout?: Buffer; stderr?: Buffer };
    return { ok: false, out: `${ee.stdout?.toString() ?? ''}${ee.stderr?.toString() ?? ''}` };
  }
}

describe('issueCaCertificate', () => {
  it('makes a self-signed trust domain CA with the required extensions', () => {
    const root = makeRoot();
    const c = parseCertificate(root.der);
    expect(c.basicConstraints).toEqual({ ca: true, pathLen: undefined, critical: true });
    expect(c.keyUsage).toEqual({ flags: KU.keyCertSign | KU.cRLSign, critical: true });
    expect(c.san?.uris).toEqual(['spiffe://example.org']);
    expect(c.subjectKeyId).toEqual(c.authorityKeyId);
    expect(c.subjectDer.equals(c.issuerDer)).toBe(true);
    expect(c.subject).toMatch(/^serialNumber=[0-9a-f]+,CN=root,O=example\.org$/);
    const x = new X509Certificate(root.der);
    expect(x.ca).toBe(true);
    expect(x.verify(root.key.publicKey)).toBe(true);
    expect(x.subjectAltName).toBe('URI:spiffe://example.org');
  });

  it('issues an intermediate under an upstream CA, clipping notAfter and honouring pathLen', () => {
    const root = makeRoot('example.org', 'ec-p384', at(5 * DAY));
    const inter = makeIntermediate(root, 'example.org', 'ec-p256', { notAfter: at(50 * DAY), pathLen: 0 });
    const c = parseCertificate(inter.der);
    expect(c.notAfter).toEqual(parseCertificate(root.der).notAfter);
    expect(c.basicConstraints?.pathLen).toBe(0);
    expect(c.authorityKeyId).toEqual(parseCertificate(root.der).subjectKeyId);
    expect(new X509Certificate(inter.der).checkIssued(new X509Certificate(root.der))).toBe(true);
    // pathLen 0 issuer cannot issue another CA.
    expect(codeOf(() => makeIntermediate(inter))).toBe('x509svid.path_len_exceeded');
  });

  it('checks keys and issuer', () => {
    const root = makeRoot();
    const other = generateKey('ec-p256');
    expect(
      codeOf(() => issueCaCertificate({ subjectKey: other.publicKey, signerKey: root.key.privateKey, trustDomain: 'example.org', notBefore: NOW, notAfter: at(DAY) })),
    ).toBe('x509svid.key_mismatch');
    expect(
      codeOf(() =>
        issueCaCertificate({ subjectKey: other.publicKey, signerKey: other.privateKey, issuerCertDer: root.der, trustDomain: 'example.org', notBefore: NOW, notAfter: at(DAY) }),
      ),
    ).toBe('x509svid.key_mismatch');
    const leaf = leafFor(root);
    expect(
      codeOf(() => issueCaCertificate({ subjectKey: other.publicKey, signerKey: root.key.privateKey, issuerCertDer: leaf, trustDomain: 'example.org', notBefore: NOW, notAfter: at(DAY) })),
    ).toBe('x509svid.issuer_not_ca');
    expect(
      codeOf(() => issueCaCertificate({ subjectKey: other.publicKey, signerKey: other.privateKey, trustDomain: 'Bad', notBefore: NOW, notAfter: at(DAY) })),
    ).toBe('spiffe.id_bad_trust_domain_char');
    expect(
      codeOf(() => issueCaCertificate({ subjectKey: other.publicKey, signerKey: other.privateKey, trustDomain: 'example.org', notBefore: NOW, notAfter: NOW })),
    ).toBe('x509svid.bad_validity');
  });
});

describe('issueX509Svid', () => {
  it.each([
    ['ec-p256', 'ec-p256'],
    ['ec-p384', 'ec-p256'],
    ['rsa-2048', 'ec-p384'],
    ['ec-p256', 'rsa-2048'],
  ] as [KeyType, KeyType][])('CA %s, workload %s: follows the X509-SVID profile and verifies', (caType, wType) => {
    const root = makeRoot('example.org', caType);
    const der = leafFor(root, 'spiffe://example.org/ns/prod/sa/web', wType, { dnsNames: ['web.example.org', '*.web.example.org'] });
    const c = parseCertificate(der);
    expect(c.san?.uris).toEqual(['spiffe://example.org/ns/prod/sa/web']);
    expect(c.san?.dnsNames).toEqual(['web.example.org', '*.web.example.org']);
    expect(c.basicConstraints).toEqual({ ca: false, pathLen: undefined, critical: true });
    expect(c.keyUsage?.critical).toBe(true);
    expect(c.keyUsage?.flags).toBe(wType === 'rsa-2048' ? KU.digitalSignature | KU.keyEncipherment : KU.digitalSignature);
    expect(c.extKeyUsage).toEqual([OID_KP_SERVER_AUTH, OID_KP_CLIENT_AUTH]);
    expect(c.serial.length).toBe(16);
    expect(c.serial[0]! & 0x80).toBe(0);
    expect(c.serial[0]).not.toBe(0);
    expect(c.authorityKeyId).toEqual(parseCertificate(root.der).subjectKeyId);
    expect(c.subjectKeyId).toEqual(keyIdentifier(c.spkiInfo.keyBits));
    // Independent parse by OpenSSL via node:crypto.
    const x = new X509Certificate(der);
    expect(x.ca).toBe(false);
    expect(x.subjectAltName).toBe('URI:spiffe://example.org/ns/prod/sa/web, DNS:web.example.org, DNS:*.web.example.org');
    expect(x.verify(root.key.publicKey)).toBe(true);
    expect(x.checkIssued(new X509Certificate(root.der))).toBe(true);
    const v = verifyX509Svid([der], bundleOf(root), NOW);
    expect(v.spiffeId.toString()).toBe('spiffe://example.org/ns/prod/sa/web');
    expect(v.leafDer.equals(der)).toBe(true);
    expect(v.notAfter).toEqual(c.notAfter);
    expect(opensslVerify([root.der], [], der).ok).toBe(true);
  });

  it('uses a distinct random serial each time and accepts an explicit one', () => {
    const root = makeRoot();
    const serials = new Set(Array.from({ length: 50 }, () => parseCertificate(leafFor(root)).serialHex));
    expect(serials.size).toBe(50);
    const spki = spkiDer(generateKey('ec-p256').publicKey);
    const der = issueX509Svid({ caCertDer: root.der, caKey: root.key.privateKey, subjectSpki: spki, spiffeId: 'spiffe://example.org/a', notBefore: NOW, notAfter: at(HOUR), serial: Buffer.from([0x00, 0x80]) });
    expect(parseCertificate(der).serialHex).toBe('0080');
  });

  it('keeps per-CA state apart when several CAs issue alternately (and for copied CA buffers)', () => {
    const a = makeRoot();
    const b = makeRoot('example.org', 'ec-p384');
    for (let i = 0; i < 4; i++) {
      for (const ca of [a, b, { key: a.key, der: Buffer.from(a.der) }]) {
        const leaf = parseCertificate(leafFor(ca));
        const c = parseCertificate(ca.der);
        expect(leaf.authorityKeyId).toEqual(c.subjectKeyId);
        expect(leaf.issuerDer).toEqual(c.subjectDer);
      }
    }
    // The key check is per CA: b's key cannot sign under a's certificate even after both were used.
    expect(codeOf(() => leafFor({ key: b.key, der: a.der }))).toBe('x509svid.key_mismatch');
  });

  it('clips notAfter to the CA notAfter', () => {
    const root = makeRoot('example.org', 'ec-p256', at(2 * HOUR));
    const der = leafFor(root, 'spiffe://example.org/w', 'ec-p256', { notAfter: at(10 * HOUR) });
    expect(parseCertificate(der).notAfter).toEqual(parseCertificate(root.der).notAfter);
  });

  it('validates its inputs', () => {
    const root = makeRoot();
    const spki = spkiDer(generateKey('ec-p256').publicKey);
    const base = { caCertDer: root.der, caKey: root.key.privateKey, subjectSpki: spki, spiffeId: 'spiffe://example.org/w', notBefore: NOW, notAfter: at(HOUR) };
    expect(codeOf(() => issueX509Svid({ ...base, spiffeId: 'spiffe://example.org' }))).toBe('x509svid.id_no_path');
    expect(codeOf(() => issueX509Svid({ ...base, spiffeId: 'spiffe://other.org/w' }))).toBe('x509svid.wrong_trust_domain');
    expect(codeOf(() => issueX509Svid({ ...base, spiffeId: 'spiffe://example.org/w/' }))).toBe('spiffe.id_trailing_slash');
    expect(codeOf(() => issueX509Svid({ ...base, notAfter: at(-HOUR) }))).toBe('x509svid.bad_validity');
    expect(codeOf(() => issueX509Svid({ ...base, notAfter: new Date('garbage') }))).toBe('x509svid.bad_validity');
    expect(codeOf(() => issueX509Svid({ ...base, dnsNames: ['bad name'] }))).toBe('x509svid.bad_dns_name');
    expect(codeOf(() => issueX509Svid({ ...base, dnsNames: ['-a.example'] }))).toBe('x509svid.bad_dns_name');
    expect(codeOf(() => issueX509Svid({ ...base, caKey: generateKey('ec-p256').privateKey }))).toBe('x509svid.key_mismatch');
    expect(codeOf(() => issueX509Svid({ ...base, subjectSpki: Buffer.from('3000', 'hex') }))).toBe('x509svid.malformed');
    expect(codeOf(() => issueX509Svid({ ...base, serial: Buffer.alloc(21, 1) }))).toBe('x509svid.bad_serial');
    const leaf = leafFor(root);
    expect(codeOf(() => issueX509Svid({ ...base, caCertDer: leaf }))).toBe('x509svid.issuer_not_ca');
  });
});

describe('verifyX509Svid with an intermediate chain (and openssl agrees)', () => {
  it('verifies leaf → intermediate → root, in any intermediate order', () => {
    const root = makeRoot('example.org', 'ec-p384');
    const i1 = makeIntermediate(root, 'example.org', 'rsa-2048');
    const i2 = makeIntermediate(i1, 'example.org', 'ec-p256');
    const leaf = leafFor(i2, 'spiffe://example.org/deep');
    const v = verifyX509Svid([leaf, i2.der, i1.der], bundleOf(root), NOW);
    expect(v.spiffeId.path).toBe('/deep');
    expect(v.chain.map((d) => d.equals(leaf) || d.equals(i2.der) || d.equals(i1.der) || d.equals(root.der))).toEqual([true, true, true, true]);
    expect(verifyX509Svid([leaf, i1.der, i2.der], bundleOf(root), NOW).chain).toHaveLength(4);
    expect(opensslVerify([root.der], [i1.der, i2.der], leaf).ok).toBe(true);
    // Without the intermediates neither verifier can build the path.
    expect(codeOf(() => verifyX509Svid([leaf], bundleOf(root), NOW))).toBe('x509svid.untrusted');
    expect(codeOf(() => verifyX509Svid([leaf, i2.der], bundleOf(root), NOW))).toBe('x509svid.untrusted');
    expect(opensslVerify([root.der], [], leaf).ok).toBe(false);
  });

  it('accepts either of two overlapping roots (CA rotation)', () => {
    const oldRoot = makeRoot();
    const newRoot = makeRoot();
    const leaf = leafFor(newRoot);
    expect(verifyX509Svid([leaf], bundleOf(oldRoot, newRoot), NOW).spiffeId.toString()).toBe('spiffe://example.org/workload');
    expect(opensslVerify([oldRoot.der, newRoot.der], [], leaf).ok).toBe(true);
    expect(codeOf(() => verifyX509Svid([leaf], bundleOf(oldRoot), NOW))).toBe('x509svid.untrusted');
  });

  it('enforces pathLenConstraint', () => {
    const root = makeRoot();
    const i1 = makeIntermediate(root, 'example.org', 'ec-p256', { pathLen: 0 });
    // Build an intermediate under i1 by hand (issueCaCertificate refuses to).
    const i2key = generateKey('ec-p256');
    const i1c = parseCertificate(i1.der);
    const i2spki = spkiDer(i2key.publicKey);
    const i2der = encodeCertificate({
      issuerDer: i1c.subjectDer,
      subjectDer: encodeName([['O', 'example.org'], ['CN', 'i2']]),
      subjectSpki: i2spki,
      serial: Buffer.from([7]),
      notBefore: at(-DAY),
      notAfter: at(DAY),
      extensions: [
        encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)),
        encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign)),
        encodeExtension(OID_SKI, false, encodeSkiValue(keyIdentifier(inspectSpki(i2spki, 'x', 'y').keyBits))),
        encodeExtension(OID_AKI, false, encodeAkiValue(i1c.subjectKeyId!)),
      ],
      signerKey: i1.key.privateKey,
    });
    const i2 = { key: i2key, der: i2der };
    const leaf = leafFor(i2);
    expect(codeOf(() => verifyX509Svid([leaf, i2der, i1.der], bundleOf(root), NOW))).toBe('x509svid.bad_signing_cert');
    expect(opensslVerify([root.der], [i1.der, i2der], leaf).ok).toBe(false);
    // Directly under i1 (pathLen 0) a leaf is fine.
    expect(verifyX509Svid([leafFor(i1), i1.der], bundleOf(root), NOW).chain).toHaveLength(3);
  });
});

describe('verifyX509Svid rejects', () => {
  const root = makeRoot();
  const inter = makeIntermediate(root);

  it('a tampered certificate (TBS or signature)', () => {
    const leaf = leafFor(root, 'spiffe://example.org/aaaa');
    const i = leaf.indexOf(Buffer.from('spiffe://example.org/aaaa'));
    const t1 = Buffer.from(leaf);
    t1[i + 'spiffe://example.org/'.length] = 'b'.charCodeAt(0);
    expect(codeOf(() => verifyX509Svid([t1], bundleOf(root), NOW))).toBe('x509svid.bad_signature');
    const t2 = Buffer.from(leaf);
    t2[t2.length - 3] = t2[t2.length - 3]! ^ 0x40;
    expect(codeOf(() => verifyX509Svid([t2], bundleOf(root), NOW))).toBe('x509svid.bad_signature');
    expect(opensslVerify([root.der], [], t1).ok).toBe(false);
  });

  it('an expired or not yet valid leaf, and an expired intermediate', () => {
    const leaf = leafFor(root);
    expect(codeOf(() => verifyX509Svid([leaf], bundleOf(root), at(2 * HOUR)))).toBe('x509svid.expired');
    expect(codeOf(() => verifyX509Svid([leaf], bundleOf(root), at(-HOUR)))).toBe('x509svid.not_yet_valid');
    expect(opensslVerify([root.der], [], leaf, at(2 * HOUR)).ok).toBe(false);
    const shortInter = makeIntermediate(root, 'example.org', 'ec-p256', { notAfter: at(HOUR) });
    const leaf2 = leafFor(shortInter, 'spiffe://example.org/w', 'ec-p256', { notAfter: at(HOUR) });
    // Crafted leaf outliving its intermediate.
    const longLeaf = craftedLeaf(shortInter, (spki) => standardExts(spki, shortInter), { notAfter: at(3 * HOUR) });
    expect(verifyX509Svid([leaf2, shortInter.der], bundleOf(root), NOW).chain).toHaveLength(3);
    expect(codeOf(() => verifyX509Svid([longLeaf, shortInter.der], bundleOf(root), at(2 * HOUR)))).toBe('x509svid.expired');
  });

  it('an SVID of another trust domain, or checked against another trust domain’s roots', () => {
    const otherRoot = makeRoot('other.org');
    const otherLeaf = leafFor(otherRoot, 'spiffe://other.org/w');
    expect(codeOf(() => verifyX509Svid([otherLeaf], bundleOf(root), NOW))).toBe('x509svid.no_bundle');
    // A leaf claiming example.org but issued by other.org's CA (with a crafted SAN).
    const forged = craftedLeaf(otherRoot, (spki) => standardExts(spki, otherRoot, { uris: ['spiffe://example.org/w'] }));
    expect(codeOf(() => verifyX509Svid([forged], bundleOf(root), NOW))).toBe('x509svid.untrusted');
    expect(codeOf(() => verifyX509Svid([forged], () => [root.der, otherRoot.der].slice(0, 1), NOW))).toBe('x509svid.untrusted');
    expect(codeOf(() => verifyX509Svid([leafFor(root)], () => [], NOW))).toBe('x509svid.no_bundle');
  });

  it('a CA certificate presented as the leaf', () => {
    expect(codeOf(() => verifyX509Svid([inter.der, root.der], bundleOf(root), NOW))).toBe('x509svid.id_no_path');
    const caLeaf = craftedLeaf(root, (spki) => standardExts(spki, root, { ca: true, ku: KU.digitalSignature }));
    expect(codeOf(() => verifyX509Svid([caLeaf], bundleOf(root), NOW))).toBe('x509svid.leaf_is_ca');
  });

  it('a leaf with two URI SANs, or none', () => {
    const two = craftedLeaf(root, (spki) => standardExts(spki, root, { uris: ['spiffe://example.org/a', 'spiffe://example.org/b'] }));
    expect(codeOf(() => verifyX509Svid([two], bundleOf(root), NOW))).toBe('x509svid.multiple_uri_sans');
    expect(opensslVerify([root.der], [], two).ok).toBe(true); // plain X.509 is fine with it: the SPIFFE rule is ours
    const none = craftedLeaf(root, (spki) => standardExts(spki, root, { uris: [] }));
    expect(codeOf(() => verifyX509Svid([none], bundleOf(root), NOW))).toBe('x509svid.no_uri_san');
    const notSpiffe = craftedLeaf(root, (spki) => standardExts(spki, root, { uris: ['https://example.org/w'] }));
    expect(codeOf(() => verifyX509Svid([notSpiffe], bundleOf(root), NOW))).toBe('x509svid.bad_spiffe_id');
  });

  it('a leaf with keyCertSign or cRLSign, without digitalSignature, or with a missing / non-critical keyUsage', () => {
    for (const ku of [KU.digitalSignature | KU.keyCertSign, KU.digitalSignature | KU.cRLSign, KU.keyEncipherment]) {
      const c = craftedLeaf(root, (spki) => standardExts(spki, root, { ku }));
      expect(codeOf(() => verifyX509Svid([c], bundleOf(root), NOW))).toBe('x509svid.leaf_key_usage');
    }
    const noKu = craftedLeaf(root, (spki) => standardExts(spki, root, { skipKu: true }));
    expect(codeOf(() => verifyX509Svid([noKu], bundleOf(root), NOW))).toBe('x509svid.leaf_key_usage');
    const nonCrit = craftedLeaf(root, (spki) => standardExts(spki, root, { kuCritical: false }));
    expect(codeOf(() => verifyX509Svid([nonCrit], bundleOf(root), NOW))).toBe('x509svid.leaf_key_usage');
    // The same crafted path with a conforming keyUsage verifies: the failures above are the keyUsage.
    const ok = craftedLeaf(root, (spki) => standardExts(spki, root));
    expect(verifyX509Svid([ok], bundleOf(root), NOW).spiffeId.path).toBe('/crafted');
  });

  it('an unknown critical extension', () => {
    const c = craftedLeaf(root, (spki) => standardExts(spki, root, { extra: [encodeExtensionRaw(Buffer.from('2a0304', 'hex'), true, Buffer.from([5, 0]))] }));
    expect(codeOf(() => verifyX509Svid([c], bundleOf(root), NOW))).toBe('x509svid.unhandled_critical_extension');
    const nc = craftedLeaf(root, (spki) => standardExts(spki, root, { extra: [encodeExtensionRaw(Buffer.from('2a0304', 'hex'), false, Buffer.from([5, 0]))] }));
    expect(verifyX509Svid([nc], bundleOf(root), NOW).spiffeId.path).toBe('/crafted');
  });

  it('a chain through a certificate that is not a CA', () => {
    const leafAsIssuer: Ca = { key: generateKey('ec-p256'), der: Buffer.alloc(0) };
    const wl = parseCsr(createCsr(leafAsIssuer.key));
    leafAsIssuer.der = issueX509Svid({ caCertDer: root.der, caKey: root.key.privateKey, subjectSpki: wl.spki, spiffeId: 'spiffe://example.org/evil', notBefore: at(-HOUR), notAfter: at(HOUR) });
    const child = craftedLeaf(leafAsIssuer, (spki) => [
      ...standardExts(spki, root, { uris: ['spiffe://example.org/victim'] }).filter((_, i, a) => i !== a.length - 1),
    ]);
    expect(codeOf(() => verifyX509Svid([child, leafAsIssuer.der], bundleOf(root), NOW))).toBe('x509svid.bad_signing_cert');
    expect(opensslVerify([root.der], [leafAsIssuer.der], child).ok).toBe(false);
  });

  it('a bundle authority that is not a CA', () => {
    const k = generateKey('ec-p256');
    const spki = spkiDer(k.publicKey);
    const name = encodeName([['O', 'fake root']]);
    const notCa = encodeCertificate({
      subjectDer: name,
      subjectSpki: spki,
      serial: Buffer.from([1]),
      notBefore: at(-DAY),
      notAfter: at(DAY),
      extensions: [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign))],
      signerKey: k.privateKey,
    });
    const fake: Ca = { key: k, der: notCa };
    const leaf = craftedLeaf(fake, (s) => [
      encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)),
      encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature)),
      encodeExtension(OID_SAN, false, encodeSanExtensionValue(['spiffe://example.org/x'], [])),
      encodeExtension(OID_SKI, false, encodeSkiValue(keyIdentifier(inspectSpki(s, 'x', 'y').keyBits))),
    ]);
    expect(codeOf(() => verifyX509Svid([leaf], () => [notCa], NOW))).toBe('x509svid.bad_signing_cert');
  });

  it('garbage, empty and oversized input', () => {
    expect(codeOf(() => verifyX509Svid([], bundleOf(root), NOW))).toBe('x509svid.empty_chain');
    expect(codeOf(() => verifyX509Svid([Buffer.from('nope')], bundleOf(root), NOW))).toBe('x509svid.malformed');
    const leaf = leafFor(root);
    expect(codeOf(() => verifyX509Svid([Buffer.concat([leaf, Buffer.from([0])])], bundleOf(root), NOW))).toBe('x509svid.malformed');
    expect(codeOf(() => verifyX509Svid(Array.from({ length: 17 }, () => leaf), bundleOf(root), NOW))).toBe('x509svid.chain_too_long');
    expect(codeOf(() => verifyX509Svid([leaf], () => [Buffer.from('xx')], NOW))).toBe('x509svid.malformed');
  });

  it('never throws anything but SigilError on mutated certificates', () => {
    const leaf = leafFor(inter);
    let seed = 99;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let i = 0; i < 300; i++) {
      const m = Buffer.from(leaf);
      m[rnd() % m.length] = rnd() & 0xff;
      try {
        verifyX509Svid([m, inter.der], bundleOf(root), NOW);
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        expect((e as SigilError).code).toMatch(/^(x509svid|spiffe)\./);
      }
    }
  });
});

describe('interoperability with openssl-issued certificates', () => {
  it('verifies an SVID that openssl x509 -req issued from a Sigil CSR under a Sigil CA', () => {
    const rk = generateKey('ec-p256');
    const root: Ca = {
      key: rk,
      der: issueCaCertificate({ subjectKey: rk.publicKey, signerKey: rk.privateKey, trustDomain: 'example.org', notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + 30 * DAY) }),
    };
    const wk = generateKey('ec-p256');
    const csrPath = join(dir, 'interop.csr');
    writeFileSync(csrPath, createCsr(wk, { spiffeId: 'spiffe://example.org/openssl' }));
    const caPath = join(dir, 'interop-ca.pem');
    const caKeyPath = join(dir, 'interop-ca.key');
    writeFileSync(caPath, certsToPem([root.der]));
    writeFileSync(caKeyPath, root.key.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
    const extPath = join(dir, 'interop.ext');
    writeFileSync(
      extPath,
      [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature',
        'extendedKeyUsage=serverAuth,clientAuth',
        'subjectAltName=critical,URI:spiffe://example.org/openssl',
        'subjectKeyIdentifier=hash',
        'authorityKeyIdentifier=keyid',
      ].join('\n'),
    );
    const out = execFileSync('openssl', [
      'x509', '-req', '-inform', 'DER', '-in', csrPath, '-CA', caPath, '-CAkey', caKeyPath, '-set_serial', '4660', '-days', '1', '-extfile', extPath, '-outform', 'PEM',
    ]).toString();
    const [der] = pemToDers(out);
    const v = verifyX509Svid([der!], bundleOf(root), new Date());
    expect(v.spiffeId.toString()).toBe('spiffe://example.org/openssl');
    // RFC 5280 §4.1.2.6: with an empty subject the SAN must be critical.
    writeFileSync(extPath, ['keyUsage=critical,digitalSignature', 'subjectAltName=URI:spiffe://example.org/openssl'].join('\n'));
    const out2 = execFileSync('openssl', [
      'x509', '-req', '-inform', 'DER', '-in', csrPath, '-CA', caPath, '-CAkey', caKeyPath, '-set_serial', '4661', '-days', '1', '-extfile', extPath, '-outform', 'PEM',
    ]).toString();
    expect(codeOf(() => verifyX509Svid(pemToDers(out2), bundleOf(root), new Date()))).toBe('x509svid.malformed');
  });
});
