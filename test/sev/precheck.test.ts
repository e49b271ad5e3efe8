/**
 * precheckSnpReport (src/sev/verify.ts): the checks that need no VCEK, run by the plugin before any
 * collateral lookup. Real reports must pass it with the product lines they can be from; synthetic
 * reports exercise each rule.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseSnpReport } from '../../src/sev/report.js';
import { type SnpVerifyOptions, precheckSnpReport, verifySnpEvidence } from '../../src/sev/verify.js';
import { type SnpTestChain, makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
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
  it('v2 report failing every candidate line: the first failure\'s code, and a message naming each line tried and why it failed', () => {
    // As Milan/Genoa the SNP SPL (8) is below the minimum; as Turin that byte is a reserved TCB byte.
    const report = parseSnpReport(makeSnpReport({ chain: milan, version: 2 }));
    let err: unknown;
    try {
      precheckSnpReport(report, { minTcb: { snp: 9 } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SigilError);
    const e = err as SigilError;
    expect(e.code).toBe('sev.tcb_too_low');
    expect(e.status).toBe(403);
    expect(e.message).toMatch(/no CPUID/);
    expect(e.message).toMatch(/tried \(milan, genoa, turin\)/);
    expect(e.message).toContain('milan, genoa: REPORTED_TCB snp SPL 8 is below the minimum 9');
    expect(e.message).toMatch(/turin: report \w+_TCB has non-zero reserved bytes for turin/);
    // One candidate line: its own error, unchanged.
    expect(() => precheckSnpReport(report, { minTcb: { snp: 9 }, products: ['milan'] })).toThrow(/^REPORTED_TCB snp SPL 8 is below the minimum 9$/);
    // With CPUID there is one line: its own error too.
    expect(() => precheckSnpReport(parseSnpReport(makeSnpReport({ chain: milan })), { minTcb: { snp: 9 } })).toThrow(/^REPORTED_TCB snp SPL 8 is below the minimum 9$/);
  });
  it('minimum TCB uses the product layout (FMC only on Turin)', () => {
    expect(codeOf(() => pre(makeSnpReport({ chain: turin }), { minTcb: { fmc: 2 } }))).toBe('sev.tcb_too_low');
    expect(codeOf(() => pre(makeSnpReport({ chain: milan }), { minTcb: { fmc: 2 } }))).toBe('no error');
  });
});

describe('verifySnpEvidence (the pure path the CLI uses) runs the same pre-checks', () => {
  const NOW = new Date('2026-01-01T00:00:00Z');
  const verify = (chain: SnpTestChain, report: Buffer, opts: Partial<SnpVerifyOptions> = {}) =>
    codeOf(() => verifySnpEvidence({ report, endorsementCert: chain.endorsement, chain: chain.chainDer }, { now: NOW, arkSha256: chain.arkPins, ...opts }));
  const pre = (report: Buffer, opts: Parameters<typeof precheckSnpReport>[1] = {}) => codeOf(() => precheckSnpReport(parseSnpReport(report), opts));

  it('a Milan/Genoa VCEK report whose CHIP_ID has the 8-byte Turin form is refused (sev.chip_id_invalid), even with a VCEK naming that ID', () => {
    const turinForm = Buffer.concat([randomBytes(8), Buffer.alloc(56)]);
    for (const product of ['milan', 'genoa'] as const) {
      // The VCEK's hwID equals the report's CHIP_ID, so only the shape rule can catch it.
      const chain = makeSnpTestChain(product, { chipId: turinForm });
      for (const version of [2, 5]) {
        const report = makeSnpReport({ chain, version });
        expect(pre(report)).toBe('sev.chip_id_invalid');
        expect(verify(chain, report)).toBe('sev.chip_id_invalid');
      }
    }
    // The same chain and report with a genuine 64-byte ID verify.
    const ok = makeSnpTestChain('milan');
    expect(verify(ok, makeSnpReport({ chain: ok }))).toBe('no error');
  });

  it('fails for the same reason as the plugin\'s pre-check, before the certificate or signature is looked at', () => {
    const chain = makeSnpTestChain('genoa');
    const rd = randomBytes(64);
    const wrongRd = Buffer.from(rd);
    wrongRd[5] = wrongRd[5]! ^ 0x80;
    const forged = makeSnpReport({ chain, reportData: rd, signWith: generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey });
    expect(verify(chain, forged, { expectedReportData: rd })).toBe('sev.signature_invalid');
    expect(pre(forged, { expectedReportData: wrongRd })).toBe('sev.report_data_mismatch');
    expect(verify(chain, forged, { expectedReportData: wrongRd })).toBe('sev.report_data_mismatch');
    const debug = makeSnpReport({ chain, policy: 0x30000n | (1n << 19n), signWith: generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey });
    expect(pre(debug)).toBe('sev.debug_not_allowed');
    expect(verify(chain, debug)).toBe('sev.debug_not_allowed');
    // No certificate at all: the report is still pre-checked first, as the plugin does before any lookup.
    expect(codeOf(() => verifySnpEvidence({ report: debug }, { now: NOW, arkSha256: chain.arkPins }))).toBe('sev.debug_not_allowed');
    expect(codeOf(() => verifySnpEvidence({ report: makeSnpReport({ chain }) }, { now: NOW, arkSha256: chain.arkPins }))).toBe('sev.vcek_missing');
  });

  it('a v2 report (no CPUID) that passes only as another product line than its certificate\'s is a product mismatch naming that line\'s reason', () => {
    // A Turin VCEK; the report's CHIP_ID starts with its 8-byte hwID but has a non-zero tail, and its
    // TCB reads validly as Milan/Genoa (TEE and SNP SPL 0). Pre-checked, it could be Milan or Genoa.
    const chain = makeSnpTestChain('turin', { tcb: { tee: 0, snp: 0 } });
    const chipId = Buffer.from(chain.chipId);
    chipId[63] = 1;
    const report = makeSnpReport({ chain, version: 2, chipId });
    expect(precheckSnpReport(parseSnpReport(report), {})).toEqual({ candidates: ['milan', 'genoa'] });
    // The certificate says Turin, and as Turin the CHIP_ID has the wrong shape.
    expect(verify(chain, report)).toBe('sev.product_mismatch');
    expect(() => verifySnpEvidence({ report, endorsementCert: chain.endorsement, chain: chain.chainDer }, { now: NOW, arkSha256: chain.arkPins })).toThrow(
      /fits milan, genoa but the VCEK is for turin, .*\(sev\.chip_id_invalid\)/,
    );
    // A line outside `products` is refused as before.
    const milan = makeSnpTestChain('milan');
    expect(verify(milan, makeSnpReport({ chain: milan, version: 2 }), { products: ['genoa'] })).toBe('sev.product_not_allowed');
  });
});
