/**
 * End to end: in-process verifier (real HTTPS, temp dataDir) + agent (join token) + a real gRPC
 * Workload API client on the agent's Unix socket.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { validateJwtSvid } from '../../src/spiffe/jwtsvid.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { GID, UID, WorkloadClient, agentEnv, createEntry, describeSvids, freePort, joinToken, runAgent, waitFor, type AgentEnv } from './harness.js';

let dir: string;
let port: number;
let tv: TestVerifier;
let env: AgentEnv;
let agent: RunningAgent;
let wl: WorkloadClient;
let agentId: string;
const uidSel = `unix:uid:${UID}`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-agent-e2e-'));
  port = await freePort();
  tv = await startTestVerifier({ listen: { address: '127.0.0.1', port } }, { dir: join(dir, 'verifier') });
  const t = await joinToken(tv.adminSocket, { spiffeId: 'spiffe://example.org/node/n1' });
  agentId = t.agentId;
  await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/web', parentId: t.agentId, selectors: [uidSel], hint: 'web' });
  env = await agentEnv(dir, tv.adminSocket, port, { join_token: { token: t.token } });
  agent = await runAgent(env);
  wl = new WorkloadClient(env.socket);
}, 30_000);

afterAll(async () => {
  wl?.close();
  await agent?.close();
  await tv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('agent with a real verifier', () => {
  it('attests with a join token and serves a verified X.509-SVID over the Workload API', async () => {
    expect(await agent.whenAttested()).toBe(agentId);
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/web'), 10_000, 'web SVID');
    const m = s.latest()!;
    const web = m.svids.find((x) => x.spiffe_id === 'spiffe://example.org/web')!;
    expect(web.hint).toBe('web');
    expect(describeSvids(m)[0]!.notAfter.getTime()).toBeGreaterThan(Date.now() + 30 * 60_000);
    expect(web.x509_svid_key.length).toBeGreaterThan(100);
    // Node key and SVID persisted; the key is private to the agent.
    expect(statSync(join(env.config.dataDir, 'node-key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(join(env.config.dataDir, 'node-svid.pem')).isFile()).toBe(true);
    expect(statSync(join(env.config.dataDir, 'bundle.pem')).isFile()).toBe(true);
  });

  it('applies entries added and removed on the verifier within 5 s', async () => {
    const s = await wl.streamWhen((m) => m.svids.length > 0, 10_000, 'an SVID');
    const before = s.messages.length;
    const t0 = Date.now();
    // Parented by the token's node alias; needs both uid and gid of this process.
    const db = await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/db', parentId: 'spiffe://example.org/node/n1', selectors: [uidSel, `unix:gid:${GID}`] });
    // Does not apply to this process (another uid).
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/other', parentId: agentId, selectors: [`unix:uid:${UID + 1}`] });
    await waitFor(() => s.ids().includes('spiffe://example.org/db'), 5000, 'db SVID on the open stream');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(s.messages.length).toBeGreaterThan(before);
    expect(s.ids()).toEqual(['spiffe://example.org/db', 'spiffe://example.org/web']);
    describeSvids(s.latest()!);
    await waitFor(() => agent.status().x509Svids === 3, 5000, 'three SVIDs cached');

    const t1 = Date.now();
    await adminCall(tv.adminSocket, 'DELETE', `/v1/admin/entries/${db.id}`);
    await waitFor(() => !s.ids().includes('spiffe://example.org/db'), 5000, 'db SVID gone');
    expect(Date.now() - t1).toBeLessThan(5000);
    expect(s.ids()).toEqual(['spiffe://example.org/web']);
  });

  it('mints, caches and validates JWT-SVIDs and serves JWT bundles', async () => {
    const r = await wl.fetchJwt(['svc-a']);
    expect(r.svids.map((x) => x.spiffe_id)).toEqual(['spiffe://example.org/web']);
    const again = await wl.fetchJwt(['svc-a']);
    expect(again.svids[0]!.svid).toBe(r.svids[0]!.svid);
    const v = await wl.validateJwt(r.svids[0]!.svid, 'svc-a');
    expect(v.spiffe_id).toBe('spiffe://example.org/web');
    const b = await wl.firstJwtBundles();
    const jwks = b.bundles['spiffe://example.org']!;
    const bundle = SpiffeBundle.fromJwks('example.org', jwks.toString('utf8'));
    const checked = await validateJwtSvid(r.svids[0]!.svid, { audience: 'svc-a', keysFor: () => bundle.jwtAuthorities, now: new Date() });
    expect(checked.spiffeId.toString()).toBe('spiffe://example.org/web');
    await expect(wl.fetchJwt(['svc-a'], 'spiffe://example.org/other')).rejects.toMatchObject({ code: 7 }); // PERMISSION_DENIED
  });

  it('keeps serving cached SVIDs while the verifier is down, and catches up when it is back', async () => {
    await tv.v.close();
    await waitFor(() => agent.status().lastError?.code === 'agent.verifier_unreachable', 5000, 'agent notices the outage');
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/web'), 5000, 'cached web SVID');
    describeSvids(s.latest()!);
    // A JWT-SVID minted before the outage is still served from the cache.
    expect((await wl.fetchJwt(['svc-a'])).svids[0]!.spiffe_id).toBe('spiffe://example.org/web');
    // A new audience needs the verifier: the Workload API says UNAVAILABLE.
    await expect(wl.fetchJwt(['svc-new'])).rejects.toMatchObject({ code: 14 });

    tv = await startTestVerifier({ listen: { address: '127.0.0.1', port } }, { dir: join(dir, 'verifier') });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/after-outage', parentId: agentId, selectors: [uidSel] });
    // Backoff in tests is capped at 1 s; the sync interval is 200 ms.
    await waitFor(() => s.ids().includes('spiffe://example.org/after-outage'), 8000, 'entry created after the outage');
    expect(agent.agentId()).toBe(agentId);
    await waitFor(() => agent.status().lastError === undefined, 5000, 'agent healthy again');
  });

  it('a restarted agent uses its persisted node SVID instead of attesting again (the token is used up)', async () => {
    await agent.close();
    agent = await runAgent(env);
    expect(agent.agentId()).toBe(agentId);
    await agent.syncNow();
    const s = await wl.streamWhen((m) => m.svids.some((x) => x.spiffe_id === 'spiffe://example.org/after-outage'), 10_000, 'SVIDs after restart');
    describeSvids(s.latest()!);
    expect(agent.status().lastError).toBeUndefined();
  });
});
