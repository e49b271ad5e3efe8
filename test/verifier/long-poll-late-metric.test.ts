/**
 * `sigil_long_poll_late_seconds`: how long after its granted wait a long-poll that ended unchanged
 * was answered (the verifier's share of an unchanged agent's sync in push mode). Only unchanged
 * long-polls are counted, and the wait itself is not.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { attestWithJoinToken, httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier();
  caPem = certsToPem(tv.v.core.ca.x509Authorities());
}, 60_000);
afterAll(async () => tv?.stop());

const attest = () => attestWithJoinToken(tv, caPem);

/** The histogram's count and sum from /metrics. */
async function late(): Promise<{ count: number; sum: number }> {
  const text = String((await httpsJson(tv.v.port, 'GET', '/metrics', { caPem })).body);
  const num = (re: RegExp): number => {
    const m = re.exec(text);
    if (!m) throw new Error(`${re.source} not in /metrics`);
    return Number(m[1]);
  };
  return {
    count: num(/^sigil_long_poll_late_seconds_count (\S+)$/m),
    sum: num(/^sigil_long_poll_late_seconds_sum (\S+)$/m),
  };
}

describe('sigil_long_poll_late_seconds', () => {
  it('counts a long-poll that ended unchanged, without its wait; not a plain 304 nor a long-poll answered with a change', async () => {
    const a = await attest();
    const r1 = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls });
    expect(r1.status).toBe(200);
    const etag = r1.headers.etag as string;
    expect(await late()).toMatchObject({ count: 0, sum: 0 });

    // A 304 without a wait is not a long-poll.
    const plain = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...a.tls, headers: { 'if-none-match': etag } });
    expect(plain.status).toBe(304);
    expect((await late()).count).toBe(0);

    // Unchanged through a 1-s wait: counted once, and what is counted is the time past the wait
    // (a histogram that kept the wait would hold ≥ 1 s).
    const t0 = performance.now();
    const held = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized?wait=1', { caPem, ...a.tls, headers: { 'if-none-match': etag } });
    expect(held.status).toBe(304);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(990);
    const after = await late();
    expect(after.count).toBe(1);
    expect(after.sum).toBeGreaterThanOrEqual(0);
    expect(after.sum).toBeLessThan(0.5);

    // Answered by a change during its wait: a 200, not counted.
    const pending = httpsJson(tv.v.port, 'GET', '/v1/entries/authorized?wait=20', { caPem, ...a.tls, headers: { 'if-none-match': etag } });
    await new Promise((r) => setTimeout(r, 200));
    await adminCall(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/late-metric', parentId: a.agentId, selectors: ['unix:uid:1'] });
    const changed = await pending;
    expect(changed.status).toBe(200);
    expect((await late()).count).toBe(1);
  }, 30_000);
});
