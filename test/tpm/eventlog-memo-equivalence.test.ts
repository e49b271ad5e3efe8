/**
 * The memos of a verifier's event log checks save work, never a check. Over the real logs and
 * variants of them (a byte of a compared record changed, the log cut short or extended, a record
 * added in a compared or an uncompared PCR), the check through one long-lived EventLogCheckCache
 * (its text, outcome, replay and PCR 7 variable memos all warm, each variant seen twice so that it
 * is kept, the original in between) says exactly what the plain check without any memo says: the
 * same selectors and claims, or the same refusal, code and message.
 *
 * The memos find entries by fingerprints that sample their keys (the replay memo: the first bytes
 * of each digest; the outcome memo: every 16th byte past the header), so keys that differ only
 * where nothing is sampled share a slot. Such keys must displace each other, never answer for each
 * other: tested with keys made to collide.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, EventLogCheckCache, ParsedEvent, ReplayMemo, checkEventLog, eventLogClaims, parseEventLog, replayEventLog, replayedToJson } from '../../src/tpm/eventlog/index.js';
import { OutcomeMemo } from '../../src/tpm/eventlog/outcome-memo.js';
import { inMask, registerMask } from '../../src/tpm/eventlog/register-mask.js';
import { LogDecoder } from '../../src/tpm/log-text.js';
import { SigilError } from '../../src/errors.js';
import { requireTestdata, td } from '../support/testdata.js';
import { agileRecord } from './eventlog-builder.js';

const have = requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const LOGS = ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'keylime_binary_bios_measurements_secureboot', 'sb_cert_eventlog', 'keylime_binary_bios_measurements', 'crypto_agile_eventlog'];
const SHA256 = 0x000b;

type Pcr = { bank: string; index: number; value: Buffer };

/** PCRs 0–7 of `raw` as its own sha256 replay gives them (undefined when it does not parse). */
function ownPcrs(raw: Buffer): Pcr[] | undefined {
  let regs: Map<number, Buffer>;
  try {
    regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: PCRS }).get('sha256')!;
  } catch {
    return undefined;
  }
  return PCRS.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
}

/** What a check says, as one comparable string: the outcome, or the refusal's code and message. */
function outcome(f: () => { selectors: readonly string[]; claims: Readonly<Record<string, unknown>> }): string {
  try {
    const r = f();
    return JSON.stringify([r.selectors, r.claims]);
  } catch (e) {
    if (e instanceof SigilError) return `refused ${e.code}: ${e.message}`;
    throw e;
  }
}

function plain(raw: Buffer, pcrs: Pcr[]): string {
  return outcome(() => {
    const r = checkEventLog({ log: raw, pcrs, unloggedPcrs: [10] });
    return { selectors: r.selectors, claims: eventLogClaims(r) };
  });
}

/** A small deterministic generator (tests must not depend on the run). */
function lcg(seed: number): () => number {
  let s = seed;
  return () => (s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff) / 0x7fffffff;
}

/** Variants of `raw`: a byte of every compared record changed (type, digest, data), cut short, extended. */
function variants(raw: Buffer): Buffer[] {
  const banks = parseEventLog(raw).banks.map((b) => b.id);
  const rnd = lcg(raw.length);
  const out: Buffer[] = [];
  const flip = (at: number): void => {
    const b = Buffer.from(raw);
    b[at] = b[at]! ^ 0x01;
    out.push(b);
  };
  for (const ev of parseEventLog(raw).events) {
    if (!(ev instanceof ParsedEvent) || !PCRS.includes(ev.index) || ev.type === EV.NO_ACTION) continue;
    flip(ev.offset + 4); // the type
    const d = ev.digestOffset(SHA256);
    if (d >= 0) flip(d + 4 + Math.floor(rnd() * 28)); // the replayed digest, past its first 4 bytes
    if (ev.dataLength > 0) flip(ev.dataStart + Math.floor(rnd() * ev.dataLength)); // the data
  }
  for (let i = 0; i < 4; i++) out.push(raw.subarray(0, Math.floor(rnd() * raw.length)));
  out.push(Buffer.concat([raw, Buffer.from([0, 0, 0])]));
  for (const pcr of [4, 7, 14]) for (const text of ['one more', 'another one']) out.push(Buffer.concat([raw, agileRecord({ index: pcr, type: 0xd, data: Buffer.from(`${text}\0`, 'latin1') }, banks)]));
  return out;
}

describe.skipIf(!have)('event log checks through the memos equal the plain check', () => {
  it.each(LOGS)('%s and its variants, each seen twice, against their own PCRs and the original ones', (f) => {
    const raw = read(f);
    const original = ownPcrs(raw)!;
    const cache = new EventLogCheckCache();
    const decoder = new LogDecoder('eventLog', 1 << 20);
    const viaCache = (b: Buffer, pcrs: Pcr[]): string => outcome(() => cache.checkText(b.toString('base64'), (t) => decoder.decode(t), pcrs, [10]));
    let refused = 0;
    let passed = 0;
    for (const b of [raw, raw, ...variants(raw)]) {
      for (const pcrs of [ownPcrs(b), original]) {
        if (pcrs === undefined) continue;
        const want = plain(b, pcrs);
        if (want.startsWith('refused')) refused++;
        else passed++;
        for (let sight = 0; sight < 2; sight++) expect(viaCache(b, pcrs), `${f}: sight ${sight + 1}`).toBe(want);
      }
      expect(viaCache(raw, original)).toBe(plain(raw, original));
    }
    // Both kinds were exercised: variants that check out (other records, new PCR values) and refusals.
    expect(passed).toBeGreaterThan(10);
    expect(refused).toBeGreaterThan(10);
  });
});

