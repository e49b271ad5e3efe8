/**
 * Federation on PostgreSQL (a real server from test/support/postgres.ts): relationships and the
 * last good foreign bundles live in the datastore, so
 *   - two verifiers of one trust domain on one PostgreSQL share them: a relationship created
 *     through one is refreshed by the other (its own refresher picks it up within its 10 s sweep),
 *     entries through either may federate with it, both serve its bundle to agents, and a delete
 *     through one stops the other;
 *   - a verifier restart keeps them, and while the foreign endpoint is down the last good bundle is
 *     what agents keep receiving;
 *   - two verifiers starting at once with the same relationship declared in their configs both start.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { waitFor } from '../agent/harness.js';
import { startPostgres } from '../support/postgres.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { attestAgent, federatedOf, refreshedOk, refusal, showRel, x509Of } from './support.js';

const A = 'example.org';
const B = 'other.org';

let pg: Awaited<ReturnType<typeof startPostgres>>;
let root: string;
let vb: TestVerifier | undefined;
let a1: TestVerifier | undefined;
let a2: TestVerifier | undefined;
let bundleB: { keys: unknown[]; spiffe_sequence: number };

const onPg = (schema: string, extra: Record<string, unknown> = {}) => ({
  trustDomain: A,
  datastore: { kind: 'postgres', url: pg!.url, schema },
  federation: { refresh: { min: '1s', maxBackoff: '1s' }, ...extra },
});

beforeAll(async () => {
  pg = await startPostgres();
  if (!pg) return;
  root = mkdtempSync(join(tmpdir(), 'sigil-fedpg-'));
  vb = await startTestVerifier({ trustDomain: B, federation: { bundleEndpoint: { address: '127.0.0.1', port: 0, profile: 'https_spiffe' } } }, { dir: join(root, 'vb') });
  bundleB = await adminCall(vb.adminSocket, 'GET', '/v1/admin/bundle');
  a1 = await startTestVerifier(onPg('fed_shared'), { dir: join(root, 'a1') });
  a2 = await startTestVerifier(onPg('fed_shared'), { dir: join(root, 'a2') });
  // Each learns the other's CA (the bundle is the union), as their rotation timers would.
  await a1.v.tick();
  await a2.v.tick();
}, 90_000);

afterAll(async () => {
  await a1?.stop();
  await a2?.stop();
  await vb?.stop();
  await pg?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('federation on PostgreSQL', () => {
  it('a relationship created through one verifier is refreshed and served by the other', async ({ skip }) => {
    if (!pg) return skip();
    const created = await adminCall<RelationshipView>(a1!.adminSocket, 'POST', '/v1/admin/federations', {
      trustDomain: B,
      bundleEndpointUrl: `https://127.0.0.1:${vb!.v.bundleEndpointPort}/`,
      profile: 'https_spiffe',
      endpointSpiffeId: `spiffe://${B}/sigil/verifier`,
      initialBundle: JSON.stringify(bundleB),
    });
    expect(created.bundleSequence).toBe(bundleB.spiffe_sequence);
    // a2 never saw the admin call: it finds the relationship in PostgreSQL and fetches B's bundle itself.
    const onA2 = await refreshedOk(a2!, B, 25_000);
    expect(onA2.bundleEndpointUrl).toBe(created.bundleEndpointUrl);
    expect(onA2.refresh.consecutiveFailures).toBe(0);
    expect(x509Of((await showRel(a2!, B)).bundle!)).toEqual(x509Of(bundleB));
    // An agent attested at a2, its entry (federating with B) created through a2: a1 and a2 serve it B's bundle.
    const agent = await attestAgent(a2!, [B]);
    await a1!.v.tick();
    for (const v of [a1!, a2!]) {
      const served = await federatedOf(v, agent);
      expect(Object.keys(served.bundles)).toEqual([B]);
      expect(x509Of(served.bundles[B]!)).toEqual(x509Of(bundleB));
    }
  }, 60_000);

  it('survives a verifier restart; with the foreign endpoint down the last good bundle is kept and served', async ({ skip }) => {
    if (!pg) return skip();
    const agent = await attestAgent(a1!, [B]);
    const before = await showRel(a1!, B);
    await vb!.stop();
    vb = undefined;
    await a1!.restart();
    const after = await showRel(a1!, B);
    expect(after).toMatchObject({ trustDomain: B, profile: 'https_spiffe', bundleEndpointUrl: before.bundleEndpointUrl, bundleSequence: before.bundleSequence });
    expect(x509Of(after.bundle!)).toEqual(x509Of(bundleB));
    // The restarted verifier tries the endpoint at once, fails, and keeps what PostgreSQL holds.
    const failed = await waitFor(async () => ((await showRel(a1!, B)).refresh.lastError ? showRel(a1!, B) : undefined), 15_000, 'a failed refresh');
    expect(failed.refresh.lastError?.code).toBe('federation.endpoint_unreachable');
    expect(failed.bundleSequence).toBe(bundleB.spiffe_sequence);
    const err = await refusal(adminCall(a1!.adminSocket, 'POST', `/v1/admin/federations/${B}/refresh`));
    expect(err.code).toBe('federation.endpoint_unreachable');
    for (const v of [a1!, a2!]) {
      const served = await federatedOf(v, agent);
      expect(x509Of(served.bundles[B]!)).toEqual(x509Of(bundleB));
    }
  }, 60_000);

  it('a delete through one verifier cuts the relationship for both', async ({ skip }) => {
    if (!pg) return skip();
    const agent = await attestAgent(a1!, [B]);
    expect(await adminCall(a2!.adminSocket, 'DELETE', `/v1/admin/federations/${B}`)).toEqual({ deleted: B });
    expect((await refusal(showRel(a1!, B))).code).toBe('federation.not_found');
    // Read from the datastore at most once a second: within that, a1 stops serving it.
    await waitFor(async () => Object.keys((await federatedOf(a1!, agent)).bundles).length === 0, 5_000, 'a1 stops serving B');
    expect((await refusal(adminCall(a1!.adminSocket, 'POST', `/v1/admin/federations/${B}/refresh`))).code).toBe('federation.not_found');
    const entry = await refusal(adminCall(a1!.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${A}/late`, parentId: agent.agentId, selectors: ['unix:uid:2'], federatesWith: [B] }));
    expect(entry.code).toBe('entry.federates_with_unknown');
  }, 30_000);

  it('two verifiers starting at once with the same declared relationship both start, and it exists once', async ({ skip }) => {
    if (!pg) return skip();
    const dirs = ['c1', 'c2'].map((n) => join(root, n));
    const bundleFile = join(root, 'b.json');
    writeFileSync(bundleFile, JSON.stringify(bundleB));
    const rel = { trustDomain: B, bundleEndpointUrl: 'https://127.0.0.1:1/', profile: 'https_spiffe', endpointSpiffeId: `spiffe://${B}/sigil/verifier`, trustBundle: bundleFile };
    // A fresh schema, so both run the migrations and the declaration at the same moment.
    const [c1, c2] = await Promise.all(dirs.map((d) => startTestVerifier(onPg('fed_race', { relationships: [rel] }), { dir: d })));
    try {
      const list = await adminCall<{ relationships: RelationshipView[] }>(c1!.adminSocket, 'GET', '/v1/admin/federations');
      expect(list.relationships.map((r) => [r.trustDomain, r.declaredInConfig, r.bundleSequence])).toEqual([[B, true, bundleB.spiffe_sequence]]);
      expect((await showRel(c2!, B)).declaredInConfig).toBe(true);
    } finally {
      await c1?.stop();
      await c2?.stop();
    }
  }, 60_000);
});
