/**
 * The replay memo (ReplayMemo) saves hashing, never a check: it keeps one register at a time, and
 * a hit is returned only for the same register input (bank, index, StartupLocality for PCR 0,
 * ordered digests), so any change in a replayed digest, in the PCR 0 locality or in the events
 * replayed gives the replay of the new input; hits hand out copies; the memo is bounded.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EventLogCheckCache, ReplayMemo, checkEventLog, parseEventLog, replayEventLog, replayedToJson } from '../../src/tpm/eventlog/index.js';
import { agileLog, agileRecord, startupLocality } from './eventlog-builder.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const LOGS = ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'keylime_binary_bios_measurements_secureboot', 'sb_cert_eventlog', 'keylime_binary_bios_measurements', 'crypto_agile_eventlog'];
const SHA1 = 0x0004;
const SHA256 = 0x000b;

function json(log: Buffer, memo?: ReplayMemo, indices = PCRS, banks?: string[]): Record<string, Record<string, string>> {
  const set = new Set(indices);
  return replayedToJson(replayEventLog(parseEventLog(log), { ...(banks ? { banks } : {}), indices, filter: (ev) => set.has(ev.index), ...(memo ? { memo } : {}) }));
}

describe.skipIf(!have)('replay memo on real logs', () => {
  it('gives the replay without it, on the miss and on the hit, for every bank and index set', () => {
    const memo = new ReplayMemo();
    for (const f of LOGS) {
      const raw = read(f);
      for (const idx of [PCRS, [0, 7], [4, 5, 8, 9, 14]]) {
        const plain = json(raw, undefined, idx);
        const before = memo.size;
        expect(json(raw, memo, idx)).toEqual(plain);
        // At most one new entry per register asked for and bank (none for registers replayed before).
        expect(memo.size - before).toBeLessThanOrEqual(idx.length * parseEventLog(raw).banks.length);
        const after = memo.size;
        expect(json(raw, memo, idx)).toEqual(plain);
        expect(memo.size).toBe(after);
      }
    }
  });

  it('a register whose input changed is replayed anew and the others come from the memo', () => {
    const raw = read(LOGS[0]!);
    const banks = parseEventLog(raw).banks.map((b) => b.id);
    const memo = new ReplayMemo();
    json(raw, memo);
    const n = memo.size;
    const in4 = Buffer.concat([raw, agileRecord({ index: 4, type: 0xd, data: Buffer.from('kernel update\0', 'latin1') }, banks)]);
    expect(json(in4, memo)).toEqual(json(in4));
    expect(json(in4, memo).sha256!['4']).not.toBe(json(raw).sha256!['4']);
    // Only PCR 4's new input was added (in each bank replayed).
    expect(memo.size).toBe(n + Object.keys(json(raw)).length);
  });

  it('a changed digest in a replayed PCR is replayed anew (no stale hit), one outside the replay is a hit', () => {
    const raw = read(LOGS[0]!);
    const banks = parseEventLog(raw).banks.map((b) => b.id);
    const memo = new ReplayMemo();
    json(raw, memo);
    const in7 = Buffer.concat([raw, agileRecord({ index: 7, type: 0xd, data: Buffer.from('extra\0', 'latin1') }, banks)]);
    const fresh = json(in7);
    expect(fresh.sha256!['7']).not.toBe(json(raw).sha256!['7']);
    expect(json(in7, memo)).toEqual(fresh);
    const n = memo.size;
    const in14 = Buffer.concat([raw, agileRecord({ index: 14, type: 0xd, data: Buffer.from('extra\0', 'latin1') }, banks)]);
    expect(json(in14, memo)).toEqual(json(raw));
    expect(memo.size).toBe(n);
  });

  it('hands out copies: changing a returned value does not change the next hit', () => {
    const raw = read(LOGS[0]!);
    const memo = new ReplayMemo();
    const set = new Set(PCRS);
    const run = (): Map<number, Buffer> => replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: PCRS, filter: (ev) => set.has(ev.index), memo }).get('sha256')!;
    const first = run();
    const want = Buffer.from(first.get(0)!);
    first.get(0)!.fill(0xaa);
    const hit = run();
    expect(hit.get(0)!.equals(want)).toBe(true);
    hit.get(0)!.fill(0xbb);
    expect(run().get(0)!.equals(want)).toBe(true);
  });

  it('through EventLogCheckCache: a log that differs from a replayed one in PCR 4 is still refused', () => {
    const raw = read(LOGS[0]!);
    const regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: PCRS }).get('sha256')!;
    const pcrs = PCRS.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
    const cache = new EventLogCheckCache();
    cache.check(raw, pcrs, []);
    const banks = parseEventLog(raw).banks.map((b) => b.id);
    const bad = Buffer.concat([raw, agileRecord({ index: 4, type: 0x80000003, data: Buffer.from('another app') }, banks)]);
    expect(codeOf(() => cache.check(bad, pcrs, []))).toBe('tpm.eventlog_mismatch');
    expect(codeOf(() => checkEventLog({ log: bad, pcrs }))).toBe('tpm.eventlog_mismatch');
  });
});

describe('replay memo keys', () => {
  const ev = { index: 0, type: 0x8, data: Buffer.from('crtm') };
  it('include the StartupLocality of PCR 0', () => {
    const memo = new ReplayMemo();
    const l0 = agileLog([SHA256], [startupLocality(0), ev]);
    const l3 = agileLog([SHA256], [startupLocality(3), ev]);
    expect(json(l0)).not.toEqual(json(l3));
    expect(json(l0, memo)).toEqual(json(l0));
    expect(json(l3, memo)).toEqual(json(l3));
    // StartupLocality not applied: the replay from zeros, not the locality-3 one kept above.
    const off = replayEventLog(parseEventLog(l3), { startupLocality: false, indices: [0], memo });
    expect(replayedToJson(off)).toEqual(replayedToJson(replayEventLog(parseEventLog(l3), { startupLocality: false, indices: [0] })));
    expect(replayedToJson(off)).not.toEqual(json(l3, undefined, [0]));
  });

  it('include the bank and the indices asked for', () => {
    const memo = new ReplayMemo();
    const log = agileLog([SHA1, SHA256], [ev, { index: 2, type: 0xd, data: Buffer.from('x') }]);
    expect(json(log, memo, [0, 2], ['sha1'])).toEqual(json(log, undefined, [0, 2], ['sha1']));
    expect(json(log, memo, [0, 2], ['sha256'])).toEqual(json(log, undefined, [0, 2], ['sha256']));
    // An index asked for but not extended still appears (its initial value): not the [0, 2] replay.
    expect(json(log, memo, [0, 2, 17], ['sha256'])).toEqual(json(log, undefined, [0, 2, 17], ['sha256']));
    expect(json(log, memo, [0, 2, 17], ['sha256']).sha256!['17']).toBe('ff'.repeat(32));
    // One entry per register and bank: sha1 0 and 2, sha256 0 and 2, then sha256 17.
    expect(memo.size).toBe(5);
    // Same events replayed, same number of indices, other indices.
    const only0 = agileLog([SHA256], [ev]);
    expect(json(only0, memo, [0, 17], ['sha256'])).toEqual(json(only0, undefined, [0, 17], ['sha256']));
    expect(Object.keys(json(only0, memo, [0, 18], ['sha256']).sha256!)).toEqual(['0', '18']);
  });

  it('is not used with a caller-supplied initial value', () => {
    const memo = new ReplayMemo();
    const log = agileLog([SHA256], [ev]);
    const a = replayEventLog(parseEventLog(log), { indices: [0], initialValue: () => Buffer.alloc(32, 1), memo });
    const b = replayEventLog(parseEventLog(log), { indices: [0], initialValue: () => Buffer.alloc(32, 2), memo });
    expect(a.get('sha256')!.get(0)!.equals(b.get('sha256')!.get(0)!)).toBe(false);
    expect(memo.size).toBe(0);
  });

  it('is bounded by entries, and inputs longer than maxKeyBytes bypass it', () => {
    const memo = new ReplayMemo(2);
    for (let i = 0; i < 5; i++) json(agileLog([SHA256], [{ index: 1, type: 0xd, data: Buffer.from(`v${i}`) }]), memo);
    expect(memo.size).toBe(2);
    const small = new ReplayMemo(16, 200);
    const many = agileLog([SHA256], Array.from({ length: 20 }, (_, i) => ({ index: 1, type: 0xd, data: Buffer.from(`e${i}`) })));
    expect(json(many, small)).toEqual(json(many));
    // PCR 1's input (20 digests) is over the limit: replayed, not kept; the seven registers without events fit.
    expect(small.size).toBe(7);
  });
});

describe('replay memo eviction', () => {
  /** Writes key `k` (8 bytes) into the memo's buffer; its slot is `k`. */
  const keyed = (memo: ReplayMemo, k: number): number => {
    memo.room(0, 8);
    memo.buf.writeUInt32LE(k, 0);
    memo.buf.writeUInt32LE(0xabcdef, 4);
    return 8;
  };

  it('an entry that keeps being hit survives any number of new entries; the others go, oldest first', () => {
    const memo = new ReplayMemo(4, 64);
    memo.put(keyed(memo, 1), 1, Buffer.from([1]));
    for (let k = 2; k < 50; k++) {
      expect(memo.get(keyed(memo, 1), 1)).toEqual(Buffer.from([1]));
      memo.put(keyed(memo, k), k, Buffer.from([k]));
      expect(memo.size).toBeLessThanOrEqual(4);
    }
    expect(memo.get(keyed(memo, 1), 1)).toEqual(Buffer.from([1]));
    expect(memo.get(keyed(memo, 49), 49)).toEqual(Buffer.from([49]));
    expect(memo.get(keyed(memo, 2), 2)).toBeUndefined();
    // Without hits, the first of five goes.
    const plain = new ReplayMemo(4, 64);
    for (let k = 1; k <= 5; k++) plain.put(keyed(plain, k), k, Buffer.from([k]));
    expect(plain.get(keyed(plain, 1), 1)).toBeUndefined();
    expect(plain.get(keyed(plain, 2), 2)).toEqual(Buffer.from([2]));
  });
});
