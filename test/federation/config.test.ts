/**
 * Relationships declared in the verifier config (`federation.relationships`): fetched from the
 * foreign bundle endpoint and served to agents; and what happens when the config and the CLI (the
 * admin API) disagree — docs/federation.md "Config and CLI":
 *   - at start the config wins: a relationship the datastore holds with other fields is updated to
 *     the config's (the last good bundle kept);
 *   - at run time the admin API of a verifier whose config declares the relationship refuses to
 *     change its fields or delete it (`federation.declared_in_config`) but takes a new trust bundle;
 *   - a relationship dropped from the config stays in the datastore, managed through the CLI.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { attestAgent, federatedOf, refreshedOk, refusal, showRel, x509Of } from './support.js';

const A = 'example.org';
const B = 'other.org';

let root: string;
let vb: TestVerifier;
let bundleB: { keys: unknown[]; spiffe_sequence: number };

function declared(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    trustDomain: B,
    bundleEndpointUrl: `https://127.0.0.1:${vb.v.bundleEndpointPort}/`,
    profile: 'https_spiffe',
    endpointSpiffeId: `spiffe://${B}/sigil/verifier`,
    trustBundle: 'other.org.json',
    ...overrides,
  };
}

function startA(dir: string, relationships: Record<string, unknown>[] | undefined): Promise<TestVerifier> {
  return startTestVerifier({ trustDomain: A, federation: { refresh: { min: '1s', maxBackoff: '1s' }, ...(relationships ? { relationships } : {}) } }, { dir });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'sigil-fedcfg-'));
  vb = await startTestVerifier({ trustDomain: B, federation: { bundleEndpoint: { address: '127.0.0.1', port: 0, profile: 'https_spiffe' } } }, { dir: join(root, 'vb') });
  bundleB = await adminCall(vb.adminSocket, 'GET', '/v1/admin/bundle');
}, 30_000);

afterAll(async () => {
  await vb?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('a relationship declared in the config', () => {
  let va: TestVerifier | undefined;
  const dir = () => join(root, 'va');
  afterAll(async () => va?.stop());

  it('is created at start, fetched from the bundle endpoint and served to the agents whose entries federate with it', async () => {
    const d = dir();
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'other.org.json'), JSON.stringify(bundleB));
    va = await startA(d, [declared()]);
    const r = await refreshedOk(va, B);
    expect(r).toMatchObject({ trustDomain: B, profile: 'https_spiffe', declaredInConfig: true, bundleEndpointUrl: `https://127.0.0.1:${vb.v.bundleEndpointPort}/` });
    expect(r.refresh.lastError).toBeUndefined();
    const agent = await attestAgent(va, [B]);
    const served = await federatedOf(va, agent);
    expect(Object.keys(served.bundles)).toEqual([B]);
    expect(x509Of(served.bundles[B]!)).toEqual(x509Of(bundleB));
    expect(Object.values(served.entries)).toEqual([[B]]);
  }, 60_000);

  it('the CLI may not change its fields or delete it there (federation.declared_in_config, 409), but may give a new trust bundle and refresh it', async () => {
    const v = va!;
    const patch = await refusal(adminCall(v.adminSocket, 'PATCH', `/v1/admin/federations/${B}`, { bundleEndpointUrl: 'https://127.0.0.1:1/' }));
    expect(patch.code).toBe('federation.declared_in_config');
    expect(patch.message).toMatch(/bundleEndpointUrl/);
    const del = await refusal(adminCall(v.adminSocket, 'DELETE', `/v1/admin/federations/${B}`));
    expect(del.code).toBe('federation.declared_in_config');
    expect((await showRel(v, B)).bundleEndpointUrl).toBe(`https://127.0.0.1:${vb.v.bundleEndpointPort}/`);
    const anchored = await adminCall<RelationshipView>(v.adminSocket, 'PATCH', `/v1/admin/federations/${B}`, { initialBundle: JSON.stringify(bundleB) });
    expect(anchored.bundleSequence).toBe(bundleB.spiffe_sequence);
    expect((await adminCall<RelationshipView>(v.adminSocket, 'POST', `/v1/admin/federations/${B}/refresh`)).refresh.lastError).toBeUndefined();
  }, 30_000);

  it('at start the config wins over a datastore that disagrees (CLI-made relationship with other fields); the bundle is kept', async () => {
    await va!.stop();
    va = undefined;
    // The same datastore, a verifier without the declaration: the CLI points the relationship elsewhere.
    let v = await startA(dir(), undefined);
    expect((await showRel(v, B)).declaredInConfig).toBe(false);
    const moved = await adminCall<RelationshipView>(v.adminSocket, 'PATCH', `/v1/admin/federations/${B}`, { bundleEndpointUrl: 'https://127.0.0.1:1/elsewhere' });
    expect(moved.bundleEndpointUrl).toBe('https://127.0.0.1:1/elsewhere');
    const seq = moved.bundleSequence;
    expect(seq).toBe(bundleB.spiffe_sequence);
    await v.stop();
    // Declared again: the config's URL is back, the last good bundle untouched, and it refreshes.
    v = await startA(dir(), [declared()]);
    va = v;
    const back = await showRel(v, B);
    expect(back.bundleEndpointUrl).toBe(`https://127.0.0.1:${vb.v.bundleEndpointPort}/`);
    expect(back.declaredInConfig).toBe(true);
    expect(back.bundleSequence).toBe(seq);
    expect(x509Of(back.bundle!)).toEqual(x509Of(bundleB));
    expect((await refreshedOk(v, B)).refresh.lastError).toBeUndefined();
  }, 60_000);

  it('a profile change in the config is applied too (https_spiffe → https_web drops the endpoint ID)', async () => {
    await va!.stop();
    va = undefined;
    const v = await startA(dir(), [{ trustDomain: B, bundleEndpointUrl: 'https://127.0.0.1:1/web', profile: 'https_web' }]);
    va = v;
    const r = await showRel(v, B);
    expect(r).toMatchObject({ profile: 'https_web', bundleEndpointUrl: 'https://127.0.0.1:1/web', declaredInConfig: true });
    expect(r.endpointSpiffeId).toBeUndefined();
    // The bundle fetched before is kept while the (unreachable) endpoint fails.
    expect(r.bundleSequence).toBe(bundleB.spiffe_sequence);
    const err = await refusal(adminCall(v.adminSocket, 'POST', `/v1/admin/federations/${B}/refresh`));
    expect(err.code).toBe('federation.endpoint_unreachable');
    expect((await showRel(v, B)).bundleSequence).toBe(bundleB.spiffe_sequence);
  }, 60_000);

  it('dropped from the config, it stays in the datastore and the CLI manages (and cuts) it', async () => {
    await va!.stop();
    va = undefined;
    const v = await startA(dir(), undefined);
    va = v;
    const r = await showRel(v, B);
    expect(r.declaredInConfig).toBe(false);
    expect(r.bundleSequence).toBe(bundleB.spiffe_sequence);
    expect(await adminCall(v.adminSocket, 'DELETE', `/v1/admin/federations/${B}`)).toEqual({ deleted: B });
    expect((await adminCall<{ relationships: unknown[] }>(v.adminSocket, 'GET', '/v1/admin/federations')).relationships).toEqual([]);
  }, 60_000);
});

describe('a declared https_spiffe relationship without a trust bundle', () => {
  it('stops the verifier at start when the datastore holds no bundle of that trust domain (federation.initial_bundle_required)', async () => {
    const d = join(root, 'no-bundle');
    mkdirSync(d, { recursive: true });
    const { trustBundle: _omitted, ...rel } = declared();
    const err = await startA(d, [rel]).then(
      async (v) => {
        await v.stop();
        return undefined;
      },
      (e: unknown) => e as { code?: string; message: string },
    );
    expect(err?.code).toBe('federation.initial_bundle_required');
    expect(err?.message).toMatch(/other\.org/);
  }, 30_000);
});

describe('config validation of federation.relationships', () => {
  const base = { trustDomain: A, listen: { address: '127.0.0.1', port: 0 }, adminSocket: '/tmp/x.sock', dataDir: '/tmp/x', nodeAttestors: { join_token: {} } };
  const rel = { trustDomain: B, bundleEndpointUrl: 'https://b.example/', profile: 'https_web' };
  function codeOf(relationships: unknown[]): string | undefined {
    try {
      verifierConfigFrom({ ...base, federation: { relationships } }, root);
    } catch (e) {
      return (e as { code?: string }).code;
    }
    return undefined;
  }
  it.each([
    ['the local trust domain', [{ ...rel, trustDomain: A }], 'federation.local_trust_domain'],
    ['a bad trust domain name', [{ ...rel, trustDomain: 'Other.Org' }], 'federation.invalid_trust_domain'],
    ['an http URL', [{ ...rel, bundleEndpointUrl: 'http://b.example/' }], 'federation.url_not_https'],
    ['https_spiffe without endpointSpiffeId', [{ ...rel, profile: 'https_spiffe' }], 'federation.endpoint_id_required'],
    ['the same trust domain twice', [rel, { ...rel, trustDomain: `spiffe://${B}` }], 'config.invalid'],
    ['a trust bundle file that cannot be read', [{ ...rel, profile: 'https_spiffe', endpointSpiffeId: `spiffe://${B}/e`, trustBundle: 'missing.json' }], 'config.invalid'],
    ['an unknown key', [{ ...rel, extra: 1 }], 'config.invalid'],
  ])('refuses %s', (_what, relationships, want) => {
    expect(codeOf(relationships)).toBe(want);
  });
  it('accepts a good one', () => {
    expect(codeOf([rel])).toBeUndefined();
  });
});
