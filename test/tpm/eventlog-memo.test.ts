/**
 * What a verifier keeps between event log checks may save work, never a check:
 *  - PCR 7 variable data checked for one log is reused for another only when byte-equal, so a
 *    log that keeps a known variable's digest but changes its data is still refused;
 *  - the outcome memo ignores PCRs that are not compared (PCR 10), and nothing else;
 *  - records parsed into offsets give the same digests and data as the bytes say;
 *  - the random pool for attestation secrets hands out fresh bytes.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, EventLogCheckCache, ParsedEvent, VerifiedVariableMemo, checkEventLog, eventLogClaims, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { poolRandomBytes } from '../../src/tpm/random.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const LOGS = ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'keylime_binary_bios_measurements_secureboot', 'sb_cert_eventlog', 'keylime_binary_bios_measurements', 'crypto_agile_eventlog'];

function trusted(raw: Buffer, idx = PCRS): { bank: string; index: number; value: Buffer }[] {
  const regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: idx }).get('sha256')!;
  return idx.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
}

/** The PCR 7 UEFI variable events of `raw` (ParsedEvents: offsets into raw), largest first. */
function pcr7Variables(raw: Buffer): ParsedEvent[] {
  return parseEventLog(raw)
    .events.filter((e): e is ParsedEvent => e instanceof ParsedEvent && e.index === 7 && e.type === EV.EFI_VARIABLE_DRIVER_CONFIG)
    .sort((a, b) => b.dataLength - a.dataLength);
}

/** `raw` with one bit of event `ev`'s data flipped at `at` (digests kept). */
function flipped(raw: Buffer, ev: ParsedEvent, at: number): Buffer {
  const out = Buffer.from(raw);
  out[ev.dataStart + at] = out[ev.dataStart + at]! ^ 0x01;
  return out;
}

describe.skipIf(!have)('PCR 7 variables checked once per platform', () => {
  it.each(LOGS)('%s: with a memo the outcome is the same as without, first and second time', (f) => {
    const raw = read(f);
    const pcrs = trusted(raw);
    const memo = new VerifiedVariableMemo();
    const plain = checkEventLog({ log: raw, pcrs });
    for (let i = 0; i < 2; i++) {
      const r = checkEventLog({ log: raw, pcrs, variableMemo: memo });
      expect(r.selectors).toEqual(plain.selectors);
      expect(eventLogClaims(r)).toEqual(eventLogClaims(plain));
    }
    expect(memo.size).toBe(pcr7Variables(raw).length);
  });

  it.each(['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'keylime_binary_bios_measurements_secureboot'])(
    'attack %s: a variable with the digest the memo knows but other data is refused (every variable, first, middle and last byte)',
    (f) => {
      const raw = read(f);
      const pcrs = trusted(raw);
      const memo = new VerifiedVariableMemo();
      const want = checkEventLog({ log: raw, pcrs, variableMemo: memo }).selectors;
      const vars = pcr7Variables(raw);
      expect(vars.length).toBeGreaterThanOrEqual(4);
      for (const ev of vars) {
        for (const at of [0, ev.dataLength >> 1, ev.dataLength - 1]) {
          // The flipped data keeps its digest, so the PCRs still match: only the data check can refuse it.
          expect(codeOf(() => checkEventLog({ log: flipped(raw, ev, at), pcrs, variableMemo: memo }))).toBe('tpm.eventlog_event_data_mismatch');
        }
      }
      // The memo still holds the true data, and only it.
      expect(checkEventLog({ log: raw, pcrs, variableMemo: memo }).selectors).toEqual(want);
      expect(memo.size).toBe(vars.length);
    },
  );

  it('the memo is bounded by entries and bytes (least recently used out) and keeps no view into a reused buffer', () => {
    const raw = read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog');
    const pcrs = trusted(raw);
    const vars = pcr7Variables(raw);
    const small = new VerifiedVariableMemo(2);
    checkEventLog({ log: raw, pcrs, variableMemo: small });
    expect(small.size).toBe(2);
    const bytes = new VerifiedVariableMemo(256, vars[0]!.dataLength * 4 - 1);
    checkEventLog({ log: raw, pcrs, variableMemo: bytes });
    expect(bytes.size).toBe(vars.length - 1); // the largest (dbx) is over a quarter of the budget: never kept
    // Checked from a buffer that is then overwritten: the memo kept copies, so the next check (of the
    // true log) still matches, and a forged one is still refused.
    const memo = new VerifiedVariableMemo();
    const scratch = Buffer.from(raw);
    const want = checkEventLog({ log: scratch, pcrs, variableMemo: memo }).selectors;
    scratch.fill(0);
    expect(checkEventLog({ log: raw, pcrs, variableMemo: memo }).selectors).toEqual(want);
    expect(codeOf(() => checkEventLog({ log: flipped(raw, vars[0]!, 100), pcrs, variableMemo: memo }))).toBe('tpm.eventlog_event_data_mismatch');
  });
});

describe.skipIf(!have)('EventLogCheckCache keys', () => {
  it('a change of an unlogged PCR (10) is a memo hit; a change of a compared PCR is checked (and refused)', () => {
    const raw = read('keylime_binary_bios_measurements_secureboot');
    const text = raw.toString('base64');
    let decodes = 0;
    const decode = (t: string): Buffer => {
      decodes++;
      return Buffer.from(t, 'base64');
    };
    const cache = new EventLogCheckCache();
    const base = trusted(raw);
    const a = cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 1) }], [10]);
    expect(cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 2) }], [10])).toBe(a);
    expect(cache.checkText(text, decode, [...base].reverse(), [10])).toBe(a);
    expect(decodes).toBe(1);
    expect(cache.size).toBe(1);
    // PCR 10 compared (not unlogged): another outcome, and the log does not replay to it.
    expect(codeOf(() => cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 2) }], []))).toBe('tpm.eventlog_mismatch');
    const wrong = base.map((p) => (p.index === 0 ? { ...p, value: Buffer.alloc(32) } : p));
    expect(codeOf(() => cache.checkText(text, decode, wrong, [10]))).toBe('tpm.eventlog_mismatch');
    expect(decodes).toBe(3);
    expect(cache.size).toBe(1);
  });
});

