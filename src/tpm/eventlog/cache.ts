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
  /** base64 text of a log → SHA-256 of its bytes (base64), most recently used last. */
  private readonly texts = new Map<string, string>();
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
    let digest = this.texts.get(text);
    let log: Uint8Array | undefined;
    if (digest === undefined) {
      log = decode(text);
      digest = createHash('sha256').update(log).digest('base64');
    } else {
      this.texts.delete(text);
    }
    const out = this.checkDigest(digest, () => log ?? decode(text), pcrs, unloggedPcrs);
    if (text.length <= this.maxTextChars) {
      if (log !== undefined) this.textChars += text.length;
      this.texts.set(text, digest);
      for (const k of this.texts.keys()) {
        if (this.textChars <= this.maxTextChars) break;
        this.texts.delete(k);
        this.textChars -= k.length;
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
