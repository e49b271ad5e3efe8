/**
 * `sigil evidence verify sev-snp` in-process, on the real reports (Milan at 2025-01-01T00:00:00Z,
 * Turin at 2026-07-01T00:00:00Z) and on a synthetic chain trusted with --ark-sha256.
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerSevEvidence } from '../../src/cli/evidence-commands.js';
import { runSevEvidence, type SevCliOptions } from '../../src/cli/evidence-sev.js';
import { vcekFileName } from '../../src/sev/collateral.js';
import { parseSnpReport } from '../../src/sev/report.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata, td } from '../support/testdata.js';
import { sevFile } from './helpers.js';

const have = requireTestdata();
let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-sev-cli-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

async function run(file: string, opts: SevCliOptions): Promise<{ code: number; out: string; err: string; json?: Record<string, unknown> }> {
  let out = '';
  let err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  const code = await runSevEvidence(file, opts);
  vi.restoreAllMocks();
  const res: { code: number; out: string; err: string; json?: Record<string, unknown> } = { code, out, err };
  if (opts.json) res.json = JSON.parse(out) as Record<string, unknown>;
  return res;
}
const f = (n: string) => td('sev-snp', n);
const MILAN = '2025-01-01T00:00:00Z';

describe.skipIf(!have)('sev-snp CLI on real reports', () => {
  it('milan-v2 (hex file): accepted, one JSON object', async () => {
    const r = await run(f('milan-v2.report.hex'), { vcek: f('milan-v2.vcek.der'), ca: f('ask_ark_milan.pem'), at: MILAN, json: true });
    expect(r.code).toBe(0);
    expect(r.json?.ok).toBe(true);
    expect(r.json?.attestor).toBe('sev_snp');
    expect(r.json?.selectors).toContain('sev_snp:reported_tcb:7308000000000003');
    expect(r.out.trim().split('\n').length).toBe(1);
  });
  it('text output names the verdict and selectors', async () => {
    const r = await run(f('turin-v5.report.bin'), { vcek: f('turin-v5.vcek.der'), ca: f('ask_ark_turin.pem'), at: '2026-07-01T00:00:00Z' });
    expect(r.code).toBe(0);
    expect(r.out).toContain('OK sev_snp');
    expect(r.out).toContain('selector sev_snp:product:turin');
  });
  it('debug report: rejected by default, accepted with --allow-debug; --report-data', async () => {
    const base = { vcek: f('milan-v2-debug.vcek.der'), ca: f('ask_ark_milan.pem'), at: MILAN, json: true };
    const r1 = await run(f('milan-v2-debug.report.bin'), base);
    expect(r1.code).toBe(1);
    expect((r1.json?.error as { code: string }).code).toBe('sev.debug_not_allowed');
    expect((await run(f('milan-v2-debug.report.bin'), { ...base, allowDebug: true })).code).toBe(0);
    const rd = '0102030405'.padEnd(128, '0');
    expect((await run(f('milan-v2-debug.report.bin'), { ...base, allowDebug: true, reportData: rd })).code).toBe(0);
    const wrong = await run(f('milan-v2-debug.report.bin'), { ...base, allowDebug: true, reportData: 'ff'.repeat(64) });
    expect((wrong.json?.error as { code: string }).code).toBe('sev.report_data_mismatch');
  });
  it('rejections: wrong chain, VMPL, expired; each a one-line reason on stderr', async () => {
    const r = await run(f('milan-v2.report.hex'), { vcek: f('milan-v2.vcek.der'), ca: f('ask_ark_genoa.pem'), at: MILAN });
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^REJECTED sev_snp: sev\.chain_wrong_product: .+\n$/);
    const v = await run(f('milan-v2.report.hex'), { vcek: f('milan-v2.vcek.der'), ca: f('ask_ark_milan.pem'), at: MILAN, vmpl: ['1', '2'], json: true });
    expect((v.json?.error as { code: string }).code).toBe('sev.vmpl_not_allowed');
    const e = await run(f('milan-v2.report.hex'), { vcek: f('milan-v2.vcek.der'), ca: f('ask_ark_milan.pem'), at: '2031-01-01T00:00:00Z', json: true });
    expect((e.json?.error as { code: string }).code).toBe('sev.cert_expired');
  });
  it('without --ca and without a collateral dir: a clear error naming --ca', async () => {
    const r = await run(f('milan-v2.report.hex'), { vcek: f('milan-v2.vcek.der'), at: MILAN, json: true });
    expect(r.code).toBe(1);
    const err = r.json?.error as { code: string; message: string };
    expect(err.code).toBe('sev.chain_incomplete');
    expect(err.message).toContain('--ca ask_ark_milan.pem');
  });
  it('--collateral-dir supplies VCEK and ASK/ARK', async () => {
    const dir = join(tmp, 'collateral');
    const report = parseSnpReport(sevFile('milan-v2.report.hex'));
    await mkdir(join(dir, 'milan'), { recursive: true });
    await copyFile(f('milan-v2.vcek.der'), vcekFileName(dir, 'milan', report.chipId, report.reportedTcb));
    await copyFile(f('ask_ark_milan.pem'), join(dir, 'ask_ark_milan.pem'));
    const r = await run(f('milan-v2.report.hex'), { collateralDir: dir, at: MILAN, json: true });
    expect(r.json?.ok).toBe(true);
    const none = await run(f('turin-v5.report.bin'), { collateralDir: dir, at: '2026-07-01T00:00:00Z', json: true });
    expect((none.json?.error as { code: string }).code).toBe('sev.vcek_missing');
  });
  it('usage errors exit 2', async () => {
    const base = { vcek: f('milan-v2.vcek.der'), ca: f('ask_ark_milan.pem') };
    expect((await run(f('milan-v2.report.hex'), { ...base, at: 'yesterday' })).code).toBe(2);
    expect((await run(f('milan-v2.report.hex'), { ...base, vmpl: ['5'] })).code).toBe(2);
    expect((await run(f('milan-v2.report.hex'), { ...base, reportData: 'abcd' })).code).toBe(2);
    expect((await run(f('milan-v2.report.hex'), { ...base, arkSha256: 'nothex' })).code).toBe(2);
    const j = await run(f('milan-v2.report.hex'), { at: MILAN, json: true });
    expect(j.code).toBe(2);
    expect((j.json?.error as { code: string }).code).toBe('cli.usage');
  });
  it('registered under commander as `sev-snp`, sets process.exitCode', async () => {
    const cmd = new Command('verify').exitOverride();
    registerSevEvidence(cmd);
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    await cmd.parseAsync(['sev-snp', f('milan-v2.report.hex'), '--vcek', f('milan-v2.vcek.der'), '--ca', f('ask_ark_milan.pem'), '--at', MILAN, '--vmpl', '0', '1', '--json'], {
      from: 'user',
    });
    expect(process.exitCode).toBe(0);
    await cmd.parseAsync(['sev-snp', f('milan-v2-debug.report.bin'), '--vcek', f('milan-v2-debug.vcek.der'), '--ca', f('ask_ark_milan.pem'), '--at', MILAN, '--json'], { from: 'user' });
    expect(process.exitCode).toBe(1);
  });
});

describe('sev-snp CLI on a synthetic chain', () => {
  it('needs --ark-sha256 to trust a non-AMD root; reads base64 reports and PEM certificates', async () => {
    const chain = makeSnpTestChain('genoa');
    const dir = join(tmp, 'synthetic');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'report.b64'), makeSnpReport({ chain, reportData: Buffer.alloc(32, 9) }).toString('base64') + '\n');
    await writeFile(join(dir, 'vcek.pem'), `-----BEGIN CERTIFICATE-----\n${chain.endorsement.toString('base64')}\n-----END CERTIFICATE-----\n`);
    await writeFile(join(dir, 'ca.pem'), chain.chainPem);
    const opts = { vcek: join(dir, 'vcek.pem'), ca: join(dir, 'ca.pem'), json: true };
    const untrusted = await run(join(dir, 'report.b64'), opts);
    expect((untrusted.json?.error as { code: string }).code).toBe('sev.ark_untrusted');
    const ok = await run(join(dir, 'report.b64'), { ...opts, arkSha256: chain.arkSha256, reportData: '09'.repeat(32) });
    expect(ok.json?.ok).toBe(true);
    const missing = await run(join(dir, 'nope.bin'), opts);
    expect((missing.json?.error as { code: string }).code).toBe('input.unreadable');
  });
});
