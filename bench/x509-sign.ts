/**
 * X.509-SVID signing throughput vs node:crypto's raw P-256 operations, measured in the same run.
 * Prints ops per CPU second and the ratio to the raw operation that bounds each case:
 *   raw sign   crypto.sign('sha256', 300-byte message, P-256 key)
 *   raw pair   crypto.verify (P-256, key already imported) + crypto.sign (P-256): the physical limit
 *              of issuing from a CSR, which must check the CSR's self-signature (proof of
 *              possession) and sign the certificate (issue 15: ratio ~0.45, keep it >= 0.4)
 *   issue      issueX509Svid from an already-parsed CSR (subjectSpki): the CA's signing step (vs sign)
 *   csr+issue  parseCsr (strict DER, key import, self-signature verification) + issueX509Svid (vs pair)
 *   verify     verifyX509Svid of a leaf against its root, for reference
 * Run: npx tsx bench/x509-sign.ts [seconds-per-case]
 */
import { randomBytes, sign, verify } from 'node:crypto';
import { createCsr, generateKey, issueCaCertificate, issueX509Svid, parseCsr, verifyX509Svid, type KeyType } from '../src/spiffe/index.js';

/**
 * Interleaved measurement: every case runs in short batches, round-robin, for the whole
 * duration, so machine load (other processes on a shared box) affects all cases alike and the
 * ratios stay meaningful even when absolute rates move. Time is this process's CPU time (user +
 * system), which other processes stretch far less than the wall clock.
 */
interface Case {
  name: string;
  fn: () => unknown;
  /** Index of the raw case this one is compared with. */
  vs?: number;
  ops: number;
  ms: number;
}

function measure(cases: Case[], seconds: number, batch = 100): void {
  for (const c of cases) for (let i = 0; i < 200; i++) c.fn(); // warm-up
  const until = performance.now() + seconds * 1000 * cases.length;
  while (performance.now() < until) {
    for (const c of cases) {
      const c0 = process.cpuUsage();
      for (let i = 0; i < batch; i++) c.fn();
      const d = process.cpuUsage(c0);
      c.ms += (d.user + d.system) / 1000;
      c.ops += batch;
    }
  }
}

const seconds = Number(process.argv[2] ?? '2');
const now = new Date();
const later = new Date(now.getTime() + 24 * 3600_000);
const svidNotAfter = new Date(now.getTime() + 3600_000);
const ca = generateKey('ec-p256');
const caDer = issueCaCertificate({ subjectKey: ca.publicKey, signerKey: ca.privateKey, trustDomain: 'example.org', notBefore: now, notAfter: later });
const msg = randomBytes(300);
const id = 'spiffe://example.org/ns/prod/sa/workload';

const SIGN = 0;
const PAIR = 1;
const subject = generateKey('ec-p256');
const csrInfoSized = randomBytes(200);
const subjectSig = sign('sha256', csrInfoSized, subject.privateKey);
const cases: Case[] = [
  { name: 'raw P-256 sign (300 B)', fn: () => sign('sha256', msg, ca.privateKey), ops: 0, ms: 0 },
  {
    name: 'raw pair: P-256 verify + P-256 sign',
    fn: () => {
      if (!verify('sha256', csrInfoSized, subject.publicKey, subjectSig)) throw new Error('raw verify failed');
      return sign('sha256', msg, ca.privateKey);
    },
    ops: 0,
    ms: 0,
  },
];
for (const wt of ['ec-p256', 'rsa-2048'] as KeyType[]) {
  const csr = createCsr(generateKey(wt), { spiffeId: id });
  const spki = parseCsr(csr).spki;
  cases.push({
    name: `issueX509Svid (${wt} subject)`,
    fn: () => issueX509Svid({ caCertDer: caDer, caKey: ca.privateKey, subjectSpki: spki, spiffeId: id, notBefore: now, notAfter: svidNotAfter }),
    vs: SIGN,
    ops: 0,
    ms: 0,
  });
  cases.push({
    name: `parseCsr + issueX509Svid (${wt})`,
    fn: () => issueX509Svid({ caCertDer: caDer, caKey: ca.privateKey, subjectSpki: parseCsr(csr).spki, spiffeId: id, notBefore: now, notAfter: svidNotAfter }),
    ...(wt === 'ec-p256' ? { vs: PAIR } : {}),
    ops: 0,
    ms: 0,
  });
}
const p256csr = createCsr(generateKey('ec-p256'));
cases.push({ name: 'parseCsr only (ec-p256)', fn: () => parseCsr(p256csr), ops: 0, ms: 0 });
const leaf = issueX509Svid({ caCertDer: caDer, caKey: ca.privateKey, subjectSpki: parseCsr(p256csr).spki, spiffeId: id, notBefore: now, notAfter: svidNotAfter });
const bundle = [caDer];
cases.push({ name: 'verifyX509Svid (leaf + root)', fn: () => verifyX509Svid([leaf], () => bundle, now), ops: 0, ms: 0 });

measure(cases, seconds);
const rate = (c: Case) => (c.ops / c.ms) * 1000;
console.log(`x509-sign benchmark (${seconds}s per case, interleaved, per CPU second; node ${process.version})`);
for (const c of cases) {
  const r = rate(c);
  const base = c.vs === undefined ? '' : `   ratio ${(r / rate(cases[c.vs]!)).toFixed(3)} of ${c.vs === SIGN ? 'raw sign' : 'raw pair'}`;
  console.log(`${c.name.padEnd(40)} ${r.toFixed(0).padStart(8)} ops/s  ${(1e6 / r).toFixed(1).padStart(7)} µs${base}`);
}
const csrP256 = cases.find((c) => c.name === 'parseCsr + issueX509Svid (ec-p256)')!;
const ratio = rate(csrP256) / rate(cases[PAIR]!);
console.log(`X.509-SVID from a P-256 CSR: ${ratio.toFixed(3)} of the raw (P-256 verify + P-256 sign) pair; goal >= 0.4: ${ratio >= 0.4 ? 'met' : 'NOT met'}`);
