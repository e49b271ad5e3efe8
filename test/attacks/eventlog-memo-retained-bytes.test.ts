/**
 * Attack review (event log memos): the verifier's event log memos were bounded by the bytes of
 * their keys or texts only, not by what each entry keeps alive — an outcome's selector and fact
 * strings, a UEFI variable's certificate fingerprints, Map records, key strings, and the 8-KiB
 * Buffer pool a 32-byte copy pins. A node that can extend its PCRs (root on one enrolled machine)
 * can send many distinct logs that check out, shaped so that those objects outweigh what was
 * counted: before the fix these cases held 4.2–4.6× the configured bound (outcome memo, check cache,
 * verified-data memo), and the replay memo some 8 KiB an entry whatever its size.
 *
 * Each case fills one memo with such logs (each sent twice, so every memo keeps it) and compares
 * the heap it holds after forced collections with the bound it was configured with, and with the
 * memo's own estimate of what it keeps (retainedBytes: it must not count less than half the
 * truth). Estimates and measurements both are rough, so the limits are generous: twice the bound or
 * the estimate, plus 1 MiB of slack for the measurement itself.
 */
import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { EventLogCheckCache, ReplayMemo, VerifiedVariableMemo, checkEventLog, eventLogClaims, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { OutcomeMemo } from '../../src/tpm/eventlog/outcome-memo.js';
import { agileLog, type BuiltEvent } from '../tpm/eventlog-builder.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const MiB = 1024 * 1024;
const SHA256 = 0x000b;
const EV_IPL = 0xd;
const EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001;
const EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003;

/** Heap and off-heap bytes (Buffers' stores) in use after full collections. */
function heldAfterGc(): number {
  for (let i = 0; i < 4; i++) gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

/** What `fill` leaves behind in `memo` (measured against a baseline taken after a warm-up run of `fill` on a throwaway memo). */
function retainedBy<T>(make: () => T, fill: (memo: T, n: number) => void, n: number): { memo: T; bytes: number } {
  fill(make(), Math.min(n, 50)); // compile what the fill runs before the baseline
  const base = heldAfterGc();
  const memo = make();
  fill(memo, n);
  return { memo, bytes: heldAfterGc() - base };
}

function limitFor(bound: number): number {
  return 2 * bound + MiB;
}

function message(what: string, bytes: number, bound: number): string {
  return `${what} holds ${(bytes / MiB).toFixed(2)} MiB after forced GC, ${(bytes / bound).toFixed(2)}× its configured bound of ${(bound / MiB).toFixed(2)} MiB (limit: 2× + 1 MiB slack): what an entry keeps alive is not counted`;
}

/** Checks the memo's own estimate (`retainedBytes`, a number or parts to add up) against what it was measured to hold. */
function expectHonestEstimate(what: string, estimate: number | Record<string, number> | undefined, bytes: number): void {
  const est = typeof estimate === 'object' ? Object.values(estimate).reduce((a, b) => a + b, 0) : estimate;
  expect(est, `${what} has no estimate of the bytes it keeps (retainedBytes)`).toBeTypeOf('number');
  expect(bytes, `${what} holds ${(bytes / MiB).toFixed(2)} MiB after forced GC but estimates ${((est ?? 0) / MiB).toFixed(2)} MiB (limit: 2× its estimate + 1 MiB)`).toBeLessThanOrEqual(2 * est! + MiB);
}

function trusted(log: Buffer, idx: number[]): { bank: string; index: number; value: Buffer }[] {
  const regs = replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: idx }).get('sha256')!;
  return idx.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
}

