/**
 * The outcome memo (src/tpm/eventlog/outcome-memo.ts) answers a log never seen whole from the check
 * of another log with the same compared records. Attacks first: whatever it keeps must never turn
 * a log that the full check refuses into a pass, nor give a log another log's facts.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, EventLogCheckCache, ParsedEvent, checkEventLog, eventLogClaims, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { OutcomeMemo } from '../../src/tpm/eventlog/outcome-memo.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';
import { agileRecord } from './eventlog-builder.js';

const have = requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

function trusted(raw: Buffer, idx = PCRS): { bank: string; index: number; value: Buffer }[] {
  const regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: idx }).get('sha256')!;
  return idx.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
}

/** `raw` with one more record in `pcr` carrying `text` (digests over it in every bank). */
function plus(raw: Buffer, pcr: number, text: string, type = EV.IPL): Buffer {
  const banks = parseEventLog(raw).banks.map((b) => b.id);
  return Buffer.concat([raw, agileRecord({ index: pcr, type, data: Buffer.from(`${text}\0`, 'latin1') }, banks)]);
}

/** What the plain check (no memo) says about `raw`: the outcome, or the refusal's code. */
function plain(raw: Buffer, pcrs: { bank: string; index: number; value: Buffer }[]): { selectors: string[]; claims: Record<string, unknown> } | string {
  try {
    const r = checkEventLog({ log: raw, pcrs, unloggedPcrs: [10] });
    return { selectors: r.selectors, claims: eventLogClaims(r) };
  } catch (e) {
    return codeOf(() => {
      throw e;
    })!;
  }
}

function viaCache(cache: EventLogCheckCache, raw: Buffer, pcrs: { bank: string; index: number; value: Buffer }[]): { selectors: readonly string[]; claims: Readonly<Record<string, unknown>> } | string {
  try {
    return cache.check(raw, pcrs, [10]);
  } catch (e) {
    return codeOf(() => {
      throw e;
    })!;
  }
}