describe.skipIf(!have)('memo slots shared by different keys', () => {
  it('replay memo: a digest changed past its first four bytes (same slot) is replayed anew, never a hit', () => {
    const raw = read(LOGS[0]!);
    const set = new Set(PCRS);
    const json = (b: Buffer, memo?: ReplayMemo): Record<string, Record<string, string>> =>
      replayedToJson(replayEventLog(parseEventLog(b), { banks: ['sha256'], indices: PCRS, filter: (ev) => set.has(ev.index), ...(memo ? { memo } : {}) }));
    const ev = parseEventLog(raw).events.find((e): e is ParsedEvent => e instanceof ParsedEvent && e.index === 4 && e.type !== EV.NO_ACTION)!;
    const memo = new ReplayMemo();
    const want = json(raw);
    expect(json(raw, memo)).toEqual(want);
    for (const k of [4, 17, 31]) {
      const b = Buffer.from(raw);
      const at = ev.digestOffset(SHA256) + k;
      b[at] = b[at]! ^ 0x80;
      const fresh = json(b);
      expect(fresh['sha256']!['4']).not.toBe(want['sha256']!['4']);
      expect(json(b, memo)).toEqual(fresh);
      expect(json(b, memo)).toEqual(fresh);
      expect(json(raw, memo)).toEqual(want);
    }
  });

  it('replay memo: indices that are not u32 integers bypass it (the replay is the plain one, nothing kept for them)', () => {
    const raw = read(LOGS[0]!);
    const memo = new ReplayMemo();
    for (const odd of [-1, 1.5, 2 ** 32, 2 ** 32 + 1]) {
      const indices = [0, 1, odd];
      const set = new Set(indices);
      const run = (m?: ReplayMemo): Record<string, Record<string, string>> =>
        replayedToJson(replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices, filter: (ev) => set.has(ev.index), ...(m ? { memo: m } : {}) }));
      expect(run(memo)).toEqual(run());
      expect(run(memo)).toEqual(run());
    }
    // Only registers 0 and 1 were kept.
    expect(memo.size).toBe(2);
  });

  it('outcome memo: records that differ only in unsampled bytes share a slot, and neither answers for the other', () => {
    const raw = read(LOGS[0]!);
    const indices = new Set(PCRS);
    const memo = new OutcomeMemo();
    const header = Buffer.from('h');
    const base = memo.key(parseEventLog(raw), header, indices)!;
    const baseSlot = base.slot;
    const baseBytes = Buffer.from(base.bytes);
    // The largest PCR 7 variable: find data bytes whose change keeps the slot.
    const ev = parseEventLog(raw)
      .events.filter((e): e is ParsedEvent => e instanceof ParsedEvent && e.index === 7)
      .sort((a, b) => b.dataLength - a.dataLength)[0]!;
    let collided = 0;
    const kept = { selectors: ['kept'], claims: {} };
    memo.put(base, kept);
    memo.put(memo.key(parseEventLog(raw), header, indices)!, kept);
    // Keys compare where their records lie (nothing copied) and, once copied, as bytes.
    expect(memo.get(memo.key(parseEventLog(raw), header, indices)!)).toBe(kept);
    expect(memo.get(base)).toBe(kept);
    for (let at = ev.dataStart; at < ev.dataStart + 64; at++) {
      const b = Buffer.from(raw);
      b[at] = b[at]! ^ 0x01;
      const k = memo.key(parseEventLog(b), header, indices)!;
      if (k.slot !== baseSlot) continue;
      collided++;
      expect(memo.get(k)).toBeUndefined();
      expect(k.bytes.equals(baseBytes)).toBe(false);
      expect(memo.get(k)).toBeUndefined();
    }
    // Most data bytes are not sampled (one word in every 64 bytes is).
    expect(collided).toBeGreaterThan(40);
    // Through the cache: the original kept, then a same-slot variant (its data no longer hashes to its digest) is refused.
    const pcrs = ownPcrs(raw)!;
    const cache = new EventLogCheckCache();
    for (let i = 0; i < 2; i++) cache.check(raw, pcrs, [10]);
    const b = Buffer.from(raw);
    b[ev.dataStart + 5] = b[ev.dataStart + 5]! ^ 0x01;
    expect(memo.key(parseEventLog(b), header, indices)!.slot).toBe(baseSlot);
    expect(outcome(() => cache.check(b, pcrs, [10]))).toBe(plain(b, pcrs));
    expect(plain(b, pcrs)).toMatch(/^refused tpm\.eventlog_event_data_mismatch/);
  });
});

describe('register masks', () => {
  it('hold exactly the indices 0–31 of a set, and nothing else', () => {
    const set = new Set([0, 5, 23, 31]);
    const mask = registerMask(set)!;
    for (let i = -2; i < 70; i++) expect(inMask(mask, i), `index ${i}`).toBe(set.has(i));
    for (const odd of [0.5, 5.5, -0, NaN, Infinity, 2 ** 32, 2 ** 32 + 5]) expect(inMask(mask, odd), `index ${odd}`).toBe(set.has(odd));
    expect(registerMask(new Set())).toBe(0);
    expect(registerMask(new Set([3, 32]))).toBeUndefined();
    expect(registerMask(new Set([-1]))).toBeUndefined();
    expect(registerMask(new Set([1.5]))).toBeUndefined();
  });
});
