/**
 * A bounded memo of event log checks. `checkEventLog` is a pure function of the log bytes, the
 * trusted PCR values and the unlogged PCRs, and a node sends the same firmware log every time
 * it attests until it reboots, so a verifier can keep the outcome keyed by a SHA-256 over all
 * three and skip the replay. Refusals are not kept (they are rare and cheap to recompute).
 */
import { createHash } from 'node:crypto';
import { checkEventLog, eventLogClaims, type TrustedPcr } from './verify.js';

export interface CachedEventLogCheck {
  readonly selectors: readonly string[];
  readonly claims: Readonly<Record<string, unknown>>;
}

export class EventLogCheckCache {
  private readonly entries = new Map<string, CachedEventLogCheck>();

  constructor(readonly maxEntries = 1024) {}

  get size(): number {
    return this.entries.size;
  }

  /** checkEventLog + eventLogClaims, memoised. Throws whatever checkEventLog throws. */
  check(log: Uint8Array, pcrs: readonly TrustedPcr[], unloggedPcrs: readonly number[]): CachedEventLogCheck {
    const h = createHash('sha256').update(log);
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
    const r = checkEventLog({ log, pcrs, unloggedPcrs });
    const out: CachedEventLogCheck = Object.freeze({ selectors: Object.freeze([...r.selectors]), claims: Object.freeze(eventLogClaims(r)) });
    this.entries.set(key, out);
    if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    return out;
  }
}
