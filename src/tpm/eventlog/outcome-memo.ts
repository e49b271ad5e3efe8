/**
 * Outcomes of event log checks by the part of the log they depend on.
 *
 * A check (checkEventLog + eventLogClaims) reads, besides the compared PCR values and the unlogged
 * set, only: the log's form, its banks and StartupLocality, the number of records (a claim), and
 * the records of the compared PCRs — replayed, matched, and the source of every boot fact. Records
 * of other PCRs (PCR 10 and 14, say, or PCRs the verifier does not quote) change neither the
 * replay of the compared ones nor any fact. Nodes of one fleet boot the same firmware and boot
 * chain, so a log never seen whole (another node's, or a node's after a reboot that changed only
 * other PCRs) often has compared records already checked byte for byte for another log.
 *
 * The key is that input itself: a header (form, banks, locality, compared PCR values, unlogged
 * set) and every compared record's raw bytes (register, type, all digests, data), each with its
 * length. A hit needs the whole key equal to the kept one — no hash decides it; a sampled
 * fingerprint only finds the slot. The whole log is still parsed first (bounds, trailing bytes,
 * limits), so a hit skips the replay, the data checks and the fact derivation, not the parse.
 * Only outcomes that checked out are kept (a refusal is thrown before anything is put), and only
 * on the second sight of their key's fingerprint: a key seen once (a one-off, or the first node of
 * an update) leaves only the fingerprint in a bounded set, so records that never repeat do not fill
 * the old generation with 30 KB keys (the garbage collection that follows would land in other
 * attestations). Bounded by entries and key bytes, least recently used out first.
 */
import type { CachedEventLogCheck } from './cache.js';
import { FirstSights } from './first-sights.js';
import { ParsedEvent, type ParsedEventLog } from './parse.js';
import { inMask, registerMask } from './register-mask.js';

/** An outcome as the check cache hands it out (frozen; claims.events is the record count of the log checked). */
type MemoizedOutcome = CachedEventLogCheck;

interface Kept {
  readonly key: Buffer;
  readonly outcome: MemoizedOutcome;
}

/** A key as `OutcomeMemo.key` builds it: the bytes (a view of a reused buffer) and their fingerprint, the slot. */
export interface OutcomeKey {
  readonly bytes: Buffer;
  readonly slot: string;
}

export class OutcomeMemo {
  private readonly kept = new Map<string, Kept>();
  private keyBytes = 0;
  /** Fingerprints of keys put once and not kept. */
  private readonly seenOnce: FirstSights;
  private scratch = Buffer.alloc(64 * 1024);
  /** The scratch buffer as 32-bit words, for the fingerprint (Buffer.alloc gives a buffer of its own at offset 0). */
  private words = new Int32Array(this.scratch.buffer, this.scratch.byteOffset, this.scratch.length >> 2);

  constructor(
    readonly maxEntries = 256,
    /** Total bytes of keys kept (8 MiB: some 200 keys of a 40 KB log's PCR 0–7 records). */
    readonly maxBytes = 8 * 1024 * 1024,
    /** Fingerprints of keys seen once, remembered so that a second sight keeps the outcome. */
    maxSeenOnce = 4096,
  ) {
    this.seenOnce = new FirstSights(maxSeenOnce);
  }

  get size(): number {
    return this.kept.size;
  }

  /**
   * The key of `log` for the compared PCRs `indices` (`header` names the compared values and the
   * unlogged set): its bytes as a view of a reused buffer, valid until the next call, and its
   * fingerprint (computed once here, for both `get` and `put`). Undefined when the log was not
   * parsed by parseEventLog or the key would exceed a quarter of maxBytes.
   */
  key(log: ParsedEventLog, header: string, indices: ReadonlySet<number>): OutcomeKey | undefined {
    let n = 0;
    const head = `${log.format}|${log.banks.map((b) => b.id).join(',')}|${log.startupLocality ?? '-'}|${header}`;
    if (!this.room(n, 4 + 3 * head.length)) return undefined;
    const headLen = this.scratch.write(head, n + 4, 'utf8');
    this.scratch.writeUInt32LE(headLen, n);
    n += 4 + headLen;
    const mask = registerMask(indices);
    for (const ev of log.events) {
      if (mask !== undefined ? !inMask(mask, ev.index) : !indices.has(ev.index)) continue;
      if (!(ev instanceof ParsedEvent)) return undefined;
      const end = ev.dataStart + ev.dataLength;
      const len = end - ev.offset;
      if (!this.room(n, 4 + len)) return undefined;
      this.scratch.writeUInt32LE(len, n);
      n += 4 + ev.bytes.copy(this.scratch, n + 4, ev.offset, end);
    }
    return { bytes: this.scratch.subarray(0, n), slot: fingerprint(this.scratch, this.words, n) };
  }

