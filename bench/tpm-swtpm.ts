/**
 * TPM against a real swtpm: (1) end-to-end node attestation wall time — agent plugin over the
 * native tpm2-tss binding ↔ the real verifier over HTTPS (hello, MakeCredential, ActivateCredential,
 * quote, PCR read, verification, node SVID) — and (2) agent memory over 10,000 binding calls
 * (PCR reads, with a quote every 10th call), which should stay flat (± 10 MB).
 *
 *   npx tsx bench/tpm-swtpm.ts [attestations=30] [calls=10000]
 */
import 'reflect-metadata';
import { tmpdir } from 'node:os';
import { pino } from 'pino';
import { adminCall } from '../src/cli/admin-client.js';
import { openTpm, tpmAvailable } from '../src/native/tpm.js';
import { tpmAgentPlugin } from '../src/tpm/plugin.js';
import { encodePcrSelection } from '../src/tpm/structures.js';
import { attestOverHttps } from '../test/support/attest-client.js';
import { startSwtpm } from '../test/support/swtpm.js';
import { startTestVerifier } from '../test/support/verifier.js';

const attestations = Number(process.argv[2] ?? 30);
const calls = Number(process.argv[3] ?? 10_000);
const avail = tpmAvailable();
if (!avail.ok) {
  console.log(`TPM binding unavailable: ${avail.reason}`);
  process.exit(1);
}
const tpm = await startSwtpm();
if (!tpm) process.exit(1);
const tv = await startTestVerifier({ nodeAttestors: { tpm: { ekCa: tpm.ekCaFiles } }, requireAttestors: ['tpm'] });
const caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
const dataDir = (await import('node:fs')).mkdtempSync(`${tmpdir()}/sigil-bench-tpm-`);
const agent = await tpmAgentPlugin.create({ tcti: tpm.tcti }, { trustDomain: 'example.org', logger: pino({ level: 'silent' }), dataDir, configDir: dataDir, now: () => new Date() });

const times: number[] = [];
for (let i = 0; i < attestations + 2; i++) {
  const t0 = performance.now();
  const r = await attestOverHttps(tv.v.port, caPem, { tpm: agent });
  const dt = performance.now() - t0;
  if (r.finish?.status !== 200) throw new Error(`attestation failed: ${JSON.stringify(r.finish?.body ?? r.begin.body)}`);
  if (i >= 2) times.push(dt); // the first two include AK creation and cold caches
}
await agent.close?.();
times.sort((a, b) => a - b);
const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(1);
console.log(`end-to-end TPM node attestation against swtpm (${times.length} runs, RSA EK, RSA AK, quote over sha256:0-7): p50 ${q(0.5)} ms, p90 ${q(0.9)} ms, max ${q(1)} ms`);

// Memory over many binding calls on one device.
const dev = await openTpm(tpm.tcti);
const sel = encodePcrSelection([{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }]);
const ek = await dev.readEkCertificate();
await dev.getEkPublic(ek && ek.nvIndex === 0x01c00002 ? 'rsa' : 'ecc-p384');
const ak = await dev.createAk('ecc');
await dev.loadAk(ak);
const gc = (globalThis as { gc?: () => void }).gc;
const rss = () => {
  gc?.();
  return process.memoryUsage().rss / 1024 / 1024;
};
for (let i = 0; i < 500; i++) await dev.pcrRead(sel);
const before = rss();
const t0 = performance.now();
for (let i = 0; i < calls; i++) {
  if (i % 10 === 0) await dev.quote(sel, Buffer.alloc(32, i & 0xff));
  else await dev.pcrRead(sel);
}
const secs = (performance.now() - t0) / 1000;
const after = rss();
console.log(`agent binding calls: ${calls} (pcrRead, quote every 10th) in ${secs.toFixed(1)} s = ${(calls / secs).toFixed(0)}/s; RSS ${before.toFixed(1)} MB → ${after.toFixed(1)} MB (Δ ${(after - before).toFixed(1)} MB, goal ± 10 MB)${gc ? '' : ' (run with --expose-gc for a steadier number)'}`);
await dev.close();
await tv.stop();
await tpm.stop();
