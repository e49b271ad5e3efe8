/**
 * Hardware-rooted end to end on swtpm: verifier with requireAttestors [tpm] (EK CA = the swtpm
 * local CA), an agent on swtpm through the native tpm2-tss binding, a node entry that needs
 * tpm:ek_pubhash, and a workload SVID over the Workload API. Then TPM + SEV-SNP multi-factor.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { tpmAvailable } from '../../src/native/tpm.js';
import { agentEnv, createEntry, runAgent, UID, WorkloadClient, describeSvids, waitFor } from '../agent/harness.js';
import { collateralKeyOfQuote, writeCollateralDir } from '../../src/tdx/collateral.js';
import { makeSnpTestChain } from '../support/sev-synthetic.js';
import { makeCollateral, makeTdxQuote, makeTdxTestPki } from '../tdx/synthetic.js';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';

const avail = tpmAvailable();
if (!avail.ok && process.env.CI === 'true') throw new Error(`CI must run the TPM end-to-end test: ${avail.reason}`);
const d = avail.ok ? describe : describe.skip;
if (!avail.ok) console.warn(`[skip] TPM end-to-end: ${avail.reason}`);

function sub(dir: string, name: string): string {
  const p = join(dir, name);
  mkdirSync(p, { recursive: true });
  return p;
}

let tpm: SwtpmHandle | null = null;
const running: { close(): Promise<void> }[] = [];

beforeAll(async () => {
  if (avail.ok) tpm = await startSwtpm();
});
afterAll(async () => {
  for (const r of running.reverse()) await r.close().catch(() => undefined);
  await tpm?.stop();
});

d('TPM node attestation end to end (swtpm)', () => {
  it('attests with requireAttestors [tpm] and serves a workload entry parented by a tpm:ek_pubhash node entry', async () => {
    const t = tpm!;
    const dir = mkdtempSync(join(tmpdir(), 'sigil-tpm-e2e-'));
    const tv: TestVerifier = await startTestVerifier({ nodeAttestors: { tpm: { ekCa: t.ekCaFiles, pcrs: { sha256: [0, 1, 2, 3, 4, 5, 6, 7] } } }, requireAttestors: ['tpm'] }, { dir });
    running.push({ close: () => tv.stop() });
    const env = await agentEnv(sub(dir, 'agent'), tv.adminSocket, tv.v.port, { tpm: { tcti: t.tcti } });
    const agent = await runAgent(env);
    running.push(agent);
    await agent.whenAttested();
    const agentId = agent.agentId()!;
    expect(agentId).toMatch(/^spiffe:\/\/example\.org\/sigil\/agent\/tpm\/[0-9a-f]{64}$/);
    const ekHash = agentId.split('/').pop()!;
    const { agents } = await adminCall<{ agents: { id: string; selectors: string[] }[] }>(tv.adminSocket, 'GET', '/v1/admin/agents');
    const rec = agents.find((a) => a.id === agentId)!;
    expect(rec.selectors).toContain(`tpm:ek_pubhash:${ekHash}`);
    expect(rec.selectors.some((s) => s.startsWith('tpm:ek_ca:'))).toBe(true);
    expect(rec.selectors.filter((s) => s.startsWith('tpm:pcr:sha256:'))).toHaveLength(8);

    const node = await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/nodes/tpm-verified', parentId: 'spiffe://example.org/sigil/verifier', selectors: [`tpm:ek_pubhash:${ekHash}`] });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/tpm-workload', parentId: node.spiffeId, selectors: [`unix:uid:${UID}`] });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/not-here', parentId: 'spiffe://example.org/nodes/other', selectors: [`unix:uid:${UID}`] });
    const wc = new WorkloadClient(env.socket);
    try {
      const s = await wc.streamWhen((m) => describeSvids(m).some((x) => x.id === 'spiffe://example.org/tpm-workload'), 15_000, 'TPM-gated workload SVID');
      const ids = describeSvids(s.messages[s.messages.length - 1]!).map((x) => x.id);
      expect(ids).toEqual(['spiffe://example.org/tpm-workload']);
    } finally {
      wc.close();
    }
    // swtpm serves one TCP client at a time: release the TPM for the next test.
    await agent.close();
  });

  it('multi-factor: tpm + sev_snp in one session; a verifier requiring both refuses an agent with one', async () => {
    const t = tpm!;
    const dir = mkdtempSync(join(tmpdir(), 'sigil-mf-e2e-'));
    const chain = makeSnpTestChain('genoa');
    (globalThis as { __sigilSnpTestChain?: unknown }).__sigilSnpTestChain = chain;
    const sevPlugin = resolve(__dirname, '../fixtures/plugins/sev-synthetic-agent.ts');
    const tv = await startTestVerifier(
      {
        nodeAttestors: { tpm: { ekCa: t.ekCaFiles }, sev_snp: { arkSha256: chain.arkPins, products: ['genoa'] } },
        requireAttestors: ['tpm', 'sev_snp'],
      },
      { dir },
    );
    running.push({ close: () => tv.stop() });

    // Only the TPM factor: refused.
    const onlyTpm = await agentEnv(sub(dir, 'agent1'), tv.adminSocket, tv.v.port, { tpm: { tcti: t.tcti } });
    const a1 = await runAgent(onlyTpm);
    // The refusal arrives after a full TPM session (credential activation and a quote on swtpm),
    // which can take seconds on a loaded host: wait for it rather than for a fixed time.
    await waitFor(() => /attest\.missing_attestor/.test(JSON.stringify(a1.status())), 20_000, 'the refusal attest.missing_attestor in the agent status');
    expect(a1.agentId()).toBeUndefined();
    await a1.close();

    // Both factors (the SNP agent half with the VCEK chain in its report's certificate table is played by the test plugin).
    const both = await agentEnv(sub(dir, 'agent2'), tv.adminSocket, tv.v.port, { tpm: { tcti: t.tcti }, sev_snp: {} }, { plugins: { sev_snp: sevPlugin } });
    const a2 = await runAgent(both);
    running.push(a2);
    await a2.whenAttested();
    const agentId = a2.agentId()!;
    expect(agentId).toMatch(/\/sigil\/agent\/tpm\//);
    const { agents } = await adminCall<{ agents: { id: string; attestors: string[]; selectors: string[] }[] }>(tv.adminSocket, 'GET', '/v1/admin/agents');
    const rec = agents.find((a) => a.id === agentId)!;
    expect(rec.attestors).toEqual(['tpm', 'sev_snp']);
    const ek = rec.selectors.find((s) => s.startsWith('tpm:ek_pubhash:'))!;
    const meas = rec.selectors.find((s) => s.startsWith('sev_snp:measurement:'))!;
    expect(rec.selectors).toContain('sev_snp:product:genoa');

    // A node entry needing a factor of each kind parents the workload entry; one needing another measurement does not match.
    const node = await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/nodes/confidential', parentId: 'spiffe://example.org/sigil/verifier', selectors: [ek, meas] });
    const wrong = await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/nodes/other', parentId: 'spiffe://example.org/sigil/verifier', selectors: [ek, `sev_snp:measurement:${'00'.repeat(48)}`] });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/confidential-app', parentId: node.spiffeId, selectors: [`unix:uid:${UID}`] });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/should-not', parentId: wrong.spiffeId, selectors: [`unix:uid:${UID}`] });
    const wc = new WorkloadClient(both.socket);
    try {
      const s = await wc.streamWhen((m) => describeSvids(m).some((x) => x.id === 'spiffe://example.org/confidential-app'), 15_000, 'multi-factor workload SVID');
      expect(describeSvids(s.messages[s.messages.length - 1]!).map((x) => x.id)).toEqual(['spiffe://example.org/confidential-app']);
    } finally {
      wc.close();
    }
  });

  it('multi-factor: a TDX VM with a vTPM presents tdx + tpm in one session, both bound to the CSR key', async () => {
    const t = tpm!;
    const dir = mkdtempSync(join(tmpdir(), 'sigil-tdx-tpm-e2e-'));
    const DAY = 86_400_000;
    const now = Date.now();
    const pki = makeTdxTestPki({ notBefore: new Date(now - DAY), notAfter: new Date(now + 365 * DAY) });
    (globalThis as { __sigilTdxTestPki?: unknown }).__sigilTdxTestPki = pki;
    const dates = { issueDate: new Date(now - DAY), nextUpdate: new Date(now + 29 * DAY) };
    const collateralDir = sub(dir, 'collateral');
    await writeCollateralDir(collateralDir, collateralKeyOfQuote(makeTdxQuote(pki)), makeCollateral(pki, { tcbInfo: dates, qeIdentity: dates, crlThisUpdate: dates.issueDate, crlNextUpdate: dates.nextUpdate }));
    const tv = await startTestVerifier(
      { nodeAttestors: { tpm: { ekCa: t.ekCaFiles }, tdx: { collateralDir, rootSha256: pki.rootSha256 } }, requireAttestors: ['tdx', 'tpm'] },
      { dir },
    );
    running.push({ close: () => tv.stop() });
    // The tdx agent half is the real one, collecting through configfs-tsm from an in-memory configfs
    // that plays the TDX module with the synthetic Intel-like PKI.
    const tdxPlugin = resolve(__dirname, '../fixtures/plugins/tdx-synthetic-agent.ts');
    const env = await agentEnv(sub(dir, 'agent'), tv.adminSocket, tv.v.port, { tdx: { eventLog: 'never' }, tpm: { tcti: t.tcti } }, { plugins: { tdx: tdxPlugin } });
    const agent = await runAgent(env);
    running.push(agent);
    await agent.whenAttested();
    const agentId = agent.agentId()!;
    expect(agentId).toMatch(/\/sigil\/agent\/tdx\//);
    const { agents } = await adminCall<{ agents: { id: string; attestors: string[]; selectors: string[] }[] }>(tv.adminSocket, 'GET', '/v1/admin/agents');
    const rec = agents.find((a) => a.id === agentId)!;
    expect(rec.attestors).toEqual(['tdx', 'tpm']);
    const ek = rec.selectors.find((s) => s.startsWith('tpm:ek_pubhash:'))!;
    const mrtd = rec.selectors.find((s) => s.startsWith('tdx:mrtd:'))!;
    expect(ek).toBeDefined();
    expect(mrtd).toBeDefined();
    expect(rec.selectors).toContain('tdx:tcb_status:UpToDate');
    // A node entry needing both factors parents the workload entry.
    const node = await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/nodes/tdx-vtpm', parentId: 'spiffe://example.org/sigil/verifier', selectors: [ek, mrtd] });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/tdx-app', parentId: node.spiffeId, selectors: [`unix:uid:${UID}`] });
    const wc = new WorkloadClient(env.socket);
    try {
      const s = await wc.streamWhen((m) => describeSvids(m).some((x) => x.id === 'spiffe://example.org/tdx-app'), 15_000, 'tdx + tpm workload SVID');
      expect(describeSvids(s.messages[s.messages.length - 1]!).map((x) => x.id)).toEqual(['spiffe://example.org/tdx-app']);
    } finally {
      wc.close();
    }
    await agent.close();
  });
});
