/**
 * Measured boot end to end on swtpm: the digests of a real firmware event log are extended into
 * the swtpm's PCRs with tpm2_pcrextend, so its state matches the log; the agent (native binding)
 * sends the log with its quote; the verifier replays it and yields boot selectors; a workload
 * entry under a node entry that needs `tpm:secureboot:enabled` and the boot loader's digest gets
 * its SVID. Then an IMA list replayed into PCR 10 against an allowlist that refuses, and one that
 * allows; and finally one digest extended without logging it → `tpm.eventlog_mismatch`.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { tpmAvailable } from '../../src/native/tpm.js';
import { EV, algorithmByName, parseEventLog } from '../../src/tpm/eventlog/index.js';
import { parseImaAsciiLog } from '../../src/tpm/ima/index.js';
import { bankHash } from '../../src/tpm/eventlog/algorithms.js';
import { agentEnv, createEntry, describeSvids, runAgent, UID, waitFor, WorkloadClient } from '../agent/harness.js';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';
import { hasTestdata, td } from '../support/testdata.js';
import { startTestVerifier } from '../support/verifier.js';
import { tpm2ToolsAvailable } from '../tpm/tpm2tools.js';

const exec = promisify(execFile);
const avail = tpmAvailable();
const ok = avail.ok && tpm2ToolsAvailable() && hasTestdata;
if (!ok && process.env.CI === 'true') throw new Error(`CI must run the measured-boot end-to-end test: ${avail.ok ? 'tpm2-tools or testdata missing' : avail.reason}`);
const d = ok ? describe : describe.skip;

const LOG = td('tpm-eventlog', 'keylime_binary_bios_measurements_secureboot');
const IMA = td('tpm-eventlog', 'keylime_ima_log_sha256.txt');
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

let tpm: SwtpmHandle | null = null;
const running: { close(): Promise<void> }[] = [];

/** tpm2_pcrextend against the swtpm (nobody else may hold its single connection meanwhile). */
async function extend(t: SwtpmHandle, specs: string[]): Promise<void> {
  for (let i = 0; i < specs.length; i += 32) {
    await exec('tpm2_pcrextend', ['-T', t.tcti, ...specs.slice(i, i + 32)], { timeout: 30_000 });
  }
}

function sub(dir: string, name: string): string {
  const p = join(dir, name);
  mkdirSync(p, { recursive: true });
  return p;
}

beforeAll(async () => {
  if (ok) tpm = await startSwtpm();
});
afterAll(async () => {
  for (const r of running.reverse()) await r.close().catch(() => undefined);
  await tpm?.stop();
});