describe.skipIf(!have)('records as offsets', () => {
  it.each(LOGS)('%s: each record\'s digests and data are the bytes at its offsets, and digestOffset agrees', (f) => {
    const raw = read(f);
    const log = parseEventLog(raw);
    for (let i = 0; i < log.events.length; i++) {
      const ev = log.events[i]!;
      expect(ev).toBeInstanceOf(ParsedEvent);
      const end = log.events[i + 1]?.offset ?? raw.length;
      // The data is the record's last bytes, after its 4-byte size.
      expect(ev.data.equals(raw.subarray(end - ev.data.length, end))).toBe(true);
      expect(raw.readUInt32LE(end - ev.data.length - 4)).toBe(ev.data.length);
      for (const d of ev.digests) {
        const off = (ev as ParsedEvent).digestOffset(d.alg.id);
        expect(raw.subarray(off, off + d.alg.size).equals(d.digest)).toBe(true);
        expect(off).toBeGreaterThan(ev.offset);
        expect(off + d.alg.size).toBeLessThanOrEqual(end - ev.data.length - 4);
      }
      expect((ev as ParsedEvent).digestOffset(0x0029)).toBe(-1);
      expect(ev.digests).toBe(ev.digests);
    }
  });
});

describe('poolRandomBytes', () => {
  it('hands out fresh bytes across refills, each a new buffer, and refuses odd sizes', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 400; i++) {
      const b = poolRandomBytes(i % 2 === 0 ? 32 : 48);
      expect(b.length).toBe(i % 2 === 0 ? 32 : 48);
      seen.add(b.toString('hex'));
    }
    expect(seen.size).toBe(400);
    const a = poolRandomBytes(32);
    const copy = Buffer.from(a);
    poolRandomBytes(32);
    expect(a.equals(copy)).toBe(true);
    for (const n of [0, -1, 1.5, 257]) expect(() => poolRandomBytes(n)).toThrow(RangeError);
  });
});
