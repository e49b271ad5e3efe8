/**
 * What a verifier keeps between event log checks may save work, never a check:
 *  - PCR 7 variable data checked for one log is reused for another only when byte-equal, so a
 *    log that keeps a known variable's digest but changes its data is still refused;
 *  - the outcome memo ignores PCRs that are not compared (PCR 10), and nothing else;
 *  - records parsed into offsets give the same digests and data as the bytes say;
 *  - a log text is kept only the second time it checks out (first sight leaves a fingerprint in a
 *    bounded set), and a fingerprint shared with a kept text never makes another text a hit;
 *  - the random pool for attestation secrets hands out fresh bytes, each in memory of its own.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, EventLogCheckCache, ParsedEvent, VerifiedVariableMemo, type EventLogEvent, checkEventLog, eventLogClaims, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { textKey } from '../../src/tpm/eventlog/cache.js';
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

/**
 * The distinct (sha256 digest, data) pairs of the compared records whose data the check hashes
 * against the digest and keeps in the memo: PCR 7 variables, separators of PCRs above 7, the S-CRTM
 * version (PCR 0) and PCR 7 authority records hashed whole (the shim quirk's shorter digest is not
 * kept). With `separators`, also the separators of PCRs 0–7, whose data is compared with the two
 * values the profile allows (no hash, no memo).
 */
function checkedData(raw: Buffer, pcrs = PCRS, separators = false): ParsedEvent[] {
  const seen = new Set<string>();
  const out: ParsedEvent[] = [];
  for (const e of parseEventLog(raw).events) {
    if (!(e instanceof ParsedEvent) || !pcrs.includes(e.index) || e.type === EV.NO_ACTION) continue;
    const digest = e.digests.find((d) => d.alg.name === 'sha256')!.digest;
    const whole = createHash('sha256').update(e.data).digest().equals(digest);
    const checked =
      (e.index === 7 && e.type === EV.EFI_VARIABLE_DRIVER_CONFIG) ||
      (e.type === EV.SEPARATOR && (separators || e.index > 7)) ||
      (e.index === 0 && e.type === EV.S_CRTM_VERSION) ||
      (e.index === 7 && e.type === EV.EFI_VARIABLE_AUTHORITY && whole);
    const k = `${digest.toString('hex')}/${e.data.toString('hex')}`;
    if (checked && !seen.has(k)) {
      seen.add(k);
      out.push(e);
    }
  }
  return out;
}

/** `code: message` of what `f` throws (a SigilError), or 'no error'. */
function messageOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
  return 'no error';
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
    expect(memo.size).toBe(checkedData(raw).length);
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
      expect(memo.size).toBe(checkedData(raw).length);
    },
  );

  it.each(LOGS)(
    'attack %s: a separator, S-CRTM version or authority record with a digest the memo knows but other data gets the plain check\'s refusal',
    (f) => {
      const raw = read(f);
      const pcrs = trusted(raw);
      const memo = new VerifiedVariableMemo();
      const want = checkEventLog({ log: raw, pcrs, variableMemo: memo }).selectors;
      const small = checkedData(raw, PCRS, true).filter((e) => e.type !== EV.EFI_VARIABLE_DRIVER_CONFIG);
      expect(small.some((e) => e.type === EV.SEPARATOR)).toBe(true);
      for (const ev of small) {
        for (const at of new Set([0, ev.dataLength >> 1, ev.dataLength - 1])) {
          const bad = flipped(raw, ev, at);
          const plain = messageOf(() => checkEventLog({ log: bad, pcrs }));
          expect(plain).toMatch(/^tpm\.eventlog_event_data_mismatch: /);
          expect(messageOf(() => checkEventLog({ log: bad, pcrs, variableMemo: memo }))).toBe(plain);
        }
      }
      expect(checkEventLog({ log: raw, pcrs, variableMemo: memo }).selectors).toEqual(want);
      expect(memo.size).toBe(checkedData(raw).length);
    },
  );

  it('attack: an entry answers only for its own bank, whole digest and data (digests sharing the slot bytes do not)', () => {
    const sha256 = algorithmByName('sha256')!;
    const sm3 = algorithmByName('sm3_256')!;
    const data = Buffer.from('separator data');
    const digest = createHash('sha256').update(data).digest();
    const event = (alg: typeof sha256, d: Buffer, x: Buffer): EventLogEvent => ({ seq: 1, offset: 0, index: 7, type: EV.SEPARATOR, digests: [{ alg, digest: d }], data: x });
    const memo = new VerifiedVariableMemo();
    memo.put(sha256, event(sha256, digest, data), undefined);
    expect(memo.get(sha256, event(sha256, Buffer.from(digest), Buffer.from(data)))).toBeDefined();
    for (const at of [4, 16, 31]) {
      // The same first four bytes (the slot), another digest.
      const other = Buffer.from(digest);
      other[at] = other[at]! ^ 0x01;
      expect(memo.get(sha256, event(sha256, other, data))).toBeUndefined();
    }
    expect(memo.get(sha256, event(sha256, digest, Buffer.from('separator datA')))).toBeUndefined();
    expect(memo.get(sm3, event(sm3, digest, data))).toBeUndefined();
    // A put for a digest sharing the slot displaces the entry; neither answers for the other.
    const twin = Buffer.from(digest);
    twin[20] = twin[20]! ^ 0x80;
    memo.put(sha256, event(sha256, twin, data), undefined);
    expect(memo.size).toBe(1);
    expect(memo.get(sha256, event(sha256, digest, data))).toBeUndefined();
    expect(memo.get(sha256, event(sha256, twin, data))).toBeDefined();
  });

  it('the memo is bounded by entries and bytes (least recently used out) and keeps no view into a reused buffer', () => {
    const raw = read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog');
    const pcrs = trusted(raw);
    const vars = pcr7Variables(raw);
    const small = new VerifiedVariableMemo(2);
    checkEventLog({ log: raw, pcrs, variableMemo: small });
    expect(small.size).toBe(2);
    const bytes = new VerifiedVariableMemo(256, vars[0]!.dataLength * 4 - 1);
    checkEventLog({ log: raw, pcrs, variableMemo: bytes });
    expect(bytes.size).toBe(checkedData(raw).length - 1); // the largest (dbx) is over a quarter of the budget: never kept
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
    cache.checkText(text, decode, base, [10]); // first sight: checked, not kept
    const a = cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 1) }], [10]);
    expect(cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 2) }], [10])).toBe(a);
    expect(cache.checkText(text, decode, [...base].reverse(), [10])).toBe(a);
    expect(decodes).toBe(2);
    expect(cache.size).toBe(1);
    // PCR 10 compared (not unlogged): another outcome, and the log does not replay to it.
    expect(codeOf(() => cache.checkText(text, decode, [...base, { bank: 'sha256', index: 10, value: Buffer.alloc(32, 2) }], []))).toBe('tpm.eventlog_mismatch');
    const wrong = base.map((p) => (p.index === 0 ? { ...p, value: Buffer.alloc(32) } : p));
    expect(codeOf(() => cache.checkText(text, decode, wrong, [10]))).toBe('tpm.eventlog_mismatch');
    expect(decodes).toBe(4);
    expect(cache.size).toBe(1);
  });
});

