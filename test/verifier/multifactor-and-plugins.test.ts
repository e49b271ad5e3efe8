import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { adminCall } from '../../src/cli/admin-client.js';
import { loadNodeAttestorVerifiers } from '../../src/catalog.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { MemoryState } from '../tpm/memory-state.js';

const fixtures = resolve(__dirname, '../fixtures/plugins');
let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier({
    plugins: { fake_factor: join(fixtures, 'fake-factor.mjs') },
    nodeAttestors: { join_token: {}, fake_factor: { selectors: ['rack:r1', 'zone:z9'] } },
    requireAttestors: ['fake_factor', 'join_token'],
  });
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

async function run(attestors: Record<string, unknown>, respond: (binding: Buffer) => Record<string, unknown>) {
  const key = generateKey('ec-p256');
  const csr = createCsr(key);
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors, csr: csr.toString('base64') } });
  if (r1.status !== 200) return { r1, key };
  const b1 = r1.body as { session: string; nonce: string };
  const binding = sessionBinding(Buffer.from(b1.nonce, 'base64'), spkiDer(key.publicKey));
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses: respond(binding) } });
  return { r1, r2, key };
}

describe('multi-factor attestation and third-party plugins', () => {
  it('requires every factor in requireAttestors', async () => {
    const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
    const only = await run({ join_token: { token: t.token } }, () => ({ join_token: {} }));
    expect(only.r1.status).toBe(403);
    expect((only.r1.body as { error: { code: string } }).error.code).toBe('attest.missing_attestor');
  });

  it('unions selectors, names the agent after the first attestor, and node entries combine factors', async () => {
    const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
    // Node entry requiring both fake_factor selectors; a workload entry parented by it.
    const node = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', {
      spiffeId: 'spiffe://example.org/nodes/rack1',
      parentId: 'spiffe://example.org/sigil/verifier',
      selectors: ['fake_factor:rack:r1', 'fake_factor:zone:z9'],
    });
    const nodeTooStrict = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', {
      spiffeId: 'spiffe://example.org/nodes/rack2',
      parentId: 'spiffe://example.org/sigil/verifier',
      selectors: ['fake_factor:rack:r1', 'fake_factor:zone:other'],
    });
    const wl = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/app', parentId: 'spiffe://example.org/nodes/rack1', selectors: ['unix:uid:0'] });
    const wl2 = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/app2', parentId: 'spiffe://example.org/nodes/rack2', selectors: ['unix:uid:0'] });
    const res = await run({ fake_factor: { kind: 'fake' }, join_token: { token: t.token } }, (binding) => ({ fake_factor: { binding: binding.toString('base64') }, join_token: {} }));
    expect(res.r2!.status).toBe(200);
    const b = res.r2!.body as { agentId: string; svid: string[]; result: { submods: Record<string, { selectors: string[] }> } };
    expect(b.agentId).toBe('spiffe://example.org/sigil/agent/fake_factor/node-1');
    expect(b.result.submods.fake_factor!.selectors).toEqual(['fake_factor:rack:r1', 'fake_factor:zone:z9']);
    const tls = { cert: certsToPem(b.svid.map((s) => Buffer.from(s, 'base64'))), key: res.key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
    const ae = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
    const ids = (ae.body as { entries: { id: string }[] }).entries.map((e) => e.id);
    expect(ids).toContain(wl.id);
    expect(ids).not.toContain(wl2.id);
    expect(ids).not.toContain(node.id);
    expect(ids).not.toContain(nodeTooStrict.id);
  });

  it('a failing factor fails the session and does not use up the join token', async () => {
    const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
    const bad = await run({ fake_factor: { kind: 'fake' }, join_token: { token: t.token } }, () => ({ fake_factor: { binding: Buffer.alloc(32).toString('base64') }, join_token: {} }));
    expect(bad.r2!.status).toBe(401);
    expect((bad.r2!.body as { error: { code: string; message: string } }).error.code).toBe('fake_factor.binding_mismatch');
    expect((bad.r2!.body as { error: { message: string } }).error.message).toMatch(/^fake_factor: /);
    const good = await run({ fake_factor: { kind: 'fake' }, join_token: { token: t.token } }, (binding) => ({ fake_factor: { binding: binding.toString('base64') }, join_token: {} }));
    expect(good.r2!.status).toBe(200);
  });
});

describe('plugin loader', () => {
  const deps = () => ({ trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => new Date(), configDir: fixtures, state: new MemoryState() });
  it('names the plugin and the key when a config is wrong', async () => {
    await expect(loadNodeAttestorVerifiers({ fake_factor: { selectors: 'nope' } }, deps, { fake_factor: './fake-factor.mjs' }, fixtures)).rejects.toThrow(
      /plugin "fake_factor" config .*\/selectors must be array/,
    );
    await expect(loadNodeAttestorVerifiers({ fake_factor: { selectors: [], colour: 'red' } }, deps, { fake_factor: './fake-factor.mjs' }, fixtures)).rejects.toThrow(/unknown key "colour"/);
    await expect(loadNodeAttestorVerifiers({ nosuch: {} }, deps)).rejects.toMatchObject({ code: 'plugin.unknown' });
    await expect(loadNodeAttestorVerifiers({ fake_factor: {} }, deps, { fake_factor: './missing.mjs' }, fixtures)).rejects.toMatchObject({ code: 'plugin.not_found' });
    await expect(loadNodeAttestorVerifiers({ join_token: { extra: 1 } }, deps)).rejects.toMatchObject({ code: 'join_token.config_invalid' });
  });

  it('validates the verifier config with messages naming the key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-cfg-'));
    expect(() => verifierConfigFrom({ dataDir: dir }, dir)).toThrow(/missing required key "trustDomain"/);
    expect(() => verifierConfigFrom({ trustDomain: 'Example.org', dataDir: dir }, dir)).toThrow();
    expect(() => verifierConfigFrom({ trustDomain: 'example.org', dataDir: dir, listen: { port: 'x' } }, dir)).toThrow(/\/listen\/port must be integer/);
    expect(() => verifierConfigFrom({ trustDomain: 'example.org', dataDir: dir, ca: { ttl: 'soon' } }, dir)).toThrow(/\/ca\/ttl/);
    expect(() => verifierConfigFrom({ trustDomain: 'example.org', dataDir: dir, requireAttestors: ['tpm'] }, dir)).toThrow(/requireAttestors lists "tpm"/);
    expect(verifierConfigFrom({ trustDomain: 'example.org', dataDir: dir }, dir).svid.x509TtlSeconds).toBe(3600);
  });
});
