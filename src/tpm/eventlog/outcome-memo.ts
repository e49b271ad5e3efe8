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
 * attestations). Bounded by entries and by an estimate of the bytes each keeps alive — its key, its
 * outcome's selectors and claims, its Map record (retained-size.ts) — least recently used out
 * first. Counting the key alone let outcomes of many small records (a PCR 4 of hundreds of boot
 * applications, a selector and a fact string each) hold four times the bound.
 */
import type { CachedEventLogCheck } from './cache.js';
import { FirstSights } from './first-sights.js';
import { ParsedEvent, type ParsedEventLog } from './parse.js';
import { inMask, registerMask } from './register-mask.js';
import { BUFFER_BYTES, MAP_ENTRY_BYTES, OBJECT_BYTES, stringBytes, valueBytes } from './retained-size.js';

/** An outcome as the check cache hands it out (frozen; claims.events is the record count of the log checked). */
type MemoizedOutcome = CachedEventLogCheck;

interface Kept {
  readonly key: Buffer;
  readonly outcome: MemoizedOutcome;
  /** Estimated bytes this entry keeps alive (counted in OutcomeMemo's bound). */
  readonly bytes: number;
}

/**
 * A key as `OutcomeMemo.key` builds it: a header and the compared records, left where they are in
 * the log (nothing is copied unless the key is kept), and their fingerprint, the slot. Valid only
 * while the log's bytes are unchanged (they may be a buffer the caller reuses).
 */
export class OutcomeKey {
  #bytes: Buffer | undefined;
  constructor(
    /** Form, banks, StartupLocality and the caller's header (the compared values, the unlogged set). */
    private readonly head: Buffer,
    /** The compared records, in log order: each is its 4-byte length and its bytes in the key. */
    private readonly records: readonly ParsedEvent[],
    /** Bytes of the key. */
    readonly length: number,
    readonly slot: string,
  ) {}

  /** The key's bytes: the head, then each record as its length (u32 LE) and raw bytes. A copy of its own, made once. */
  get bytes(): Buffer {
    if (this.#bytes === undefined) {
      const b = Buffer.allocUnsafeSlow(this.length);
      let n = this.head.copy(b, 0);
      for (const ev of this.records) {
        const end = ev.dataStart + ev.dataLength;
        n = b.writeUInt32LE(end - ev.offset, n);
        n += ev.bytes.copy(b, n, ev.offset, end);
      }
      this.#bytes = b;
    }
    return this.#bytes;
  }

  /** Whether `kept` is exactly this key's bytes (compared piece by piece where they lie). */
  equals(kept: Buffer): boolean {
    if (kept.length !== this.length) return false;
    if (this.#bytes !== undefined) return this.#bytes.equals(kept);
    const h = this.head.length;
    if (kept.compare(this.head, 0, h, 0, h) !== 0) return false;
    let n = h;
    for (const ev of this.records) {
      const end = ev.dataStart + ev.dataLength;
      const len = end - ev.offset;
      if (kept.readUInt32LE(n) !== len) return false;
      n += 4;
      if (kept.compare(ev.bytes, ev.offset, end, n, n + len) !== 0) return false;
      n += len;
    }
    return true;
  }
}

export class OutcomeMemo {
  private readonly kept = new Map<string, Kept>();
  /** Estimated bytes the kept entries keep alive (keys, outcomes, records). */
  private bytes = 0;
  /** Fingerprints of keys put once and not kept. */
  private readonly seenOnce: FirstSights;

  constructor(
    readonly maxEntries = 256,
    /**
     * Estimated bytes kept: keys, outcomes and records (8 MiB: some 256 entries of a 40 KB log's
     * PCR 0–7 records, whose outcome is a few KB). A key over a quarter of it is not built, and
     * an entry estimated over a quarter of it is not kept.
     */
    readonly maxBytes = 8 * 1024 * 1024,
    /** Fingerprints of keys seen once, remembered so that a second sight keeps the outcome. */
    maxSeenOnce = 4096,
  ) {
    this.seenOnce = new FirstSights(maxSeenOnce);
  }

  get size(): number {
    return this.kept.size;
  }

  /** Estimated bytes the kept entries keep alive (at most maxBytes). */
  get retainedBytes(): number {
    return this.bytes;
  }

  /**
   * The key of `log` for the compared PCRs `indices` (`header`: bytes naming the compared values and
   * the unlogged set), with its fingerprint (computed once here, for both `get` and `put`).
   * Undefined when the log was not parsed by parseEventLog or the key would exceed a quarter of
   * maxBytes. The records stay in the log's bytes: use the key before those change.
   */
  key(log: ParsedEventLog, header: Uint8Array, indices: ReadonlySet<number>): OutcomeKey | undefined {
    const limit = Math.floor(this.maxBytes / 4);
    const banks = log.banks;
    // Form (0 crypto-agile, 1 legacy), bank count and IDs, StartupLocality (-1: none), the header's length and bytes.
    const headLen = 1 + 1 + 2 * banks.length + 4 + 4 + header.length;
    if (headLen > limit) return undefined;
    const head = Buffer.allocUnsafe(headLen);
    let p = head.writeUInt8(log.format === 'crypto-agile' ? 0 : 1, 0);
    p = head.writeUInt8(banks.length, p);
    for (const b of banks) p = head.writeUInt16LE(b.id, p);
    p = head.writeInt32LE(log.startupLocality ?? -1, p);
    p = head.writeUInt32LE(header.length, p);
    head.set(header, p);
    const records: ParsedEvent[] = [];
    let n = headLen;
    const mask = registerMask(indices);
    for (const ev of log.events) {
      if (mask !== undefined ? !inMask(mask, ev.index) : !indices.has(ev.index)) continue;
      if (!(ev instanceof ParsedEvent)) return undefined;
      n += 4 + ev.dataStart + ev.dataLength - ev.offset;
      if (n > limit) return undefined;
      records.push(ev);
    }
    return new OutcomeKey(head, records, n, fingerprint(head, records, n));
  }

