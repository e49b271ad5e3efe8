/** The real TDX quotes of ../shared/testdata/tdx: a production SPR quote with Intel collateral and a Google COS quote. */
import { describe, expect, it } from 'vitest';
import { parseTdxQuote } from '../../src/tdx/quote.js';
import { verifyTdxCollateral, verifyTdxQuote } from '../../src/tdx/verify.js';
import { codeOf } from '../support/codes.js';
import { COS_AT, SPR_AT, cosQuote, sprCollateral, sprQuote, sprQuoteFile, tdxFile } from './helpers.js';

describe('production Sapphire Rapids quote with Intel collateral', () => {
  it('is refused for an unmatched TCB level, after every signature check passed', () => {
    const err = (() => {
      try {
        verifyTdxQuote(sprQuote(), sprCollateral(), { now: SPR_AT });
      } catch (e) {
        return e as { code: string; message: string };
      }
      throw new Error('the SPR quote verified');
    })();
    expect(err.code).toBe('tdx.tcb_level_unmatched');
    // Names the quote's TEE_TCB_SVN and the level it does not reach (README: 03 00 04 00 … vs 03 00 05 00 …).
    expect(err.message).toContain('TEE_TCB_SVN 03000400000000000000000000000000');
    expect(err.message).toContain('TDX 03000500000000000000000000000000');
    expect(err.message).toContain('FMSPC 50806f000000');
  });

  it('passes every check before the TCB match: signatures, QE binding, PCK chain, collateral signatures and CRLs', () => {
    const col = verifyTdxCollateral(sprCollateral(), { now: SPR_AT });
    expect(col.tcbInfo.fmspc).toBe('50806f000000');
    expect(col.qeIdentity.isvProdId).toBe(2);
    const v = verifyTdxQuote(sprQuote(), undefined, { now: SPR_AT, allowUnknownTcb: true });
    expect(v.tcbStatus).toBe('Unknown');
    expect(v.pck.fmspc.toString('hex')).toBe('50806f000000');
    expect(v.quote.body.teeTcbSvn.toString('hex')).toBe('03000400000000000000000000000000');
  });

  it('fails earlier a year later, on the expired TCB Info', () => {
    expect(codeOf(() => verifyTdxQuote(sprQuote(), sprCollateral(), { now: new Date('2024-07-01T01:00:00Z') }))).toBe('tdx.collateral_expired');
  });

  it('refuses the file as shipped: 39 bytes follow the quote', () => {
    expect(sprQuoteFile().length).toBe(4935 + 39);
    expect(codeOf(() => parseTdxQuote(sprQuoteFile()))).toBe('tdx.quote_trailing_bytes');
  });

  it('refuses a pinned root other than the Intel SGX Root CA', () => {
    expect(codeOf(() => verifyTdxQuote(sprQuote(), sprCollateral(), { now: SPR_AT, rootSha256: '00'.repeat(32) }))).toBe('tdx.root_untrusted');
  });

  it('refuses a bit flip anywhere in the signed parts with a signature or structure error, never the TCB verdict', () => {
    const q = sprQuote();
    const col = sprCollateral();
    const qe = 48 + 584 + 4 + 128 + 6; // QE report offset
    const regions: [from: number, to: number, codes: string[]][] = [
      [0, 48, ['tdx.quote_signature_invalid', 'tdx.quote_version_unsupported', 'tdx.quote_malformed', 'tdx.body_type_unsupported', 'tdx.attestation_key_type_unsupported', 'tdx.tee_type_unsupported', 'tdx.qe_vendor_unknown']],
      [48, 632, ['tdx.quote_signature_invalid']],
      [636, 700, ['tdx.quote_signature_invalid']],
      [700, 764, ['tdx.quote_signature_invalid', 'tdx.attestation_key_invalid']],
      [qe, qe + 384 + 64, ['tdx.qe_report_signature_invalid']],
      [qe + 384 + 64 + 2, qe + 384 + 64 + 2 + 32, ['tdx.qe_binding_mismatch']],
    ];
    let n = 0;
    for (const [from, to, codes] of regions) {
      for (let i = from; i < to; i++) {
        const m = Buffer.from(q);
        m[i]! ^= 1 << (i % 8);
        expect(codes, `byte ${i}`).toContain(codeOf(() => verifyTdxQuote(m, col, { now: SPR_AT })));
        n++;
      }
    }
    expect(n).toBeGreaterThan(1100);
  });
});

describe('Google COS quote (no collateral)', () => {
  it('verifies signatures and PCK chain and reports TCB status Unknown when the policy opts in', () => {
    const nonce = tdxFile('ccel_nonce.dat');
    expect(nonce.equals(Buffer.alloc(64))).toBe(true); // the COS VM asked for a zero REPORTDATA
    const v = verifyTdxQuote(cosQuote(), undefined, { now: COS_AT, allowUnknownTcb: true, expectedReportData: nonce });
    expect(v.tcbStatus).toBe('Unknown');
    expect(v.selectors).toContain('tdx:tcb_status:Unknown');
    expect(v.claims.revocationChecked).toBe(false);
    expect(codeOf(() => verifyTdxQuote(cosQuote(), undefined, { now: COS_AT }))).toBe('tdx.collateral_missing');
  });

  it('is refused outside its PCK certificate validity and with other REPORTDATA', () => {
    expect(codeOf(() => verifyTdxQuote(cosQuote(), undefined, { now: new Date('2024-01-01T00:00:00Z'), allowUnknownTcb: true }))).toBe('tdx.cert_not_yet_valid');
    expect(codeOf(() => verifyTdxQuote(cosQuote(), undefined, { now: COS_AT, allowUnknownTcb: true, expectedReportData: Buffer.alloc(64, 1) }))).toBe('tdx.report_data_mismatch');
  });

  it('refuses the 8000-byte buffer it came in', () => {
    expect(codeOf(() => parseTdxQuote(tdxFile('cos-113-tdx-quote.dat')))).toBe('tdx.quote_trailing_bytes');
  });
});
