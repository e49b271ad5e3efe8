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

/** An outcome as the check cache hands it out (frozen; claims.events is the record count of the log checked). */
type MemoizedOutcome = CachedEventLogCheck;

interface Kept {
  readonly key: Buffer;
  readonly outcome: MemoizedOutcome;
}

export class OutcomeMemo {
  private readonly kept = new Map<string, Kept>();
  private keyBytes = 0;
  /** Fingerprints of keys put once and not kept. */
  private readonly seenOnce: FirstSights;
  private scratch = Buffer.alloc(64 * 1024);

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
   * unlogged set), as a view of a reused buffer valid until the next call; undefined when the log
   * was not parsed by parseEventLog or the key would exceed a quarter of maxBytes.
   */
  key(log: ParsedEventLog, header: string, indices: ReadonlySet<number>): Buffer | undefined {
    const limit = Math.floor(this.maxBytes / 4);
    let n = 0;
    const room = (k: number): boolean => {
      if (n + k > limit) return false;
      if (n + k > this.scratch.length) {
        const b = Buffer.alloc(Math.min(limit, Math.max(2 * this.scratch.length, n + k)));
        this.scratch.copy(b, 0, 0, n);
        this.scratch = b;
      }
      return true;
    };
    const head = `${log.format}|${log.banks.map((b) => b.id).join(',')}|${log.startupLocality ?? '-'}|${header}`;
    if (!room(4 + 3 * head.length)) return undefined;
    const headLen = this.scratch.write(head, n + 4, 'utf8');
    this.scratch.writeUInt32LE(headLen, n);
    n += 4 + headLen;
    for (const ev of log.events) {
      if (!indices.has(ev.index)) continue;
      if (!(ev instanceof ParsedEvent)) return undefined;
      const end = ev.dataStart + ev.dataLength;
      const len = end - ev.offset;
      if (!room(4 + len)) return undefined;
      this.scratch.writeUInt32LE(len, n);
      n += 4 + ev.bytes.copy(this.scratch, n + 4, ev.offset, end);
    }
    return this.scratch.subarray(0, n);
  }

  /** The outcome kept for exactly `key`, if any. */
  get(key: Buffer): MemoizedOutcome | undefined {
    const slot = fingerprint(key);
    const e = this.kept.get(slot);
    if (e === undefined || !e.key.equals(key)) return undefined;
    this.kept.delete(slot);
    this.kept.set(slot, e);
    return e.outcome;
  }

  /**
   * Keeps `outcome` for a copy of `key` when its fingerprint was put before (a key sharing its slot
   * gives up its place); otherwise remembers the fingerprint only.
   */
  put(key: Buffer, outcome: MemoizedOutcome): void {
    if (key.length > this.maxBytes / 4) return;
    const slot = fingerprint(key);
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
    this.kept.set(slot, { key: Buffer.from(key), outcome });
    this.keyBytes += key.length;
    for (const [k, e] of this.kept) {
      if (this.kept.size <= this.maxEntries && this.keyBytes <= this.maxBytes) break;
      this.kept.delete(k);
      this.keyBytes -= e.key.length;
    }
  }
}

/**
 * Length and a 32-bit FNV-1a over the first 1 KiB (the header: compared values, banks) and every
 * 16th byte after it (stride wider past 128 KiB): the slot of a key, never a verdict (get compares
 * whole keys; keys sharing a slot only displace each other). With stride 16, every SHA-1 or longer
 * digest in the records has a sampled byte.
 */
function fingerprint(key: Buffer): string {
  const stride = Math.max(16, Math.ceil(key.length / 8192));
  const head = Math.min(1024, key.length);
  let h = 0x811c9dc5;
  for (let i = 0; i < head; i++) h = Math.imul(h ^ key[i]!, 0x01000193);
  for (let i = key.length - 1; i >= head; i -= stride) h = Math.imul(h ^ key[i]!, 0x01000193);
  // Signed (the same bits): `h >>> 0` deoptimized the optimized code for half the hashes (cache.ts textKey).
  return `${key.length}:${h}`;
}