  /** The outcome kept for exactly `key`, if any. */
  get(key: OutcomeKey): MemoizedOutcome | undefined {
    const e = this.kept.get(key.slot);
    if (e === undefined || !key.equals(e.key)) return undefined;
    this.kept.delete(key.slot);
    this.kept.set(key.slot, e);
    return e.outcome;
  }

  /**
   * Keeps `outcome` for a copy of `key` when its fingerprint was put before (a key sharing its slot
   * gives up its place); otherwise remembers the fingerprint only.
   */
  put(key: OutcomeKey, outcome: MemoizedOutcome): void {
    if (key.length > this.maxBytes / 4) return;
    const slot = key.slot;
    const old = this.kept.get(slot);
    if (old === undefined && !this.seenOnce.has(slot)) {
      this.seenOnce.note(slot);
      return;
    }
    // Estimated only when kept (the second sight), never on a first sight or a hit.
    const bytes = keptBytes(key.length, slot, outcome);
    if (bytes > this.maxBytes / 4) return;
    this.seenOnce.forget(slot);
    if (old !== undefined) {
      this.kept.delete(slot);
      this.bytes -= old.bytes;
    }
    this.kept.set(slot, { key: key.bytes, outcome, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.kept) {
      if (this.kept.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.kept.delete(k);
      this.bytes -= e.bytes;
    }
  }
}

/**
 * Estimated bytes an entry keeps alive: its key (a Buffer of its own), its slot string, the Kept
 * record and Map record, and the outcome (selectors and claims; shared with the check cache when
 * that keeps it too, and counted by both).
 */
function keptBytes(keyLength: number, slot: string, outcome: MemoizedOutcome): number {
  return BUFFER_BYTES + keyLength + stringBytes(slot) + OBJECT_BYTES + MAP_ENTRY_BYTES + valueBytes(outcome);
}

/**
 * The slot of a key (`head`, then `records` as laid out in the key, `n` bytes in all): its length
 * and a 32-bit FNV-1a-style mix of every 32-bit word of the head (the compared values, banks, the
 * unlogged set), and of each record its length, the word at every 16th byte of its header and
 * digests, at every 64th byte of its data (strides wider past 128 KiB of records) and its last
 * word, in two interleaved lanes. Read where the records lie in the log: nothing is copied for a
 * fingerprint. Never a verdict: get compares whole keys, and keys sharing a slot only displace each
 * other. Every run of 16 or more bytes of a record's digests (every SHA-1 or longer digest) has a
 * sampled word; event data is sampled more thinly, since data a digest covers changes the digest
 * too (records differing only in unsampled data share a slot: they cost a check, never a wrong
 * answer).
 */
function fingerprint(head: Buffer, records: readonly ParsedEvent[], n: number): string {
  let h0 = 0x811c9dc5 ^ n;
  let h1 = 0x01000193;
  const hv = new DataView(head.buffer, head.byteOffset, head.length);
  let i = 0;
  for (; i + 8 <= head.length; i += 8) {
    h0 = Math.imul(h0 ^ hv.getInt32(i, true), 0x01000193);
    h1 = Math.imul(h1 ^ hv.getInt32(i + 4, true), 0x01000193);
  }
  for (; i < head.length; i++) h0 = Math.imul(h0 ^ head[i]!, 0x01000193);
  const wide = Math.max(1, Math.ceil(n / (8192 * 16)));
  const step = 16 * wide;
  const dataStep = 64 * wide;
  let src: Buffer | undefined;
  let dv: DataView | undefined;
  for (const ev of records) {
    if (ev.bytes !== src) {
      src = ev.bytes;
      dv = new DataView(src.buffer, src.byteOffset, src.length);
    }
    const start = ev.offset;
    const end = ev.dataStart + ev.dataLength;
    h1 = Math.imul(h1 ^ (end - start), 0x01000193);
    // Header and digests (up to the data size field).
    for (let p = start; p + 4 <= ev.dataStart; p += step) h0 = Math.imul(h0 ^ dv!.getInt32(p, true), 0x01000193);
    for (let p = ev.dataStart; p + 4 <= end; p += dataStep) h1 = Math.imul(h1 ^ dv!.getInt32(p, true), 0x01000193);
    // A record's last word (records are at least 12 bytes: index, type, a count or a digest).
    if (end - start >= 4) h0 = Math.imul(h0 ^ dv!.getInt32(end - 4, true), 0x01000193);
  }
  const h = Math.imul(Math.imul(h0 ^ h1, 0x01000193) ^ h1, 0x01000193);
  // Signed (the same bits): `h >>> 0` deoptimized the optimized code for half the hashes (cache.ts textKey).
  return `${n}:${h}`;
}
