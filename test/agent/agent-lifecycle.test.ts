/**
 * Agent lifecycle against a real verifier with shortened TTLs: workload SVID rotation seen by a
 * streaming client, node SVID renewal, eviction → re-attestation with a fresh token from tokenFile,
 * and a replaced verifier CA → fallback to the bootstrap trustBundle.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { UID, WorkloadClient, agentEnv, createEntry, describeSvids, freePort, joinToken, runAgent, waitFor } from './harness.js';

let dir: string;
let port: number;
let tv: TestVerifier;
const cleanups: (() => Promise<void> | void)[] = [];
const uidSel = `unix:uid:${UID}`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-agent-life-'));
  port = await freePort();
  tv = await startTestVerifier({ listen: { address: '127.0.0.1', port }, svid: { agentTtl: '6s' } }, { dir: join(dir, 'verifier') });
}, 30_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await tv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function started(sub: string, nodeAttestors: Record<string, unknown>): Promise<{ agent: RunningAgent; wl: WorkloadClient; dataDir: string; trustBundlePath: string }> {
  const d = join(dir, sub);
  const env = await agentEnv(mkdirp(d), tv.adminSocket, port, nodeAttestors);
  const agent = await runAgent(env);
  const wl = new WorkloadClient(env.socket);
  cleanups.push(() => agent.close(), () => wl.close());
  return { agent, wl, dataDir: env.config.dataDir, trustBundlePath: env.trustBundlePath };
}

function mkdirp(d: string): string {
  mkdirSync(d, { recursive: true });
  return d;
}
describe('agent lifecycle', () => {
  it('rotates a workload SVID before it expires (streaming client) and renews the node SVID', async () => {
    const t = await joinToken(tv.adminSocket);
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/short', parentId: t.agentId, selectors: [uidSel], x509SvidTtl: 4 });
    const { agent, wl } = await started('rot', { join_token: { token: t.token } });
    expect(await agent.whenAttested()).toBe(t.agentId);
    const nodeExp1 = agent.status().nodeSvidExpiresAt!;
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/short'), 10_000, 'short-lived SVID');
    const first = describeSvids(s.latest()!)[0]!;
    expect(first.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(4000);
    // Rotation at half life ± 10 %: a new SVID arrives on the same stream before the first expires.
    const next = await waitFor(() => s.messages.map((m) => describeSvids(m)[0]!).find((d) => d.serial !== first.serial), 4000, 'rotated SVID');
    expect(Date.now()).toBeLessThan(first.notAfter.getTime());
    expect(next.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
    // Node SVID (6 s) renewed at half life under the same agent ID; syncing keeps working with it.
    await waitFor(() => agent.status().nodeSvidExpiresAt !== nodeExp1, 6000, 'node SVID renewal');
    expect(agent.agentId()).toBe(t.agentId);
    const syncedAt = Date.now();
    await waitFor(() => (agent.status().lastSync && Date.parse(agent.status().lastSync!) > syncedAt ? true : undefined), 3000, 'a sync with the renewed node SVID');
    expect(agent.status().lastError).toBeUndefined();
  }, 30_000);

  it('re-attests after eviction with a fresh token dropped into tokenFile, with a fresh node key', async () => {
    const alias = 'spiffe://example.org/node/n2';
    const t1 = await joinToken(tv.adminSocket, { spiffeId: alias });
    const t2 = await joinToken(tv.adminSocket, { spiffeId: alias });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/svc-n2', parentId: alias, selectors: [uidSel] });
    const tokenFile = join(dir, 'evict-token');
    writeFileSync(tokenFile, `${t1.token}\n`, { mode: 0o600 });
    const { agent, wl, dataDir } = await started('evict', { join_token: { tokenFile } });
    expect(await agent.whenAttested()).toBe(t1.agentId);
    await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/svc-n2'), 10_000, 'SVID under the node alias');
    const key1 = readFileSync(join(dataDir, 'node-key.pem'), 'utf8');

    writeFileSync(tokenFile, `${t2.token}\n`);
    await adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: t1.agentId });
    await waitFor(() => agent.agentId() === t2.agentId, 8000, 're-attestation with the second token');
    expect(readFileSync(join(dataDir, 'node-key.pem'), 'utf8')).not.toBe(key1);
    const agents = await adminCall<{ agents: { id: string }[] }>(tv.adminSocket, 'GET', '/v1/admin/agents');
    expect(agents.agents.map((a) => a.id)).toContain(t2.agentId);
    expect(agents.agents.map((a) => a.id)).not.toContain(t1.agentId);
    await agent.syncNow();
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/svc-n2'), 10_000, 'SVID after re-attestation');
    describeSvids(s.latest()!);
  }, 30_000);

  it('falls back to the bootstrap trustBundle when the verifier CA no longer chains to the persisted bundle', async () => {
    const t = await joinToken(tv.adminSocket);
    const tokenFile = join(dir, 'ca-token');
    writeFileSync(tokenFile, t.token, { mode: 0o600 });
    const { agent, wl, trustBundlePath } = await started('ca', { join_token: { tokenFile } });
    expect(await agent.whenAttested()).toBe(t.agentId);

    // A brand-new verifier (new datastore, new CA) on the same address; the operator hands the
    // agent the new bootstrap bundle and a token from the new verifier.
    await tv.stop();
    rmSync(join(dir, 'verifier'), { recursive: true, force: true });
    tv = await startTestVerifier({ listen: { address: '127.0.0.1', port }, svid: { agentTtl: '6s' } }, { dir: join(dir, 'verifier') });
    const fresh = await joinToken(tv.adminSocket);
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/after-ca-change', parentId: fresh.agentId, selectors: [uidSel] });
    writeFileSync(trustBundlePath, await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem'));
    writeFileSync(tokenFile, fresh.token);

    await waitFor(() => agent.agentId() === fresh.agentId, 10_000, 're-attestation against the new CA');
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/after-ca-change'), 10_000, 'SVID from the new CA');
    describeSvids(s.latest()!);
  }, 30_000);
});
