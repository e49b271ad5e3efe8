/**
 * Agent half over the native TPM addon (src/native/tpm.ts) against Sigil's verifier half,
 * on a manufactured swtpm: hello (EK cert + EK public + AK), credential activation and quote.
 * Skipped with a reason only when the native addon is unavailable outside CI.
 */
import { finishAndCommit } from './commit.js';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tpmAvailable } from '../../src/native/tpm.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorAgent, SessionInput } from '../../src/plugins/types.js';
import { spkiHash } from '../../src/tpm/keys.js';
import { tpmAgentPlugin, tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { parseTpm2bPublic } from '../../src/tpm/structures.js';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';
import { MemoryState } from './memory-state.js';

const exec = promisify(execFile);

const avail = tpmAvailable();
if (!avail.ok) {
  if (process.env.CI === 'true') throw new Error(`native TPM addon unavailable under CI: ${avail.reason}`);
  console.warn(`[skip] native TPM addon unavailable: ${avail.reason}`);
}

const logger = pino({ level: 'silent' });
let tpm: SwtpmHandle | null = null;
let dataDir = '';
const agents: NodeAttestorAgent[] = [];

beforeEach(async () => {
  if (!avail.ok) return;
  tpm = await startSwtpm();
  dataDir = mkdtempSync(join(tmpdir(), 'sigil-tpm-agent-'));
});

afterEach(async () => {
  for (const a of agents.splice(0)) await a.close?.();
  await tpm?.stop();
  tpm = null;
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

function newSession(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date(Date.now() + 1000) };
}

async function agent(akAlg: 'rsa' | 'ecc'): Promise<NodeAttestorAgent> {
  if (!tpm) throw new Error('no TPM');
  const a = await tpmAgentPlugin.create({ tcti: tpm.tcti, akAlg }, { trustDomain: 'example.org', logger, dataDir, configDir: dataDir, now: () => new Date() });
  agents.push(a);
  return a;
}

async function attest(a: NodeAttestorAgent, state: MemoryState): Promise<{ selectors: string[]; agentIdSuffix: string; hello: Record<string, string> }> {
  if (!tpm) throw new Error('no TPM');
  const v = await tpmVerifierPlugin.create(
    { ekCa: tpm.ekCaFiles, pcrs: { sha256: [0, 1, 2, 3, 4, 5, 6, 7] } },
    { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dataDir },
  );
  const s = newSession();
  const hello = (await a.hello()) as Record<string, string>;
  const { challenge, state: st } = await v.begin(JSON.parse(JSON.stringify(hello)), s);
  const response = await a.respond(JSON.parse(JSON.stringify(challenge)), { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki });
  const r = await finishAndCommit(v, JSON.parse(JSON.stringify(response)), st, s);
  return { selectors: r.selectors, agentIdSuffix: r.agentIdSuffix, hello };
}

describe.skipIf(!avail.ok)('tpm agent plugin over the native addon', () => {
  it('RSA AK: attests, keeps the AK in dataDir (0600) and reuses it after a restart', async () => {
    if (!tpm) throw new Error('swtpm unavailable');
    const state = new MemoryState();
    const a1 = await agent('rsa');
    const first = await attest(a1, state);
    // a second session on the same agent (re-attestation) reuses the loaded AK
    const again = await attest(a1, state);
    expect(again.hello.akPub).toBe(first.hello.akPub);
    expect(first.selectors).toContain('tpm:ek_model:swtpm');
    expect(first.selectors.filter((s) => s.startsWith('tpm:pcr:sha256:'))).toHaveLength(8);
    expect(first.agentIdSuffix).toBe(spkiHash(parseTpm2bPublic(Buffer.from(first.hello.ekPub ?? '', 'base64'))));
    const file = join(dataDir, 'tpm-ak.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const stored = JSON.parse(readFileSync(file, 'utf8')) as { public: string };
    expect(stored.public).toBe(first.hello.akPub);
    await agents.pop()?.close?.();
    // a new agent process: same AK from dataDir, counters keep going forward
    const second = await attest(await agent('rsa'), state);
    expect(second.hello.akPub).toBe(first.hello.akPub);
    expect(second.agentIdSuffix).toBe(first.agentIdSuffix);
  });

  it('ECC AK (ECDSA P-256) attests', async () => {
    if (!tpm) throw new Error('swtpm unavailable');
    const r = await attest(await agent('ecc'), new MemoryState());
    expect(parseTpm2bPublic(Buffer.from(r.hello.akPub ?? '', 'base64')).type).toBe('ecc');
  });

  it('with only the ECC P-384 EK certificate present, the agent uses the high-range EK', async () => {
    if (!tpm) throw new Error('swtpm unavailable');
    // remove the RSA EK certificate (platform-created NV index; swtpm's platform auth is empty)
    await exec('tpm2_nvundefine', ['-C', 'p', '0x1c00002'], { env: { ...process.env, TPM2TOOLS_TCTI: tpm.tcti } });
    const r = await attest(await agent('rsa'), new MemoryState());
    const ek = parseTpm2bPublic(Buffer.from(r.hello.ekPub ?? '', 'base64'));
    expect(ek.type).toBe('ecc');
    expect(ek.nameAlg).toBe(0x000c);
  });
});
