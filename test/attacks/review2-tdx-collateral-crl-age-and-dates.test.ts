/**
 * Attack review 2, TDX collateral:
 *
 * 1. `maxCollateralAge` bounded how long ago the TCB Info and QE Identity were issued, but not the
 *    PCK CRL: a collateral directory (or a memory cache) holding fresh TCB documents next to a PCK
 *    CRL issued long ago — still inside its nextUpdate — passed, so a PCK certificate Intel revoked
 *    since then was accepted by a verifier whose operator asked for collateral no older than N
 *    seconds. The PCK CRL's thisUpdate is now held to `maxCollateralAge` as well
 *    (`tdx.collateral_stale`, which also makes the plugin replace a stored copy from PCS).
 *    The Intel SGX Root CA CRL is not: Intel issues it about once a year (the real one in
 *    ../shared/testdata/tdx: thisUpdate 2023-04-03, nextUpdate 2024-04-02), so any age under a
 *    year would refuse every quote for most of the year; its thisUpdate..nextUpdate still applies.
 *
 * 2. The RFC 3339 times of the TCB Info and QE Identity went through `new Date(text)`, which
 *    rolls impossible dates over: issueDate 2023-02-30 became 2023-03-02, 24:00:00 the next day.
 *    Such a document is not what Intel signs; it is refused as `tdx.collateral_malformed`.
 */
import { describe, expect, it } from 'vitest';
import { verifyTdxCollateral, verifyTdxQuote, clearTdxCaches } from '../../src/tdx/verify.js';
import { parseTdxTcbInfo, parseQeIdentity } from '../../src/tdx/tcb.js';
import { codeOf } from '../support/codes.js';
import { T0, makeCollateral, makeCrl, makeTdxQuote, makeTdxTestPki, qeIdentityText, signJson, tcbInfoText } from '../tdx/synthetic.js';

const DAY = 86_400_000;
const pki = makeTdxTestPki();
const at = (days: number): Date => new Date(T0.getTime() + days * DAY);

function collateralWith(o: { pckThisUpdate?: Date; rootThisUpdate?: Date; rootNextUpdate?: Date }): ReturnType<typeof makeCollateral> {
  const c = makeCollateral(pki);
  return {
    ...c,
    pckCrl: makeCrl(pki.platform.privateKey, 'Intel SGX PCK Platform CA', [], o.pckThisUpdate ?? at(-1), at(10)),
    rootCrl: makeCrl(pki.root.privateKey, 'Intel SGX Root CA', [], o.rootThisUpdate ?? at(-1), o.rootNextUpdate ?? at(10)),
  };
}

const WEEK = 7 * DAY;

describe('attack: maxCollateralAge and an old PCK CRL', () => {
  it('control: every document issued a day ago passes a one-week maxCollateralAge', () => {
    expect(codeOf(() => verifyTdxCollateral(collateralWith({}), { now: T0, rootSha256: pki.rootSha256, maxCollateralAgeMs: WEEK }))).toBe('no error');
  });

  it('a PCK CRL issued 20 days ago (still before its nextUpdate) is stale under a one-week maxCollateralAge', () => {
    const c = collateralWith({ pckThisUpdate: at(-20) });
    expect(codeOf(() => verifyTdxCollateral(c, { now: T0, rootSha256: pki.rootSha256 }))).toBe('no error'); // no max age: fine
    expect(codeOf(() => verifyTdxCollateral(c, { now: T0, rootSha256: pki.rootSha256, maxCollateralAgeMs: WEEK }))).toBe('tdx.collateral_stale');
  });

  it('the same through verifyTdxQuote (the plugin path), from a cold and from a warm cache', () => {
    clearTdxCaches();
    const c = collateralWith({ pckThisUpdate: at(-20) });
    const quote = makeTdxQuote(pki);
    const opts = { now: T0, rootSha256: pki.rootSha256, maxCollateralAgeMs: WEEK };
    expect(codeOf(() => verifyTdxQuote(quote, c, opts))).toBe('tdx.collateral_stale');
    expect(codeOf(() => verifyTdxQuote(quote, c, { now: T0, rootSha256: pki.rootSha256 }))).toBe('no error'); // cached as verified
    expect(codeOf(() => verifyTdxQuote(quote, c, opts))).toBe('tdx.collateral_stale'); // the cached verdict is aged too
  });

  it('the Root CA CRL is held to its own thisUpdate..nextUpdate only (Intel reissues it yearly)', () => {
    const c = collateralWith({ rootThisUpdate: at(-300), rootNextUpdate: at(65) });
    expect(codeOf(() => verifyTdxCollateral(c, { now: T0, rootSha256: pki.rootSha256, maxCollateralAgeMs: WEEK }))).toBe('no error');
    const expired = collateralWith({ rootThisUpdate: at(-300), rootNextUpdate: at(-1) });
    expect(codeOf(() => verifyTdxCollateral(expired, { now: T0, rootSha256: pki.rootSha256, maxCollateralAgeMs: WEEK }))).toBe('tdx.crl_expired');
  });
});

describe('attack: impossible calendar dates in TCB Info / QE Identity', () => {
  const tcb = (issueDate: string): unknown => ({ ...(JSON.parse(tcbInfoText()) as Record<string, unknown>), issueDate });
  const qe = (nextUpdate: string): unknown => ({ ...(JSON.parse(qeIdentityText()) as Record<string, unknown>), nextUpdate });

  for (const bad of ['2023-02-30T00:00:00Z', '2023-02-29T00:00:00Z', '2025-04-31T12:00:00Z', '2025-01-01T24:00:00Z', '2025-06-31T00:00:00.5Z', '2025-00-10T00:00:00Z']) {
    it(`${bad}: tdx.collateral_malformed`, () => {
      expect(codeOf(() => parseTdxTcbInfo(tcb(bad)))).toBe('tdx.collateral_malformed');
      expect(codeOf(() => parseQeIdentity(qe(bad)))).toBe('tdx.collateral_malformed');
    });
  }

  it('an impossible tcbDate in a TCB level is refused too', () => {
    const o = JSON.parse(tcbInfoText()) as { tcbLevels: { tcbDate: string }[] };
    o.tcbLevels[0]!.tcbDate = '2024-11-31T00:00:00Z';
    expect(codeOf(() => parseTdxTcbInfo(o))).toBe('tdx.collateral_malformed');
  });

  it('controls: a leap day, the last second of a day and fractional seconds parse unchanged', () => {
    expect(parseTdxTcbInfo(tcb('2024-02-29T00:00:00Z')).issueDate.toISOString()).toBe('2024-02-29T00:00:00.000Z');
    expect(parseTdxTcbInfo(tcb('2024-12-31T23:59:59Z')).issueDate.toISOString()).toBe('2024-12-31T23:59:59.000Z');
    expect(parseTdxTcbInfo(tcb('2024-06-30T08:42:58.123Z')).issueDate.toISOString()).toBe('2024-06-30T08:42:58.123Z');
  });

  it('end to end: a signed TCB Info with issueDate 2025-02-30 is refused, not read as March 2', () => {
    const c = makeCollateral(pki);
    const text = tcbInfoText().replace(/"issueDate":"[^"]*"/, '"issueDate":"2025-02-30T00:00:00Z"');
    const forged = { ...c, tcbInfo: signJson('tcbInfo', text, pki.signing.privateKey) };
    expect(codeOf(() => verifyTdxCollateral(forged, { now: at(1), rootSha256: pki.rootSha256 }))).toBe('tdx.collateral_malformed');
  });
});
