/**
 * Attack review (TDX collateral, exported verifier): `verifyTdxCollateral` is called on its own
 * (the plugin's cache decision, the CLI); an invalid verification time must be refused with the
 * attestor's own code before any time comparison (NaN compares false with every date, so the
 * document time checks alone would pass it), not leak the X.509 toolkit's `x509.bad_time`.
 */
import { describe, expect, it } from 'vitest';
import { parseTdxQuote } from '../../src/tdx/quote.js';
import { verifyTdxCollateral, verifyTdxQuoteSignatures } from '../../src/tdx/verify.js';
import { codeOf } from '../support/codes.js';
import { makeCollateral, makeTdxQuote, makeTdxTestPki } from '../tdx/synthetic.js';

const pki = makeTdxTestPki();

describe('verifyTdxCollateral / verifyTdxQuoteSignatures: verification time', () => {
  it('refuses an Invalid Date as tdx.time_invalid', () => {
    expect(codeOf(() => verifyTdxCollateral(makeCollateral(pki), { now: new Date(Number.NaN), rootSha256: pki.rootSha256 }))).toBe('tdx.time_invalid');
  });

  it('verifyTdxQuoteSignatures (run by the plugin before any PCS lookup) too', () => {
    expect(codeOf(() => verifyTdxQuoteSignatures(parseTdxQuote(makeTdxQuote(pki)), new Date(Number.NaN), pki.rootSha256))).toBe('tdx.time_invalid');
  });
});