describe.skipIf(!have)('EventLogCheckCache keeps a log text the second time it checks out', () => {
  const texts = LOGS.map((f) => read(f).toString('base64'));
  const pcrsOf = new Map(LOGS.map((f, i) => [texts[i]!, trusted(read(f))]));
  function counting(): { decode: (t: string) => Buffer; count: () => number } {
    let n = 0;
    return {
      decode: (t) => {
        n++;
        return Buffer.from(t, 'base64');
      },
      count: () => n,
    };
  }

  it('seen once: checked, not kept; seen twice: checked again and kept; third time: a hit (no decode, same outcome)', () => {
    const cache = new EventLogCheckCache();
    const d = counting();
    const t = texts[1]!;
    const first = cache.checkText(t, d.decode, pcrsOf.get(t)!, []);
    expect([d.count(), cache.keptTexts, cache.size, cache.seenOnceSize]).toEqual([1, 0, 0, 1]);
    const second = cache.checkText(t, d.decode, pcrsOf.get(t)!, []);
    expect([d.count(), cache.keptTexts, cache.size, cache.seenOnceSize]).toEqual([2, 1, 1, 0]);
    expect(second).toEqual(first);
    expect(cache.checkText(t, d.decode, pcrsOf.get(t)!, [])).toBe(second);
    expect(d.count()).toBe(2);
    // Other logs seen once each leave only fingerprints, and the kept one stays a hit.
    for (const o of texts.filter((x) => x !== t)) cache.checkText(o, d.decode, pcrsOf.get(o)!, []);
    expect([d.count(), cache.keptTexts, cache.seenOnceSize]).toEqual([2 + texts.length - 1, 1, texts.length - 1]);
    expect(cache.checkText(t, d.decode, pcrsOf.get(t)!, [])).toBe(second);
  });

  it('a refused text leaves no fingerprint: it is not kept on its next (good) sight', () => {
    const cache = new EventLogCheckCache();
    const d = counting();
    const t = texts[0]!;
    const wrong = pcrsOf.get(t)!.map((p) => (p.index === 0 ? { ...p, value: Buffer.alloc(32) } : p));
    expect(codeOf(() => cache.checkText(t, d.decode, wrong, []))).toBe('tpm.eventlog_mismatch');
    expect(cache.seenOnceSize).toBe(0);
    cache.checkText(t, d.decode, pcrsOf.get(t)!, []);
    expect(cache.keptTexts).toBe(0);
    cache.checkText(t, d.decode, pcrsOf.get(t)!, []);
    expect(cache.keptTexts).toBe(1);
  });

  it('the seen-once set is bounded (oldest fingerprint out): a log pushed out is not kept on its next sight', () => {
    const cache = new EventLogCheckCache(1024, 8 * 1024 * 1024, 3);
    const d = counting();
    for (const t of texts.slice(0, 4)) cache.checkText(t, d.decode, pcrsOf.get(t)!, []);
    expect(cache.seenOnceSize).toBe(3);
    // texts[0] was pushed out by texts[3]: its next sight is a first sight again.
    cache.checkText(texts[0]!, d.decode, pcrsOf.get(texts[0]!)!, []);
    expect([cache.keptTexts, cache.seenOnceSize]).toEqual([0, 3]);
    // texts[3] is still remembered: kept on this sight.
    cache.checkText(texts[3]!, d.decode, pcrsOf.get(texts[3]!)!, []);
    expect([cache.keptTexts, cache.seenOnceSize]).toEqual([1, 2]);
    // Many one-off texts: the set never grows past its bound.
    const raw2 = read(LOGS[2]!);
    for (let i = 0; i < 50; i++) cache.checkText(`${texts[2]!}#${i}`, () => raw2, pcrsOf.get(texts[2]!)!, []);
    expect(cache.seenOnceSize).toBe(3);
    expect(cache.keptTexts).toBe(1);
  });

  it('attack: a text sharing a kept or seen text\'s fingerprint is decoded and checked, never a hit', () => {
    const t = texts[1]!;
    // One base64 character changed where the fingerprint does not sample (the second from the
    // end): same length, same fingerprint, another text.
    const i = t.length - 2;
    const forged = t.slice(0, i) + (t[i] === 'A' ? 'B' : 'A') + t.slice(i + 1);
    expect(forged).not.toBe(t);
    expect(textKey(forged)).toBe(textKey(t));
    const raw = read(LOGS[1]!);
    // A bit of a PCR 4 event's sha256 digest flipped: the log no longer replays to the PCRs.
    const ev = parseEventLog(raw).events.find((e): e is ParsedEvent => e instanceof ParsedEvent && e.index === 4)!;
    const bad = Buffer.from(raw);
    const at = ev.digestOffset(0x000b);
    expect(at).toBeGreaterThan(0);
    bad[at] = bad[at]! ^ 0x01;
    const other = read(LOGS[4]!); // a valid log, with its own PCRs
    const decodes: string[] = [];
    const decode = (x: string): Buffer => {
      decodes.push(x === t ? 'good' : 'forged');
      return x === t ? Buffer.from(x, 'base64') : forgedBytes;
    };
    let forgedBytes: Buffer = bad;
    const cache = new EventLogCheckCache();
    const pcrs = pcrsOf.get(t)!;
    // Seen once, then the forged text (its fingerprint is "seen"): checked and refused, not kept.
    const want = cache.checkText(t, decode, pcrs, []);
    expect(codeOf(() => cache.checkText(forged, decode, pcrs, []))).toBe('tpm.eventlog_mismatch');
    expect(cache.keptTexts).toBe(0);
    // The good text's fingerprint survived the refusal: its second sight keeps it; third is a hit.
    expect(cache.checkText(t, decode, pcrs, [])).toEqual(want);
    expect(cache.checkText(t, decode, pcrs, [])).toEqual(want);
    expect(decodes).toEqual(['good', 'forged', 'good']);
    // Kept now: the forged text is still decoded and checked (and refused), every time.
    expect(codeOf(() => cache.checkText(forged, decode, pcrs, []))).toBe('tpm.eventlog_mismatch');
    expect(codeOf(() => cache.checkText(forged, decode, pcrs, []))).toBe('tpm.eventlog_mismatch');
    expect(decodes).toEqual(['good', 'forged', 'good', 'forged', 'forged']);
    // A forged text whose bytes are another valid log gets that log's outcome, not the kept one's.
    forgedBytes = other;
    const otherPcrs = trusted(other);
    const plain = checkEventLog({ log: other, pcrs: otherPcrs });
    const got = cache.checkText(forged, decode, otherPcrs, []);
    expect(got.selectors).toEqual(plain.selectors);
    expect(got.claims).toEqual(eventLogClaims(plain));
    expect(cache.checkText(t, decode, pcrs, [])).toEqual(want);
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

  it('each buffer alone owns its memory: not in Node\'s shared allocation pool, untouched by refills, zeroing it touches nothing else', () => {
    const held: { b: Buffer; copy: Buffer }[] = [];
    for (let i = 0; i < 300; i++) {
      const b = poolRandomBytes(32);
      // Its own ArrayBuffer: no other buffer (e.g. a small Buffer.from elsewhere) can view it.
      expect([b.byteOffset, b.buffer.byteLength]).toEqual([0, 32]);
      held.push({ b, copy: Buffer.from(b) });
    }
    // Small pooled allocations made now share no memory with any handed-out secret.
    const pooled = Buffer.from('another attestation\'s input');
    for (const { b } of held) expect(pooled.buffer).not.toBe(b.buffer);
    // 300 × 32 bytes went through at least two refills of the 4 KiB pool: nothing held changed.
    for (let i = 0; i < 300; i++) poolRandomBytes(48);
    for (const { b, copy } of held) expect(b.equals(copy)).toBe(true);
    // A caller zeroing its secret changes no other caller's bytes.
    held[0]!.b.fill(0);
    for (const { b, copy } of held.slice(1)) expect(b.equals(copy)).toBe(true);
  });
});
