/** EK certificate validation (TCG EK Credential Profile) on synthetic chains made with @peculiar/x509. */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { EkCertVerifier, EkTrustStore, certificatesFromBytes, checkEkPublicMatches, parseCertificate, tpmIdentity, verifyEkChain } from '../../src/tpm/ekcert.js';
import { parseTpm2bPublic } from '../../src/tpm/structures.js';
import { ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, tpmSan, type CaKey } from './synthetic.js';

const AT = new Date('2025-06-01T00:00:00Z');

let root: CaKey;
let inter: CaKey;
let ek = p256KeyPair();
let ekCert: Buffer;

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

beforeAll(async () => {
  root = await makeRoot('Sigil Test EK Root');
  inter = await makeIntermediate('Sigil Test EK Issuing CA', root);
  ek = p256KeyPair();
  ekCert = await makeEkCert(ek.publicKey, inter);
});

describe('EK certificate chain', () => {
  it('accepts a TCG-profile EK certificate chaining to the configured root via a hello intermediate', async () => {
    const r = await verifyEkChain(ekCert, [inter.der], new EkTrustStore([root.der]), AT);
    expect(r.identity).toEqual({ manufacturer: 'id:53544d20', model: 'ST33KTPM2X', version: 'id:00090100' });
    expect(r.anchor.der.equals(root.der)).toBe(true);
    expect(r.chain).toHaveLength(3);
  });

  it('accepts the intermediate from the configuration, and names the configured root as ek_ca', async () => {
    const r = await verifyEkChain(ekCert, [], new EkTrustStore([inter.der, root.der]), AT);
    expect(r.anchor.der.equals(root.der)).toBe(true);
    // only the issuing CA configured: it is the anchor
    const r2 = await verifyEkChain(ekCert, [], new EkTrustStore([inter.der]), AT);
    expect(r2.anchor.der.equals(inter.der)).toBe(true);
  });

  it('rejects a chain to an unconfigured CA, a missing intermediate and a forged issuer: tpm.ek_untrusted', async () => {
    const otherRoot = await makeRoot('Sigil Test EK Root'); // same name, other key
    expect(await code(verifyEkChain(ekCert, [inter.der], new EkTrustStore([otherRoot.der]), AT))).toBe('tpm.ek_untrusted');
    expect(await code(verifyEkChain(ekCert, [], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_untrusted');
    const forgedInter = await makeIntermediate('Sigil Test EK Issuing CA', otherRoot);
    expect(await code(verifyEkChain(ekCert, [forgedInter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_untrusted');
  });

  it('requires issuers to be CAs and honours pathLenConstraint', async () => {
    const notCa = await makeIntermediate('Not A CA', root, { ca: false });
    const leaf1 = await makeEkCert(ek.publicKey, notCa);
    const e = await verifyEkChain(leaf1, [notCa.der], new EkTrustStore([root.der]), AT).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.ek_untrusted');
    expect((e as SigilError).message).toMatch(/not a CA/);

    const limited = await makeIntermediate('Limited', root, { pathLen: 0 });
    const below = await makeIntermediate('Below Limited', limited);
    const leaf2 = await makeEkCert(ek.publicKey, below);
    expect(await code(verifyEkChain(leaf2, [below.der, limited.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_untrusted');
    const leaf3 = await makeEkCert(ek.publicKey, limited);
    expect(await code(verifyEkChain(leaf3, [limited.der], new EkTrustStore([root.der]), AT))).toBe('ok');
  });

  it('checks validity of every certificate at the session time: tpm.ek_cert_expired', async () => {
    expect(await code(verifyEkChain(ekCert, [inter.der], new EkTrustStore([root.der]), new Date('2019-01-01T00:00:00Z')))).toBe('tpm.ek_cert_expired');
    expect(await code(verifyEkChain(ekCert, [inter.der], new EkTrustStore([root.der]), new Date('2041-01-01T00:00:00Z')))).toBe('tpm.ek_cert_expired');
    const shortInter = await makeIntermediate('Short Lived CA', root, { notAfter: new Date('2024-01-01T00:00:00Z') });
    const leaf = await makeEkCert(ek.publicKey, shortInter);
    const e = await verifyEkChain(leaf, [shortInter.der], new EkTrustStore([root.der]), AT).catch((x: unknown) => x);
    expect((e as SigilError).code).toBe('tpm.ek_cert_expired');
    expect((e as SigilError).message).toMatch(/intermediate/);
  });

  it('caches successful chains but re-checks validity at each session time', async () => {
    const v = new EkCertVerifier(new EkTrustStore([root.der]));
    const a = await v.verify(ekCert, [inter.der], AT);
    const b = await v.verify(ekCert, [inter.der], AT);
    expect(b).toBe(a);
    expect(await code(v.verify(ekCert, [inter.der], new Date('2041-01-01T00:00:00Z')))).toBe('tpm.ek_cert_expired');
    expect(await code(v.verify(ekCert, [], AT))).toBe('tpm.ek_untrusted');
  });
});

describe('EK certificate extensions (TCG EK Credential Profile)', () => {
  it('reads TPM attributes from one multi-valued RDN as well as from separate RDNs', async () => {
    const cert = await makeEkCert(ek.publicKey, inter, { san: tpmSan({ manufacturer: 'id:414D4400', model: 'AMD fTPM', version: 'id:00030001', multiValued: true }) });
    expect(tpmIdentity(parseCertificate(cert, 'ek'))).toEqual({ manufacturer: 'id:414d4400', model: 'AMD fTPM', version: 'id:00030001' });
  });

  it('accepts an EK certificate without subjectAltName (no TPM selectors then)', async () => {
    const cert = await makeEkCert(ek.publicKey, inter, { san: null });
    const r = await verifyEkChain(cert, [inter.der], new EkTrustStore([root.der]), AT);
    expect(r.identity).toEqual({});
  });

  it('rejects unknown critical extensions on the EK certificate and on CA certificates', async () => {
    const odd = new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([0x05, 0x00]));
    const leaf = await makeEkCert(ek.publicKey, inter, { extensions: [odd] });
    expect(await code(verifyEkChain(leaf, [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_unknown_critical_extension');
    const policies = new x509.CertificatePolicyExtension(['2.23.133.2.1'], true);
    const leaf2 = await makeEkCert(ek.publicKey, inter, { extensions: [policies] });
    expect(await code(verifyEkChain(leaf2, [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_unknown_critical_extension');
    // non-critical certificatePolicies is fine
    const leaf3 = await makeEkCert(ek.publicKey, inter, { extensions: [new x509.CertificatePolicyExtension(['2.23.133.2.1'], false)] });
    expect(await code(verifyEkChain(leaf3, [inter.der], new EkTrustStore([root.der]), AT))).toBe('ok');
    // an untrusted intermediate with an unknown critical extension is not a usable issuer
    const oddInter = await makeIntermediate('Odd CA', root, { extra: [odd] });
    const leaf4 = await makeEkCert(ek.publicKey, oddInter);
    expect(await code(verifyEkChain(leaf4, [oddInter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_untrusted');
  });

  it('rejects malformed TPM attributes in subjectAltName: tpm.ek_cert_san_invalid', async () => {
    const dup = await makeEkCert(ek.publicKey, inter, { san: tpmSan({ manufacturer: 'id:1', model: 'm', duplicate: true }) });
    expect(await code(verifyEkChain(dup, [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_san_invalid');
    const empty = await makeEkCert(ek.publicKey, inter, { san: tpmSan({}) });
    expect(await code(verifyEkChain(empty, [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_san_invalid');
  });

  it('rejects an EK certificate that is a CA: tpm.ek_cert_invalid', async () => {
    const cert = await makeIntermediate('Looks like an EK', inter);
    expect(await code(verifyEkChain(cert.der, [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_invalid');
  });

  it('accepts zero padding after the DER (as some TPMs store it in NV) but no other trailing bytes', async () => {
    expect(await code(verifyEkChain(Buffer.concat([ekCert, Buffer.alloc(37)]), [inter.der], new EkTrustStore([root.der]), AT))).toBe('ok');
    expect(await code(verifyEkChain(Buffer.concat([ekCert, Buffer.from([1])]), [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_malformed');
    expect(await code(verifyEkChain(ekCert.subarray(0, ekCert.length - 1), [inter.der], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_malformed');
    expect(await code(verifyEkChain(Buffer.from('not a certificate'), [], new EkTrustStore([root.der]), AT))).toBe('tpm.ek_cert_malformed');
  });

  it('reads PEM bundles and DER files', () => {
    const pem = [root.cert.toString('pem'), inter.cert.toString('pem')].join('\n');
    const certs = certificatesFromBytes(Buffer.from(pem), 'bundle');
    expect(certs.map((c) => c.equals(root.der) || c.equals(inter.der))).toEqual([true, true]);
    expect(certificatesFromBytes(root.der, 'der')[0]?.equals(root.der)).toBe(true);
  });
});

describe('EK public key against the certificate', () => {
  it('matches the TPMT_PUBLIC made from the same key, ECC and RSA', async () => {
    const leaf = parseCertificate(ekCert, 'ek');
    expect(await code(() => checkEkPublicMatches(leaf, parseTpm2bPublic(ekPublicFor(ek.publicKey))))).toBe('ok');
    const rsa = rsaKeyPair();
    const rsaLeaf = parseCertificate(await makeEkCert(rsa.publicKey, inter), 'ek');
    expect(await code(() => checkEkPublicMatches(rsaLeaf, parseTpm2bPublic(ekPublicFor(rsa.publicKey))))).toBe('ok');
    // a different key of the same type, and a key of the other type
    expect(await code(() => checkEkPublicMatches(leaf, parseTpm2bPublic(ekPublicFor(p256KeyPair().publicKey))))).toBe('tpm.ek_public_mismatch');
    expect(await code(() => checkEkPublicMatches(rsaLeaf, parseTpm2bPublic(ekPublicFor(ek.publicKey))))).toBe('tpm.ek_public_mismatch');
    expect(await code(() => checkEkPublicMatches(leaf, parseTpm2bPublic(ekPublicFor(rsa.publicKey))))).toBe('tpm.ek_public_mismatch');
  });
});
