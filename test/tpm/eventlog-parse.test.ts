/**
 * TCG event log parsing and replay: every real log parses and replays to its recorded PCRs; bad
 * logs (truncated, oversized, looping, empty, wrong Spec ID, unknown algorithm, digest-count
 * mismatch) and random mutations of the real logs end in a SigilError with a tpm.eventlog_* code.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseEventLog, replayEventLog, replayedToJson } from '../../src/tpm/eventlog/index.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';
import { agileLog, agileRecord, legacyRecord, specIdData, startupLocality } from './eventlog-builder.js';

const have = requireTestdata();
const ALL24 = [...Array(24).keys()];
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));

const REAL: [string, string, number, string[]][] = [
  ['sb_cert_eventlog', 'crypto-agile', 14, ['sha1', 'sha256', 'sha384']],
  ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'crypto-agile', 105, ['sha1', 'sha256', 'sha384']],
  ['crypto_agile_eventlog', 'crypto-agile', 26, ['sha256']],
  ['ebs_event_missing_eventlog', 'legacy-sha1', 38, ['sha1']],
  ['keylime_binary_bios_measurements', 'crypto-agile', 120, ['sha1', 'sha256']],
  ['keylime_binary_bios_measurements_secureboot', 'crypto-agile', 98, ['sha256']],
];

describe.skipIf(!have)('real event logs', () => {
  it.each(REAL)('%s parses as %s with %i events after the header in %j', (f, format, n, banks) => {
    const log = parseEventLog(read(f));
    expect(log.format).toBe(format);
    expect(log.events.length - (format === 'crypto-agile' ? 1 : 0)).toBe(n);
    expect(log.banks.map((b) => b.name)).toEqual(banks);
    const regs = replayEventLog(log, { indices: ALL24 });
    for (const b of banks) expect(regs.get(b)!.size).toBe(24);
  });

  it('sb_cert_eventlog replays to recorded-pcrs.json in every recorded bank (all PCRs but IMA PCR 10)', () => {
    const rec = JSON.parse(read('recorded-pcrs.json').toString('utf8')) as Record<string, Record<string, Record<string, string>>>;
    const got = replayedToJson(replayEventLog(parseEventLog(read('sb_cert_eventlog')), { indices: ALL24 }));
    const want = rec.sb_cert_eventlog!;
    let compared = 0;
    for (const bank of Object.keys(want)) {
      for (const [i, v] of Object.entries(want[bank]!)) {
        if (i === '10') {
          expect(got[bank]![i]).not.toBe(v);
          continue;
        }
        expect(got[bank]![i], `${bank} PCR ${i}`).toBe(v);
        compared++;
      }
    }
    expect(compared).toBe(46);
  });

  it('the GCP Windows vTPM legacy SHA-1 log replays to all 24 PCRs of its dump', () => {
    const dump = JSON.parse(read('windows_gcp_shielded_vm.json').toString('utf8')) as { Log: { Raw: string; PCRs: { Index: number; Digest: string; DigestAlg: number }[] } };
    const log = parseEventLog(Buffer.from(dump.Log.Raw, 'base64'));
    expect(log.format).toBe('legacy-sha1');
    expect(log.events).toHaveLength(21);
    const got = replayEventLog(log, { indices: ALL24 }).get('sha1')!;
    expect(dump.Log.PCRs).toHaveLength(24);
    for (const p of dump.Log.PCRs) {
      expect(p.DigestAlg).toBe(3);
      expect(got.get(p.Index)!.toString('base64'), `PCR ${p.Index}`).toBe(p.Digest);
    }
  });

  it('keylime log: StartupLocality 3 starts PCR 0 at ...03', () => {
    const log = parseEventLog(read('keylime_binary_bios_measurements'));
    expect(log.startupLocality).toBe(3);
    const withLoc = replayEventLog(log).get('sha256')!.get(0)!;
    const without = replayEventLog(log, { startupLocality: false }).get('sha256')!.get(0)!;
    expect(withLoc.equals(without)).toBe(false);
  });

  it('refuses the truncated 49-byte log (a lone StartupLocality record without its Spec ID header)', () => {
    expect(codeOf(() => parseEventLog(read('short_no_action_eventlog')))).toBe('tpm.eventlog_truncated');
  });

  it('refuses every cut of a real log that does not end on a record boundary', () => {
    const raw = read('sb_cert_eventlog');
    const log = parseEventLog(raw);
    const bounds = new Set([...log.events.map((e) => e.offset), raw.length]);
    for (let n = 1; n < raw.length; n += 7) {
      const c = codeOf(() => parseEventLog(raw.subarray(0, n)));
      if (bounds.has(n)) expect(c).not.toBe('tpm.eventlog_truncated');
      else expect(['tpm.eventlog_truncated', 'tpm.eventlog_bad_spec_id']).toContain(c);
    }
  });
});

describe('bad event logs', () => {
  const sha = (d: string): Buffer => createHash('sha256').update(d).digest();
  const ev = (index: number, data: string): { index: number; type: number; data: Buffer } => ({ index, type: 0x0d, data: Buffer.from(data) });

  it('a hand-built sha256 log replays as H(H(0‖d1)‖d2)', () => {
    const log = parseEventLog(agileLog([0xb], [ev(4, 'a'), ev(4, 'b')]));
    const h1 = createHash('sha256').update(Buffer.concat([Buffer.alloc(32), sha('a')])).digest();
    const h2 = createHash('sha256').update(Buffer.concat([h1, sha('b')])).digest();
    expect(replayEventLog(log).get('sha256')!.get(4)!.equals(h2)).toBe(true);
    expect(replayEventLog(log, { indices: [17] }).get('sha256')!.get(17)!.equals(Buffer.alloc(32, 0xff))).toBe(true);
  });

  it('empty / zero-size', () => {
    expect(codeOf(() => parseEventLog(Buffer.alloc(0)))).toBe('tpm.eventlog_empty');
    expect(codeOf(() => parseEventLog(Buffer.alloc(3)))).toBe('tpm.eventlog_truncated');
    expect(codeOf(() => parseEventLog(agileLog([0xb], [])))).toBe('tpm.eventlog_no_measurements');
  });

  it('oversized: over maxBytes, or an event size beyond the end', () => {
    const log = agileLog([0xb], [ev(4, 'x'.repeat(2000))]);
    expect(codeOf(() => parseEventLog(log, { maxBytes: 1024 }))).toBe('tpm.eventlog_too_large');
    const huge = Buffer.from(log);
    huge.writeUInt32LE(0xffffffff, huge.length - 2000 - 4);
    expect(codeOf(() => parseEventLog(huge))).toBe('tpm.eventlog_truncated');
  });

  it('looping: a record repeated past the event cap stops at the cap', () => {
    const one = agileRecord(ev(4, 'loop'), [0xb]);
    const header = agileLog([0xb], []);
    const looped = Buffer.concat([header, ...Array<Buffer>(200).fill(one)]);
    expect(parseEventLog(looped, { maxEvents: 201 }).events).toHaveLength(201);
    expect(codeOf(() => parseEventLog(looped, { maxEvents: 100 }))).toBe('tpm.eventlog_too_many_events');
    const t0 = Date.now();
    expect(codeOf(() => parseEventLog(Buffer.concat([header, ...Array<Buffer>(20000).fill(one)]), { maxBytes: 1 << 24 }))).toBe('tpm.eventlog_too_many_events');
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('wrong Spec ID events', () => {
    const e = [ev(4, 'a')];
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([[0xb, 32]], { major: 1 }))))).toBe('tpm.eventlog_bad_spec_id');
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([[0xb, 32]], { uintn: 7 }))))).toBe('tpm.eventlog_bad_spec_id');
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([[0xb, 20]]))))).toBe('tpm.eventlog_bad_spec_id');
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([[0xb, 32], [0xb, 32]]))))).toBe('tpm.eventlog_bad_spec_id');
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([]))))).toBe('tpm.eventlog_bad_spec_id');
    expect(codeOf(() => parseEventLog(agileLog([0xb], e, specIdData([[0xb, 32]], { trailing: Buffer.from([1]) }))))).toBe('tpm.eventlog_bad_spec_id');
    const nonzero = agileLog([0xb], e);
    nonzero[8] = 1; // header digest
    expect(codeOf(() => parseEventLog(nonzero))).toBe('tpm.eventlog_bad_spec_id');
    const second = Buffer.concat([agileLog([0xb], e), agileRecord({ index: 0, type: 3, data: specIdData([[0xb, 32]]) }, [0xb])]);
    expect(codeOf(() => parseEventLog(second))).toBe('tpm.eventlog_bad_spec_id');
  });

  it('unknown algorithms: in the Spec ID event, or in an event but not declared', () => {
    expect(codeOf(() => parseEventLog(agileLog([0xb], [ev(4, 'a')], specIdData([[0x99, 32]]))))).toBe('tpm.eventlog_unknown_algorithm');
    const undeclared = agileLog([0xb], [{ ...ev(4, 'a'), digests: [[0xc, Buffer.alloc(32)]] }]);
    expect(codeOf(() => parseEventLog(undeclared))).toBe('tpm.eventlog_unknown_algorithm');
  });

  it('digest count mismatch: fewer, more, or a repeated bank', () => {
    const spec = specIdData([[0x4, 20], [0xb, 32]]);
    const fewer = agileLog([0x4, 0xb], [{ ...ev(4, 'a'), digests: [[0xb, Buffer.alloc(32)]] }], spec);
    expect(codeOf(() => parseEventLog(fewer))).toBe('tpm.eventlog_digest_count_mismatch');
    const twice = agileLog([0x4, 0xb], [{ ...ev(4, 'a'), digests: [[0xb, Buffer.alloc(32)], [0xb, Buffer.alloc(32)]] }], spec);
    expect(codeOf(() => parseEventLog(twice))).toBe('tpm.eventlog_digest_count_mismatch');
  });

  it('register index over the cap, StartupLocality misuse', () => {
    expect(codeOf(() => parseEventLog(agileLog([0xb], [ev(24, 'a')])))).toBe('tpm.eventlog_bad_index');
    expect(parseEventLog(agileLog([0xb], [ev(24, 'a')]), { maxIndex: 31 }).events).toHaveLength(2);
    expect(codeOf(() => parseEventLog(agileLog([0xb], [ev(0, 'a'), startupLocality(3)])))).toBe('tpm.eventlog_bad_startup_locality');
    expect(codeOf(() => parseEventLog(agileLog([0xb], [startupLocality(3), startupLocality(3), ev(0, 'a')])))).toBe('tpm.eventlog_bad_startup_locality');
    expect(codeOf(() => parseEventLog(agileLog([0xb], [startupLocality(9), ev(0, 'a')])))).toBe('tpm.eventlog_bad_startup_locality');
    const log = parseEventLog(agileLog([0xb], [startupLocality(3), ev(0, 'a')]));
    const pcr0 = createHash('sha256').update(Buffer.concat([Buffer.alloc(31), Buffer.from([3]), sha('a')])).digest();
    expect(replayEventLog(log).get('sha256')!.get(0)!.equals(pcr0)).toBe(true);
  });

  it('a legacy log is refused when a record runs past the end; trailing bytes are refused', () => {
    const rec = legacyRecord(0, 8, Buffer.alloc(20), Buffer.from('v1'));
    expect(parseEventLog(rec).format).toBe('legacy-sha1');
    expect(codeOf(() => parseEventLog(Buffer.concat([rec, Buffer.alloc(5)])))).toBe('tpm.eventlog_truncated');
  });

  it('replaying a bank the log does not carry is refused', () => {
    const log = parseEventLog(agileLog([0xb], [ev(4, 'a')]));
    expect(codeOf(() => replayEventLog(log, { banks: ['sha384'] }))).toBe('tpm.eventlog_bank_missing');
    expect(codeOf(() => replayEventLog(log, { banks: ['md5'] }))).toBe('tpm.eventlog_unsupported_algorithm');
  });
});

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe.skipIf(!have)('random mutations of the real logs', () => {
  // The six log files, and the GCP Windows vTPM's log from its JSON dump (Log.Raw, legacy SHA-1).
  const subjects = [...REAL.map((r) => r[0]), 'windows_gcp_shielded_vm.json:Log.Raw'];
  const rawOf = (f: string): Buffer =>
    f.endsWith(':Log.Raw') ? Buffer.from((JSON.parse(read(f.slice(0, -':Log.Raw'.length)).toString('utf8')) as { Log: { Raw: string } }).Log.Raw, 'base64') : read(f);
  it.each(subjects)('%s: 400 mutations end in a parse + replay or a tpm.eventlog_* SigilError, never anything else', (f) => {
    const raw = rawOf(f);
    expect(raw.length).toBeGreaterThan(0);
    const rnd = mulberry32(0x5eed ^ raw.length);
    const seen = new Map<string, number>();
    for (let i = 0; i < 400; i++) {
      const m = Buffer.from(raw);
      const kind = i % 4;
      if (kind === 0) {
        const at = Math.floor(rnd() * m.length);
        m.writeUInt8(m.readUInt8(at) ^ (1 + Math.floor(rnd() * 255)), at);
      }
      else if (kind === 1) m.writeUInt32LE(Math.floor(rnd() * 2 ** 32), Math.floor(rnd() * (m.length - 4)));
      const input = kind === 2 ? m.subarray(0, Math.floor(rnd() * m.length)) : kind === 3 ? Buffer.concat([m, m.subarray(0, 1 + Math.floor(rnd() * 64))]) : m;
      let outcome: string;
      try {
        replayEventLog(parseEventLog(input));
        outcome = 'parsed';
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        expect((e as SigilError).code).toMatch(/^tpm\.eventlog_[a-z_]+$/);
        outcome = (e as SigilError).code;
      }
      seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
    }
    expect([...seen.keys()].some((k) => k !== 'parsed')).toBe(true);
  });
});
