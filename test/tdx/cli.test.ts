/** `sigil evidence verify tdx` in-process on the real quotes and through the CLI entry point. */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { runTdxEvidence, type TdxCliOptions } from '../../src/cli/evidence-tdx.js';
import { td } from '../support/testdata.js';
import { cosQuote, sprQuote } from './helpers.js';

let tmp = '';
let dir = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-tdx-cli-'));
  // The real collateral, under the collateral directory's names (a scratch copy, never in the repo).
  dir = join(tmp, 'collateral');
  await mkdir(dir);
  const names: [string, string][] = [
    ['sample_tcbInfo_response', 'tcbinfo-50806f000000.json'],
    ['sample_qeIdentity_response', 'qe-identity.json'],
    ['tcb-signing-chain.pem', 'tcb-signing-chain.pem'],
    ['pckcrl', 'pck-crl-platform.der'],
    ['pck-crl-issuer-chain.pem', 'pck-crl-issuer-chain-platform.pem'],
    ['rootcrl.der', 'root-crl.der'],
  ];
  for (const [from, to] of names) await copyFile(td('tdx', from), join(dir, to));
  await writeFile(join(tmp, 'spr.quote'), sprQuote());
  await writeFile(join(tmp, 'spr.hex'), sprQuote().toString('hex'));
  await writeFile(join(tmp, 'cos.quote'), cosQuote());
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

async function run(file: string, opts: TdxCliOptions): Promise<{ code: number; out: string; err: string; json?: Record<string, unknown> }> {
  let out = '';
  let err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  const code = await runTdxEvidence(file, opts);
  vi.restoreAllMocks();
  return { code, out, err, ...(opts.json ? { json: JSON.parse(out) as Record<string, unknown> } : {}) };
}

describe('sigil evidence verify tdx', () => {
  it('SPR quote with the real collateral: rejected for the unmatched TCB level (exit 1, one JSON object)', async () => {
    const r = await run(join(tmp, 'spr.hex'), { collateral: dir, at: '2023-07-01T01:00:00Z', json: true });
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ ok: false, attestor: 'tdx', error: { code: 'tdx.tcb_level_unmatched' } });
  });

  it('the file as shipped (39 bytes after the quote) is refused', async () => {
    const r = await run(td('tdx', 'tdx_prod_quote_SPR_E4.dat'), { collateral: dir, at: '2023-07-01T01:00:00Z' });
    expect(r.code).toBe(1);
    expect(r.err).toContain('tdx.quote_trailing_bytes');
  });

  it('COS quote with its event log, no collateral: verified with TCB status Unknown only with --allow-unknown-tcb', async () => {
    const opts = { at: '2025-06-01T00:00:00Z', eventLog: td('tdx', 'ccel_data.dat'), ccelTable: td('tdx', 'ccel_table.dat'), reportData: '00'.repeat(32), json: true };
    const r = await run(join(tmp, 'cos.quote'), { ...opts, allowUnknownTcb: true });
    expect(r.code).toBe(0);
    expect(r.json!.selectors).toContain('tdx:tcb_status:Unknown');
    expect(r.json!.selectors).toContain('tdx:secureboot:disabled');
    expect((await run(join(tmp, 'cos.quote'), opts)).code).toBe(2);
  });

  it('usage errors exit 2', async () => {
    expect((await run(join(tmp, 'cos.quote'), { allowUnknownTcb: true, at: 'yesterday' })).code).toBe(2);
    expect((await run(join(tmp, 'cos.quote'), { allowUnknownTcb: true, reportData: 'abcd' })).code).toBe(2);
    expect((await run(join(tmp, 'cos.quote'), { collateral: dir, acceptStatus: ['Fine'] })).code).toBe(2);
  });

  it('runs through the CLI entry point', async () => {
    const cli = fileURLToPath(new URL('../support/run-cli.ts', import.meta.url));
    const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
    const { stdout } = await promisify(execFile)(tsx, [cli, 'evidence', 'verify', 'tdx', join(tmp, 'cos.quote'), '--allow-unknown-tcb', '--at', '2025-06-01T00:00:00Z', '--json']);
    expect(JSON.parse(stdout)).toMatchObject({ ok: true, attestor: 'tdx' });
  }, 60_000);
});
