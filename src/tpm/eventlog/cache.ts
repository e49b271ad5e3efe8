/**
 * A bounded memo of event log checks. `checkEventLog` is a pure function of the log bytes, the
 * compared PCR values (trusted PCRs less the unlogged ones) and the unlogged PCRs, and a node
 * sends the same firmware log every time it attests until it reboots, so a verifier can keep the
 * outcome and skip the replay. Refusals are not kept (they are rare and cheap to recompute).
 *
 * Logs are identified two ways:
 *  - `checkText`, for a log as the agent sent it (base64 text): by the exact text. A repeated log
 *    then costs a string comparison, with no base64 decode and no hash over some 40 KB. Only text
 *    that decoded cleanly once (canonical base64, within limits) is kept, so skipping the decode
 *    skips no check. Canonical base64 is one text per byte string, so the text names the bytes.
 *    Kept texts are bounded by total characters; a text's results go with it. A text is kept only
 *    the second time it checks out: the first time only its fingerprint (length + a sampled 32-bit
 *    hash) goes into a bounded "seen once" set. Keeping each unseen log's ~50 KB text on first
 *    sight (a node's first attestation after a boot, or a one-off log) moved it to the old
 *    generation and the GC that followed landed in other attestations (measured: a memo hit went
 *    from +6–18 µs to +94–157 µs over no log). A node pays one extra full check per boot. The
 *    fingerprint decides only whether to keep a text, never whether to trust one: a hit still
 *    compares the whole text with the kept one.
 *  - `check`, for raw bytes: by their SHA-256.
 *
 * Two byte bounds: the kept texts' characters (`maxTextChars`; base64 is ASCII, which V8 keeps at
 * one byte a character), and an estimate of everything else the cache keeps for them and for
 * `check` (`maxEntryBytes`): each outcome's selectors and claims, the key strings, the records of
 * texts and outcomes (retained-size.ts). Counting only the characters let many small texts, or
 * texts whose outcome outweighs them (hundreds of boot applications, a selector and a fact each),
 * hold four to six times the bound. Least recently used out first: outcomes, then texts.
 */
import { createHash } from 'node:crypto';
import { VerifiedVariableMemo } from './boot.js';
import { FirstSights } from './first-sights.js';
import { OutcomeMemo } from './outcome-memo.js';
import { parseEventLog } from './parse.js';
import { ReplayMemo } from './replay.js';
import { MAP_ENTRY_BYTES, OBJECT_BYTES, stringBytes, valueBytes } from './retained-size.js';
import { checkEventLog, eventLogClaims, type TrustedPcr } from './verify.js';

export interface CachedEventLogCheck {
  readonly selectors: readonly string[];
  readonly claims: Readonly<Record<string, unknown>>;
}

interface KeptText {
  readonly text: string;
  /** Its key in `texts` (textKey). */
  readonly key: string;
  /** Names this text's results in `entries` (unique per kept text). */
  readonly id: string;
  /** Keys in `entries` of this text's results (each removed from here when it leaves `entries`), removed with it. */
  readonly keys: string[];
  /** Estimated bytes of this record, its id and key strings and its Map record (its characters are counted apart). */
  readonly bytes: number;
}

interface KeptEntry {
  readonly out: CachedEventLogCheck;
  /** The kept text whose result this is (`checkText`), listing this entry's key. */
  readonly slot: KeptText | undefined;
  /** Estimated bytes: the outcome, the key string, this record and its Map record. */
  readonly bytes: number;
}

/** A text's results kept at most (results for other PCR sets push the oldest out). */
const MAX_KEYS_PER_TEXT = 64;

export class EventLogCheckCache {
  /** `${log id}|${compared PCRs}` → outcome, most recently used last. */
  private readonly entries = new Map<string, KeptEntry>();
  /** Estimated bytes of `entries` and of the kept texts' records (not their characters). */
  private entryBytes = 0;
  /**
   * textKey(text) → the kept text, most recently used last. Not keyed by the text itself: V8
   * hashes a string longer than 16,383 characters by its length alone, so the texts of logs of
   * one length (a fleet booted alike) all collided, and every lookup compared the new text with
   * each kept one (measured: 1.2 ms per miss with 160 kept).
   */
  private readonly texts = new Map<string, KeptText>();
  private textChars = 0;
  /**
   * textKey of texts that checked out once and were not kept, oldest first, at most `maxSeenOnce`.
   * Small strings: a one-off log leaves only this behind.
   */
  private readonly seenOnce: FirstSights;
  private nextId = 0;
  /** PCR 7 variable contents checked for earlier logs (a fleet shares PK, KEK, db and dbx). */
  private readonly variables = new VerifiedVariableMemo();
  /** Replays of earlier logs (a fleet's firmware measures the same PCR 0–7 events). */
  private readonly replays = new ReplayMemo();
  /** Outcomes by the compared PCRs' records: a log never seen whole whose compared part was. */
  private readonly outcomes = new OutcomeMemo();