  /** Room for `k` more key bytes after the first `n` (grown as needed, keeping those); false past a quarter of maxBytes. */
  private room(n: number, k: number): boolean {
    const limit = Math.floor(this.maxBytes / 4);
    if (n + k > limit) return false;
    if (n + k > this.scratch.length) {
      const b = Buffer.alloc(Math.min(limit, Math.max(2 * this.scratch.length, n + k)));
      this.scratch.copy(b, 0, 0, n);
      this.scratch = b;
      this.words = new Int32Array(b.buffer, b.byteOffset, b.length >> 2);
    }
    return true;
  }

  /** The outcome kept for exactly `key`, if any. */
  get(key: OutcomeKey): MemoizedOutcome | undefined {
    const e = this.kept.get(key.slot);
    if (e === undefined || !e.key.equals(key.bytes)) return undefined;
    this.kept.delete(key.slot);
    this.kept.set(key.slot, e);
    return e.outcome;
  }

  /**
   * Keeps `outcome` for a copy of `key` when its fingerprint was put before (a key sharing its slot
   * gives up its place); otherwise remembers the fingerprint only.
   */
  put(key: OutcomeKey, outcome: MemoizedOutcome): void {
    if (key.bytes.length > this.maxBytes / 4) return;
    const slot = key.slot;
    const old = this.kept.get(slot);
    if (old === undefined && !this.seenOnce.has(slot)) {
      this.seenOnce.note(slot);
      return;
    }
    this.seenOnce.forget(slot);
    if (old !== undefined) {
      this.kept.delete(slot);
      this.keyBytes -= old.key.length;
    }
    this.kept.set(slot, { key: Buffer.from(key.bytes), outcome });
    this.keyBytes += key.bytes.length;
    for (const [k, e] of this.kept) {
      if (this.kept.size <= this.maxEntries && this.keyBytes <= this.maxBytes) break;
      this.kept.delete(k);
      this.keyBytes -= e.key.length;
    }
  }
}

/**
 * The slot of the first `n` bytes of `b` (`words`: the same memory as 32-bit words, `b` at offset
 * 0): the length and a 32-bit FNV-1a-style mix of every word of the first 1 KiB (the header:
 * compared values, banks, unlogged set), the word at every 16th byte after it (stride wider past
 * 128 KiB: at most 8,192 samples) and the last three bytes, in four interleaved lanes (the
 * multiplications of one lane do not wait for another's). Never a verdict: get compares whole keys,
 * and keys sharing a slot only displace each other. Past the first 1 KiB every run of 16 or more
 * bytes (every SHA-1 or longer digest) has a sampled byte.
 */
function fingerprint(b: Buffer, words: Int32Array, n: number): string {
  const last = (n >> 2) - 1;
  let h0 = 0x811c9dc5 ^ n;
  let h1 = 0x01000193;
  let h2 = 0x2545f491;
  let h3 = 0x6a09e667;
  let i = 0;
  const head = Math.min(last + 1, 256);
  for (; i + 3 < head; i += 4) {
    h0 = Math.imul(h0 ^ words[i]!, 0x01000193);
    h1 = Math.imul(h1 ^ words[i + 1]!, 0x01000193);
    h2 = Math.imul(h2 ^ words[i + 2]!, 0x01000193);
    h3 = Math.imul(h3 ^ words[i + 3]!, 0x01000193);
  }
  for (; i < head; i++) h0 = Math.imul(h0 ^ words[i]!, 0x01000193);
  const step = 4 * Math.max(1, Math.ceil(n / (8192 * 16)));
  for (; i + 3 * step <= last; i += 4 * step) {
    h0 = Math.imul(h0 ^ words[i]!, 0x01000193);
    h1 = Math.imul(h1 ^ words[i + step]!, 0x01000193);
    h2 = Math.imul(h2 ^ words[i + 2 * step]!, 0x01000193);
    h3 = Math.imul(h3 ^ words[i + 3 * step]!, 0x01000193);
  }
  for (; i <= last; i += step) h0 = Math.imul(h0 ^ words[i]!, 0x01000193);
  for (let k = Math.max(0, n - 3); k < n; k++) h1 = Math.imul(h1 ^ b[k]!, 0x01000193);
  const h = Math.imul(Math.imul(Math.imul(h0 ^ h1, 0x01000193) ^ h2, 0x01000193) ^ h3, 0x01000193);
  // Signed (the same bits): `h >>> 0` deoptimized the optimized code for half the hashes (cache.ts textKey).
  return `${n}:${h}`;
}
