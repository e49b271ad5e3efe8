/**
 * A report checked with the VCEK of another product line is refused as sev.product_mismatch, not
 * with a reserved-field or CHIP_ID error of the wrong line. Real reports and VCEKs from
 * ../shared/testdata/sev-snp (Milan v2 reports have no CPUID; Turin v5 has one).
 */
import { describe, expect, it } from 'vitest';
import { runSevEvidence } from '../../src/cli/evidence-sev.js';
import { verifySnpEvidence } from '../../src/sev/verify.js';
import { requireTestdata, td } from '../support/testdata.js';
import { MILAN_AT, TURIN_AT, codeOf, sevChain, sevFile } from './helpers.js';

const have = requireTestdata();

function refusal(fn: () => unknown): { code?: string; message?: string } {
  try {
    fn();
  } catch (e) {
    return e as { code?: string; message?: string };
  }
  return { code: 'no error' };
}

describe.skipIf(!have)('SEV-SNP report and VCEK of different product lines (real evidence)', () => {
  it('Milan v2 report + Turin VCEK and chain → sev.product_mismatch naming both lines', () => {
    const e = refusal(() => verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') }, { now: TURIN_AT }));
    expect(e.code).toBe('sev.product_mismatch');
    expect(e.message).toMatch(/fits milan, genoa but the VCEK is for turin/);
  });

  it('the debug Milan report + Turin VCEK (debug allowed) → sev.product_mismatch', () => {
    const ev = { report: sevFile('milan-v2-debug.report.bin'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: TURIN_AT, allowDebug: true }))).toBe('sev.product_mismatch');
  });

  it('mismatch is decided before the chain is needed: Milan report + Turin VCEK without any chain', () => {
    expect(codeOf(() => verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('turin-v5.vcek.der') }, { now: TURIN_AT }))).toBe('sev.product_mismatch');
  });

  it('Milan report + Turin VCEK with `products: [milan]` is still a mismatch, not product_not_allowed', () => {
    const ev = { report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: TURIN_AT, products: ['milan'] }))).toBe('sev.product_mismatch');
  });

  it('Turin report (CPUID) + Milan VCEK and chain → sev.product_mismatch', () => {
    const ev = { report: sevFile('turin-v5.report.bin'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT }))).toBe('sev.product_mismatch');
  });

  it('controls: each report with its own VCEK verifies', () => {
    expect(codeOf(() => verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') }, { now: MILAN_AT }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence({ report: sevFile('turin-v5.report.bin'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') }, { now: TURIN_AT }))).toBe('no error');
  });

  it('the CLI reports the mismatch code in its JSON output (exit 1)', async () => {
    let out = '';
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string | Uint8Array) => ((out += String(s)), true)) as typeof process.stdout.write;
    let code: number;
    try {
      code = await runSevEvidence(td('sev-snp', 'milan-v2.report.hex'), { vcek: td('sev-snp', 'turin-v5.vcek.der'), ca: td('sev-snp', 'ask_ark_turin.pem'), at: TURIN_AT.toISOString(), json: true });
    } finally {
      process.stdout.write = write;
    }
    expect(code).toBe(1);
    expect((JSON.parse(out) as { error: { code: string } }).error.code).toBe('sev.product_mismatch');
  });
});
