/**
 * Files holding secrets that the operator names in a config get the check of the key files in
 * dataDir: a file accessible by group or others is refused with `keys.file_permissions`, the
 * message naming the file, its mode and the chmod to run. Covered: the upstream CA key
 * (`ca.upstream.key`), the https_web bundle endpoint key, the agent's join_token `tokenFile`.
 * Mode 0600 works, and the upstream and endpoint keys keep taking PEM forms other than PKCS#8.
 */
import { chmodSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBundleEndpoint } from '../../src/federation/endpoint.js';
import { joinTokenAgentPlugin } from '../../src/join-token/plugin.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { startTestVerifier } from '../support/verifier.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-secret-perms-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Write `text` at `name` in the test directory with `mode` (chmod, whatever the umask). */
function put(name: string, text: string | Buffer, mode: number): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}

const permissionRefusal = (path: string) =>
  expect.objectContaining({ code: 'keys.file_permissions', message: expect.stringContaining(`${path} has mode 644; it must not be accessible by group or others (chmod 600 ${path})`) });

describe('upstream CA key (ca.upstream.key)', () => {
  const validity = { notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86400_000 * 30) };
  const root = generateKey('ec-p256');
  const rootDer = issueCaCertificate({ subjectKey: root.publicKey, signerKey: root.privateKey, trustDomain: 'example.org', commonName: 'Root', ...validity });

  it('mode 0644 is refused with keys.file_permissions naming the file, its mode and the chmod', async () => {
    const cert = put('up-chain.pem', certsToPem([rootDer]), 0o644);
    const key = put('up-open.key', root.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, 0o644);
    await expect(startTestVerifier({ ca: { upstream: { cert, key } } })).rejects.toEqual(permissionRefusal(key));
  });

  it.each([
    ['PKCS#8', 'pkcs8'],
    ['SEC1 (EC PRIVATE KEY)', 'sec1'],
  ] as const)('mode 0600 works (%s)', async (_what, type) => {
    const cert = put('up-chain.pem', certsToPem([rootDer]), 0o644);
    const key = put(`up-${type}.key`, root.privateKey.export({ format: 'pem', type }) as string, 0o600);
    const v = await startTestVerifier({ ca: { upstream: { cert, key } } });
    try {
      expect(v.v.core.ca.bundle().x509Authorities.map((c) => c.toString('base64'))).toEqual([rootDer.toString('base64')]);
    } finally {
      await v.stop();
    }
  });
});

describe('https_web bundle endpoint key', () => {
  const k = generateKey('ec-p256');
  const cert = issueCaCertificate({ trustDomain: 'web.example', subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  const bundle = new SpiffeBundle('web.example', { x509Authorities: [cert], sequence: 3 });

  function get(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/', rejectUnauthorized: false, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('mode 0644 is refused at start with keys.file_permissions', async () => {
    const certFile = put('web-open.crt', certsToPem([cert]), 0o644);
    const keyFile = put('web-open.key', k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, 0o644);
    await expect(startBundleEndpoint({ config: { address: '127.0.0.1', port: 0, profile: 'https_web', certFile, keyFile }, bundle: () => bundle, logger: pino({ level: 'silent' }) })).rejects.toEqual(permissionRefusal(keyFile));
  });

  it.each([
    ['PKCS#8', 'pkcs8'],
    ['SEC1 (EC PRIVATE KEY)', 'sec1'],
  ] as const)('mode 0600 works (%s); a renewal with mode 0644 is not taken into use', async (_what, type) => {
    const certFile = put(`web-${type}.crt`, certsToPem([cert]), 0o644);
    const keyFile = put(`web-${type}.key`, k.privateKey.export({ format: 'pem', type }) as string, 0o600);
    const lines: string[] = [];
    const ep = await startBundleEndpoint({ config: { address: '127.0.0.1', port: 0, profile: 'https_web', certFile, keyFile }, bundle: () => bundle, logger: pino({ level: 'warn' }, { write: (s: string) => void lines.push(s) }), watchMs: 50 });
    try {
      expect(await get(ep.port)).toBe(200);
      chmodSync(keyFile, 0o644);
      utimesSync(keyFile, new Date(), new Date(Date.now() + 5_000));
      const deadline = Date.now() + 5_000;
      while (!lines.some((l) => l.includes('keys.file_permissions')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(lines.join('\n')).toContain(`chmod 600 ${keyFile}`);
      expect(await get(ep.port)).toBe(200);
    } finally {
      await ep.close();
    }
  });
});

describe('join_token tokenFile (agent)', () => {
  const token = 'a'.repeat(16) + 'B_-0123456789';
  const deps = { trustDomain: 'example.org', logger: pino({ level: 'silent' }), dataDir: '/nonexistent', now: () => new Date() };

  it('mode 0644 is refused with keys.file_permissions', async () => {
    const tokenFile = put('token-open', `${token}\n`, 0o644);
    const a = await joinTokenAgentPlugin.create({ tokenFile: 'token-open' }, { ...deps, configDir: dir });
    await expect(a.hello()).rejects.toEqual(permissionRefusal(tokenFile));
  });

  it('mode 0600 works', async () => {
    put('token-private', `${token}\n`, 0o600);
    const a = await joinTokenAgentPlugin.create({ tokenFile: 'token-private' }, { ...deps, configDir: dir });
    expect(await a.hello()).toEqual({ token });
  });
});
