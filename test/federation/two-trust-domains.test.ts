/**
 * SPIFFE Federation end to end on this machine: two trust domains (example.org = A, other.org = B),
 * each a real verifier with a bundle endpoint (https_spiffe) and a real agent; relationships both
 * ways; workloads talk through their own Workload API sockets. The mTLS check uses openssl
 * (s_server / s_client), a TLS stack Sigil did not write, with only what each workload received.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { splitConcatenatedDer } from '../../src/spiffe/bundle.js';
import { certsToPem, derToPem } from '../../src/spiffe/pem.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { UID, WorkloadClient, agentEnv, createEntry, freePort, joinToken, runAgent, waitFor, type X509Msg } from '../agent/harness.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';

const A = 'example.org';
const B = 'other.org';
const uidSel = `unix:uid:${UID}`;

let dir: string;
let va: TestVerifier;
let vb: TestVerifier;
let agentA: RunningAgent;
let agentB: RunningAgent;
let wlA: WorkloadClient;
let wlB: WorkloadClient;
let stopTicks: () => void;

async function verifier(td: string, sub: string): Promise<TestVerifier> {
  return startTestVerifier(
    {
      trustDomain: td,
      listen: { address: '127.0.0.1', port: await freePort() },
      // A short CA life so that B's rotation happens within the test (refresh hint ttl/12 = 7 s).
      ca: { ttl: '90s' },
      svid: { x509Ttl: '15s', jwtTtl: '15s', agentTtl: '15s' },
      federation: { bundleEndpoint: { address: '127.0.0.1', port: 0, profile: 'https_spiffe' }, refresh: { min: '1s', maxBackoff: '2s' } },
    },
    { dir: join(dir, sub) },
  );
}

async function federate(from: TestVerifier, to: TestVerifier, toTd: string): Promise<RelationshipView> {
  const bundle = JSON.stringify(await adminCall(to.adminSocket, 'GET', '/v1/admin/bundle'));
  return adminCall(from.adminSocket, 'POST', '/v1/admin/federations', {
    trustDomain: toTd,
    bundleEndpointUrl: `https://127.0.0.1:${to.v.bundleEndpointPort}/`,
    profile: 'https_spiffe',
    endpointSpiffeId: `spiffe://${toTd}/sigil/verifier`,
    initialBundle: bundle,
  });
}

async function startAgent(v: TestVerifier, td: string, sub: string, entries: Record<string, unknown>[]): Promise<{ agent: RunningAgent; wl: WorkloadClient }> {
  const t = await joinToken(v.adminSocket, {});
  for (const e of entries) await createEntry(v.adminSocket, { parentId: t.agentId, selectors: [uidSel], ...e });
  const d = join(dir, sub);
  execFileSync('mkdir', ['-p', d]);
  const env = await agentEnv(d, v.adminSocket, v.v.port, { join_token: { token: t.token } }, { trustDomain: td });
  const agent = await runAgent(env);
  return { agent, wl: new WorkloadClient(env.socket) };
}

function fedOf(m: X509Msg): Record<string, Buffer> {
  return (m as unknown as { federated_bundles: Record<string, Buffer> }).federated_bundles ?? {};
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-fed-'));
  va = await verifier(A, 'va');
  vb = await verifier(B, 'vb');
  // The test verifiers run without their rotation timer; tick both as `sigil verifier run` would.
  const timer = setInterval(() => {
    va.v.tick().catch(() => undefined);
    vb.v.tick().catch(() => undefined);
  }, 500);
  stopTicks = () => clearInterval(timer);
  await federate(va, vb, B);
  await federate(vb, va, A);
  ({ agent: agentA, wl: wlA } = await startAgent(va, A, 'aa', [
    { spiffeId: `spiffe://${A}/web`, federatesWith: [B] },
    { spiffeId: `spiffe://${A}/local-only`, selectors: [uidSel, 'unix:user:nobody-here'] },
  ]));
  ({ agent: agentB, wl: wlB } = await startAgent(vb, B, 'ab', [{ spiffeId: `spiffe://${B}/api`, federatesWith: [A] }]));
}, 60_000);

afterAll(async () => {
  stopTicks?.();
  wlA?.close();
  wlB?.close();
  await agentA?.close();
  await agentB?.close();
  await va?.stop();
  await vb?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('two trust domains federated both ways', () => {
  it('a workload of A gets its SVID plus B\'s bundle (federated_bundles), equal to what B publishes', async () => {
    const s = await wlA.streamWhen((m) => m.svids.length > 0 && fedOf(m)[`spiffe://${B}`] !== undefined, 20_000, 'A SVID with B bundle');
    const m = s.latest()!;
    expect(m.svids.map((x) => x.spiffe_id)).toEqual([`spiffe://${A}/web`]);
    const got = splitConcatenatedDer(fedOf(m)[`spiffe://${B}`]!).map((d) => d.toString('base64'));
    const published = (await adminCall<{ keys: { use: string; x5c?: string[] }[] }>(vb.adminSocket, 'GET', '/v1/admin/bundle')).keys.filter((k) => k.use === 'x509-svid').map((k) => k.x5c![0]);
    expect(got.sort()).toEqual(published.sort());
    // Never A's own bundle replaced: the SVID's bundle is A's.
    expect(fedOf(m)[`spiffe://${A}`]).toBeUndefined();
    const bundles = await wlA.firstJwtBundles();
    expect(Object.keys(bundles.bundles).sort()).toEqual([`spiffe://${A}`, `spiffe://${B}`]);
  }, 30_000);

  it('mTLS between a workload of A (openssl s_server) and one of B (openssl s_client) with only what each got from its Workload API', async () => {
    const sa = await wlA.streamWhen((m) => fedOf(m)[`spiffe://${B}`] !== undefined, 20_000, 'A material');
    const sb = await wlB.streamWhen((m) => m.svids.length > 0 && fedOf(m)[`spiffe://${A}`] !== undefined, 20_000, 'B material');
    const write = (name: string, m: X509Msg, foreign: string) => {
      const s = m.svids[0]!;
      const d = join(dir, name);
      execFileSync('mkdir', ['-p', d]);
      writeFileSync(join(d, 'svid.pem'), certsToPem(splitConcatenatedDer(s.x509_svid)));
      writeFileSync(join(d, 'key.pem'), derToPem(s.x509_svid_key, 'PRIVATE KEY'), { mode: 0o600 });
      writeFileSync(join(d, 'foreign.pem'), certsToPem(splitConcatenatedDer(fedOf(m)[foreign]!)));
      writeFileSync(join(d, 'own.pem'), certsToPem(splitConcatenatedDer(s.bundle)));
      return d;
    };
    const da = write('wa', sa.latest()!, `spiffe://${B}`);
    const db = write('wb', sb.latest()!, `spiffe://${A}`);
    const run = async (serverCa: string): Promise<{ out: string; code: number | null }> => {
      const port = await freePort();
      const server: ChildProcess = spawn('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, '-cert', join(da, 'svid.pem'), '-key', join(da, 'key.pem'), '-CAfile', serverCa, '-Verify', '1', '-verify_return_error', '-naccept', '1', '-quiet'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let serverOut = '';
      server.stdout!.on('data', (c: Buffer) => (serverOut += c.toString()));
      server.stderr!.on('data', (c: Buffer) => (serverOut += c.toString()));
      await new Promise((r) => setTimeout(r, 500));
      const client = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-cert', join(db, 'svid.pem'), '-key', join(db, 'key.pem'), '-CAfile', join(db, 'foreign.pem'), '-verify_return_error', '-quiet'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      client.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      client.stderr!.on('data', (c: Buffer) => (out += c.toString()));
      client.stdin!.write('hello from B\n');
      const code = await new Promise<number | null>((resolve) => {
        const t = setTimeout(() => {
          client.kill();
          resolve(null);
        }, 5000);
        client.on('exit', (c) => {
          clearTimeout(t);
          resolve(c);
        });
        setTimeout(() => client.stdin!.end(), 1000);
      });
      server.kill();
      return { out: `${out}\n--server--\n${serverOut}`, code };
    };
    const ok = await run(join(da, 'foreign.pem'));
    expect(ok.out).toContain('hello from B');
    expect(ok.out).not.toMatch(/verify error|alert/i);
    // Control: the server trusting only its own trust domain refuses B's client certificate.
    const refused = await run(join(da, 'own.pem'));
    expect(refused.out).not.toContain('hello from B');
  }, 60_000);

  it('a JWT-SVID minted in B validates in A through ValidateJWTSVID', async () => {
    const { svids } = await wlB.fetchJwt(['a-service']);
    const token = svids[0]!.svid;
    await waitFor(async () => (await wlA.validateJwt(token, 'a-service')).spiffe_id === `spiffe://${B}/api`, 20_000, 'validation in A');
    await expect(wlA.validateJwt(token, 'other-audience')).rejects.toThrow();
  }, 30_000);

  it('B rotates its CA and A\'s workloads hold the new authority before the old one expires', async () => {
    const initial = (await adminCall<{ keys: { use: string; x5c?: string[] }[] }>(vb.adminSocket, 'GET', '/v1/admin/bundle')).keys.filter((k) => k.use === 'x509-svid').map((k) => k.x5c![0]!);
    // B prepares its successor at half of ca.ttl (45 s) and publishes it beside the active CA.
    const successor = await waitFor(
      async () => {
        const now = (await adminCall<{ keys: { use: string; x5c?: string[] }[] }>(vb.adminSocket, 'GET', '/v1/admin/bundle')).keys.filter((k) => k.use === 'x509-svid').map((k) => k.x5c![0]!);
        return now.find((c) => !initial.includes(c));
      },
      80_000,
      'B publishes a successor CA',
      250,
    );
    const publishedAt = Date.now();
    const s = await wlA.streamWhen((m) => (fedOf(m)[`spiffe://${B}`] ? splitConcatenatedDer(fedOf(m)[`spiffe://${B}`]!).some((d) => d.toString('base64') === successor) : false), 30_000, 'A workload holds B successor');
    const heldAfter = Date.now() - publishedAt;
    // The old CA is the one with the earliest expiry; A's workloads got the successor well before it.
    const { X509Certificate } = await import('node:crypto');
    const oldExpiry = Math.min(...initial.map((c) => Date.parse(new X509Certificate(Buffer.from(c, 'base64')).validTo)));
    expect(Date.now()).toBeLessThan(oldExpiry);
    expect(heldAfter).toBeLessThan(20_000);
    s.cancel();
  }, 120_000);
});

describe('refusals: the last good bundle is kept', () => {
  let fake: Server;
  let fakePort: number;
  let serve: () => { status?: number; body: string | Buffer } = () => ({ body: '{}' });
  const TD = 'fake.example';
  let webCa: string;
  let goodBundle: { keys: unknown[]; spiffe_sequence: number };

  beforeAll(async () => {
    // A Web PKI of our own for an https_web endpoint (openssl makes the certificate).
    const d = join(dir, 'web');
    execFileSync('mkdir', ['-p', d]);
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(d, 'key.pem'), '-out', join(d, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(d, 'other-key.pem'), '-out', join(d, 'other-cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    webCa = readFileSync(join(d, 'cert.pem'), 'utf8');
    fake = createServer({ cert: webCa, key: readFileSync(join(d, 'key.pem')) }, (_req, res) => {
      const r = serve();
      res.writeHead(r.status ?? 200, { 'content-type': 'application/json' }).end(r.body);
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
    fakePort = (fake.address() as AddressInfo).port;
    // The fake trust domain's bundle: B's keys would name other.org, so build one from a CA of fake.example.
    const { generateKey } = await import('../../src/spiffe/keys.js');
    const { issueCaCertificate } = await import('../../src/spiffe/x509svid.js');
    const k = generateKey('ec-p256');
    const ca = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
    const { SpiffeBundle } = await import('../../src/spiffe/bundle.js');
    goodBundle = new SpiffeBundle(TD, { x509Authorities: [ca], sequence: 5, refreshHintSeconds: 300 }).toJwks() as typeof goodBundle;
    serve = () => ({ body: JSON.stringify(goodBundle) });
    await adminCall(va.adminSocket, 'POST', '/v1/admin/federations', { trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${fakePort}/bundle`, profile: 'https_web', webCaPem: webCa });
    await waitFor(async () => (await adminCall<RelationshipView>(va.adminSocket, 'GET', `/v1/admin/federations/${TD}`)).bundleSequence === 5, 10_000, 'first bundle');
  }, 30_000);

  afterAll(() => fake?.close());

  async function refused(body: () => { status?: number; body: string | Buffer }, code: string): Promise<void> {
    serve = body;
    const err = await adminCall(va.adminSocket, 'POST', `/v1/admin/federations/${TD}/refresh`).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SigilError);
    expect((err as SigilError).code).toBe(code);
    const v = await adminCall<RelationshipView & { bundle: { spiffe_sequence: number } }>(va.adminSocket, 'GET', `/v1/admin/federations/${TD}`);
    expect(v.bundleSequence).toBe(5);
    expect(v.bundle.spiffe_sequence).toBe(5);
    expect(v.refresh.lastError?.code).toBe(code);
  }

  it('a downgrade of spiffe_sequence', () => refused(() => ({ body: JSON.stringify({ ...goodBundle, spiffe_sequence: 4 }) }), 'federation.sequence_downgrade'));
  it('a bundle for another trust domain (A\'s own bundle served as fake.example\'s)', async () => {
    const aBundle = await adminCall<object>(va.adminSocket, 'GET', '/v1/admin/bundle');
    await refused(() => ({ body: JSON.stringify(aBundle) }), 'federation.bundle_wrong_trust_domain');
  });
  it('a huge bundle', () => refused(() => ({ body: Buffer.alloc(300 * 1024, 0x20) }), 'federation.bundle_too_large'));
  it('malformed JSON', () => refused(() => ({ body: '{"keys": [' }), 'federation.bundle_malformed'));
  it('private key material in a key', () => refused(() => ({ body: JSON.stringify({ ...goodBundle, spiffe_sequence: 6, keys: [{ ...(goodBundle.keys[0] as object), d: 'AAAA' }] }) }), 'federation.bundle_malformed'));
  it('an HTTP error', () => refused(() => ({ status: 500, body: 'oops' }), 'federation.endpoint_http_error'));

  it('a TLS certificate the relationship does not trust', async () => {
    const d = join(dir, 'web');
    await adminCall(va.adminSocket, 'PATCH', `/v1/admin/federations/${TD}`, { webCaPem: readFileSync(join(d, 'other-cert.pem'), 'utf8') });
    try {
      await refused(() => ({ body: JSON.stringify({ ...goodBundle, spiffe_sequence: 7 }) }), 'federation.endpoint_untrusted');
    } finally {
      await adminCall(va.adminSocket, 'PATCH', `/v1/admin/federations/${TD}`, { webCaPem: webCa });
    }
  });

  it('an https_spiffe endpoint presenting another SPIFFE ID', async () => {
    // B's real endpoint, but the relationship expects another endpoint SPIFFE ID of B: the certificate chains to B's bundle and is refused for its ID.
    const err = await adminCall(va.adminSocket, 'PATCH', `/v1/admin/federations/${B}`, { endpointSpiffeId: `spiffe://${B}/not-the-endpoint` }).then(async () => adminCall(va.adminSocket, 'POST', `/v1/admin/federations/${B}/refresh`)).then(
      () => undefined,
      (e: unknown) => e,
    );
    await adminCall(va.adminSocket, 'PATCH', `/v1/admin/federations/${B}`, { endpointSpiffeId: `spiffe://${B}/sigil/verifier` });
    expect((err as SigilError).code).toBe('federation.endpoint_id_mismatch');
  });

  it('a good bundle with a higher sequence is taken', async () => {
    serve = () => ({ body: JSON.stringify({ ...goodBundle, spiffe_sequence: 9 }) });
    const v = await adminCall<RelationshipView>(va.adminSocket, 'POST', `/v1/admin/federations/${TD}/refresh`);
    expect(v.bundleSequence).toBe(9);
  });
});
