/** Federation input validation (pure): names, URLs, relationships, foreign bundles, sequence. */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { FederationService } from '../../src/federation/service.js';
import { FederatedBundles } from '../../src/federation/agent-bundles.js';
import { checkSuccessor, parseForeignBundle, validateRelationship } from '../../src/federation/validate.js';
import { validateEntry } from '../../src/verifier/entries.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function caOf(td: string): Buffer {
  const k = generateKey('ec-p256');
  return issueCaCertificate({ trustDomain: td, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
}
const bundleText = (td: string, seq: number, ca = caOf(td)) => JSON.stringify(new SpiffeBundle(td, { x509Authorities: [ca], sequence: seq }).toJwks());

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('relationships', () => {
  const ok = { trustDomain: 'b.org', bundleEndpointUrl: 'https://b.example:8444/', profile: 'https_web' };
  it('accepts a valid https_web relationship', () => {
    expect(validateRelationship(ok, 'a.org')).toEqual({ trustDomain: 'b.org', bundleEndpointUrl: 'https://b.example:8444/', profile: 'https_web' });
  });
  it.each([
    [{ ...ok, trustDomain: 'B.ORG' }, 'federation.invalid_trust_domain'],
    [{ ...ok, trustDomain: 'b.org:443' }, 'federation.invalid_trust_domain'],
    [{ ...ok, trustDomain: 'a.org' }, 'federation.local_trust_domain'],
    [{ ...ok, trustDomain: 'spiffe://a.org' }, 'federation.local_trust_domain'],
    [{ ...ok, bundleEndpointUrl: 'http://b.example/' }, 'federation.url_not_https'],
    [{ ...ok, bundleEndpointUrl: 'ftp://b.example/' }, 'federation.url_not_https'],
    [{ ...ok, bundleEndpointUrl: 'https://u:p@b.example/' }, 'federation.invalid_url'],
    [{ ...ok, bundleEndpointUrl: 'not a url' }, 'federation.invalid_url'],
    [{ ...ok, profile: 'https' }, 'federation.invalid_profile'],
    [{ ...ok, profile: 'https_spiffe' }, 'federation.endpoint_id_required'],
    [{ ...ok, profile: 'https_spiffe', endpointSpiffeId: 'spiffe://c.org/x' }, 'federation.endpoint_id_wrong_trust_domain'],
    [{ ...ok, endpointSpiffeId: 'spiffe://b.org/x' }, 'federation.invalid_endpoint_id'],
    [{ ...ok, webCaPem: 'garbage' }, 'federation.invalid_web_ca'],
  ])('refuses %j with %s', (input, want) => {
    expect(code(() => validateRelationship(input, 'a.org'))).toBe(want);
  });
});

describe('foreign bundles', () => {
  it('parses a good bundle', () => {
    expect(parseForeignBundle('b.org', bundleText('b.org', 3)).sequence).toBe(3);
  });
  it('refuses a bundle whose authority names another trust domain', () => {
    expect(code(() => parseForeignBundle('b.org', bundleText('a.org', 3)))).toBe('federation.bundle_wrong_trust_domain');
  });
  it('refuses private key members, huge, deep, empty and malformed bundles', () => {
    const j = JSON.parse(bundleText('b.org', 1)) as { keys: Record<string, unknown>[] };
    expect(code(() => parseForeignBundle('b.org', JSON.stringify({ keys: [{ ...j.keys[0], d: 'AAAA' }] })))).toBe('federation.bundle_malformed');
    expect(code(() => parseForeignBundle('b.org', ' '.repeat(300 * 1024)))).toBe('federation.bundle_too_large');
    expect(code(() => parseForeignBundle('b.org', `{"keys":[],"x":${'['.repeat(20)}${']'.repeat(20)}}`))).toBe('federation.bundle_malformed');
    expect(code(() => parseForeignBundle('b.org', '{"keys":[]}'))).toBe('federation.bundle_empty');
    expect(code(() => parseForeignBundle('b.org', '{"keys":'))).toBe('federation.bundle_malformed');
    expect(code(() => parseForeignBundle('b.org', JSON.stringify({ keys: Array.from({ length: 65 }, () => j.keys[0]) })))).toBe('federation.bundle_too_large');
  });
  it('refuses a sequence downgrade and reports a change', () => {
    const ca = caOf('b.org');
    const five = parseForeignBundle('b.org', bundleText('b.org', 5, ca));
    expect(code(() => checkSuccessor('b.org', five, parseForeignBundle('b.org', bundleText('b.org', 4, ca))))).toBe('federation.sequence_downgrade');
    expect(checkSuccessor('b.org', five, parseForeignBundle('b.org', bundleText('b.org', 5, ca)))).toBe(false);
    expect(checkSuccessor('b.org', five, parseForeignBundle('b.org', bundleText('b.org', 6, ca)))).toBe(true);
  });
});

describe('entries federatesWith', () => {
  const base = { spiffeId: 'spiffe://a.org/w', parentId: 'spiffe://a.org/n', selectors: ['unix:uid:1'] };
  it('normalises and refuses the local or an invalid trust domain', () => {
    expect(validateEntry({ ...base, federatesWith: ['spiffe://c.org', 'b.org', 'b.org'] }, 'a.org').federatesWith).toEqual(['b.org', 'c.org']);
    expect(code(() => validateEntry({ ...base, federatesWith: ['a.org'] }, 'a.org'))).toBe('entry.federates_with_local');
    expect(code(() => validateEntry({ ...base, federatesWith: ['B.org'] }, 'a.org'))).toBe('entry.invalid_federates_with');
  });
});

describe('a foreign bundle never replaces the local one', () => {
  it('the verifier refuses a relationship with its own trust domain', async () => {
    const store = new SqliteStore(':memory:');
    const f = new FederationService({ store, trustDomain: 'a.org', logger: pino({ level: 'silent' }), registry: new Registry(), now: () => new Date() });
    await expect(f.create({ trustDomain: 'a.org', bundleEndpointUrl: 'https://x/', profile: 'https_web' })).rejects.toMatchObject({ code: 'federation.local_trust_domain' });
    expect(await f.bundlesFor(['a.org'])).toEqual({});
    await store.close();
  });
  it('the agent drops a "federated" bundle for its own trust domain and keeps a bad one\'s predecessor', () => {
    const fb = new FederatedBundles('a.org', mkdtempSync(join(tmpdir(), 'fed-agent-')), pino({ level: 'silent' }));
    const good = JSON.parse(bundleText('b.org', 2)) as unknown;
    expect(fb.adopt({ bundles: { 'a.org': JSON.parse(bundleText('a.org', 9)), 'b.org': good }, entries: { e1: ['a.org', 'b.org'] } })).toBe(true);
    expect([...fb.bundles().keys()]).toEqual(['b.org']);
    expect(fb.trustDomainsOf('e1')).toEqual(['b.org']);
    fb.adopt({ bundles: { 'b.org': { keys: 'nope' } }, entries: { e1: ['b.org'] } });
    expect(fb.bundles().get('b.org')?.sequence).toBe(2);
  });
});

describe('SQLite persistence', () => {
  it('keeps relationships and the last good bundle across a reopen; never rolls the sequence back', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'fed-db-')), 'sigil.db');
    let store = new SqliteStore(path);
    const at = new Date().toISOString();
    expect(await store.putFederation({ trustDomain: 'b.org', bundleEndpointUrl: 'https://b/', profile: 'https_web', createdAt: at, updatedAt: at }, true)).toBe(true);
    expect(await store.saveFederatedBundle({ trustDomain: 'b.org', bundle: '{}', sequence: 5, updatedAt: at })).toBe(true);
    expect(await store.saveFederatedBundle({ trustDomain: 'b.org', bundle: '{"old":1}', sequence: 4, updatedAt: at })).toBe(false);
    expect(await store.saveFederatedBundle({ trustDomain: 'nope.org', bundle: '{}', sequence: 1, updatedAt: at })).toBe(false);
    await store.close();
    store = new SqliteStore(path);
    expect((await store.getFederatedBundle('b.org'))?.sequence).toBe(5);
    expect((await store.listFederations()).map((r) => r.trustDomain)).toEqual(['b.org']);
    expect(await store.deleteFederation('b.org')).toBe(true);
    expect(await store.getFederatedBundle('b.org')).toBeUndefined();
    await store.close();
  });
});
