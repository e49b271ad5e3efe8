/**
 * X.509-SVID signing throughput vs node:crypto's raw P-256 signature rate, measured in the
 * same run. Prints ops/s and the ratio to raw for:
 *   raw        crypto.sign('sha256', 300-byte message, P-256 key)
 *   issue      issueX509Svid from an already-parsed CSR (subjectSpki): the CA's signing step
 *   csr+issue  parseCsr (strict DER, key import, self-signature verification) + issueX509Svid
 *   verify     verifyX509Svid of a leaf against its root, for reference
 * Run: npx tsx bench/x509-sign.ts [seconds-per-case]
 */
import { randomBytes, sign } from 'node:crypto';
import { createCsr, generateKey, issueCaCertificate, issueX509Svid, parseCsr, verifyX509Svid, type KeyType } from '../src/spiffe/index.js';

/**
 * Interleaved measurement: every case runs in short batches, round-robin, for the whole
 * duration, so machine load (other processes on a shared box) affects all cases alike and the
 * ratios stay meaningful even when absolute rates move.
 */
interface Case {
  name: string;
  fn: () => unknown;
  ops: number;
  ms: number;
}

function measure(cases: Case[], seconds: number, batch = 100): void {
  for (const c of cases) for (let i = 0; i < 200; i++) c.fn(); // warm-up
  const until = performance.now() + seconds * 1000 * cases.length;
  while (performance.now() < until) {
    for (const c of cases) {
      const t0 = performance.now();
      for (let i = 0; i < batch; i++) c.fn();
      c.ms += performance.now() - t0;
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

const cases: Case[] = [{ name: 'raw P-256 sign (300 B)', fn: () => sign('sha256', msg, ca.privateKey), ops: 0, ms: 0 }];
for (const wt of ['ec-p256', 'rsa-2048'] as KeyType[]) {
  const csr = createCsr(generateKey(wt), { spiffeId: id });
  const spki = parseCsr(csr).spki;
  cases.push({
    name: `issueX509Svid (${wt} subject)`,
    fn: () => issueX509Svid({ caCertDer: caDer, caKey: ca.privateKey, subjectSpki: spki, spiffeId: id, notBefore: now, notAfter: svidNotAfter }),
    ops: 0,
    ms: 0,
  });
  cases.push({
    name: `parseCsr + issueX509Svid (${wt})`,
    fn: () => issueX509Svid({ caCertDer: caDer, caKey: ca.privateKey, subjectSpki: parseCsr(csr).spki, spiffeId: id, notBefore: now, notAfter: svidNotAfter }),
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
const rawRate = (cases[0]!.ops / cases[0]!.ms) * 1000;
console.log(`x509-sign benchmark (${seconds}s per case, interleaved; node ${process.version})`);
for (const c of cases) {
  const r = (c.ops / c.ms) * 1000;
  console.log(`${c.name.padEnd(36)} ${r.toFixed(0).padStart(8)} ops/s   ${((r / rawRate) * 100).toFixed(1).padStart(6)}% of raw`);
}