/** A sha256 log of `k` boot application records in PCR 4 with random digests and no data: every one becomes a selector and a fact. */
function bootApps(k: number): Buffer {
  const evs: BuiltEvent[] = [];
  for (let i = 0; i < k; i++) evs.push({ index: 4, type: EV_EFI_BOOT_SERVICES_APPLICATION, digests: [[SHA256, randomBytes(32)]], data: Buffer.alloc(0) });
  return agileLog([SHA256], evs);
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const u64 = (v: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
/** An EFI_GUID's bytes (mixed-endian) from its text. */
function guid(text: string): Buffer {
  const b = Buffer.from(text.replace(/-/g, ''), 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
}

/** UEFI_VARIABLE_DATA of a `db` holding 256 distinct 7-byte "certificates" (DER SEQUENCEs) unique to `salt`: some 5 KB of data, 256 fingerprints. */
function tinyCertDb(salt: number): Buffer {
  const sigs: Buffer[] = [];
  for (let i = 0; i < 256; i++) sigs.push(Buffer.concat([Buffer.alloc(16), Buffer.from([0x30, 0x05]), u32(salt), Buffer.from([i])]));
  const body = Buffer.concat(sigs);
  const list = Buffer.concat([guid('a5c059a1-94e4-4aa7-87b5-ab155c2bf072'), u32(28 + body.length), u32(0), u32(16 + 7), body]);
  return Buffer.concat([guid('d719b2cb-3d3a-4596-a3bc-dad00e67656f'), u64(2), u64(list.length), Buffer.from('db', 'utf16le'), list]);
}

describe('event log memos: what an entry keeps alive is counted in the byte bound', () => {
  it('outcome memo: outcomes with many selectors (a PCR 4 of 100 boot applications per log) stay within the bound', () => {
    const bound = 2 * MiB;
    const header = Buffer.from('compared: sha256 PCR 4');
    const { memo, bytes } = retainedBy(
      () => new OutcomeMemo(100_000, bound),
      (m, n) => {
        for (let i = 0; i < n; i++) {
          const raw = bootApps(100);
          const log = parseEventLog(raw);
          const r = checkEventLog({ log, pcrs: trusted(raw, [4]) });
          const out = Object.freeze({ selectors: Object.freeze([...r.selectors]), claims: Object.freeze(eventLogClaims(r)) });
          const key = m.key(log, header, new Set([4]))!;
          m.put(key, out);
          m.put(key, out); // the second sight keeps it
        }
      },
      500,
    );
    expect(memo.size).toBeGreaterThan(0);
    expect(bytes, message('OutcomeMemo', bytes, bound)).toBeLessThanOrEqual(limitFor(bound));
    expectHonestEstimate('OutcomeMemo', (memo as { retainedBytes?: number }).retainedBytes, bytes);
  });

  it('check cache: many small log texts that check out (one uncompared record each) stay within the text and entry bounds', () => {
    const maxTextChars = 1 * MiB;
    const maxEntryBytes = 256 * 1024;
    const bound = maxTextChars + maxEntryBytes;
    // PCRs 0-7 compared, one record in them (the same in every log); each log differs in one PCR 14 record (not compared).
    const firmware: BuiltEvent = { index: 0, type: EV_IPL, data: Buffer.from('firmware') };
    const pcrs = trusted(agileLog([SHA256], [firmware]), [0, 1, 2, 3, 4, 5, 6, 7]);
    const decode = (t: string): Buffer => Buffer.from(t, 'base64');
    const { memo, bytes } = retainedBy(
      // The fourth argument (a byte bound for what the texts' records and outcomes keep) is new: the old cache ignores it.
      () => new (EventLogCheckCache as unknown as new (...a: number[]) => EventLogCheckCache)(1024, maxTextChars, 4096, maxEntryBytes),
      (cache, n) => {
        for (let i = 0; i < n; i++) {
          const text = agileLog([SHA256], [firmware, { index: 14, type: EV_IPL, data: Buffer.from(`node ${String(i).padStart(8, '0')}`) }]).toString('base64');
          cache.checkText(text, decode, pcrs, []);
          cache.checkText(text, decode, pcrs, []);
        }
      },
      8000,
    );
    expect(memo.keptTexts).toBeGreaterThan(0);
    expect(bytes, message('EventLogCheckCache', bytes, bound)).toBeLessThanOrEqual(limitFor(bound));
    expectHonestEstimate('EventLogCheckCache', (memo as { retainedBytes?: Record<string, number> }).retainedBytes, bytes);
  });

  it('verified-data memo: db variables of 256 tiny certificates (a fingerprint string each) stay within the bound', () => {
    const bound = 1 * MiB;
    const { memo, bytes } = retainedBy(
      () => new VerifiedVariableMemo(100_000, bound),
      (m, n) => {
        for (let i = 0; i < n; i++) {
          const log = agileLog([SHA256], [{ index: 7, type: EV_EFI_VARIABLE_DRIVER_CONFIG, data: tinyCertDb(i) }]);
          const r = checkEventLog({ log, pcrs: trusted(log, [7]), variableMemo: m });
          if (r.selectors.length < 256) throw new Error('the db certificates were not read');
        }
      },
      400,
    );
    expect(memo.size).toBeGreaterThan(0);
    expect(bytes, message('VerifiedVariableMemo', bytes, bound)).toBeLessThanOrEqual(limitFor(bound));
    expectHonestEstimate('VerifiedVariableMemo', (memo as { retainedBytes?: number }).retainedBytes, bytes);
  });

  it('replay memo: small entries do not pin a Buffer pool each (other small Buffers are made between two puts, as in a verifier)', () => {
    const bound = 256 * 1024;
    const { memo, bytes } = retainedBy(
      // The third argument (a byte bound) is new: the old memo ignores it and is bounded by 1024 entries.
      () => new (ReplayMemo as unknown as new (...a: number[]) => ReplayMemo)(1024, 16_000, bound),
      (m, n) => {
        for (let i = 0; i < n; i++) {
          const log = parseEventLog(agileLog([SHA256], [{ index: 1, type: EV_IPL, data: Buffer.from(`v${i}`) }]));
          replayEventLog(log, { banks: ['sha256'], indices: [1], filter: (ev) => ev.index === 1, memo: m });
          // The rest of an attestation's small Buffers (decoded fields, digests) come from the same pool.
          Buffer.allocUnsafe(4000).fill(0);
          Buffer.allocUnsafe(4000).fill(0);
        }
      },
      1024,
    );
    expect(memo.size).toBeGreaterThan(0);
    expect(bytes, message('ReplayMemo', bytes, bound)).toBeLessThanOrEqual(limitFor(bound));
    expectHonestEstimate('ReplayMemo', (memo as { retainedBytes?: number }).retainedBytes, bytes);
  });
});
