/**
 * Mutations of real evidence: every single-byte change in the signed region is rejected, and each
 * kind of wrong collateral fails with its own error code. Milan reports are verified at
 * 2025-01-01T00:00:00Z (inside the VCEK validity 2023-04-03 → 2030-04-03).
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { SNP_SIGNED_LENGTH } from '../../src/sev/report.js';
import { verifySnpEvidence } from '../../src/sev/verify.js';
import { makeSnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata } from '../support/testdata.js';
import { MILAN_AT, codeOf, sevChain, sevFile } from './helpers.js';

const have = requireTestdata();

describe.skipIf(!have)('mutations of a real Milan report', () => {
  const report = have ? sevFile('milan-v2.report.hex') : Buffer.alloc(0);
  const vcek = have ? sevFile('milan-v2.vcek.der') : Buffer.alloc(0);
  const chain = have ? sevChain('milan') : [];
  const verify = (r: Buffer, now = MILAN_AT, extra: Record<string, unknown> = {}) =>
    verifySnpEvidence({ report: r, endorsementCert: vcek, chain }, { now, ...extra });

  it('the unmodified report verifies', () => {
    expect(() => verify(report)).not.toThrow();
  });

  it('every single-byte change in bytes 0x000..0x29F is rejected (672 positions)', () => {
    const codes = new Map<string, number>();
    const accepted: number[] = [];
    const started = Date.now();
    for (let i = 0; i < SNP_SIGNED_LENGTH; i++) {
      const m = Buffer.from(report);
      m[i] = m[i]! ^ 0x01;
      try {
        verify(m);
        accepted.push(i);
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        const code = (e as SigilError).code;
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
    }
    expect(accepted).toEqual([]);
    expect([...codes.values()].reduce((a, b) => a + b, 0)).toBe(672);
    // Most positions can only be caught by the signature.
    expect(codes.get('sev.signature_invalid')).toBeGreaterThan(300);
    expect(codes.has('sev.report_reserved_nonzero')).toBe(true);
    expect(codes.has('sev.chip_id_mismatch')).toBe(true);
    expect(codes.has('sev.tcb_mismatch')).toBe(true);
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('flipping bits across the signature field is rejected too', () => {
    for (const i of [0x2a0, 0x2cf, 0x2d0, 0x2e7, 0x2e8, 0x317, 0x318, 0x32f, 0x330, 0x49f]) {
      const m = Buffer.from(report);
      m[i] = m[i]! ^ 0x80;
      expect(codeOf(() => verify(m))).toMatch(/^sev\.(signature_invalid|signature_malformed|report_reserved_nonzero)$/);
    }
  });

  it('wrong product chain → sev.chain_wrong_product', () => {
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: sevChain('genoa') }, { now: MILAN_AT }))).toBe('sev.chain_wrong_product');
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: sevChain('turin') }, { now: MILAN_AT }))).toBe('sev.chain_wrong_product');
  });

  it("another chip's VCEK → sev.chip_id_mismatch", () => {
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: sevFile('milan-v2-debug.vcek.der'), chain }, { now: MILAN_AT }))).toBe('sev.chip_id_mismatch');
  });

  it('expired / not yet valid VCEK at the verification time', () => {
    expect(codeOf(() => verify(report, new Date('2030-04-04T00:00:00Z')))).toBe('sev.cert_expired');
    expect(codeOf(() => verify(report, new Date('2023-04-02T00:00:00Z')))).toBe('sev.cert_not_yet_valid');
    expect(codeOf(() => verify(report, new Date('2019-01-01T00:00:00Z')))).toBe('sev.cert_not_yet_valid');
  });

  it('wrong report data → sev.report_data_mismatch', () => {
    const rd = Buffer.from(report.subarray(0x50, 0x90));
    expect(codeOf(() => verify(report, MILAN_AT, { expectedReportData: rd }))).toBe('no error');
    rd[63] = rd[63]! ^ 1;
    expect(codeOf(() => verify(report, MILAN_AT, { expectedReportData: rd }))).toBe('sev.report_data_mismatch');
  });

  it('chain problems each have their own code', () => {
    const [ask, ark] = chain;
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: [] }, { now: MILAN_AT }))).toBe('sev.chain_incomplete');
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: [ark!] }, { now: MILAN_AT }))).toBe('sev.chain_incomplete');
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: [ask!] }, { now: MILAN_AT }))).toBe('sev.ark_untrusted');
    // ASVK chain for a VCEK: right ARK, but no ASK for the VCEK's issuer.
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: sevChain('milan', 'asvk') }, { now: MILAN_AT }))).toBe('sev.chain_incomplete');
    // A self-made root that is not pinned.
    const fake = makeSnpTestChain('milan');
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: vcek, chain: fake.chainDer }, { now: MILAN_AT }))).toBe('sev.ark_untrusted');
    // Pinning a different ARK fingerprint rejects the real chain.
    expect(codeOf(() => verify(report, MILAN_AT, { arkSha256: { milan: fake.arkSha256 } }))).toBe('sev.ark_untrusted');
    expect(codeOf(() => verifySnpEvidence({ report }, { now: MILAN_AT }))).toBe('sev.vcek_missing');
  });

  it('a VCEK with a broken signature → sev.cert_signature_invalid', () => {
    const bad = Buffer.from(vcek);
    bad[bad.length - 10] = bad[bad.length - 10]! ^ 0xff;
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: bad, chain }, { now: MILAN_AT }))).toBe('sev.cert_signature_invalid');
  });

  it('every single-byte change in the VCEK is rejected with a typed error', () => {
    // Flip each byte of the certificate (1360 positions): nothing may be accepted or escape untyped.
    const accepted: number[] = [];
    for (let i = 0; i < vcek.length; i++) {
      const bad = Buffer.from(vcek);
      bad[i] = bad[i]! ^ 0x01;
      try {
        verifySnpEvidence({ report, endorsementCert: bad, chain }, { now: MILAN_AT });
        accepted.push(i);
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        expect((e as SigilError).code).toMatch(/^sev\./);
      }
    }
    expect(accepted).toEqual([]);
  });
});