  private get memos(): Memos {
    return { variables: this.variables, replays: this.replays, outcomes: this.outcomes };
  }

  constructor(
    readonly maxEntries = 1024,
    /** Total characters of log text kept by `checkText` (default 8 Mi: some 160 logs of 50 KB). */
    readonly maxTextChars = 8 * 1024 * 1024,
    /** Fingerprints of texts seen once, kept so that a second sight keeps the text (4,096: some 400 KB). */
    readonly maxSeenOnce = 4096,
    /**
     * Estimated bytes of the outcomes and records kept besides the texts' characters (default
     * 4 MiB: a real firmware log's outcome and records are estimated at some 10–13 KB, so some 300
     * texts; for logs of 25 KB or more the 8 Mi characters bind first).
     */
    readonly maxEntryBytes = 4 * 1024 * 1024,
  ) {
    this.seenOnce = new FirstSights(maxSeenOnce);
  }

  /** Outcomes kept. */
  get size(): number {
    return this.entries.size;
  }

  /** Log texts kept by `checkText`. */
  get keptTexts(): number {
    return this.texts.size;
  }

  /** Fingerprints of texts seen once by `checkText` and not kept. */
  get seenOnceSize(): number {
    return this.seenOnce.size;
  }

  /**
   * Estimated bytes kept, by part: `texts` (characters: at most maxTextChars), `entries` (outcomes
   * and records: at most maxEntryBytes), and the memos shared by all checks. Estimates: see
   * retained-size.ts. The fingerprint sets (maxSeenOnce short strings each) are not counted.
   */
  get retainedBytes(): { texts: number; entries: number; outcomes: number; variables: number; replays: number } {
    return { texts: this.textChars, entries: this.entryBytes, outcomes: this.outcomes.retainedBytes, variables: this.variables.retainedBytes, replays: this.replays.retainedBytes };
  }

  /** checkEventLog + eventLogClaims, memoised. Throws whatever checkEventLog throws. */
  check(log: Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    const id = `sha256:${createHash('sha256').update(log).digest('base64')}`;
    return this.checkKeyed(id, () => log, pcrs, unloggedPcrs, undefined);
  }

  /**
   * Like `check` for a log as the agent sent it, base64 `text`; `decode` turns it into bytes (and
   * throws on bad text) and runs only when the text is not kept. The bytes it returns are read
   * only during this call (nothing kept refers to them), so it may decode into a reused buffer.
   */
  checkText(text: string, decode: (text: string) => Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    const key = textKey(text);
    const kept = this.texts.get(key);
    if (kept !== undefined && kept.text === text) {
      // Most recently used last; kept whatever the check below says (the text decoded cleanly).
      this.texts.delete(key);
      this.texts.set(key, kept);
      return this.checkKeyed(kept.id, () => decode(text), pcrs, unloggedPcrs, kept);
    }
    const log = decode(text);
    if (text.length > this.maxTextChars) return checkOnce(log, pcrs, unloggedPcrs, this.memos);
    if (!this.seenOnce.has(key)) {
      // First sight (or not seen lately): check, remember only the fingerprint. A refusal (thrown
      // here) leaves no fingerprint, so only a text that checked out can be kept next time.
      const out = checkOnce(log, pcrs, unloggedPcrs, this.memos);
      this.seenOnce.note(key);
      return out;
    }
    // Seen before (by fingerprint: perhaps another text, which only means this one is kept early).
    const id = `t${this.nextId++}`;
    // The text's record, id, key and keys array, its Map record, and the text's string header.
    const bytes = OBJECT_BYTES + stringBytes(id) + stringBytes(key) + OBJECT_BYTES + MAP_ENTRY_BYTES + stringBytes('');
    const slot: KeptText = { text, key, id, keys: [], bytes };
    const out = this.checkKeyed(slot.id, () => log, pcrs, unloggedPcrs, slot);
    // Only now: a refused text sharing the fingerprint leaves the one seen before its place.
    this.seenOnce.forget(key);
    // Another text with the same key (rare by chance, or made on purpose: it only costs a decode) gives up its place.
    if (kept !== undefined) this.dropText(kept);
    this.texts.set(key, slot);
    this.textChars += text.length;
    this.entryBytes += bytes;
    this.evict();
    return out;
  }

