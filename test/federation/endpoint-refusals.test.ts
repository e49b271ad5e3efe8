/**
 * Foreign bundle endpoints that misbehave, against a real verifier (example.org) fetching over real
 * TLS: an expired or not-yet-valid endpoint certificate (both profiles: https_web with a Web PKI
 * of our own, https_spiffe with an SVID of the foreign trust domain), and bundles the issue's "Bad
 * input" list names (streamed past the size cap, too many keys, keys with the wrong `use`, private
 * key members, an authority of the local trust domain), a hung endpoint, a redirect. Each is
 * refused with its code, counted in the metrics, and the last good bundle stays — in the
 * datastore and in what agents are served.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import { createServer, type Server, type ServerOptions } from 'node:https';
import type { AddressInfo } from 'node:net';
import * as x509 from '@peculiar/x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem, derToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { attestAgent, federatedOf, refusal, showRel, x509Of, type AgentIdentity } from './support.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const A = 'example.org';
const HOUR = 3600_000;
const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

let va: TestVerifier;
let agent: AgentIdentity;

/** A fake bundle endpoint whose TLS material and answer the test changes between refreshes. */
class FakeEndpoint {
  server!: Server;
  port = 0;
  answer: (res: import('node:http').ServerResponse) => void = (res) => res.writeHead(503).end();
  async start(tls: ServerOptions): Promise<void> {
    this.server = createServer(tls, (_req, res) => this.answer(res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as AddressInfo).port;
  }
  useTls(tls: { cert: string; key: string }): void {
    this.server.setSecureContext(tls);
  }
  serve(body: string | Buffer): void {
    this.answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  }
  close(): Promise<void> {
    return new Promise((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
  }
}

/** A trust domain's CA and a bundle of it at a given sequence. */
function trustDomainCa(td: string) {
  const k = generateKey('ec-p256');
  const der = issueCaCertificate({ trustDomain: td, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 24 * HOUR), notAfter: new Date(Date.now() + 24 * HOUR) });
  return {
    der,
    key: k.privateKey,
    bundle: (seq: number) => new SpiffeBundle(td, { x509Authorities: [der], sequence: seq, refreshHintSeconds: 300 }).toJwks() as { keys: Record<string, unknown>[]; spiffe_sequence: number },
  };
}

async function refresh(td: string): Promise<RelationshipView> {
  return adminCall(va.adminSocket, 'POST', `/v1/admin/federations/${td}/refresh`);
}

/** Refused with `code` (message matching `msg`); the last good bundle (sequence `keptSeq`) still stored and served. */
async function expectRefusedKeeping(td: string, code: string, keptSeq: number, msg?: RegExp): Promise<void> {
  const err = await refusal(refresh(td));
  expect(err.code).toBe(code);
  if (msg) expect(err.message).toMatch(msg);
  const v = await showRel(va, td);
  expect(v.bundleSequence).toBe(keptSeq);
  expect(v.bundle?.spiffe_sequence).toBe(keptSeq);
  expect(v.refresh.lastError?.code).toBe(code);
  await new Promise((r) => setTimeout(r, 1100)); // the served bundles are read from the datastore at most once a second
  const served = await federatedOf(va, agent);
  expect(served.bundles[td]?.spiffe_sequence).toBe(keptSeq);
}

async function refusalCount(td: string, code: string): Promise<number> {
  const m = await va.v.core.metrics.registry.getSingleMetric('sigil_federation_refreshes_total')!.get();
  return m.values.find((x) => x.labels.trust_domain === td && x.labels.result === code)?.value ?? 0;
}

/** An entry of the test agent federating with `td` (so the agent is served its bundle). */
async function federateAgentWith(td: string): Promise<void> {
  await adminCall(va.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${A}/with/${td}`, parentId: agent.agentId, selectors: ['unix:uid:1'], federatesWith: [td] });
}

beforeAll(async () => {
  va = await startTestVerifier({ trustDomain: A, federation: { refresh: { min: '1s', max: '1h', maxBackoff: '1h', timeout: '2s' } } });
  agent = await attestAgent(va, []);
}, 30_000);

afterAll(async () => va?.stop());

describe('https_spiffe endpoint certificate out of its validity', () => {
  const TD = 'spiffe-fake.example';
  const endpointId = `spiffe://${TD}/bundle-endpoint`;
  const ca = trustDomainCa(TD);
  const ep = new FakeEndpoint();
  const svid = (notBefore: Date, notAfter: Date) => {
    const k = generateKey('ec-p256');
    const leaf = issueX509Svid({ caCertDer: ca.der, caKey: ca.key, subjectSpki: spkiDer(k.publicKey), spiffeId: endpointId, notBefore, notAfter });
    return { cert: certsToPem([leaf]), key: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
  };
  const now = Date.now();
  const valid = svid(new Date(now - HOUR), new Date(now + 12 * HOUR));

  beforeAll(async () => {
    await ep.start(valid);
    ep.serve(JSON.stringify(ca.bundle(5)));
    await adminCall(va.adminSocket, 'POST', '/v1/admin/federations', { trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${ep.port}/`, profile: 'https_spiffe', endpointSpiffeId: endpointId, initialBundle: JSON.stringify(ca.bundle(1)) });
    expect((await refresh(TD)).bundleSequence).toBe(5);
    await federateAgentWith(TD);
  }, 30_000);
  afterAll(() => ep.close());

  it('an expired endpoint SVID is refused (federation.endpoint_untrusted, "expired"); the last good bundle is kept', async () => {
    const before = await refusalCount(TD, 'federation.endpoint_untrusted');
    ep.useTls(svid(new Date(now - 3 * HOUR), new Date(now - HOUR)));
    ep.serve(JSON.stringify(ca.bundle(6)));
    await expectRefusedKeeping(TD, 'federation.endpoint_untrusted', 5, /expired.*CERT_HAS_EXPIRED/);
    // Counted (the back-off retry in the background may have counted a second one by now).
    expect(await refusalCount(TD, 'federation.endpoint_untrusted')).toBeGreaterThan(before);
  });

  it('a not-yet-valid endpoint SVID is refused the same way', async () => {
    ep.useTls(svid(new Date(now + HOUR), new Date(now + 3 * HOUR)));
    await expectRefusedKeeping(TD, 'federation.endpoint_untrusted', 5, /not valid yet.*CERT_NOT_YET_VALID/);
  });

  it('a valid SVID again: the new bundle is taken', async () => {
    ep.useTls(valid);
    expect((await refresh(TD)).bundleSequence).toBe(6);
  });
});

describe('https_web endpoint certificate out of its validity', () => {
  const TD = 'web-fake.example';
  const ca = trustDomainCa(TD);
  const ep = new FakeEndpoint();
  let root: { cert: x509.X509Certificate; keys: webcrypto.CryptoKeyPair };
  const now = Date.now();

  async function webCert(notBefore: Date, notAfter: Date): Promise<{ cert: string; key: string }> {
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      subject: 'CN=127.0.0.1',
      issuer: root.cert.subject,
      publicKey: keys.publicKey,
      signingKey: root.keys.privateKey,
      signingAlgorithm: EC,
      notBefore,
      notAfter,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }]), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth])],
    });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    return { cert: cert.toString('pem'), key: derToPem(pkcs8, 'PRIVATE KEY') };
  }

  beforeAll(async () => {
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=Sigil test Web PKI root',
      keys,
      signingAlgorithm: EC,
      notBefore: new Date(now - 24 * HOUR),
      notAfter: new Date(now + 24 * HOUR),
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
    });
    root = { cert, keys };
    await ep.start(await webCert(new Date(now - HOUR), new Date(now + 12 * HOUR)));
    ep.serve(JSON.stringify(ca.bundle(5)));
    await adminCall(va.adminSocket, 'POST', '/v1/admin/federations', { trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${ep.port}/`, profile: 'https_web', webCaPem: cert.toString('pem') });
    expect((await refresh(TD)).bundleSequence).toBe(5);
    await federateAgentWith(TD);
  }, 30_000);
  afterAll(() => ep.close());

  it('an expired Web PKI certificate is refused; the last good bundle is kept', async () => {
    ep.useTls(await webCert(new Date(now - 3 * HOUR), new Date(now - HOUR)));
    ep.serve(JSON.stringify(ca.bundle(6)));
    await expectRefusedKeeping(TD, 'federation.endpoint_untrusted', 5, /expired.*CERT_HAS_EXPIRED/);
  });

  it('a not-yet-valid Web PKI certificate is refused', async () => {
    ep.useTls(await webCert(new Date(now + HOUR), new Date(now + 3 * HOUR)));
    await expectRefusedKeeping(TD, 'federation.endpoint_untrusted', 5, /not valid yet.*CERT_NOT_YET_VALID/);
  });

  it('a valid one again: the new bundle is taken', async () => {
    ep.useTls(await webCert(new Date(now - HOUR), new Date(now + 12 * HOUR)));
    expect((await refresh(TD)).bundleSequence).toBe(6);
  });
});

describe('bad bundles and endpoints (issue 17 "Bad input"): refused, last good bundle kept', () => {
  const TD = 'bad-bundles.example';
  const ca = trustDomainCa(TD);
  const ep = new FakeEndpoint();
  const good = ca.bundle(5);
  const key0 = good.keys[0]!;

  beforeAll(async () => {
    const k = generateKey('ec-p256');
    const leaf = issueX509Svid({ caCertDer: ca.der, caKey: ca.key, subjectSpki: spkiDer(k.publicKey), spiffeId: `spiffe://${TD}/ep`, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + 12 * HOUR) });
    await ep.start({ cert: certsToPem([leaf]), key: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string });
    ep.serve(JSON.stringify(good));
    await adminCall(va.adminSocket, 'POST', '/v1/admin/federations', { trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${ep.port}/`, profile: 'https_spiffe', endpointSpiffeId: `spiffe://${TD}/ep`, initialBundle: JSON.stringify(good) });
    expect((await refresh(TD)).bundleSequence).toBe(5);
    await federateAgentWith(TD);
  }, 30_000);
  afterAll(() => ep.close());

  it('a bundle streamed past 256 KiB without a Content-Length', async () => {
    ep.answer = (res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      let sent = 0;
      const more = (): void => {
        while (sent < 40 && res.write(chunk)) sent++;
        if (sent < 40) res.once('drain', more);
        else res.end();
      };
      res.on('close', () => res.removeAllListeners('drain'));
      more();
    };
    await expectRefusedKeeping(TD, 'federation.bundle_too_large', 5, /more than 262144 bytes/);
  });

  it('more than 64 keys', async () => {
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 6, keys: Array.from({ length: 65 }, () => key0) }));
    await expectRefusedKeeping(TD, 'federation.bundle_too_large', 5, /65 keys/);
  });

  it.each([
    ['d (EC private key)', { d: 'AAAA' }],
    ['p, q (RSA private factors)', { p: 'AAAA', q: 'AAAA' }],
    ['k (symmetric key)', { k: 'AAAA' }],
  ])('private key material in a key: %s', async (_what, extra) => {
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 6, keys: [{ ...key0, ...extra }] }));
    await expectRefusedKeeping(TD, 'federation.bundle_malformed', 5, /private key member/);
  });

  it('keys with the wrong use: unknown uses are ignored (bundle standard), leaving no X.509 authority', async () => {
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 6, keys: [{ ...key0, use: 'sig' }, { ...key0, use: 'enc' }] }));
    await expectRefusedKeeping(TD, 'federation.bundle_empty', 5);
  });

  it('a key without use, and an x509-svid key carrying a kid', async () => {
    const { use: _use, ...noUse } = key0;
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 6, keys: [noUse] }));
    await expectRefusedKeeping(TD, 'federation.bundle_malformed', 5, /no "use"/);
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 6, keys: [{ ...key0, kid: 'k1' }] }));
    await expectRefusedKeeping(TD, 'federation.bundle_malformed', 5, /must not have a kid/);
  });

  it('a bundle claiming the local trust domain (an authority of example.org) never touches the local bundle', async () => {
    const own = await adminCall<{ keys: unknown[] }>(va.adminSocket, 'GET', '/v1/admin/bundle');
    ep.serve(JSON.stringify({ ...own, spiffe_sequence: 99 }));
    await expectRefusedKeeping(TD, 'federation.bundle_wrong_trust_domain', 5, /trust domain example\.org/);
    expect(x509Of(await adminCall(va.adminSocket, 'GET', '/v1/admin/bundle'))).toEqual(x509Of(own));
    expect(Object.keys((await federatedOf(va, agent)).bundles)).not.toContain(A);
  });

  it('a sequence downgrade with otherwise good content', async () => {
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 4 }));
    await expectRefusedKeeping(TD, 'federation.sequence_downgrade', 5, /spiffe_sequence 4, lower than .* 5/);
  });

  it('an endpoint that never answers (refresh.timeout 2 s)', async () => {
    ep.answer = () => undefined;
    const t0 = Date.now();
    await expectRefusedKeeping(TD, 'federation.endpoint_unreachable', 5, /did not answer within 2000 ms/);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('a redirect (not followed)', async () => {
    ep.answer = (res) => res.writeHead(302, { location: 'https://example.com/' }).end();
    await expectRefusedKeeping(TD, 'federation.endpoint_http_error', 5, /HTTP 302/);
  });

  it('a good bundle with a higher sequence is taken after all of that', async () => {
    ep.serve(JSON.stringify({ ...good, spiffe_sequence: 7 }));
    expect((await refresh(TD)).bundleSequence).toBe(7);
    expect((await showRel(va, TD)).refresh.consecutiveFailures).toBe(0);
  });
});
