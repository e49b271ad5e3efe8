/** VerifierClient against a fake HTTPS verifier: server identity, trust, mTLS, error mapping, limits. */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VerifierClient } from '../../src/agent/verifier-client.js';
import { codeOfAsync as codeOf } from '../support/codes.js';
import { SigilError } from '../../src/errors.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';

function makeCa() {
  const k = generateKey('ec-p256');
  const now = Date.now();
  const der = issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', notBefore: new Date(now - 60_000), notAfter: new Date(now + 3600_000) });
  return {
    der,
    issue(spiffeId: string) {
      const leafKey = generateKey('ec-p256');
      const leaf = issueX509Svid({ caCertDer: der, caKey: k.privateKey, subjectSpki: spkiDer(leafKey.publicKey), spiffeId, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3600_000) });
      return { chain: [leaf], key: leafKey.privateKey };
    },
  };
}

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void;

async function fakeVerifier(ca: ReturnType<typeof makeCa>, spiffeId: string, handler: Handler): Promise<{ server: Server; port: number }> {
  const id = ca.issue(spiffeId);
  const server = createServer(
    { key: id.key.export({ format: 'pem', type: 'pkcs8' }), cert: certsToPem(id.chain), ca: certsToPem([ca.der]), requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => handler(req, res, Buffer.concat(chunks).toString('utf8')));
    },
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

function json(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const ca = makeCa();
const servers: Server[] = [];
let good: { port: number };
let seen: { url: string; clientCertSan?: string; ifNoneMatch?: string; body?: string }[] = [];

beforeAll(async () => {
  const s = await fakeVerifier(ca, 'spiffe://example.org/sigil/verifier', (req, res, body) => {
    const sock = req.socket as TLSSocket;
    const peer = sock.getPeerCertificate();
    seen.push({ url: req.url ?? '', ...(peer?.subjectaltname ? { clientCertSan: peer.subjectaltname } : {}), ...(req.headers['if-none-match'] ? { ifNoneMatch: String(req.headers['if-none-match']) } : {}), body });
    switch (req.url) {
      case '/v1/bundle':
        return json(res, 200, { keys: [] });
      case '/v1/entries/authorized':
        if (req.headers['if-none-match'] === 'r1') {
          res.writeHead(304);
          return res.end();
        }
        return json(res, 200, { revision: 'r1', entries: [{ id: 'e1', spiffeId: 'spiffe://example.org/w', parentId: 'spiffe://example.org/a', selectors: ['unix:uid:1'], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null, revisionNumber: 3 }] });
      case '/v1/agent/renew':
        return json(res, 401, { error: { code: 'agent.unknown', message: 'not an agent' } });
      case '/v1/attest':
        return json(res, 200, { session: 'abc', nonce: Buffer.alloc(16).toString('base64'), challenges: {} });
      case '/v1/svid/jwt':
        return json(res, 500, 'oops');
      case '/big':
        return json(res, 200, { pad: 'x'.repeat(5000) });
      case '/v1/svid/x509':
        return; // never answers
      default:
        return json(res, 404, { error: { code: 'http.not_found', message: 'no' } });
    }
  });
  servers.push(s.server);
  good = s;
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

function client(port: number, extra: Partial<ConstructorParameters<typeof VerifierClient>[0]> = {}) {
  return new VerifierClient({ trustDomain: 'example.org', address: '127.0.0.1', port, trust: [ca.der], ...extra });
}

describe('VerifierClient', () => {
  it('talks to a verifier whose certificate chains to the bundle and carries the verifier SPIFFE ID', async () => {
    const c = client(good.port);
    expect(await c.bundle()).toEqual({ keys: [] });
    c.close();
  });

  it('presents the node SVID for agent calls, sends If-None-Match and maps 304 to "unchanged"', async () => {
    const c = client(good.port);
    expect(await codeOf(c.authorizedEntries())).toBe('agent.not_attested');
    const node = ca.issue('spiffe://example.org/sigil/agent/join_token/t1');
    c.setIdentity({ chainDer: node.chain, privateKey: node.key });
    seen = [];
    const r = await c.authorizedEntries();
    expect(r!.revision).toBe('r1');
    expect(r!.entries[0]).toMatchObject({ id: 'e1', selectors: ['unix:uid:1'], revisionNumber: 3 });
    expect(await c.authorizedEntries('r1')).toBeUndefined();
    expect(seen.map((s) => s.clientCertSan)).toEqual(['URI:spiffe://example.org/sigil/agent/join_token/t1', 'URI:spiffe://example.org/sigil/agent/join_token/t1']);
    expect(seen[1]!.ifNoneMatch).toBe('r1');
    c.close();
  });

  it('turns verifier errors into SigilErrors with the verifier code and status', async () => {
    const c = client(good.port);
    const node = ca.issue('spiffe://example.org/sigil/agent/join_token/t1');
    c.setIdentity({ chainDer: node.chain, privateKey: node.key });
    const e = await c.renew(Buffer.from('csr')).catch((x: SigilError) => x);
    expect(e).toMatchObject({ code: 'agent.unknown', status: 401 });
    expect(await codeOf(c.mintJwt('e1', ['a']))).toBe('agent.verifier_error');
    expect(await codeOf(c.attestBegin({ join_token: {} }, Buffer.from('csr')))).toBe('agent.verifier_bad_response'); // 16-byte nonce
    c.close();
  });

  it('bounds time and size', async () => {
    const c = client(good.port, { timeoutMs: 300, maxResponseBytes: 1000 });
    const node = ca.issue('spiffe://example.org/sigil/agent/join_token/t1');
    c.setIdentity({ chainDer: node.chain, privateKey: node.key });
    const t0 = Date.now();
    expect(await codeOf(c.signX509([{ entryId: 'e1', csr: Buffer.from('x') }]))).toBe('agent.verifier_unreachable');
    expect(Date.now() - t0).toBeLessThan(3000);
    const raw = c as unknown as { call(m: string, p: string, b: unknown, o: { mtls: boolean }): Promise<unknown> };
    expect(await codeOf(raw.call('GET', '/big', undefined, { mtls: false }))).toBe('agent.verifier_bad_response');
    await expect(c.signX509(Array.from({ length: 501 }, () => ({ entryId: 'e', csr: Buffer.from('x') })))).rejects.toMatchObject({ code: 'agent.batch_too_large' });
    c.close();
  });

  it('refuses a verifier with the wrong SPIFFE ID or an untrusted CA, and reports unreachable ones', async () => {
    const imposter = await fakeVerifier(ca, 'spiffe://example.org/not-the-verifier', (_q, res) => json(res, 200, {}));
    servers.push(imposter.server);
    expect(await codeOf(client(imposter.port).bundle())).toBe('agent.verifier_untrusted');
    const otherCa = makeCa();
    const foreign = await fakeVerifier(otherCa, 'spiffe://example.org/sigil/verifier', (_q, res) => json(res, 200, {}));
    servers.push(foreign.server);
    expect(await codeOf(client(foreign.port).bundle())).toBe('agent.verifier_untrusted');
    // After the trust is switched to the other CA, the same server is accepted.
    const c = client(foreign.port);
    c.setTrust([otherCa.der]);
    expect(await c.bundle()).toEqual({});
    // Nothing listens on the imposter's port once it is closed.
    const port = imposter.port;
    imposter.server.closeAllConnections();
    await new Promise((r) => imposter.server.close(r));
    expect(await codeOf(client(port).bundle())).toBe('agent.verifier_unreachable');
    expect(() => c.setTrust([])).toThrow(expect.objectContaining({ code: 'agent.no_trust_bundle' }));
  });
});
