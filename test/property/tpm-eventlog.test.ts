/**
 * Property-based tests of the TCG event log parser (src/tpm/eventlog/parse.ts).
 *
 * Crypto-agile and legacy SHA-1 logs are generated with the test log builder
 * (test/tpm/eventlog-builder.ts, which writes the PC Client records byte by byte). A log is a
 * sequence of self-delimiting records, so a cut at a record boundary is a shorter valid log; a cut
 * anywhere else, or a tail shorter than one record, must be refused as truncated. The real logs in
 * the shared testdata are used as bases for the mutation property.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseEventLog } from '../../src/tpm/eventlog/index.js';
import { hasTestdata, td } from '../support/testdata.js';
import { agileLog, agileRecord, legacyRecord, startupLocality, type BuiltEvent } from '../tpm/eventlog-builder.js';
import { bytes, parseOrRefuse, refusedWith, runs } from './support.js';

const EVENTLOG = /^tpm\.eventlog_[a-z_]+$/;
const SIZE: Record<number, number> = { 0x4: 20, 0xb: 32, 0xc: 48, 0xd: 64 };
const EV_NO_ACTION = 3;

/** Measured event types (anything but EV_NO_ACTION) from the PC Client profile, plus arbitrary values. */
const typeArb = fc.oneof(fc.constantFrom(0x1, 0x4, 0x5, 0x6, 0x7, 0x8, 0xd, 0x80000001, 0x80000002, 0x80000007, 0x800000e0), fc.integer({ min: 4, max: 0xffffffff }));

const algsArb = fc.shuffledSubarray([0x4, 0xb, 0xc, 0xd], { minLength: 1 });

interface LogModel {
  algs: number[];
  locality: number | undefined;
  events: BuiltEvent[];
}

const logArb: fc.Arbitrary<LogModel> = algsArb.chain((algs) =>
  fc.record({
    algs: fc.constant(algs),
    locality: fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }),
    events: fc.array(
      fc.record({
        index: fc.integer({ min: 0, max: 23 }),
        type: typeArb,
        data: bytes(0, 64),
        digests: fc.tuple(...algs.map((id) => bytes(SIZE[id]!, SIZE[id]!).map((d): [number, Buffer] => [id, d]))),
      }),
      { minLength: 1, maxLength: 12 },
    ),
  }),
);

function build(m: LogModel): { log: Buffer; boundaries: number[]; events: BuiltEvent[] } {
  const events = m.locality === undefined ? m.events : [startupLocality(m.locality), ...m.events];
  const log = agileLog(m.algs, events);
  // Record boundaries: the header record, then each agile record.
  const boundaries: number[] = [];
  let off = log.length - events.reduce((n, e) => n + agileRecord(e, m.algs).length, 0);
  boundaries.push(off);
  for (const e of events) {
    off += agileRecord(e, m.algs).length;
    boundaries.push(off);
  }
  return { log, boundaries, events };
}

describe('crypto-agile event logs', () => {
  it('parse(build(x)) gives back every record: register, type, data and one digest per declared bank', () => {
    fc.assert(
      fc.property(logArb, (m) => {
        const { log, boundaries, events } = build(m);
        const p = parseEventLog(log);
        expect(p.format).toBe('crypto-agile');
        expect(p.banks.map((b) => b.id)).toEqual(m.algs);
        expect(p.byteLength).toBe(log.length);
        expect(p.startupLocality).toBe(m.locality);
        expect(p.events).toHaveLength(events.length + 1);
        events.forEach((e, i) => {
          const got = p.events[i + 1]!;
          expect(got.seq).toBe(i + 1);
          expect(got.offset).toBe(boundaries[i]);
          expect(got.index).toBe(e.index);
          expect(got.type).toBe(e.type);
          expect(got.data.equals(e.data)).toBe(true);
          if (e.digests) expect(got.digests.map((d) => [d.alg.id, d.digest.toString('hex')])).toEqual(e.digests.map(([id, d]) => [id, d.toString('hex')]));
        });
      }),
      runs(300),
    );
  });

  it('a cut at a record boundary is a shorter log; a cut anywhere else is refused as truncated', () => {
    fc.assert(
      fc.property(logArb, fc.nat(), (m, pick) => {
        const { log, boundaries } = build(m);
        const cut = pick % log.length;
        const r = parseOrRefuse(() => parseEventLog(log.subarray(0, cut)), EVENTLOG);
        const k = boundaries.indexOf(cut);
        if (cut === 0) {
          expect(r.ok ? 'parsed' : r.error.code).toBe('tpm.eventlog_empty');
        } else if (k < 0) {
          expect(r.ok ? 'parsed' : r.error.code).toBe('tpm.eventlog_truncated');
        } else {
          // The header and k records survive; a log of EV_NO_ACTION records only is refused.
          const kept = build(m).events.slice(0, k);
          if (kept.some((e) => e.type !== EV_NO_ACTION)) {
            expect(r.ok).toBe(true);
            if (r.ok) expect(r.value.events).toHaveLength(k + 1);
          } else {
            expect(r.ok ? 'parsed' : r.error.code).toBe('tpm.eventlog_no_measurements');
          }
        }
      }),
      runs(500),
    );
  });

  it('a tail shorter than one record is refused', () => {
    fc.assert(
      fc.property(logArb, fc.nat(), fc.nat(), (m, lenPick, seed) => {
        const { log } = build(m);
        const minRecord = 4 + 4 + 4 + m.algs.reduce((n, id) => n + 2 + SIZE[id]!, 0) + 4;
        const tail = Buffer.alloc(1 + (lenPick % (minRecord - 1)), seed & 0xff);
        const code = refusedWith(() => parseEventLog(Buffer.concat([log, tail])), EVENTLOG);
        // Before the digest count (12 bytes) only truncation can be seen; after it a wrong count may be named first.
        if (tail.length < 12) expect(code).toBe('tpm.eventlog_truncated');
        else expect(['tpm.eventlog_truncated', 'tpm.eventlog_digest_count_mismatch', 'tpm.eventlog_unknown_algorithm']).toContain(code);
      }),
      runs(300),
    );
  });

  it('a record whose digests do not match the declared banks is refused', () => {
    fc.assert(
      fc.property(logArb, fc.integer({ min: 0, max: 11 }), (m, which) => {
        fc.pre(m.algs.length > 1);
        const events = m.events.map((e, i) => (i === which % m.events.length ? { ...e, digests: e.digests!.slice(1) } : e));
        const code = refusedWith(() => parseEventLog(agileLog(m.algs, events)), EVENTLOG);
        expect(['tpm.eventlog_digest_count_mismatch', 'tpm.eventlog_truncated']).toContain(code);
      }),
      runs(200),
    );
  });
});

