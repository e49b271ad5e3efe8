/**
 * Entry changes pushed to the agent (long-poll of GET /v1/entries/authorized?wait=N): with a real
 * verifier and a real agent whose periodic sync is 60 s, a new entry's SVID reaches a Workload API
 * stream in under a second; against a verifier that refuses long-polls (longPoll.maxWaiters 0) the
 * periodic sync still delivers it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { UID, WorkloadClient, agentEnv, createEntry, freePort, joinToken, runAgent } from './harness.js';

const uidSel = `unix:uid:${UID}`;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups.length = 0;
});

async function setup(verifierExtra: Record<string, unknown>, syncInterval: string): Promise<{ tv: TestVerifier; agentId: string; wl: WorkloadClient; agent: RunningAgent }> {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-push-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const tv = await startTestVerifier({ listen: { address: '127.0.0.1', port }, ...verifierExtra }, { dir: join(dir, 'verifier') });
  cleanups.push(() => tv.stop());
  const t = await joinToken(tv.adminSocket);
  await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/first', parentId: t.agentId, selectors: [uidSel] });
  const env = await agentEnv(dir, tv.adminSocket, port, { join_token: { token: t.token } }, { syncInterval });
  const agent = await runAgent(env);
  cleanups.push(() => agent.close());
  const wl = new WorkloadClient(env.socket);
  cleanups.push(() => wl.close());
  await agent.whenAttested();
  await wl.streamWhen((m) => m.svids.some((s) => s.spiffe_id === 'spiffe://example.org/first'), 10_000, 'first SVID');
  return { tv, agentId: t.agentId, wl, agent };
}

function refusals(tv: TestVerifier, code: string): Promise<number> {
  return tv.v.core.metrics.registry.metrics().then((text) => {
    const m = new RegExp(`^sigil_refusals_total\\{code="${code.replace(/\./g, '\\.')}"\\} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  });
}

describe('entry changes pushed to the agent', () => {
  it('a new entry reaches a Workload API stream by push, long before the 60 s periodic sync', async () => {
    const { tv, agentId, wl } = await setup({}, '60s');
    // Let the long-poll be held.
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/pushed', parentId: agentId, selectors: [uidSel] });
    await wl.streamWhen((m) => m.svids.some((s) => s.spiffe_id === 'spiffe://example.org/pushed'), 5_000, 'pushed SVID');
    // Pushed, not polled: the periodic sync is 60 s. (How fast a push is, is measured in bench/, not here;
    // the bound only has to tell a push from the next periodic sync on a loaded host.)
    const took = Date.now() - t0;
    expect(took).toBeLessThan(10_000);
    expect(await refusals(tv, 'entries.long_poll_disabled')).toBe(0);
  });

  it('falls back to the periodic sync when the verifier refuses long-polls', async () => {
    const { tv, agentId, wl } = await setup({ longPoll: { maxWaiters: 0 } }, '1s');
    await new Promise((r) => setTimeout(r, 500));
    expect(await refusals(tv, 'entries.long_poll_disabled')).toBeGreaterThanOrEqual(1);
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/polled', parentId: agentId, selectors: [uidSel] });
    await wl.streamWhen((m) => m.svids.some((s) => s.spiffe_id === 'spiffe://example.org/polled'), 5_000, 'polled SVID');
    // Refused once, then not asked again before LONG_POLL_RETRY_MS (30 s): no flood of refused polls.
    expect(await refusals(tv, 'entries.long_poll_disabled')).toBe(1);
  });
});