  private dropText(t: KeptText): void {
    if (this.texts.get(t.key) !== t) return;
    this.texts.delete(t.key);
    this.textChars -= t.text.length;
    this.entryBytes -= t.bytes;
    for (const k of t.keys) {
      const e = this.entries.get(k);
      if (e === undefined) continue;
      this.entries.delete(k);
      this.entryBytes -= e.bytes;
    }
    t.keys.length = 0;
  }

  private dropEntry(key: string, e: KeptEntry): void {
    this.entries.delete(key);
    this.entryBytes -= e.bytes;
    const keys = e.slot?.keys;
    if (keys === undefined) return;
    const i = keys.indexOf(key);
    if (i >= 0) keys.splice(i, 1);
  }

  /**
   * Least recently used out until within every bound. Past maxEntries or maxEntryBytes the oldest
   * outcome goes, with its text and that text's other outcomes when it is a kept text's (a text
   * left without outcomes would only cost a decode and a check on its next sight; texts without
   * one go oldest first once no outcome is left). Past maxTextChars the oldest texts go.
   */
  private evict(): void {
    while (this.entries.size > this.maxEntries || this.entryBytes > this.maxEntryBytes) {
      const first = this.entries.entries().next();
      if (first.done) {
        const t = this.texts.values().next();
        if (t.done) break;
        this.dropText(t.value);
        continue;
      }
      const [k, e] = first.value;
      if (e.slot !== undefined && this.texts.get(e.slot.key) === e.slot) this.dropText(e.slot);
      else this.dropEntry(k, e);
    }
    for (const t of this.texts.values()) {
      if (this.textChars <= this.maxTextChars) break;
      this.dropText(t);
    }
  }

  private checkKeyed(logId: string, log: () => Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[], slot: KeptText | undefined): CachedEventLogCheck {
    const key = `${logId}|${comparedKey(pcrs, unloggedPcrs)}`;
    const hit = this.entries.get(key);
    if (hit) {
      // Most recently used last.
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit.out;
    }
    const out = checkOnce(log(), pcrs, unloggedPcrs, this.memos);
    // Estimated only when kept: here, a text's second sight, or `check`.
    const entry: KeptEntry = { out, slot, bytes: stringBytes(key) + 8 + OBJECT_BYTES + MAP_ENTRY_BYTES + valueBytes(out) };
    this.entries.set(key, entry);
    this.entryBytes += entry.bytes;
    if (slot !== undefined) {
      slot.keys.push(key);
      if (slot.keys.length > MAX_KEYS_PER_TEXT) this.dropEntry(slot.keys[0]!, this.entries.get(slot.keys[0]!)!);
    }
    this.evict();
    return out;
  }
}

interface Memos {
  variables: VerifiedVariableMemo;
  replays: ReplayMemo;
  outcomes: OutcomeMemo;
}

function checkOnce(log: Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[], memos: Memos): CachedEventLogCheck {
  // Parsed whole first, always: the outcome memo skips the replay and the facts, never the parse.
  const parsed = parseEventLog(log);
  const indices = new Set<number>();
  for (const p of pcrs) if (!unloggedPcrs.includes(p.index)) indices.add(p.index);
  const key = memos.outcomes.key(parsed, comparedHeader(pcrs, unloggedPcrs), indices);
  const hit = key === undefined ? undefined : memos.outcomes.get(key);
  if (hit !== undefined) {
    // The record count is the one claim outside the key.
    return hit.claims.events === parsed.events.length ? hit : Object.freeze({ selectors: hit.selectors, claims: Object.freeze({ ...hit.claims, events: parsed.events.length }) });
  }
  const r = checkEventLog({ log: parsed, pcrs, unloggedPcrs, variableMemo: memos.variables, replayMemo: memos.replays });
  const out: CachedEventLogCheck = Object.freeze({ selectors: Object.freeze([...r.selectors]), claims: Object.freeze(eventLogClaims(r)) });
  // The key was built before the check, into a buffer nothing else uses; put copies it.
  if (key !== undefined) memos.outcomes.put(key, out);
  return out;
}

/**
 * What a check's outcome depends on besides the log: the compared PCRs (bank, index, value) in a
 * fixed order, and the unlogged set. PCRs in the unlogged set are left out: they are not compared
 * (PCR 10 changes with every IMA measurement and must not defeat the memo).
 */
