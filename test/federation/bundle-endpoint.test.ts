/**
 * Sigil's own bundle endpoint with the https_web profile (the https_spiffe one is exercised end to
 * end in two-trust-domains.test.ts): served with operator certificate files (made by openssl),
 * fetched by Sigil's real fetch client the way a foreign verifier does, renewed certificate files
 * taken into use without a restart; and a verifier configured with it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { startBundleEndpoint, type RunningBundleEndpoint } from '../../src/federation/endpoint.js';
import { fetchBundleDocument } from '../../src/federation/fetch.js';
import { parseForeignBundle } from '../../src/federation/validate.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { waitFor } from '../agent/harness.js';
import { startTestVerifier } from '../support/verifier.js';
import { refusal, x509Of } from './support.js';

const TD = 'web.example';
let dir: string;
let ep: RunningBundleEndpoint;
let bundle: SpiffeBundle;

function webCert(name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  return { cert, key };
}

function get(method: string, path: string, ca: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: ep.port, method, path, ca, agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const rel = (webCaPem: string) => ({ trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${ep.port}/`, profile: 'https_web' as const, webCaPem });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-fedweb-'));
  const k = generateKey('ec-p256');
  const ca = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  bundle = new SpiffeBundle(TD, { x509Authorities: [ca], sequence: 12, refreshHintSeconds: 90 });
  const first = webCert('first');
  renameSync(first.cert, join(dir, 'live.crt'));
  renameSync(first.key, join(dir, 'live.key'));
  ep = await startBundleEndpoint({ config: { address: '127.0.0.1', port: 0, profile: 'https_web', certFile: join(dir, 'live.crt'), keyFile: join(dir, 'live.key') }, bundle: () => bundle, logger: pino({ level: 'silent' }), watchMs: 100 });
}, 30_000);

afterAll(async () => {
  await ep?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('bundle endpoint, profile https_web', () => {
  it('GET / serves the SPIFFE bundle (spiffe_sequence, spiffe_refresh_hint); other paths 404, other methods 405', async () => {
    const ca = readFileSync(join(dir, 'live.crt'), 'utf8');
    const r = await get('GET', '/', ca);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    const doc = JSON.parse(r.body) as { keys: unknown[]; spiffe_sequence: number; spiffe_refresh_hint: number };
    expect(doc.spiffe_sequence).toBe(12);
    expect(doc.spiffe_refresh_hint).toBe(90);
    expect(x509Of(doc)).toEqual([bundle.x509Authorities[0]!.toString('base64')]);
    expect((await get('HEAD', '/', ca)).body).toBe('');
    expect((await get('GET', '/other', ca)).status).toBe(404);
    expect((await get('POST', '/', ca)).status).toBe(405);
  });

  it('Sigil\'s fetch client takes it with the operator\'s Web PKI root, and refuses it with another root', async () => {
    const ca = readFileSync(join(dir, 'live.crt'), 'utf8');
    const got = parseForeignBundle(TD, await fetchBundleDocument(rel(ca)));
    expect(got.sequence).toBe(12);
    const other = webCert('other');
    expect((await refusal(fetchBundleDocument(rel(readFileSync(other.cert, 'utf8'))))).code).toBe('federation.endpoint_untrusted');
  });

  it('renewed certificate files (an ACME renewal) are taken into use without a restart', async () => {
    const old = readFileSync(join(dir, 'live.crt'), 'utf8');
    const next = webCert('renewed');
    const renewed = readFileSync(next.cert, 'utf8');
    renameSync(next.key, join(dir, 'live.key'));
    renameSync(next.cert, join(dir, 'live.crt'));
    await waitFor(async () => (await fetchBundleDocument(rel(renewed)).then(() => true, () => false)) || undefined, 10_000, 'the renewed certificate in use');
    expect((await refusal(fetchBundleDocument(rel(old)))).code).toBe('federation.endpoint_untrusted');
  });
});

describe('a verifier with an https_web bundle endpoint', () => {
  it('refuses to start the endpoint without readable certificate files', async () => {
    const e = await refusal(startBundleEndpoint({ config: { address: '127.0.0.1', port: 0, profile: 'https_web', certFile: join(dir, 'none.crt'), keyFile: join(dir, 'none.key') }, bundle: () => bundle, logger: pino({ level: 'silent' }) }));
    expect(e.code).toBe('federation.endpoint_cert_unreadable');
  });

  it('needs cert and key in its config', () => {
    const base = { trustDomain: 'example.org', listen: { address: '127.0.0.1', port: 0 }, adminSocket: join(dir, 'x.sock'), dataDir: join(dir, 'x') };
    expect(() => verifierConfigFrom({ ...base, federation: { bundleEndpoint: { profile: 'https_web' } } }, dir)).toThrow(/needs "cert" and "key"/);
    expect(() => verifierConfigFrom({ ...base, federation: { bundleEndpoint: { profile: 'https_spiffe', cert: 'a', key: 'b' } } }, dir)).toThrow(/https_web only/);
  });

  it('serves its own trust domain bundle there', async () => {
    const files = webCert('verifier');
    const v = await startTestVerifier({ federation: { bundleEndpoint: { address: '127.0.0.1', port: 0, profile: 'https_web', cert: files.cert, key: files.key } } }, { dir: join(dir, 'v') });
    try {
      const got = parseForeignBundle('example.org', await fetchBundleDocument({ trustDomain: 'example.org', bundleEndpointUrl: `https://127.0.0.1:${v.v.bundleEndpointPort}/`, profile: 'https_web', webCaPem: readFileSync(files.cert, 'utf8') }));
      const own = await adminCall<{ keys: unknown[]; spiffe_sequence: number }>(v.adminSocket, 'GET', '/v1/admin/bundle');
      expect(got.sequence).toBe(own.spiffe_sequence);
      expect(x509Of(got.toJwks() as { keys: unknown[] })).toEqual(x509Of(own));
    } finally {
      await v.stop();
    }
  }, 30_000);
});
