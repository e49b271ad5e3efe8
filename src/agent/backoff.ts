/**
 * Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly random time in
 * [0, min(cap, base · 2^n)]. Spreads reconnecting agents out after a verifier outage.
 */
export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
  /** Uniform [0, 1) source; injectable for tests. */
  random?: () => number;
}

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  private readonly random: () => number;
  private attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.baseMs = opts.baseMs ?? 1000;
    this.capMs = opts.capMs ?? 60_000;
    this.random = opts.random ?? Math.random;
    if (!(this.baseMs > 0) || !(this.capMs >= this.baseMs)) throw new RangeError('backoff needs 0 < baseMs <= capMs');
  }

  /** Upper bound of the next delay (before jitter). */
  ceilingMs(): number {
    // 2^attempt overflows to Infinity for large attempts; min() clamps it.
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 62));
  }

  /** Delay before the next retry; each call counts as one more failure. */
  next(): number {
    const d = Math.floor(this.random() * this.ceilingMs());
    this.attempt++;
    return d;
  }

  /** Number of consecutive failures recorded so far. */
  failures(): number {
    return this.attempt;
  }

  reset(): void {
    this.attempt = 0;
  }
}
