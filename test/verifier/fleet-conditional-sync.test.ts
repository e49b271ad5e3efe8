/**
 * What makes an agent's sync cheap on the verifier without weakening it:
 *   - GET /v1/bundle carries an ETag and answers If-None-Match with a 304 until the bundle changes
 *     (a successor CA published at rotation), and the agent's client and entry sync use it;
 *   - the peer identity of a keep-alive TLS connection is read from its certificate once, yet every
 *     request on that connection still reads the agent record: an agent evicted or banned while its
 *     connection stays open is refused on its next request over that same connection.
 */
import { createHash } from 'node:crypto';
import { Agent, request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VerifierClient } from '../../src/agent/verifier-client.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { attestWithJoinToken, httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const TD = 'example.org';
let clock = Date.now();
const now = () => new Date(clock);
let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier({ ca: { ttl: '2h' }, svid: { x509Ttl: '10m' } }, { now });
  caPem = certsToPem(tv.v.core.ca.x509Authorities());
}, 60_000);
afterAll(async () => tv?.stop());

const attest = () => attestWithJoinToken(tv, caPem);

describe('GET /v1/bundle: ETag and 304', () => {
  it("the agent's client sends the ETag it holds and reads a 304 as unchanged", async () => {
    const client = new VerifierClient({ trustDomain: TD, address: '127.0.0.1', port: tv.v.port, trust: tv.v.core.ca.x509Authorities() });
    try {
      const first = await client.bundleIfChanged(undefined);
      expect(first?.etag).toMatch(/^"/);
      expect(SpiffeBundle.fromJwks(TD, first?.jwks).x509Authorities.length).toBeGreaterThan(0);
      expect(await client.bundleIfChanged(first?.etag)).toBeUndefined();
      const other = await client.bundleIfChanged('"stale"');
      expect(other?.etag).toBe(first?.etag);
      expect(await client.bundle()).toEqual(first?.jwks);
    } finally {
      client.close();
    }
  });
});

/** GETs over one kept-alive TLS connection; reports whether the socket was reused. */
function keepAliveGet(agent: Agent, path: string, headers: Record<string, string> = {}): Promise<{ status: number; reused: boolean; code?: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: tv.v.port, path, agent, headers, checkServerIdentity: () => undefined }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        const code = text.startsWith('{') ? (JSON.parse(text) as { error?: { code?: string } }).error?.code : undefined;
        resolve({ status: res.statusCode ?? 0, reused: req.reusedSocket, ...(code ? { code } : {}) });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('peer identity read once per connection, the agent record on every request', () => {
  for (const ban of [true, false]) {
    it(`refuses an agent ${ban ? 'banned' : 'evicted'} while its connection stays open, on that connection`, async () => {
      const a = await attest();
      const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: caPem, ...a.tls });
      try {
        expect((await keepAliveGet(agent, '/v1/entries/authorized')).status).toBe(200);
        expect(await keepAliveGet(agent, '/v1/entries/authorized')).toMatchObject({ status: 200, reused: true });
        await adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: a.agentId, ban });
        const after = await keepAliveGet(agent, '/v1/entries/authorized');
        expect(after).toMatchObject(ban ? { status: 403, code: 'agent.banned', reused: true } : { status: 401, code: 'agent.unknown', reused: true });
      } finally {
        agent.destroy();
      }
    });
  }

  it('keeps refusing a connection without a client certificate on every request', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: caPem });
    try {
      // GET /v1/bundle needs no certificate and opens the connection; the next two reuse it.
      expect((await keepAliveGet(agent, '/v1/bundle')).status).toBe(200);
      for (let i = 0; i < 2; i++) expect(await keepAliveGet(agent, '/v1/entries/authorized')).toMatchObject({ status: 401, code: 'agent.no_client_cert', reused: true });
    } finally {
      agent.destroy();
    }
  });
});

describe('GET /v1/entries/authorized names the bundle ETag', () => {
  it('on a 200, a 304 and a long-poll answer, equal to the ETag of GET /v1/bundle', async () => {
    const a = await attest();
    const bundleEtag = (await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem })).headers.etag as string;
    const r1 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls });
    expect(r1.status).toBe(200);
    expect(r1.headers['sigil-bundle-etag']).toBe(bundleEtag);
    const rev = r1.headers.etag as string;
    const r2 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls, headers: { 'if-none-match': rev } });
    expect(r2.status).toBe(304);
    expect(r2.headers['sigil-bundle-etag']).toBe(bundleEtag);
    const r3 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized?wait=1', { caPem, ...a.tls, headers: { 'if-none-match': rev } });
    expect(r3.status).toBe(304);
    expect(r3.headers['sigil-bundle-etag']).toBe(bundleEtag);
    // The agent's client reads it.
    const client = new VerifierClient({ trustDomain: TD, address: '127.0.0.1', port: tv.v.port, trust: tv.v.core.ca.x509Authorities() });
    try {
      expect((await client.bundleIfChanged(undefined))?.etag).toBe(bundleEtag);
    } finally {
      client.close();
    }
  });
});

// Last: it moves the clock past half the CA's life.
describe('GET /v1/bundle after a rotation', () => {
  it('answers 304 to the current ETag, 200 with the new bundle once the CA publishes a successor', async () => {
    const r1 = await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem });
    expect(r1.status).toBe(200);
    const etag = r1.headers.etag as string;
    expect(etag).toMatch(/^"[A-Za-z0-9_-]{22}"$/);
    // The ETag is a hash of the body: the same on every verifier serving the same bundle.
    expect(JSON.stringify(r1.body)).toBe(JSON.stringify(tv.v.core.ca.bundle().toJwks()));
    expect(etag).toBe(`"${createHash('sha256').update(JSON.stringify(r1.body)).digest('base64url').slice(0, 22)}"`);
    const r2 = await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem, headers: { 'if-none-match': etag } });
    expect(r2.status).toBe(304);
    expect(r2.headers.etag).toBe(etag);
    // Another tag (or a tag for a different bundle) gets the bundle.
    expect((await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem, headers: { 'if-none-match': '"AAAAAAAAAAAAAAAAAAAAAA"' } })).status).toBe(200);
    const before = SpiffeBundle.fromJwks(TD, r1.body).x509Authorities.length;
    // Past half the CA's life the successor is prepared and published: the old ETag no longer matches.
    clock += 61 * 60_000;
    await tv.v.tick();
    const r3 = await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem, headers: { 'if-none-match': etag } });
    expect(r3.status).toBe(200);
    expect(r3.headers.etag).not.toBe(etag);
    expect(SpiffeBundle.fromJwks(TD, r3.body).x509Authorities.length).toBe(before + 1);
    expect((await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem, headers: { 'if-none-match': r3.headers.etag as string } })).status).toBe(304);
  });
});
