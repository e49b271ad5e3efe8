/**
 * An upstream CA chain whose certificates relying parties would refuse as SVID signers (X509-SVID
 * §4.3: keyUsage with keyCertSign) is refused when the verifier loads it — before, the verifier
 * started and issued SVIDs that every agent then refused (x509svid.bad_signing_cert).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem, issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { startTestVerifier } from '../support/verifier.js';

const dir = mkdtempSync(join(tmpdir(), 'sigil-upku-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function opensslRoot(name: string, extra: string[]): void {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.pem`), '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=URI:spiffe://example.org', ...extra], { stdio: 'ignore' });
  execFileSync('chmod', ['600', join(dir, `${name}.key`)]);
}

describe('upstream CA chain checked as SVID signers at load', () => {
  it('a root without keyUsage (openssl req -x509 default) is refused with ca.upstream_invalid naming why', async () => {
    opensslRoot('no-ku', []);
    const err = await startTestVerifier({ ca: { upstream: { cert: join(dir, 'no-ku.pem'), key: join(dir, 'no-ku.key') } } }).then(
      async (tv) => {
        await tv.stop();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'ca.upstream_invalid' });
    expect((err as Error).message).toMatch(/certificate 1 cannot sign SVIDs .*keyUsage/);
  }, 30_000);

  it('a root with keyUsage lacking keyCertSign is refused; one with keyCertSign starts', async () => {
    opensslRoot('ds-only', ['-addext', 'keyUsage=critical,digitalSignature']);
    await expect(startTestVerifier({ ca: { upstream: { cert: join(dir, 'ds-only.pem'), key: join(dir, 'ds-only.key') } } })).rejects.toMatchObject({ code: 'ca.upstream_invalid' });
    opensslRoot('good', ['-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    const tv = await startTestVerifier({ ca: { upstream: { cert: join(dir, 'good.pem'), key: join(dir, 'good.key') } } });
    await tv.stop();
  }, 30_000);

  it('an expired upstream root keeps its own code, ca.upstream_expired', async () => {
    const k = generateKey('ec-p256');
    const der = issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', commonName: 'Old', notBefore: new Date(Date.now() - 86400_000 * 2), notAfter: new Date(Date.now() - 86400_000) });
    writeFileSync(join(dir, 'old.pem'), certsToPem([der]));
    writeFileSync(join(dir, 'old.key'), k.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    await expect(startTestVerifier({ ca: { upstream: { cert: join(dir, 'old.pem'), key: join(dir, 'old.key') } } })).rejects.toMatchObject({ code: 'ca.upstream_expired' });
  }, 30_000);
});
