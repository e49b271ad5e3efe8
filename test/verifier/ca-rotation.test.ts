import { execFileSync } from 'node:child_process';
import { mkdtempSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem, issueCaCertificate, verifyX509Svid } from '../../src/spiffe/x509svid.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { startTestVerifier } from '../support/verifier.js';

const H = 3600_000;

async function mint(socket: string, id = 'spiffe://example.org/w') {
  const key = generateKey('ec-p256');
  return adminCall<{ chain: string[]; bundlePem: string; expiresAt: string }>(socket, 'POST', '/v1/admin/x509', { spiffeId: id, csr: createCsr(key).toString('base64') });
}

describe('CA rotation with a fake clock', () => {
  it('prepares at half life, activates at five sixths, keeps both in the bundle during overlap, drops the expired one', async () => {
    let t = Date.parse('2026-01-01T00:00:00Z');
    const tv = await startTestVerifier({}, { now: () => new Date(t) });
    try {
      const ca = tv.v.core.ca;
      const jwks0 = ca.bundle().toJwks() as { keys: { use: string }[]; spiffe_sequence: number };
      expect(jwks0.keys.filter((k) => k.use === 'x509-svid')).toHaveLength(1);
      expect(jwks0.keys.filter((k) => k.use === 'jwt-svid')).toHaveLength(1);
      const jwks0Der = ca.bundle().x509Authorities[0]!;
      const first = await mint(tv.adminSocket);
      const issuer0 = new X509Certificate(Buffer.from(first.chain[0]!, 'base64')).issuer;

      t += 11 * H;
      expect(await ca.rotate()).toBe(false);
      t += 1 * H + 1000; // past half life
      expect(await ca.rotate()).toBe(true);
      let slots = ca.slots();
      expect(slots.x509.map((s) => s.state).sort()).toEqual(['active', 'prepared']);
      expect(ca.bundle().x509Authorities).toHaveLength(2);
      expect(ca.bundle().sequence).toBeGreaterThan(jwks0.spiffe_sequence);
      // Still signing with the first CA.
      const mid = await mint(tv.adminSocket);
      expect(new X509Certificate(Buffer.from(mid.chain[0]!, 'base64')).verify(new X509Certificate(ca.bundle().x509Authorities[0]!).publicKey)).toBe(true);

      t = Date.parse('2026-01-01T00:00:00Z') + 20 * H - 60_000; // just before 5/6
      await ca.rotate();
      const lastOld = await mint(tv.adminSocket);
      t = Date.parse('2026-01-01T00:00:00Z') + 20 * H + 1000; // past 5/6
      await ca.rotate();
      slots = ca.slots();
      expect(slots.x509.map((s) => s.state).sort()).toEqual(['active', 'old']);
      const after = await mint(tv.adminSocket);
      const leaf = new X509Certificate(Buffer.from(after.chain[0]!, 'base64'));
      const newCa = slots.x509.find((s) => s.state === 'active')!;
      expect(leaf.verify(new X509Certificate(Buffer.from(newCa.certDer, 'base64')).publicKey)).toBe(true);
      expect(leaf.issuer).not.toBe(issuer0); // a new CA certificate
      // An SVID from before the switch still verifies against the published bundle.
      const b = ca.bundle();
      expect(verifyX509Svid([Buffer.from(lastOld.chain[0]!, 'base64')], () => b.x509Authorities, new Date(t)).spiffeId.toString()).toBe('spiffe://example.org/w');

      t = Date.parse('2026-01-01T00:00:00Z') + 24 * H + 60_000; // the first CA expired
      await ca.rotate();
      // The second CA (made at 12 h) is now at its own half life, so its successor is prepared.
      expect(ca.slots().x509.map((s) => s.state).sort()).toEqual(['active', 'prepared']);
      const firstCaDer = jwks0Der;
      expect(ca.bundle().x509Authorities.some((d) => d.equals(firstCaDer))).toBe(false);
      expect(ca.slots().jwt.map((s) => s.state).sort()).toEqual(['active', 'prepared']);
      // Key files: 0600, and the dropped CA's key file is gone (2 X.509 + 2 JWT remain).
      const keys = readdirSync(join(tv.dir, 'data', 'keys'));
      expect(keys).toHaveLength(4);
      for (const k of keys) expect(statSync(join(tv.dir, 'data', 'keys', k)).mode & 0o777).toBe(0o600);
    } finally {
      await tv.stop();
    }
  });

  it('keeps CA, entries and agents across a restart', async () => {
    const tv = await startTestVerifier();
    try {
      const before = tv.v.core.ca.bundle().toPem();
      const e = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/keep', parentId: 'spiffe://example.org/x', selectors: ['unix:uid:1'] });
      await tv.restart();
      expect(tv.v.core.ca.bundle().toPem()).toBe(before);
      const list = await adminCall<{ entries: { id: string }[] }>(tv.adminSocket, 'GET', '/v1/admin/entries');
      expect(list.entries.map((x) => x.id)).toContain(e.id);
      const m = await mint(tv.adminSocket);
      expect(m.bundlePem).toBe(before);
    } finally {
      await tv.stop();
    }
  });

  it('runs as an intermediate under an upstream CA; openssl verifies SVIDs against the upstream root', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-up-'));
    const root = generateKey('ec-p384');
    const now = new Date();
    const rootDer = issueCaCertificate({ subjectKey: root.publicKey, signerKey: root.privateKey, trustDomain: 'example.org', commonName: 'Offline Root', notBefore: new Date(now.getTime() - 60_000), notAfter: new Date(now.getTime() + 365 * 24 * H) });
    writeFileSync(join(dir, 'root.pem'), certsToPem([rootDer]));
    writeFileSync(join(dir, 'root.key'), root.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const tv = await startTestVerifier({ ca: { upstream: { cert: join(dir, 'root.pem'), key: join(dir, 'root.key') } } });
    try {
      const b = SpiffeBundle.fromPem('example.org', await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem'));
      expect(b.x509Authorities).toHaveLength(1);
      expect(b.x509Authorities[0]!.equals(rootDer)).toBe(true);
      const m = await mint(tv.adminSocket);
      expect(m.chain).toHaveLength(2);
      writeFileSync(join(dir, 'leaf.pem'), certsToPem([Buffer.from(m.chain[0]!, 'base64')]));
      writeFileSync(join(dir, 'inter.pem'), certsToPem([Buffer.from(m.chain[1]!, 'base64')]));
      const out = execFileSync('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'inter.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' });
      expect(out).toMatch(/OK/);
      expect(verifyX509Svid(m.chain.map((c) => Buffer.from(c, 'base64')), () => [rootDer], new Date()).spiffeId.toString()).toBe('spiffe://example.org/w');
    } finally {
      await tv.stop();
    }
  });
});
