/**
 * `sigil evidence verify <attestor>`: the verb is the attestor's name (`aws_nitro`, `sev_snp`), and
 * the first releases' spelling (`aws-nitro`, `sev-snp`) still works, with the same result, on real
 * evidence through the real CLI entry point.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { requireTestdata, td } from '../support/testdata.js';
import { cliArgv } from '../support/cli-argv.js';

const root = resolve(__dirname, '../..');
const have = requireTestdata();

function sigil(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    execFile(cliArgv()[0]!, [...cliArgv().slice(1), ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) =>
      res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr }),
    );
  });
}

const nitroArgs = [td('nitro', 'marlin-aws.cbor'), '--at', '2024-12-13T07:37:58.960Z', '--json'];
const sevArgs = [td('sev-snp', 'milan-v2.report.hex'), '--vcek', td('sev-snp', 'milan-v2.vcek.der'), '--ca', td('sev-snp', 'ask_ark_milan.pem'), '--at', '2025-01-01T00:00:00Z', '--json'];

describe.skipIf(!have)('evidence verify verbs: attestor names, old spellings as aliases', () => {
  it('aws_nitro and aws-nitro verify the same document to the same result', async () => {
    const [primary, alias] = await Promise.all([sigil(['evidence', 'verify', 'aws_nitro', ...nitroArgs]), sigil(['evidence', 'verify', 'aws-nitro', ...nitroArgs])]);
    expect(primary.code).toBe(0);
    const j = JSON.parse(primary.out) as { ok: boolean; attestor: string; selectors: string[] };
    expect(j.ok).toBe(true);
    expect(j.selectors.some((s) => s.startsWith('aws_nitro:pcr0:'))).toBe(true);
    expect(alias.code).toBe(0);
    expect(JSON.parse(alias.out)).toEqual(j);
  }, 240_000);

  it('sev_snp and sev-snp verify the same report to the same result', async () => {
    const [primary, alias] = await Promise.all([sigil(['evidence', 'verify', 'sev_snp', ...sevArgs]), sigil(['evidence', 'verify', 'sev-snp', ...sevArgs])]);
    expect(primary.code).toBe(0);
    const j = JSON.parse(primary.out) as { ok: boolean; selectors: string[] };
    expect(j.ok).toBe(true);
    expect(j.selectors).toContain('sev_snp:product:milan');
    expect(alias.code).toBe(0);
    expect(JSON.parse(alias.out)).toEqual(j);
  }, 240_000);

  it('help lists the attestor names with their aliases', async () => {
    const r = await sigil(['evidence', 'verify', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/aws_nitro\|aws-nitro/);
    expect(r.out).toMatch(/sev_snp\|sev-snp/);
  }, 240_000);
});
