/**
 * @phala/dcap-qvl (pure JS, devDependency) as an independent oracle: it must reach the same verdict
 * as verifyTdxQuote on the real SPR quote and on synthetic quotes made with a test root.
 */
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { verifyTdxQuote } from '../../src/tdx/verify.js';
import { SPR_AT, oracleCollateral, sprCollateral, sprQuote } from './helpers.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki } from './synthetic.js';
import { errorMessage } from '../../src/errors.js';

interface Oracle {
  QuoteVerifier: { newWithRootCa(der: Buffer): { verify(q: Buffer, c: unknown, nowSecs: number): { status: string; advisory_ids: string[] } } };
  verify(q: Buffer, c: unknown, nowSecs: number): { status: string; advisory_ids: string[] };
}
const qvl = createRequire(import.meta.url)('@phala/dcap-qvl') as Oracle;

function oracleVerdict(f: () => { status: string }): string {
  try {
    return f().status;
  } catch (e) {
    return `error: ${errorMessage(e)}`;
  }
}

describe('@phala/dcap-qvl as oracle', () => {
  it('agrees on the SPR quote: no matching TCB level', () => {
    expect(oracleVerdict(() => qvl.verify(sprQuote(), oracleCollateral(sprCollateral(), false), SPR_AT.getTime() / 1000))).toBe('error: No matching TCB level found');
    expect(() => verifyTdxQuote(sprQuote(), sprCollateral(), { now: SPR_AT })).toThrow(/TCB level not supported/);
  });

  it('agrees on synthetic quotes: status for matched levels, refusal for revoked PCKs', () => {
    const pki = makeTdxTestPki();
    const oracle = qvl.QuoteVerifier.newWithRootCa(pki.rootDer);
    const now = T0.getTime() / 1000;
    const cases = [
      { quote: makeTdxQuote(pki), col: makeCollateral(pki) },
      { quote: makeTdxQuote(pki, { version: 5 }), col: makeCollateral(pki) },
      { quote: makeTdxQuote(pki, { teeTcbSvn: [2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }), col: makeCollateral(pki) },
    ];
    for (const c of cases) {
      const ours = verifyTdxQuote(c.quote, c.col, { now: T0, rootSha256: pki.rootSha256, acceptedTcbStatuses: ['UpToDate', 'OutOfDate'] });
      const theirs = oracle.verify(c.quote, oracleCollateral(c.col, false), now);
      expect(theirs.status).toBe(ours.tcbStatus);
      expect([...theirs.advisory_ids].sort()).toEqual(ours.advisoryIds);
    }
    const revoked = makeCollateral(pki, { revokedPck: [pki.pckSerial] });
    expect(oracleVerdict(() => oracle.verify(makeTdxQuote(pki), oracleCollateral(revoked, false), now))).toMatch(/^error: /);
  });
});
