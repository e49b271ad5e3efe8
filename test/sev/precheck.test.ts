/**
 * precheckSnpReport (src/sev/verify.ts): the checks that need no VCEK, run by the plugin before any
 * collateral lookup. Real reports must pass it with the product lines they can be from; synthetic
 * reports exercise each rule.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseSnpReport } from '../../src/sev/report.js';
import { precheckSnpReport } from '../../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata } from '../support/testdata.js';
import { codeOf, sevFile } from './helpers.js';

const have = requireTestdata();

describe.skipIf(!have)('real reports pass the pre-checks', () => {
  it('milan-v2 (v2, no CPUID): Milan or Genoa by its 64-byte CHIP_ID', () => {
    const r = parseSnpReport(sevFile('milan-v2.report.hex'));
    expect(precheckSnpReport(r, {})).toEqual({ candidates: ['milan', 'genoa'] });
    expect(precheckSnpReport(r, { products: ['milan'] })).toEqual({ candidates: ['milan'] });
    // Read as Turin, its TCB has SNP in a reserved byte (and its CHIP_ID is not the 8-byte form).
    expect(codeOf(() => precheckSnpReport(r, { products: ['turin'] }))).toBe('sev.report_reserved_nonzero');
    expect(codeOf(() => precheckSnpReport(r, { expectedReportData: Buffer.from(r.reportData) }))).toBe('no error');
  });
  it('milan-v2-debug: refused for debug unless allowDebug', () => {
    const r = parseSnpReport(sevFile('milan-v2-debug.report.bin'));
    expect(codeOf(() => precheckSnpReport(r, {}))).toBe('sev.debug_not_allowed');
    expect(codeOf(() => precheckSnpReport(r, { allowDebug: true }))).toBe('no error');
  });
  it('turin-v5: Turin from CPUID', () => {
    const r = parseSnpReport(sevFile('turin-v5.report.bin'));
    expect(precheckSnpReport(r, {})).toEqual({ product: 'turin', candidates: ['turin'] });
    expect(codeOf(() => precheckSnpReport(r, { products: ['milan', 'genoa'] }))).toBe('sev.product_not_allowed');
  });
});

describe('pre-check rules on synthetic reports', () => {
  const milan = makeSnpTestChain('milan');
  const turin = makeSnpTestChain('turin');
  const pre = (report: Buffer, opts: Parameters<typeof precheckSnpReport>[1] = {}) => precheckSnpReport(parseSnpReport(report), opts);

  it('REPORT_DATA is compared with the expected 64 bytes; a wrong-length expectation is an error', () => {
    const rd = randomBytes(64);
    const report = makeSnpReport({ chain: milan, reportData: rd });
    expect(codeOf(() => pre(report, { expectedReportData: rd }))).toBe('no error');
    const other = Buffer.from(rd);
    other[0] = other[0]! ^ 1;
    expect(codeOf(() => pre(report, { expectedReportData: other }))).toBe('sev.report_data_mismatch');
    expect(codeOf(() => pre(report, { expectedReportData: rd.subarray(0, 32) }))).toBe('sev.report_data_invalid');
  });
  it('v2 reports keep only the product lines whose TCB layout and CHIP_ID shape fit', () => {
    expect(pre(makeSnpReport({ chain: turin, version: 2 }))).toEqual({ candidates: ['turin'] });
    expect(pre(makeSnpReport({ chain: milan, version: 2 }))).toEqual({ candidates: ['milan', 'genoa'] });
    // Turin's TCB byte 2 (TEE) is a reserved byte on Milan/Genoa: with a Turin-form CHIP_ID nothing fits.
    expect(codeOf(() => pre(makeSnpReport({ chain: turin, version: 2 }), { products: ['milan', 'genoa'] }))).toBe('sev.report_reserved_nonzero');
  });
  it('VLEK-signed and masked-CHIP_ID reports skip the CHIP_ID shape rule', () => {
    const vlek = makeSnpTestChain('turin', { signingKey: 'vlek' });
    expect(codeOf(() => pre(makeSnpReport({ chain: vlek, chipId: randomBytes(64) })))).toBe('no error');
    expect(codeOf(() => pre(makeSnpReport({ chain: turin, chipId: Buffer.alloc(64) })))).toBe('no error');
  });
  it('minimum TCB uses the product layout (FMC only on Turin)', () => {
    expect(codeOf(() => pre(makeSnpReport({ chain: turin }), { minTcb: { fmc: 2 } }))).toBe('sev.tcb_too_low');
    expect(codeOf(() => pre(makeSnpReport({ chain: milan }), { minTcb: { fmc: 2 } }))).toBe('no error');
  });
});
