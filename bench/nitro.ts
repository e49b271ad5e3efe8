/**
 * Nitro attestation document verification throughput on one core (run: npx tsx bench/nitro.ts).
 *
 * Every case is measured in the same run as the floor, interleaved with it in 100 ms slices
 * (round robin over all cases for CASES × BENCH_SECONDS seconds), each by this process's CPU time
 * (user + system): all cases see the same machine load, so the ratios hold on a shared machine
 * where two separate runs would not.
 *
 *  raw  Node's crypto.verify ES384 (P-384, ieee-p1363, KeyObject) over a 4.5 KB message: the floor.
 *  (a)  the same enclave's document again and again (real marlin-aws.cbor from ../shared/testdata,
 *       and a synthetic one): the whole verified path comes from the cache (same bytes, same pin;
 *       validity still checked), so a document costs its one COSE P-384 verify; ceiling 1.0, goal
 *       >= 0.8 (issue 15).
 *  (b)  200 synthetic documents with distinct leaf certificates under the same intermediates; each
 *       pass uses a fresh cache warmed with one other document, so every leaf is new to it: two
 *       P-384 verifies (leaf certificate + COSE signature), ceiling 0.5.
 *  (c)  createVerify('sha384').update(...).verify(...) on the same message and KeyObject, to compare
 *       the streaming API with the one-shot crypto.verify the verifier uses.
 */
import 'reflect-metadata';
import { createVerify, generateKeyPairSync, sign, verify } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { NitroCertCache } from '../src/nitro/certs.js';
import { verifyNitroDocument } from '../src/nitro/verify.js';
import { makeDocument, makeLeaf, makePki } from '../test/nitro/fixtures.js';
import { TESTDATA } from '../test/support/testdata.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);

interface Case {
  name: string;
  fn: () => void;
  n: number;
  us: number;
}

/** Run every case in turn for 100 ms slices, CASES × SECONDS seconds in all; rate = operations per CPU second. */
function interleaved(cases: Case[]): void {
  for (const c of cases) for (let i = 0; i < 50; i++) c.fn();
  const end = performance.now() + cases.length * SECONDS * 1000;
  while (performance.now() < end) {
    for (const c of cases) {
      const stop = performance.now() + 100;
      const c0 = process.cpuUsage();
      while (performance.now() < stop) {
        c.fn();
        c.n++;
      }
      const d = process.cpuUsage(c0);
      c.us += d.user + d.system;
    }
  }
}

const rateOf = (c: Case) => c.n / (c.us / 1e6);
const fmt = (r: number) => r.toFixed(0).padStart(6);

async function main(): Promise<void> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const msg = Buffer.alloc(4500, 7);
  const sig = sign('sha384', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  const cases: Case[] = [];
  const add = (name: string, fn: () => void): Case => {
    const c = { name, fn, n: 0, us: 0 };
    cases.push(c);
    return c;
  };
  const raw = add('raw P-384 verify (crypto.verify)', () => {
    if (!verify('sha384', msg, { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig)) throw new Error('raw verify failed');
  });

  const realFile = `${TESTDATA}/nitro/marlin-aws.cbor`;
  if (!existsSync(realFile)) throw new Error(`${realFile} not found: the real document is part of this benchmark`);
  const realDoc = readFileSync(realFile);
  const realAt = new Date('2024-12-13T07:37:58.960Z');
  const realCache = new NitroCertCache();
  const real = add('(a) same document, real (marlin-aws)', () => void verifyNitroDocument(realDoc, { at: realAt, cache: realCache }));

  const pki = await makePki({ name: 'bench' });
  const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
  const at = new Date(T0);
  const leaves = await Promise.all(Array.from({ length: 201 }, () => makeLeaf(pki)));
  const docs = leaves.map((l, i) => makeDocument(pki, l, { timestamp: T0 - i, nonce: Buffer.alloc(32, i & 0xff), publicKey: Buffer.alloc(91, 1) }));
  const warm = docs.pop() as Buffer;
  const sameCache = new NitroCertCache();
  const same = docs[0] as Buffer;
  const synth = add('(a) same document, synthetic', () => void verifyNitroDocument(same, { at, rootSha256: pki.rootSha256, cache: sameCache }));

  let next = 0;
  let cache = new NitroCertCache();
  const distinct = add(`(b) ${docs.length} distinct leaves`, () => {
    if (next === 0) {
      if (cache.size.leaf !== 0 && cache.size.leaf !== docs.length + 1) throw new Error('expected every leaf to be new to the cache');
      cache = new NitroCertCache();
      verifyNitroDocument(warm, { at, rootSha256: pki.rootSha256, cache });
    }
    verifyNitroDocument(docs[next] as Buffer, { at, rootSha256: pki.rootSha256, cache });
    next = (next + 1) % docs.length;
  });

  const streaming = add('(c) createVerify, same key and message', () => {
    const v = createVerify('sha384');
    v.update(msg);
    if (!v.verify({ key: publicKey, dsaEncoding: 'ieee-p1363' }, sig)) throw new Error('createVerify failed');
  });

  interleaved(cases);
  const r0 = rateOf(raw);
  const line = (c: Case, goal?: number) => {
    const r = rateOf(c);
    const ratio = r / r0;
    const extra = c === raw ? '' : `  ratio ${ratio.toFixed(3)}${goal === undefined ? '' : `  goal >= ${goal}: ${ratio >= goal ? 'met' : 'NOT met'}`}`;
    console.log(`${c.name.padEnd(42)} ${fmt(r)} /s  ${(1e6 / r).toFixed(1).padStart(7)} µs CPU/op${extra}`);
  };
  line(raw);
  line(real, 0.8);
  line(synth, 0.8);
  line(distinct);
  line(streaming);
  if (sameCache.pathHits === 0 || realCache.pathHits === 0) throw new Error('the same-document cases never hit the path cache');
  console.log(`same-document overhead over raw: real ${(1e6 / rateOf(real) - 1e6 / r0).toFixed(1)} µs, synthetic ${(1e6 / rateOf(synth) - 1e6 / r0).toFixed(1)} µs per document`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
