/**
 * A bounded memo of event log checks. `checkEventLog` is a pure function of the log bytes, the
 * trusted PCR values and the unlogged PCRs, and a node sends the same firmware log every time
 * it attests until it reboots, so a verifier can keep the outcome keyed by a SHA-256 over all
 * three and skip the replay. Refusals are not kept (they are rare and cheap to recompute).
 *
 * In front of it, `checkText` keeps the log's SHA-256 by the exact base64 text the agent sent
 * (bounded by total characters): a repeated log then costs a string comparison instead of a
 * base64 decode and a SHA-256 over some 40 KB — most of what a memo hit cost. Only text that
 * decoded cleanly once (canonical base64, within limits) is kept, so skipping the decode skips
 * no check.
 */
import { createHash } from 'node:crypto';
import { checkEventLog, eventLogClaims, type TrustedPcr } from './verify.js';

export interface CachedEventLogCheck {
  readonly selectors: readonly string[];
  readonly claims: Readonly<Record<string, unknown>>;
}

export class EventLogCheckCache {
  private readonly entries = new Map<string, CachedEventLogCheck>();
  /**
   * textKey(text) → the text and the SHA-256 of its bytes (base64), most recently used last. Not
   * keyed by the text itself: V8 hashes a string longer than 16,383 characters by its length
   * alone, so the texts of logs of one length (a fleet booted alike) all collided, and every
   * lookup compared the new text with each kept one (measured: 1.2 ms per miss with 160 kept).
   */
  private readonly texts = new Map<string, { readonly text: string; readonly digest: string }>();
  private textChars = 0;

  constructor(
    readonly maxEntries = 1024,
    /** Total characters of log text kept by `checkText` (default 8 Mi: some 160 logs of 50 KB). */
    readonly maxTextChars = 8 * 1024 * 1024,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** checkEventLog + eventLogClaims, memoised. Throws whatever checkEventLog throws. */
  check(log: Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    return this.checkDigest(createHash('sha256').update(log).digest('base64'), () => log, pcrs, unloggedPcrs);
  }

  /**
   * Like `check` for a log as the agent sent it, base64 `text`; `decode` turns it into bytes (and
   * throws on bad text) and runs only when the text was not seen before.
   */
  checkText(text: string, decode: (text: string) => Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    const key = textKey(text);
    const kept = this.texts.get(key);
    if (kept !== undefined && kept.text === text) {
      // Most recently used last; kept whatever the check below says (the text decoded cleanly).
      this.texts.delete(key);
      this.texts.set(key, kept);
      return this.checkDigest(kept.digest, () => decode(text), pcrs, unloggedPcrs);
    }
    const log = decode(text);
    const digest = createHash('sha256').update(log).digest('base64');
    const out = this.checkDigest(digest, () => log, pcrs, unloggedPcrs);
    if (text.length <= this.maxTextChars) {
      // Another text with the same key (rare by chance, or made on purpose: it only costs a decode) gives up its place.
      if (kept !== undefined) {
        this.texts.delete(key);
        this.textChars -= kept.text.length;
      }
      this.texts.set(key, { text, digest });
      this.textChars += text.length;
      for (const [k, e] of this.texts) {
        if (this.textChars <= this.maxTextChars) break;
        this.texts.delete(k);
        this.textChars -= e.text.length;
      }
    }
    return out;
  }

  private checkDigest(logDigest: string, log: () => Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    const h = createHash('sha256').update(logDigest);
    for (const p of [...pcrs].sort((a, b) => (a.bank === b.bank ? a.index - b.index : a.bank < b.bank ? -1 : 1))) h.update(`|${p.bank}:${p.index}:`).update(p.value);
    h.update(`|unlogged:${[...unloggedPcrs].sort((a, b) => a - b).join(',')}`);
    const key = h.digest('base64');
    const hit = this.entries.get(key);
    if (hit) {
      // Most recently used last.
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    const r = checkEventLog({ log: log(), pcrs, unloggedPcrs });
    const out: CachedEventLogCheck = Object.freeze({ selectors: Object.freeze([...r.selectors]), claims: Object.freeze(eventLogClaims(r)) });
    this.entries.set(key, out);
    if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    return out;
  }
}

/**
 * Map key for a log's base64 text: its length and a 32-bit FNV-1a over every `stride`-th
 * character from the end, stride 16 (wider past 128 Ki characters: at most 8,192 samples). Equal texts get equal keys; the
 * cache compares whole texts, so two texts sharing a key cost a decode, never a wrong digest.
 * With a stride under 27 characters, every SHA-1 or longer digest in the log has a sampled
 * character in its base64, so logs that differ in a digest rarely share a key.
 */
function textKey(text: string): string {
  const stride = Math.max(16, Math.ceil(text.length / 8192));
  let h = 0x811c9dc5;
  for (let i = text.length - 1; i >= 0; i -= stride) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return `${text.length}:${h >>> 0}`;
}
