/**
 * aws_nitro end to end through the real verifier over HTTPS: a synthetic Nitro PKI made in the test
 * (the verifier takes its root from config) and an agent half whose NSM is played by the test.
 */
import 'reflect-metadata';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { makeNitroAgentPlugin } from '../../src/nitro/plugin.js';
import type { NodeAttestorAgent } from '../../src/plugins/types.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { defaultPcrs, fakeNsm, makeLeaf, makePki, MODULE_ID, type DocFields, type TestPki } from '../nitro/fixtures.js';
import { attestOverHttps, errorCode } from '../support/attest-client.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let pki: TestPki;
let tv: TestVerifier;
let caPem: string;
const agentDeps = { trustDomain: 'example.org', logger: pino({ level: 'silent' }), dataDir: tmpdir(), configDir: tmpdir(), now: () => new Date() };

async function agentWith(fields: () => DocFields = () => ({ timestamp: Date.now() })): Promise<NodeAttestorAgent> {
  const leaf = await makeLeaf(pki);
  return makeNitroAgentPlugin({ transport: fakeNsm(pki, leaf, fields) }).create({}, agentDeps);
}

beforeAll(async () => {
  pki = await makePki({ intermediates: 2 });
  const dir = mkdtempSync(join(tmpdir(), 'sigil-nitro-e2e-'));
  writeFileSync(join(dir, 'test-root.pem'), pki.rootPem);
  tv = await startTestVerifier({ nodeAttestors: { aws_nitro: { rootCert: join(dir, 'test-root.pem'), maxAge: '5m' } }, requireAttestors: ['aws_nitro'] }, { dir });
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

describe('aws_nitro over the real verifier', () => {
  it('attests an enclave, names the agent by module_id, and its PCR selectors gate workload entries', async () => {
    const nodeEntry = await adminCall<{ spiffeId: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', {
      spiffeId: 'spiffe://example.org/enclaves/payments',
      parentId: 'spiffe://example.org/sigil/verifier',
      selectors: ['aws_nitro:debug:false', `aws_nitro:pcr0:${Buffer.from(defaultPcrs().get(0)!).toString('hex')}`],
    });
    const wl = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/payments', parentId: nodeEntry.spiffeId, selectors: ['unix:uid:0'] });
    const r = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith() });
    expect(r.finish?.status).toBe(200);
    const body = r.finish!.body as { agentId: string; result: { submods: { aws_nitro: { selectors: string[]; claims: Record<string, unknown> } } } };
    expect(body.agentId).toBe(`spiffe://example.org/sigil/agent/aws_nitro/${MODULE_ID}`);
    const sels = body.result.submods.aws_nitro.selectors;
    expect(sels).toContain(`aws_nitro:module_id:${MODULE_ID}`);
    expect(sels).toContain('aws_nitro:instance_id:i-0123456789abcdef0');
    expect(sels).toContain('aws_nitro:debug:false');
    expect(sels.filter((s) => /^aws_nitro:pcr\d+:/.test(s))).toHaveLength(3);
    const ae = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...r.tls! });
    expect((ae.body as { entries: { id: string }[] }).entries.map((e) => e.id)).toContain(wl.id);
  });

  it('refuses a replayed document (bound to an earlier session)', async () => {
    const first = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith() });
    expect(first.finish?.status).toBe(200);
    const replay = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith() }, { key: first.key, editResponses: () => first.responses! });
    expect(replay.finish?.status).toBe(401);
    expect(errorCode(replay.finish)).toBe('nitro.nonce_mismatch');
  });

  it('refuses a document made for another key', async () => {
    const other = generateKey('ec-p256');
    const r = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith() }, { bindToSpki: spkiDer(other.publicKey) });
    expect(r.finish?.status).toBe(401);
    // The binding covers the key too, so the nonce no longer matches either; either check may fire first.
    expect(['nitro.nonce_mismatch', 'nitro.public_key_mismatch']).toContain(errorCode(r.finish));
  });

  it('refuses a stale document', async () => {
    const r = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith(() => ({ timestamp: Date.now() - 6 * 60_000 })) });
    expect(errorCode(r.finish)).toBe('nitro.document_stale');
  });

  it('refuses a document under another root', async () => {
    const otherPki = await makePki();
    const leaf = await makeLeaf(otherPki);
    const agent = makeNitroAgentPlugin({ transport: fakeNsm(otherPki, leaf, () => ({ timestamp: Date.now() })) }).create({}, agentDeps);
    const r = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agent });
    expect(errorCode(r.finish)).toBe('nitro.untrusted_root');
  });

  it('refuses a debug-mode enclave by default', async () => {
    const { debugPcrs } = await import('../nitro/fixtures.js');
    const r = await attestOverHttps(tv.v.port, caPem, { aws_nitro: await agentWith(() => ({ timestamp: Date.now(), pcrs: debugPcrs() })) });
    expect(errorCode(r.finish)).toBe('nitro.debug_enclave');
  });
});