describe.skipIf(!have)('event log outcomes by the compared records', () => {
  const base = (): Buffer => read('keylime_binary_bios_measurements_secureboot');

  it('a log that differs only outside the compared PCRs is answered from the memo, with its own record count', () => {
    const raw = base();
    const pcrs = trusted(raw);
    const cache = new EventLogCheckCache();
    const first = cache.check(plus(raw, 14, 'node a'), pcrs, [10]);
    const memo = (cache as unknown as { outcomes: OutcomeMemo }).outcomes;
    // First sight of these compared records: only a fingerprint is remembered; the second keeps the outcome.
    expect(memo.size).toBe(0);
    expect(cache.check(plus(raw, 14, 'node a2'), pcrs, [10])).toEqual({ ...first, claims: { ...first.claims } });
    expect(memo.size).toBe(1);
    const other = plus(plus(raw, 14, 'node b'), 9, 'more');
    const second = cache.check(other, pcrs, [10]);
    expect(memo.size).toBe(1);
    expect(second.selectors).toEqual(first.selectors);
    expect(second.claims.events).toBe(parseEventLog(other).events.length);
    expect({ ...second.claims, events: 0 }).toEqual({ ...first.claims, events: 0 });
    // And it is exactly what the full check says.
    expect(second).toEqual(plain(other, pcrs));
  });

  it('attack: a compared record changed anywhere (data the digest does not cover, a digest, the type) is checked again, never answered from the memo', () => {
    const raw = base();
    const pcrs = trusted(raw);
    const cache = new EventLogCheckCache();
    cache.check(raw, pcrs, [10]);
    cache.check(plus(raw, 14, 'kept'), pcrs, [10]);
    expect((cache as unknown as { outcomes: OutcomeMemo }).outcomes.size).toBe(1);
    const events = parseEventLog(raw).events.filter((e): e is ParsedEvent => e instanceof ParsedEvent && PCRS.includes(e.index) && e.type !== EV.NO_ACTION);
    expect(events.length).toBeGreaterThan(10);
    let tried = 0;
    for (const ev of events) {
      // One data byte, one digest byte, the event type.
      const at = [ev.dataStart + Math.floor(ev.dataLength / 2), ev.digestStart + 2, ev.offset + 4];
      for (const off of at) {
        if (ev.dataLength === 0 && off === at[0]) continue;
        const bad = Buffer.from(raw);
        bad[off] = bad[off]! ^ 0x01;
        expect(viaCache(cache, bad, pcrs), `event ${ev.seq} byte ${off}`).toEqual(plain(bad, pcrs));
        tried++;
      }
    }
    expect(tried).toBeGreaterThan(30);
  });

  it('attack: the same compared records against other PCR values, or other unlogged PCRs, are checked again', () => {
    const raw = base();
    const pcrs = trusted(raw);
    const cache = new EventLogCheckCache();
    cache.check(raw, pcrs, [10]);
    const wrong = pcrs.map((p) => (p.index === 4 ? { ...p, value: Buffer.alloc(32, 7) } : p));
    expect(viaCache(cache, plus(raw, 14, 'x'), wrong)).toBe('tpm.eventlog_mismatch');
    // PCR 14 compared too: its records are part of the key now, and the quoted value must match them.
    const with14 = [...pcrs, { bank: 'sha256', index: 14, value: Buffer.alloc(32) }];
    expect(viaCache(cache, plus(raw, 14, 'x'), with14)).toBe('tpm.eventlog_mismatch');
  });

  it('attack: a log whose compared records were checked, but which is truncated or has trailing bytes, is refused by the parse that always runs', () => {
    const raw = base();
    const pcrs = trusted(raw);
    const cache = new EventLogCheckCache();
    cache.check(plus(raw, 14, 'a'), pcrs, [10]);
    expect(viaCache(cache, Buffer.concat([plus(raw, 14, 'b'), Buffer.from([1, 2, 3])]), pcrs)).toBe('tpm.eventlog_truncated');
    const cut = plus(raw, 14, 'c');
    expect(viaCache(cache, cut.subarray(0, cut.length - 5), pcrs)).toBe('tpm.eventlog_truncated');
  });

  it('is bounded by entries and key bytes', () => {
    const raw = base();
    const memo = new OutcomeMemo(2, 1 << 20);
    const log = parseEventLog(raw);
    const outcome = { selectors: [], claims: {} };
    // Seen once: not kept.
    memo.put(memo.key(log, Buffer.from('a'), new Set(PCRS))!, outcome);
    expect(memo.size).toBe(0);
    for (const h of ['a', 'b', 'c']) for (let i = 0; i < 2; i++) memo.put(memo.key(log, Buffer.from(h), new Set(PCRS))!, outcome);
    expect(memo.size).toBe(2);
    expect(memo.get(memo.key(log, Buffer.from('a'), new Set(PCRS))!)).toBeUndefined();
    expect(memo.get(memo.key(log, Buffer.from('c'), new Set(PCRS))!)).toBe(outcome);
    // A key over a quarter of the byte budget is neither built nor kept.
    const small = new OutcomeMemo(8, 4096);
    expect(small.key(log, Buffer.from('a'), new Set(PCRS))).toBeUndefined();
    // The set of fingerprints seen once is bounded too: the oldest is forgotten, so its key needs two more sights.
    const few = new OutcomeMemo(8, 1 << 20, 2);
    for (const h of ['x', 'y', 'z']) few.put(few.key(log, Buffer.from(h), new Set(PCRS))!, outcome);
    few.put(few.key(log, Buffer.from('x'), new Set(PCRS))!, outcome);
    expect(few.size).toBe(0);
    few.put(few.key(log, Buffer.from('z'), new Set(PCRS))!, outcome);
    expect(few.size).toBe(1);
  });
});
