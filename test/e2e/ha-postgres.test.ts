/**
 * Two verifiers sharing one real PostgreSQL (DESIGN §7): each has its own dataDir and CA keys; the
 * bundle is the union of their CAs; an attestation session begun at one can be finished at the
 * other; an agent attested by one is served by the other; admin writes through one are seen by both.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { startPostgres } from '../support/postgres.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let pg: Awaited<ReturnType<typeof startPostgres>>;
let a: TestVerifier;
let b: TestVerifier;

beforeAll(async () => {
  pg = await startPostgres();
  if (!pg) return;
  const ds = { kind: 'postgres', url: pg.url, schema: 'ha_test' };
  a = await startTestVerifier({ datastore: ds }, { dir: mkdtempSync(join(tmpdir(), 'sigil-ha-a-')) });
  b = await startTestVerifier({ datastore: ds }, { dir: mkdtempSync(join(tmpdir(), 'sigil-ha-b-')) });
  await a.v.tick(); // A learns about B's CA
}, 60_000);

afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await pg?.stop();
});

describe('several verifiers on one PostgreSQL', () => {
  it('publishes the union of both CAs, finishes sessions across verifiers and serves each other\'s agents', async ({ skip }) => {
    if (!pg) return skip();
    const bundleA = SpiffeBundle.fromJwks('example.org', a.v.core.ca.bundle().toJwks());
    const bundleB = SpiffeBundle.fromJwks('example.org', b.v.core.ca.bundle().toJwks());
    expect(bundleA.x509Authorities).toHaveLength(2);
    expect(bundleA.toPem()).toBe(bundleB.toPem());
    expect(bundleA.jwtAuthorities.map((k) => k.kid).sort()).toEqual(bundleB.jwtAuthorities.map((k) => k.kid).sort());
    expect(bundleA.sequence).toBe(bundleB.sequence);
    const caPem = bundleA.toPem();

    // Token and entry made through A; session begun at A, finished at B.
    const tok = await adminCall<{ token: string; agentId: string }>(a.adminSocket, 'POST', '/v1/admin/tokens', {});
    const key = generateKey('ec-p256');
    const r1 = await httpsJson(a.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
    expect(r1.status).toBe(200);
    const r2 = await httpsJson(b.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
    expect(r2.status).toBe(200);
    const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
    // Signed by B's CA.
    const bCa = b.v.core.ca.slots().x509.find((s) => s.state === 'active')!;
    expect(new X509Certificate(svid[0]!).verify(new X509Certificate(Buffer.from(bCa.certDer, 'base64')).publicKey)).toBe(true);
    // The session is gone from both.
    const again = await httpsJson(a.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
    expect((again.body as { error: { code: string } }).error.code).toBe('attest.session_unknown');

    // The agent (SVID from B) is served by A, with an entry created through B.
    const e = await adminCall<{ id: string }>(b.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/ha', parentId: tok.agentId, selectors: ['unix:uid:1'] });
    const tls = { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
    const ae = await httpsJson(a.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
    expect(ae.status).toBe(200);
    expect((ae.body as { entries: { id: string }[] }).entries.map((x) => x.id)).toEqual([e.id]);
    const sv = await httpsJson(a.v.port, 'POST', '/v1/svid/x509', { caPem, ...tls, body: { csrs: [{ entryId: e.id, csr: createCsr(generateKey('ec-p256')).toString('base64') }] } });
    expect(sv.status).toBe(200);
  });
});