d('measured boot on swtpm', () => {
  it('boot selectors from a replayed real log gate an SVID; IMA allowlist refuses then passes; an unlogged extend is refused', async () => {
    const t = tpm!;
    const raw = readFileSync(LOG);
    const log = parseEventLog(raw);
    const sha256 = algorithmByName('sha256')!;
    // Make the swtpm's sha256 PCRs what this machine's firmware made them.
    await extend(
      t,
      log.events.filter((e) => e.type !== EV.NO_ACTION).map((e) => `${e.index}:sha256=${e.digests.find((x) => x.alg.name === 'sha256')!.digest.toString('hex')}`),
    );
    const bootApps = log.events.filter((e) => e.type === EV.EFI_BOOT_SERVICES_APPLICATION && e.index === 4).map((e) => e.digests[0]!.digest.toString('hex'));
    const bootLoader = bootApps[1]!; // shim, then the boot loader it verified, then the kernel

    const dir = mkdtempSync(join(tmpdir(), 'sigil-mb-e2e-'));
    const tv = await startTestVerifier({ nodeAttestors: { tpm: { ekCa: t.ekCaFiles, pcrs: { sha256: PCRS }, eventLog: { require: true } } }, requireAttestors: ['tpm'] }, { dir });
    running.push({ close: () => tv.stop() });
    const env = await agentEnv(sub(dir, 'agent'), tv.adminSocket, tv.v.port, { tpm: { tcti: t.tcti, eventLog: LOG } });
    const agent = await runAgent(env);
    await agent.whenAttested();
    const agentId = agent.agentId()!;
    const { agents } = await adminCall<{ agents: { id: string; selectors: string[] }[] }>(tv.adminSocket, 'GET', '/v1/admin/agents');
    const sel = agents.find((a) => a.id === agentId)!.selectors;
    expect(sel).toContain('tpm:secureboot:enabled');
    expect(sel).toContain(`tpm:boot_app:sha256:${bootLoader}`);

    const node = await createEntry(tv.adminSocket, {
      spiffeId: 'spiffe://example.org/nodes/secure-boot',
      parentId: 'spiffe://example.org/sigil/verifier',
      selectors: ['tpm:secureboot:enabled', `tpm:boot_app:sha256:${bootLoader}`],
    });
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/measured-app', parentId: node.spiffeId, selectors: [`unix:uid:${UID}`] });
    const wc = new WorkloadClient(env.socket);
    try {
      const s = await wc.streamWhen((m) => describeSvids(m).some((x) => x.id === 'spiffe://example.org/measured-app'), 15_000, 'measured-boot workload SVID');
      expect(describeSvids(s.messages[s.messages.length - 1]!).map((x) => x.id)).toEqual(['spiffe://example.org/measured-app']);
    } finally {
      wc.close();
    }
    await agent.close(); // swtpm serves one client at a time

    // IMA: the list's entries extended into PCR 10 (sha256 of each template), then checked against allowlists.
    const ima = parseImaAsciiLog(readFileSync(IMA));
    await extend(t, ima.map((e) => `10:sha256=${bankHash(sha256, e.templateData).toString('hex')}`));
    writeFileSync(join(dir, 'deny.txt'), `${'ab'.repeat(32)}  /data\n`);
    writeFileSync(join(dir, 'allow.txt'), `${ima[1]!.digest.toString('hex')}  /data\n`);
    for (const [allowlist, expectOk] of [['deny.txt', false], ['allow.txt', true]] as const) {
      const d2 = sub(dir, `v-${allowlist}`);
      const tv2 = await startTestVerifier({ nodeAttestors: { tpm: { ekCa: t.ekCaFiles, pcrs: { sha256: [...PCRS, 10] }, ima: { allowlist: join(dir, allowlist), name: 'golden', require: true } } }, requireAttestors: ['tpm'] }, { dir: d2 });
      running.push({ close: () => tv2.stop() });
      const env2 = await agentEnv(sub(d2, 'agent'), tv2.adminSocket, tv2.v.port, { tpm: { tcti: t.tcti, eventLog: LOG, imaLog: IMA } });
      const a2 = await runAgent(env2);
      if (expectOk) {
        await a2.whenAttested();
        const { agents: ag } = await adminCall<{ agents: { id: string; selectors: string[] }[] }>(tv2.adminSocket, 'GET', '/v1/admin/agents');
        expect(ag.find((a) => a.id === a2.agentId())!.selectors).toContain('tpm:ima:policy:golden');
      } else {
        await waitFor(() => /tpm\.ima_policy_violation/.test(JSON.stringify(a2.status())), 20_000, 'IMA allowlist refusal');
        expect(a2.agentId()).toBeUndefined();
      }
      await a2.close();
    }

    // One more digest in PCR 4 that the log does not have: the next attestation is refused.
    await extend(t, [`4:sha256=${'5a'.repeat(32)}`]);
    const again = await runAgent(await agentEnv(sub(dir, 'agent-again'), tv.adminSocket, tv.v.port, { tpm: { tcti: t.tcti, eventLog: LOG } }));
    running.push(again);
    await waitFor(() => /tpm\.eventlog_mismatch/.test(JSON.stringify(again.status())), 20_000, 'event log mismatch refusal');
    expect(JSON.stringify(again.status())).toMatch(/PCR 4 \(sha256\)/);
    expect(again.agentId()).toBeUndefined();
  }, 180_000);
});
