/**
 * One agent must not take the verifier's event loop: checking a CSR costs up to a few ms (P-384),
 * and a batch holds up to 500. Attacks: 500 copies of one CSR for one entry; several batches at
 * once; one long batch while others wait.
 */
import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, startTestVerifier, type HttpsResult } from '../support/verifier.js';

type Started = Awaited<ReturnType<typeof startTestVerifier>>;
const ENTRIES = 160;

describe('POST /v1/svid/x509 batches', () => {
  let t: Started;
  let caPem: string;
  let tls: { cert: string; key: string };
  let entryIds: string[];
  const p384Csr = (): string => createCsr(generateKeyPairSync('ec', { namedCurve: 'P-384' })).toString('base64');
  const sign = (csrs: { entryId: string; csr: string }[]): Promise<HttpsResult> => httpsJson(t.v.port, 'POST', '/v1/svid/x509', { caPem, ...tls, body: { csrs } });
  const codeOf = (r: HttpsResult): string | undefined => (r.body as { error?: { code: string } } | undefined)?.error?.code;

  beforeAll(async () => {
    t = await startTestVerifier();
    caPem = String(await adminCall(t.adminSocket, 'GET', '/v1/admin/bundle?format=pem'));
    const tok = await adminCall<{ token: string; agentId: string }>(t.adminSocket, 'POST', '/v1/admin/tokens', {});
    const key = generateKey('ec-p256');
    const hello = await httpsJson(t.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
    const done = await httpsJson(t.v.port, 'POST', `/v1/attest/${(hello.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
    tls = { cert: certsToPem((done.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'))), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
    entryIds = [];
    for (let i = 0; i < ENTRIES; i++) {
      const e = await adminCall<{ id: string }>(t.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://example.org/w/${i}`, parentId: tok.agentId, selectors: ['unix:uid:1'] });
      entryIds.push(e.id);
    }
  }, 60_000);
  afterAll(async () => {
    await t.stop();
  });

  it('an entry asked for twice in one batch is refused before anything is checked or signed (svid.duplicate_entry)', async () => {
    const csr = p384Csr();
    const r = await sign(Array.from({ length: 500 }, () => ({ entryId: entryIds[0]!, csr })));
    expect(r.status).toBe(400);
    expect(codeOf(r)).toBe('svid.duplicate_entry');
  });

  it('a second batch of the same agent while one is being signed is refused (svid.busy, 429); the first completes', async () => {
    const csrs = entryIds.map((entryId) => ({ entryId, csr: p384Csr() }));
    let pending = true;
    const first = sign(csrs).finally(() => (pending = false));
    // Small batches one after another while the long one runs: those that arrive during it are refused.
    const probes: HttpsResult[] = [];
    while (pending) probes.push(await sign(csrs.slice(0, 1)));
    const a = await first;
    expect(a.status).toBe(200);
    expect((a.body as { svids: unknown[] }).svids).toHaveLength(ENTRIES);
    const busy = probes.filter((p) => p.status === 429);
    expect(busy.length).toBeGreaterThan(0);
    expect(busy.map(codeOf)).toEqual(busy.map(() => 'svid.busy'));
    expect(probes.every((p) => p.status === 429 || p.status === 200)).toBe(true);
    // Afterwards the agent signs again.
    expect((await sign(csrs.slice(0, 1))).status).toBe(200);
  }, 30_000);

  it('a long batch lets the event loop run between CSRs (the longest stall is a small part of the batch)', async () => {
    const csrs = entryIds.map((entryId) => ({ entryId, csr: p384Csr() }));
    // The verifier runs in this process: a timer sees how long the loop is held at a time.
    let last = performance.now();
    let longest = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 1);
    const t0 = performance.now();
    let r: HttpsResult;
    try {
      r = await sign(csrs);
    } finally {
      clearInterval(timer);
    }
    const took = performance.now() - t0;
    expect(r.status).toBe(200);
    // 160 P-384 CSRs checked and signed: without yielding, one stall of nearly the whole batch.
    expect(longest).toBeLessThan(took / 3);
  }, 30_000);
});
