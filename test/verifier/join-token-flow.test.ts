import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { validateJwtSvid } from '../../src/spiffe/jwtsvid.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let caPem: string;

async function token(extra: Record<string, unknown> = {}) {
  return adminCall<{ token: string; tokenId: string; agentId: string; expiresAt: string; aliasEntryId?: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', extra);
}

async function attest(tok: string, key = generateKey('ec-p256')) {
  const csr = createCsr(key).toString('base64');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok } }, csr } });
  if (r1.status !== 200) return { r1, r2: undefined, key };
  const b1 = r1.body as { session: string; nonce: string; challenges: Record<string, unknown> };
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses: { join_token: {} } } });
  return { r1, r2, key };
}

function mtls(res: { r2?: { body: unknown } }, key: { privateKey: import('node:crypto').KeyObject }) {
  const svid = (res.r2!.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  return { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
}

beforeAll(async () => {
  tv = await startTestVerifier();
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

describe('join token attestation over real HTTPS', () => {
  it('attests, issues a node SVID that openssl accepts, and serves authorized entries and SVIDs', async () => {
    const t = await token({ spiffeId: 'spiffe://example.org/node/web-1' });
    expect(t.agentId).toBe(`spiffe://example.org/sigil/agent/join_token/${t.tokenId}`);
    const res = await attest(t.token);
    expect(res.r1.status).toBe(200);
    const b1 = res.r1.body as { nonce: string };
    expect(Buffer.from(b1.nonce, 'base64')).toHaveLength(32);
    expect(res.r2!.status).toBe(200);
    const b2 = res.r2!.body as { agentId: string; svid: string[]; result: { status: string; submods: Record<string, unknown>; nonce: string } };
    expect(b2.agentId).toBe(t.agentId);
    expect(b2.result.status).toBe('affirming');
    expect(b2.result.nonce).toBe(b1.nonce);
    expect(Object.keys(b2.result.submods)).toEqual(['join_token']);

    const dir = mkdtempSync(join(tmpdir(), 'sigil-ossl-'));
    writeFileSync(join(dir, 'bundle.pem'), caPem);
    writeFileSync(join(dir, 'svid.pem'), certsToPem([Buffer.from(b2.svid[0]!, 'base64')]));
    const out = execFileSync('openssl', ['verify', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'svid.pem')], { encoding: 'utf8' });
    expect(out).toMatch(/OK/);

    // Workload entries: one under the agent, one under the alias; one under another agent (not authorized).
    const own = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/web', parentId: t.agentId, selectors: ['unix:uid:1000'] });
    const viaAlias = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/db', parentId: 'spiffe://example.org/node/web-1', selectors: ['unix:uid:1001'] });
    const nested = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/db/child', parentId: 'spiffe://example.org/db', selectors: ['unix:uid:1002'] });
    const other = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/other', parentId: 'spiffe://example.org/sigil/agent/join_token/someone-else', selectors: ['unix:uid:1000'] });

    const tls = mtls(res, res.key);
    const ae = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
    expect(ae.status).toBe(200);
    const ids = (ae.body as { entries: { id: string }[] }).entries.map((e) => e.id).sort();
    expect(ids).toEqual([own.id, viaAlias.id, nested.id].sort());
    const rev = (ae.body as { revision: string }).revision;
    const again = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls, headers: { 'if-none-match': rev } });
    expect(again.status).toBe(304);

    const wkey = generateKey('ec-p256');
    const sv = await httpsJson(tv.v.port, 'POST', '/v1/svid/x509', { caPem, ...tls, body: { csrs: [{ entryId: own.id, csr: createCsr(wkey).toString('base64') }] } });
    expect(sv.status).toBe(200);
    const svid = (sv.body as { svids: { spiffeId: string; chain: string[] }[] }).svids[0]!;
    expect(svid.spiffeId).toBe('spiffe://example.org/web');
    writeFileSync(join(dir, 'w.pem'), certsToPem([Buffer.from(svid.chain[0]!, 'base64')]));
    expect(execFileSync('openssl', ['verify', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'w.pem')], { encoding: 'utf8' })).toMatch(/OK/);

    // Not authorized: nothing is signed, even for the authorized one in the same batch.
    const bad = await httpsJson(tv.v.port, 'POST', '/v1/svid/x509', {
      caPem,
      ...tls,
      body: { csrs: [{ entryId: own.id, csr: createCsr(wkey).toString('base64') }, { entryId: other.id, csr: createCsr(wkey).toString('base64') }] },
    });
    expect(bad.status).toBe(403);
    expect((bad.body as { error: { code: string } }).error.code).toBe('svid.entry_not_authorized');

    const jw = await httpsJson(tv.v.port, 'POST', '/v1/svid/jwt', { caPem, ...tls, body: { entryId: viaAlias.id, audience: ['svc-a'] } });
    expect(jw.status).toBe(200);
    const jwks = await httpsJson(tv.v.port, 'GET', '/v1/bundle', { caPem });
    const bundle = SpiffeBundle.fromJwks('example.org', jwks.body);
    const v = await validateJwtSvid((jw.body as { token: string }).token, { audience: 'svc-a', keysFor: (td) => (td === 'example.org' ? bundle.jwtAuthorities : undefined), now: new Date() });
    expect(v.spiffeId.toString()).toBe('spiffe://example.org/db');

    // Renewal: the new SVID works, the old one is refused.
    const renewKey = generateKey('ec-p256');
    const rn = await httpsJson(tv.v.port, 'POST', '/v1/agent/renew', { caPem, ...tls, body: { csr: createCsr(renewKey).toString('base64') } });
    expect(rn.status).toBe(200);
    const stale = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
    expect(stale.status).toBe(401);
    expect((stale.body as { error: { code: string } }).error.code).toBe('agent.stale_svid');
    const fresh = mtls({ r2: rn }, renewKey);
    expect((await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...fresh })).status).toBe(200);

    // Eviction: the agent must attest again; ban keeps it out.
    await adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: t.agentId });
    const ev = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...fresh });
    expect((ev.body as { error: { code: string } }).error.code).toBe('agent.unknown');
  });

  it('binds sessions: binding depends on nonce and CSR key', () => {
    const k = generateKey('ec-p256');
    const n = Buffer.alloc(32, 1);
    expect(sessionBinding(n, spkiDer(k.publicKey))).not.toEqual(sessionBinding(Buffer.alloc(32, 2), spkiDer(k.publicKey)));
  });

  it('refuses reused, unknown and expired tokens with distinct codes, and writes nothing', async () => {
    const t = await token();
    expect((await attest(t.token)).r2!.status).toBe(200);
    const reused = await attest(t.token);
    expect(reused.r1.status).toBe(401);
    expect((reused.r1.body as { error: { code: string } }).error.code).toBe('join_token.used');
    const unknown = await attest('A'.repeat(43));
    expect((unknown.r1.body as { error: { code: string } }).error.code).toBe('join_token.unknown');
    const short = await token({ ttl: 1 });
    await new Promise((r) => setTimeout(r, 1100));
    const expired = await attest(short.token);
    expect((expired.r1.body as { error: { code: string } }).error.code).toBe('join_token.expired');
  });

  it('a session is single use', async () => {
    const t = await token();
    const csr = createCsr(generateKey('ec-p256')).toString('base64');
    const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: t.token } }, csr } });
    const s = (r1.body as { session: string }).session;
    expect((await httpsJson(tv.v.port, 'POST', `/v1/attest/${s}`, { caPem, body: { responses: { join_token: {} } } })).status).toBe(200);
    const replay = await httpsJson(tv.v.port, 'POST', `/v1/attest/${s}`, { caPem, body: { responses: { join_token: {} } } });
    expect(replay.status).toBe(401);
    expect((replay.body as { error: { code: string } }).error.code).toBe('attest.session_unknown');
  });

  it('rejects bad input with clear codes', async () => {
    const csr = createCsr(generateKey('ec-p256')).toString('base64');
    const call = (body: unknown, rawBody?: string) => httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body, ...(rawBody !== undefined ? { rawBody } : {}) });
    const code = (r: { body: unknown }) => (r.body as { error: { code: string } }).error.code;
    expect(code(await call({ attestors: { tpmx: {} }, csr }))).toBe('attest.unknown_attestor');
    expect(code(await call({ attestors: { join_token: { token: 'x'.repeat(20) } }, csr: Buffer.from('not a csr').toString('base64') }))).toBe('csr.malformed');
    expect(code(await call({ attestors: {}, csr }))).toBe('http.bad_request');
    expect(code(await call({ attestors: { join_token: {} }, csr, extra: 1 }))).toBe('http.bad_request');
    expect(code(await call(undefined, '{"attestors":'))).toBe('http.bad_json');
    const big = await call(undefined, JSON.stringify({ attestors: { join_token: { token: 'x'.repeat(2 * 1024 * 1024) } }, csr }));
    expect(big.status).toBe(413);
    expect(code(big)).toBe('http.body_too_large');
    expect((await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem })).status).toBe(401);

    const entry = (body: unknown) => adminCall(tv.adminSocket, 'POST', '/v1/admin/entries', body).then(() => 'ok', (e: { code: string }) => e.code);
    expect(await entry({ spiffeId: 'spiffe://example.org/a/../b', parentId: 'spiffe://example.org/x', selectors: ['unix:uid:1'] })).toBe('entry.invalid_spiffe_id');
    expect(await entry({ spiffeId: 'spiffe://other.org/a', parentId: 'spiffe://example.org/x', selectors: ['unix:uid:1'] })).toBe('entry.wrong_trust_domain');
    expect(await entry({ spiffeId: 'spiffe://example.org/a', parentId: 'spiffe://example.org/x', selectors: ['unix:'] })).toBe('selector.invalid');
    expect(await entry({ spiffeId: 'spiffe://example.org/a', parentId: 'spiffe://example.org/x', selectors: [':1000'] })).toBe('selector.invalid');
    expect(await entry({ spiffeId: 'spiffe://example.org/a', parentId: 'spiffe://example.org/x', selectors: [] })).toBe('http.bad_request');
    const before = await adminCall<{ entries: unknown[] }>(tv.adminSocket, 'GET', '/v1/admin/entries?spiffeId=spiffe://example.org/a');
    expect(before.entries).toHaveLength(0);
  });

  it('serves health, readiness and metrics', async () => {
    expect((await httpsJson(tv.v.port, 'GET', '/healthz', { caPem })).status).toBe(200);
    expect((await httpsJson(tv.v.port, 'GET', '/readyz', { caPem })).status).toBe(200);
    const m = await httpsJson(tv.v.port, 'GET', '/metrics', { caPem });
    expect(String(m.body)).toMatch(/sigil_attestations_total\{attestor="join_token",result="accepted"\}/);
    // The agent gauge is set at each tick from a count in the datastore.
    await tv.v.tick();
    const n = (await tv.v.core.store.listAgents()).length;
    expect(n).toBeGreaterThan(0);
    const m2 = await httpsJson(tv.v.port, 'GET', '/metrics', { caPem });
    expect(String(m2.body)).toMatch(new RegExp(`^sigil_attested_agents ${n}$`, 'm'));
  });
});
