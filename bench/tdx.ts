/**
 * TDX quote verification throughput on one core, as a ratio to Node's raw ECDSA P-256/SHA-256
 * verify of the same quote in the same run (every quote needs that one verify: its signature by the
 * attestation key), side by side with the library oracles on the same quotes.
 *
 *   npx tsx bench/tdx.ts [seconds-per-loop]   (default 4)
 *
 * Loops (alternating slices, so load from other processes hits all alike):
 *   raw          node:crypto P-256 verify of the quote signature (the floor)
 *   cached       verifyTdxQuote, accept path, synthetic Intel-like PKI: PCK chain, collateral, the
 *                platform's QE report signature and attestation key cached → 1 P-256 verify per quote
 *   uncached     the same with every cache cleared before each quote (13 P-256 verifies)
 *   spr          verifyTdxQuote on the real SPR quote with Intel collateral, cached, to its verdict
 *                (refused: no TCB level matches)
 *   qvl-js       @phala/dcap-qvl verify() on the synthetic quote (accepts) and on the SPR quote
 *   qvl-wasm     @phala/dcap-qvl-web js_verify() on the SPR quote (production root only)
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { verify as cryptoVerify } from 'node:crypto';
import { parseTdxQuote } from '../src/tdx/quote.js';
import { attestationKeyObject, clearTdxCaches, verifyTdxQuote } from '../src/tdx/verify.js';
import { TESTDATA } from '../test/support/testdata.js';
import { oracleCollateral, sprCollateral, sprQuote } from '../test/tdx/helpers.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki } from '../test/tdx/synthetic.js';

const seconds = Number(process.argv[2] ?? '4');
const require = createRequire(import.meta.url);

interface Qvl {
  QuoteVerifier: { newWithRootCa(der: Buffer): { verify(q: Buffer, c: unknown, now: number): unknown } };
  verify(q: Buffer, c: unknown, now: number): unknown;
}
interface QvlWeb {
  initSync(m: { module: Buffer }): unknown;
  js_verify(q: Buffer, c: unknown, now: bigint): unknown;
}

function rate(fn: () => void, secs: number): number {
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(Math.round(secs * 1e9));
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let i = 0; i < 10; i++) fn();
    n += 10;
    elapsed = process.hrtime.bigint() - start;
  }
  return n / (Number(elapsed) / 1e9);
}
const refused = (fn: () => unknown) => (): void => {
  try {
    fn();
  } catch {
    return;
  }
};

const pki = makeTdxTestPki();
const quote = makeTdxQuote(pki);
const col = makeCollateral(pki);
const opts = { now: T0, rootSha256: pki.rootSha256 };
const parsed = parseTdxQuote(quote);
const ak = attestationKeyObject(parsed.attestationKey);
const signed = Buffer.from(parsed.signed);

const loops: Record<string, () => void> = {
  raw: () => {
    if (!cryptoVerify('sha256', signed, { key: ak, dsaEncoding: 'ieee-p1363' }, parsed.signature)) throw new Error('raw verify failed');
  },
  cached: () => {
    verifyTdxQuote(quote, col, opts);
  },
  uncached: () => {
    clearTdxCaches();
    verifyTdxQuote(quote, col, opts);
  },
};
const qvl = require('@phala/dcap-qvl') as Qvl;
const qvlVerifier = qvl.QuoteVerifier.newWithRootCa(pki.rootDer);
const qvlCol = oracleCollateral(col, false);
loops['qvl-js synthetic'] = () => {
  qvlVerifier.verify(quote, qvlCol, T0.getTime() / 1000);
};

const haveReal = existsSync(`${TESTDATA}/tdx/tdx_prod_quote_SPR_E4.dat`);
if (haveReal) {
  const spr = sprQuote();
  const sc = sprCollateral();
  const at = new Date('2023-07-01T01:00:00Z');
  loops['spr verdict'] = refused(() => verifyTdxQuote(spr, sc, { now: at }));
  loops['qvl-js spr verdict'] = refused(() => qvl.verify(spr, oracleCollateral(sc, false), at.getTime() / 1000));
  const web = (await import(require.resolve('@phala/dcap-qvl-web'))) as QvlWeb;
  web.initSync({ module: readFileSync(require.resolve('@phala/dcap-qvl-web/dcap-qvl-web_bg.wasm')) });
  const webCol = oracleCollateral(sc, true);
  loops['qvl-wasm spr verdict'] = refused(() => web.js_verify(spr, webCol, BigInt(at.getTime() / 1000)));
}

for (const fn of Object.values(loops)) for (let i = 0; i < 20; i++) fn();
const slices = 6;
const sums: Record<string, number> = Object.fromEntries(Object.keys(loops).map((k) => [k, 0]));
for (let s = 0; s < slices; s++) for (const [k, fn] of Object.entries(loops)) sums[k]! += rate(fn, seconds / slices);
const raw = sums.raw! / slices;
console.log(`tdx bench — node ${process.version}, ${slices} alternating slices, ${seconds}s per loop in total${haveReal ? '' : ' (shared testdata absent: synthetic only)'}`);
for (const [k, total] of Object.entries(sums)) {
  const r = total / slices;
  console.log(`${k.padEnd(22)} ${r.toFixed(0).padStart(7)} /s   ratio to raw P-256 ${(r / raw).toFixed(3)}`);
}
