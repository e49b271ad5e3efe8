/**
 * An eviction or ban through the verifier's admin API answers the evicted agent's held long-poll at
 * once with the refusal (the agent's long-poll is its entries sync, so it would otherwise learn only
 * when the wait ends); the held long-polls of other agents are left alone. (Agents that attested with
 * the evicted ID as a factor are re-checked the same way: AuthorizedSetCache.agentChanged.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier({});
  caPem = certsToPem(tv.v.core.ca.x509Authorities());
}, 60_000);
afterAll(async () => tv?.stop());

async function attest(): Promise<{ agentId: string; tls: { cert: string; key: string }; etag: string }> {
  const tok = await adminCall<{ token: string; agentId: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
  expect(r2.status).toBe(200);
  const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  const tls = { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
  const r3 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
  expect(r3.status).toBe(200);
  return { agentId: tok.agentId, tls, etag: r3.headers.etag as string };
}

function hold(a: { tls: { cert: string; key: string }; etag: string }, wait: number): Promise<{ status: number; code: string | undefined; tookMs: number }> {
  const t0 = Date.now();
  return httpsJson(tv.v.port, 'GET', `/v1/entries/authorized?wait=${wait}`, { caPem, ...a.tls, headers: { 'if-none-match': a.etag } }).then((r) => ({
    status: r.status,
    code: (r.body as { error?: { code?: string } } | undefined)?.error?.code,
    tookMs: Date.now() - t0,
  }));
}

describe('eviction through the admin API answers held long-polls', () => {
  for (const ban of [false, true]) {
    it(`${ban ? 'a ban' : 'an eviction'} answers the agent's held long-poll at once; another agent's stays held`, async () => {
      const a = await attest();
      const other = await attest();
      const held = hold(a, 20);
      const otherHeld = hold(other, 3);
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      await adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: a.agentId, ban });
      const r = await held;
      expect(Date.now() - t0).toBeLessThan(1000);
      expect([r.status, r.code]).toEqual(ban ? [403, 'agent.banned'] : [401, 'agent.unknown']);
      const o = await otherHeld;
      expect(o.status).toBe(304);
      expect(o.tookMs).toBeGreaterThanOrEqual(2900);
    });
  }
});