function comparedKey(pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): string {
  const parts: string[] = [];
  for (const p of pcrs) if (!unloggedPcrs.includes(p.index)) parts.push(`${p.bank}:${p.index}:${p.value.toString('hex')}`);
  parts.sort();
  return `${parts.join(',')}|unlogged:${[...unloggedPcrs].sort((a, b) => a - b).join(',')}`;
}

/**
 * What `comparedKey` names, as bytes for the outcome memo's key (no hex text): the compared PCRs
 * sorted by bank, index and value, each as its bank name (length, then UTF-16 code units), its
 * index (float64) and its value (length, then bytes); then the unlogged indices in numeric order
 * (count, then float64 each). Every field has a fixed size or a length before it, so different
 * inputs give different bytes.
 */
function comparedHeader(pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): Buffer {
  const compared: TrustedPcr[] = [];
  let n = 4 + 4 + 8 * unloggedPcrs.length;
  for (const p of pcrs) {
    if (unloggedPcrs.includes(p.index)) continue;
    compared.push(p);
    n += 4 + 2 * p.bank.length + 8 + 4 + p.value.length;
  }
  compared.sort(byBankIndexValue);
  const b = Buffer.allocUnsafe(n);
  const dv = new DataView(b.buffer, b.byteOffset, n);
  let o = 0;
  dv.setUint32(o, compared.length, true);
  o += 4;
  for (const p of compared) {
    const bank = p.bank;
    dv.setUint32(o, bank.length, true);
    o += 4;
    for (let k = 0; k < bank.length; k++, o += 2) dv.setUint16(o, bank.charCodeAt(k), true);
    dv.setFloat64(o, p.index, true);
    dv.setUint32(o + 8, p.value.length, true);
    o += 12;
    b.set(p.value, o);
    o += p.value.length;
  }
  const unlogged = [...unloggedPcrs].sort((x, y) => x - y);
  dv.setUint32(o, unlogged.length, true);
  o += 4;
  for (const u of unlogged) {
    dv.setFloat64(o, u, true);
    o += 8;
  }
  return b;
}

function byBankIndexValue(a: TrustedPcr, b: TrustedPcr): number {
  if (a.bank !== b.bank) return a.bank < b.bank ? -1 : 1;
  if (a.index !== b.index) return a.index < b.index ? -1 : 1;
  return Buffer.compare(a.value, b.value);
}

/**
 * Map key for a log's base64 text: its length and a 32-bit FNV-1a-style mix of every `stride`-th
 * character from the end, stride 26 (wider past 208 Ki characters: at most 8,192 samples), in four
 * interleaved lanes (the multiplications of one lane do not wait for another's). Equal texts get
 * equal keys; the cache compares whole texts, so two texts sharing a key cost a decode, never a
 * wrong outcome. A SHA-1 digest (20 bytes) fills at least 26 consecutive base64 characters, so with
 * a stride of 26 every SHA-1 or longer digest in the log has a sampled character, and logs that
 * differ in a digest rarely share a key. Exported for tests.
 */
export function textKey(text: string): string {
  const n = text.length;
  const stride = Math.max(26, Math.ceil(n / 8192));
  let h0 = 0x811c9dc5;
  let h1 = 0x01000193;
  let h2 = 0x2545f491;
  let h3 = 0x6a09e667;
  let i = n - 1;
  for (; i >= 3 * stride; i -= 4 * stride) {
    h0 = Math.imul(h0 ^ text.charCodeAt(i), 0x01000193);
    h1 = Math.imul(h1 ^ text.charCodeAt(i - stride), 0x01000193);
    h2 = Math.imul(h2 ^ text.charCodeAt(i - 2 * stride), 0x01000193);
    h3 = Math.imul(h3 ^ text.charCodeAt(i - 3 * stride), 0x01000193);
  }
  for (; i >= 0; i -= stride) h0 = Math.imul(h0 ^ text.charCodeAt(i), 0x01000193);
  const h = Math.imul(Math.imul(Math.imul(h0 ^ h1, 0x01000193) ^ h2, 0x01000193) ^ h3, 0x01000193);
  // The hash as a signed 32-bit value (the same bits). As `h >>> 0`, a hash of 2^31 or more (half
  // of them) missed the optimized code's int32 guess and deoptimized it ("lost precision", seen
  // with --trace-deopt): a deoptimization for about every other log text the verifier had not kept.
  return `${n}:${h}`;
}
