/**
 * Property-based tests of the IMA list parsers (src/tpm/ima): random lists of every supported
 * template, written in both forms by the test builder (test/tpm/ima-builder.ts), parse to the
 * same entries and replay alike; a binary list is a sequence of self-delimiting records, so a cut
 * at a record boundary is a shorter list and any other cut is refused; random byte flips and
 * random bytes end in entries or a `tpm.ima_*` SigilError, never anything else; the incremental
 * check agrees with the full one wherever the full one accepts.
 */
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { checkImaLog, parseImaAsciiLog, parseImaBinaryLog, parseImaLog, replayIma } from '../../src/tpm/ima/index.js';
import { asciiList, binaryList, type ImaSpec } from '../tpm/ima-builder.js';
import { bytes, parseOrRefuse, refusedWith, runs, withByte } from './support.js';

const IMA = /^tpm\.ima_[a-z_]+$/;
const SHA256 = algorithmByName('sha256')!;
const SHA1 = algorithmByName('sha1')!;
const SIZES: Record<string, number> = { sha1: 20, sha256: 32, sha512: 64 };

const pathArb = fc.stringMatching(/^\/[a-z0-9._-]{1,40}(\/[a-z0-9._-]{1,20}){0,3}$/);
const specArb: fc.Arbitrary<ImaSpec> = fc.oneof(
  fc.record({ template: fc.constant('ima' as const), path: pathArb, digest: bytes(20, 20) }),
  fc.constantFrom('sha1', 'sha256', 'sha512').chain((alg) =>
    fc.record({
      template: fc.constantFrom('ima-ng' as const, 'ima-sig' as const, 'ima-buf' as const),
      alg: fc.constant(alg),
      path: pathArb,
      digest: bytes(SIZES[alg]!, SIZES[alg]!),
      extra: bytes(0, 64),
      violation: fc.boolean(),
    }),
  ),
);
const listArb = fc.array(specArb, { minLength: 1, maxLength: 12 });

describe('IMA lists (property)', () => {
  it('both forms parse to the same entries and replay alike in sha1 and sha256', () => {
    fc.assert(
      fc.property(listArb, (specs) => {
        const a = parseImaAsciiLog(asciiList(specs));
        const b = parseImaBinaryLog(binaryList(specs));
        expect(b.map((e) => [e.template, e.path, e.digest.toString('hex'), e.templateData.toString('hex'), e.violation])).toEqual(
          a.map((e) => [e.template, e.path, e.digest.toString('hex'), e.templateData.toString('hex'), e.violation]),
        );
        for (const e of b) if (!e.violation) expect(createHash('sha1').update(e.templateData).digest()).toEqual(e.templateHash);
        for (const bank of [SHA1, SHA256]) expect(replayIma(b, bank)).toEqual(replayIma(a, bank));
      }),
      runs(150),
    );
  });

  it('a binary cut at a record boundary is a shorter list; any other cut is refused as truncated', () => {
    fc.assert(
      fc.property(listArb, fc.nat(), (specs, at) => {
        const bin = binaryList(specs);
        const ends = parseImaBinaryLog(bin).map((e) => e.end);
        const cut = 1 + (at % (bin.length - 1));
        const i = ends.indexOf(cut);
        if (i >= 0) expect(parseImaBinaryLog(bin.subarray(0, cut))).toHaveLength(i + 1);
        else expect(refusedWith(() => parseImaBinaryLog(bin.subarray(0, cut)), IMA)).toBe('tpm.ima_truncated');
      }),
      runs(300),
    );
  });

  it('byte flips in either form end in entries or a tpm.ima_* SigilError', () => {
    fc.assert(
      fc.property(listArb, fc.nat(), fc.nat(), fc.boolean(), (specs, pos, xor, binary) => {
        const list = binary ? binaryList(specs) : asciiList(specs);
        parseOrRefuse(() => parseImaLog(withByte(list, pos, xor)), IMA);
      }),
      runs(500),
    );
  });

  it('random bytes end in entries or a tpm.ima_* SigilError', () => {
    fc.assert(
      fc.property(bytes(1, 400), (b) => {
        parseOrRefuse(() => parseImaLog(b), IMA);
        parseOrRefuse(() => parseImaBinaryLog(b), IMA);
      }),
      runs(500),
    );
  });

  it('an incremental check from any checked prefix agrees with the full check', () => {
    fc.assert(
      fc.property(listArb, listArb, fc.boolean(), (first, more, binary) => {
        const build = binary ? binaryList : asciiList;
        const L1 = build(first);
        const L2 = build([...first, ...more]);
        const pcrs = (l: Buffer): { bank: string; index: number; value: Buffer }[] => [{ bank: 'sha256', index: 10, value: replayIma(parseImaLog(l), SHA256) }];
        const p = checkImaLog({ log: L1, pcrs: pcrs(L1) }).progress;
        const full = checkImaLog({ log: L2, pcrs: pcrs(L2) });
        const whole = checkImaLog({ log: L2, pcrs: pcrs(L2), progress: p });
        const tail = checkImaLog({ log: L2.subarray(p.bytes), tail: true, pcrs: pcrs(L2), progress: p });
        // A violation or a repeated PCR value can make a shorter prefix match; then the counts differ only by where the prefix ends.
        for (const r of [whole, tail]) {
          expect(r.covered).toBeGreaterThanOrEqual(p.entries);
          expect(r.progress.aggregates).toEqual(full.progress.aggregates);
        }
      }),
      runs(150),
    );
  });
});
