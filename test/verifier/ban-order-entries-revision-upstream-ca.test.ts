import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const fixtures = resolve(__dirname, '../fixtures/plugins');
let tv: TestVerifier;
let caPem: string;
let clock = Date.now();

beforeAll(async () => {
  tv = await startTestVerifier(
    {
      plugins: { fake_factor: join(fixtures, 'fake-factor.mjs') },
      nodeAttestors: { join_token: {}, fake_factor: { selectors: ['rack:r1'] } },
    },
    { now: () => new Date(clock) },
  );
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

async function token(extra: Record<string, unknown> = {}) {
  return adminCall<{ token: string; agentId: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', extra);
}

async function attest(attestors: Record<string, unknown>) {
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors, csr: createCsr(key).toString('base64') } });
  expect(r1.status).toBe(200);
  const b1 = r1.body as { session: string; nonce: string };
  const binding = sessionBinding(Buffer.from(b1.nonce, 'base64'), spkiDer(key.publicKey)).toString('base64');
  const responses = Object.fromEntries(Object.keys(attestors).map((n) => [n, n === 'fake_factor' ? { binding } : {}]));
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses } });
  const b2 = r2.body as { agentId?: string; svid?: string[]; error?: { code: string } };
  const tls = b2.svid ? { cert: certsToPem(b2.svid.map((s) => Buffer.from(s, 'base64'))), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } : undefined;
  return { status: r2.status, body: b2, tls };
}

describe('a ban covers every factor order; the entries revision follows expiry', () => {
  it('a banned node cannot re-attest by putting another factor first', async () => {
    const t1 = await token();
    const first = await attest({ fake_factor: { kind: 'fake' }, join_token: { token: t1.token } });
    expect(first.status).toBe(200);
    expect(first.body.agentId).toBe('spiffe://example.org/sigil/agent/fake_factor/node-1');
    await adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: first.body.agentId, ban: true });

    const t2 = await token();
    const reordered = await attest({ join_token: { token: t2.token }, fake_factor: { kind: 'fake' } });
    expect(reordered.status).toBe(403);
    expect(reordered.body.error?.code).toBe('attest.agent_banned');
    // Refused before commit: the join token is still usable on its own.
    const alone = await attest({ join_token: { token: t2.token } });
    expect(alone.status).toBe(200);
  });

  it('the entries revision changes when an entry expires (no stale 304)', async () => {
    const t = await token();
    const alias = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', {
      spiffeId: 'spiffe://example.org/node/short',
      parentId: 'spiffe://example.org/sigil/verifier',
      selectors: [`sigil:agent_id:${t.agentId}`],
      expiresAt: new Date(clock + 60_000).toISOString(),
    });
    const wl = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/short-lived-app', parentId: 'spiffe://example.org/node/short', selectors: ['unix:uid:7'] });
    const a = await attest({ join_token: { token: t.token } });
    expect(a.status).toBe(200);
    const r1 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls });
    expect(r1.status).toBe(200);
    const b1 = r1.body as { entries: { id: string }[]; revision: string };
    expect(b1.entries.map((e) => e.id)).toEqual([wl.id]);
    expect((await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls, headers: { 'if-none-match': b1.revision } })).status).toBe(304);

    clock += 120_000; // the node alias expires; no entry was written
    const r2 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls, headers: { 'if-none-match': b1.revision } });
    expect(r2.status).toBe(200);
    expect((r2.body as { entries: unknown[] }).entries).toEqual([]);
    const sv = await httpsJson(tv.v.port, 'POST', '/v1/svid/x509', { caPem, ...a.tls, body: { csrs: [{ entryId: wl.id, csr: createCsr(generateKey('ec-p256')).toString('base64') }] } });
    expect(sv.status).toBe(403);
    expect(alias.id).toBeTruthy();
  });
});

describe('upstream CA file', () => {
  it('must hold the chain up to a self-signed root; with it, agent mTLS works both ways', async () => {
    const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { issueCaCertificate } = await import('../../src/spiffe/x509svid.js');
    const dir = mkdtempSync(join(tmpdir(), 'sigil-upchain-'));
    try {
      const now = Date.now();
      const root = generateKey('ec-p256');
      const inter = generateKey('ec-p256');
      const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 86400_000 * 30) };
      const rootDer = issueCaCertificate({ subjectKey: root.publicKey, signerKey: root.privateKey, trustDomain: 'example.org', commonName: 'Root', ...validity });
      const interDer = issueCaCertificate({ subjectKey: inter.publicKey, signerKey: root.privateKey, issuerCertDer: rootDer, trustDomain: 'example.org', commonName: 'Inter', pathLen: 1, ...validity });
      writeFileSync(join(dir, 'inter.key'), inter.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
      writeFileSync(join(dir, 'inter-only.pem'), certsToPem([interDer]));
      writeFileSync(join(dir, 'chain.pem'), certsToPem([interDer, rootDer]));
      writeFileSync(join(dir, 'wrong-order.pem'), certsToPem([interDer, interDer]));

      for (const f of ['inter-only.pem', 'wrong-order.pem']) {
        await expect(startTestVerifier({ ca: { upstream: { cert: join(dir, f), key: join(dir, 'inter.key') } } })).rejects.toMatchObject({ code: 'ca.upstream_invalid' });
      }

      const up = await startTestVerifier({ ca: { upstream: { cert: join(dir, 'chain.pem'), key: join(dir, 'inter.key') } } });
      try {
        const rootPem = certsToPem([rootDer]);
        const t = await adminCall<{ token: string; agentId: string }>(up.adminSocket, 'POST', '/v1/admin/tokens', {});
        const key = generateKey('ec-p256');
        const r1 = await httpsJson(up.v.port, 'POST', '/v1/attest', { caPem: rootPem, body: { attestors: { join_token: { token: t.token } }, csr: createCsr(key).toString('base64') } });
        expect(r1.status).toBe(200);
        const r2 = await httpsJson(up.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem: rootPem, body: { responses: { join_token: {} } } });
        expect(r2.status).toBe(200);
        const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
        expect(svid).toHaveLength(3); // leaf, Sigil CA, upstream intermediate
        const tls = { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
        const ae = await httpsJson(up.v.port, 'GET', '/v1/entries/authorized', { caPem: rootPem, ...tls });
        expect(ae.status).toBe(200);
      } finally {
        await up.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
