/**
 * A certificate from the configured EK CA hierarchy that says it is for something else. The EK
 * path looked at extendedKeyUsage only when it was critical; but RFC 5280 §4.2.1.12 binds the
 * listed purposes whether or not the extension is critical, and a TLS server certificate
 * (extendedKeyUsage serverAuth, non-critical as usual) issued under a root that is also configured
 * as `ekCa` passed as an EK certificate. Whoever holds that certificate's private key — which
 * lives in a web server, not a TPM — then answers the credential challenge in software and signs
 * quotes with a software AK: an attestation of a "genuine TPM" with any PCR values they like.
 * The same for a keyUsage that allows only signing: an EK is a decryption key (keyEncipherment for
 * RSA, keyAgreement for ECC in the TCG EK Credential Profile). Certificates without
 * extendedKeyUsage or keyUsage (many EK certificates carry no extendedKeyUsage) are unaffected.
 */
import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { MemoryState } from '../tpm/memory-state.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, syntheticQuote, type CaKey } from '../tpm/synthetic.js';

let dir = '';
let v: NodeAttestorVerifier;
let ca: CaKey;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-ekcert-purpose-'));
  const root = await makeRoot('Vendor Root');
  ca = await makeIntermediate('Vendor Issuing CA', root);
  writeFileSync(join(dir, 'ekca.pem'), root.cert.toString('pem'));
  v = await tpmVerifierPlugin.create({ ekCa: ['ekca.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => new Date(), state: new MemoryState(), configDir: dir });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An end-entity certificate for `key` under the issuing CA, with the given extensions. */
async function leafCert(key: KeyObject, extensions: x509.Extension[]): Promise<Buffer> {
  const cert = await x509.X509CertificateGenerator.create({
    subject: 'CN=www.vendor.example',
    issuer: ca.cert.subject,
    publicKey: key.export({ type: 'spki', format: 'der' }),
    signingKey: ca.keys.privateKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    notBefore: new Date(Date.now() - 86_400_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions,
  });
  return Buffer.from(cert.rawData);
}

function session(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
}

/** A whole tpm session with no TPM: the "EK" private key in software, a software AK, PCR 7 made up. */
async function attestWithoutTpm(ekCert: Buffer, ek: { publicKey: KeyObject; privateKey: KeyObject }): Promise<string> {
  const ak = rsaKeyPair();
  const akPub = akPublicFor(ak.publicKey);
  const hello = { ekCert: ekCert.toString('base64'), ekIntermediates: [ca.der.toString('base64')], ekPub: ekPublicFor(ek.publicKey).toString('base64'), akPub: akPub.toString('base64') };
  const s = session();
  try {
    const { challenge, state } = await v.begin(hello, s);
    const c = challenge as { credentialBlob: string; encryptedSecret: string };
    const secret = activateCredentialSoftware(ek.privateKey, akPub, Buffer.from(c.credentialBlob, 'base64'), Buffer.from(c.encryptedSecret, 'base64'));
    const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: [7] }], values: new Map([['sha256:7', Buffer.alloc(32, 0x77)]]), clock: 1n, resetCount: 1, restartCount: 0, signer: { ekPub: Buffer.from(hello.ekPub, 'base64'), akPub } });
    await v.finish({ secret: secret.toString('base64'), quote: q.attest.toString('base64'), signature: q.signature.toString('base64'), pcrValues: [{ bank: 'sha256', index: 7, value: '77'.repeat(32) }] }, state, s);
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

describe('EK-CA certificates whose extendedKeyUsage or keyUsage names another purpose', () => {
  it('a TLS server certificate from the EK CA hierarchy (serverAuth, non-critical) is not an EK certificate: tpm.ek_cert_invalid', async () => {
    const web = rsaKeyPair();
    const tls = await leafCert(web.publicKey, [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1'], false),
    ]);
    expect(await attestWithoutTpm(tls, web)).toBe('tpm.ek_cert_invalid');
  });

  it('the same with a critical extendedKeyUsage (refused before too)', async () => {
    const web = rsaKeyPair();
    const tls = await leafCert(web.publicKey, [new x509.BasicConstraintsExtension(false, undefined, true), new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.1'], true)]);
    expect(await attestWithoutTpm(tls, web)).toBe('tpm.ek_cert_invalid');
  });

  it('a certificate whose keyUsage allows only signing (no extendedKeyUsage) certifies no EK: tpm.ek_cert_invalid', async () => {
    const signer = rsaKeyPair();
    const cert = await leafCert(signer.publicKey, [new x509.BasicConstraintsExtension(false, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true)]);
    expect(await attestWithoutTpm(cert, signer)).toBe('tpm.ek_cert_invalid');
  });

  it('EK certificates with tcg-kp-EKCertificate (non-critical), anyExtendedKeyUsage, or no extendedKeyUsage still pass', async () => {
    const a = rsaKeyPair();
    expect(await attestWithoutTpm(await makeEkCert(a.publicKey, ca, { notBefore: new Date(Date.now() - 86_400_000) }), a)).toBe('ok');
    const b = rsaKeyPair();
    expect(await attestWithoutTpm(await leafCert(b.publicKey, [new x509.BasicConstraintsExtension(false, undefined, true), new x509.ExtendedKeyUsageExtension(['2.5.29.37.0'], false)]), b)).toBe('ok');
    const c = rsaKeyPair();
    expect(await attestWithoutTpm(await leafCert(c.publicKey, [new x509.BasicConstraintsExtension(false, undefined, true)]), c)).toBe('ok');
  });
});