describe('legacy SHA-1 event logs', () => {
  it('parse(concat(records)) gives back every record; truncations inside a record are refused', () => {
    const rec = fc.record({ index: fc.integer({ min: 0, max: 23 }), type: typeArb, digest: bytes(20, 20), data: bytes(0, 64) });
    fc.assert(
      fc.property(fc.array(rec, { minLength: 1, maxLength: 12 }), fc.nat(), (recs, pick) => {
        const parts = recs.map((r) => legacyRecord(r.index, r.type, r.digest, r.data));
        const log = Buffer.concat(parts);
        const p = parseEventLog(log);
        expect(p.format).toBe('legacy-sha1');
        expect(p.events.map((e) => [e.index, e.type, e.digests[0]!.digest.toString('hex'), e.data.toString('hex')])).toEqual(
          recs.map((r) => [r.index, r.type, r.digest.toString('hex'), r.data.toString('hex')]),
        );
        const boundaries = parts.reduce<number[]>((acc, b) => [...acc, (acc.at(-1) ?? 0) + b.length], []);
        const cut = 1 + (pick % (log.length - 1));
        if (!boundaries.includes(cut)) expect(refusedWith(() => parseEventLog(log.subarray(0, cut)), EVENTLOG)).toBe('tpm.eventlog_truncated');
      }),
      runs(300),
    );
  });
});

const REAL = hasTestdata
  ? [
      'sb_cert_eventlog',
      'ubuntu_2104_shielded_vm_no_secure_boot_eventlog',
      'crypto_agile_eventlog',
      'ebs_event_missing_eventlog',
      'keylime_binary_bios_measurements',
      'keylime_binary_bios_measurements_secureboot',
    ].map((f) => readFileSync(td('tpm-eventlog', f)))
  : [];

describe('hostile event logs', () => {
  it('changed bytes in a real or generated log give a tpm.eventlog_* SigilError or a parse, nothing else', () => {
    const base = REAL.length > 0 ? fc.oneof(logArb.map((m) => build(m).log), fc.constantFrom(...REAL)) : logArb.map((m) => build(m).log);
    fc.assert(
      fc.property(base, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), (log, edits) => {
        const bad = Buffer.from(log);
        for (const [pos, v] of edits) bad[pos % bad.length] = v;
        parseOrRefuse(() => parseEventLog(bad), EVENTLOG);
      }),
      runs(300),
    );
  });

  it('arbitrary bytes give a tpm.eventlog_* SigilError and nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 400), (b) => void parseOrRefuse(() => parseEventLog(b), EVENTLOG)),
      runs(1000),
    );
  });

  it('the byte and event limits are enforced whatever the log', () => {
    fc.assert(
      fc.property(logArb, fc.integer({ min: 1, max: 5 }), (m, maxEvents) => {
        const { log, events } = build(m);
        const tooSmall = parseOrRefuse(() => parseEventLog(log, { maxBytes: log.length - 1 }), EVENTLOG);
        expect(tooSmall.ok ? 'parsed' : tooSmall.error.code).toBe('tpm.eventlog_too_large');
        const r = parseOrRefuse(() => parseEventLog(log, { maxEvents }), EVENTLOG);
        if (events.length + 1 > maxEvents) expect(r.ok ? 'parsed' : r.error.code).toBe('tpm.eventlog_too_many_events');
        else expect(r.ok).toBe(true);
      }),
      runs(200),
    );
  });
});
