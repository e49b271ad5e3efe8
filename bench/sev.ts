/**
 * SEV-SNP verification throughput on one core with the certificate chain cached, compared with
 * Node's raw ECDSA P-384/SHA-384 verify of the same report bytes in the same run (the floor: every
 * report needs one such verify). Target: ratio ≥ 0.75.
 *
 *   npx tsx bench/sev.ts [seconds-per-loop]   (default 4)
 *
 * Uses the real Milan report from ../shared/testdata when present, else a synthetic one.
 */
import { existsSync, readFileSync } from 'node:fs';
import { verify as cryptoVerify } from 'node:crypto';
import { pemToDerList, parseSevCert } from '../src/sev/certs.js';
import { parseSnpReport } from '../src/sev/report.js';
import { type SnpEvidence, type SnpVerifyOptions, verifySnpEvidence } from '../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../test/support/sev-synthetic.js';
import { TESTDATA } from '../test/support/testdata.js';

const seconds = Number(process.argv[2] ?? '4');

function setup(): { evidence: SnpEvidence; opts: SnpVerifyOptions; source: string } {
  const dir = `${TESTDATA}/sev-snp`;
  if (existsSync(`${dir}/milan-v2.report.hex`)) {
    return {
      evidence: {
        report: Buffer.from(readFileSync(`${dir}/milan-v2.report.hex`, 'latin1').trim(), 'hex'),
        endorsementCert: readFileSync(`${dir}/milan-v2.vcek.der`),
        chain: pemToDerList(readFileSync(`${dir}/ask_ark_milan.pem`, 'latin1'), 'ask_ark_milan.pem'),
      },
      opts: { now: new Date('2025-01-01T00:00:00Z') },
      source: 'real milan-v2 report (RSA-4096 AMD chain)',
    };
  }
  const chain = makeSnpTestChain('milan');
  return {
    evidence: { report: makeSnpReport({ chain }), endorsementCert: chain.endorsement, chain: chain.chainDer },
    opts: { now: new Date('2026-01-01T00:00:00Z'), arkSha256: chain.arkPins },
    source: 'synthetic milan report (shared testdata absent)',
  };
}

function rate(fn: () => void, secs: number): number {
  // Run in batches, check the clock between batches.
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(Math.round(secs * 1e9));
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let i = 0; i < 50; i++) fn();
    n += 50;
    elapsed = process.hrtime.bigint() - start;
  }
  return n / (Number(elapsed) / 1e9);
}

const { evidence, opts, source } = setup();
const parsed = parseSnpReport(evidence.report);
const key = parseSevCert(evidence.endorsementCert!, 'VCEK').publicKey;
const signed = Buffer.from(parsed.signed);
const sig = Buffer.from(parsed.signatureP1363);

const raw = () => {
  if (!cryptoVerify('sha384', signed, { key, dsaEncoding: 'ieee-p1363' }, sig)) throw new Error('raw verify failed');
};
const full = () => {
  verifySnpEvidence(evidence, opts);
};

// Warm up (fills the chain/parse caches and JIT).
for (let i = 0; i < 200; i++) {
  raw();
  full();
}

// Alternate short slices of both loops so that load from other processes hits both alike; report
// the median of the per-slice ratios and the overall rates.
const slices = 10;
const ratios: number[] = [];
let rawSum = 0;
let fullSum = 0;
for (let i = 0; i < slices; i++) {
  const r = rate(raw, seconds / slices);
  const f = rate(full, seconds / slices);
  rawSum += r;
  fullSum += f;
  ratios.push(f / r);
}
ratios.sort((a, b) => a - b);
const median = (ratios[(slices >> 1) - 1]! + ratios[slices >> 1]!) / 2;
console.log(`sev-snp bench — ${source}, node ${process.version}, ${slices} alternating slices, ${seconds}s per loop in total`);
console.log(`raw P-384 verify (node:crypto):        ${(rawSum / slices).toFixed(0)} /s`);
console.log(`verifySnpEvidence (chain cached):      ${(fullSum / slices).toFixed(0)} reports/s`);
console.log(`ratio (median of slices): ${median.toFixed(3)} [min ${ratios[0]!.toFixed(3)}, max ${ratios[slices - 1]!.toFixed(3)}] (target ≥ 0.75) ${median >= 0.75 ? 'OK' : 'BELOW TARGET'}`);
