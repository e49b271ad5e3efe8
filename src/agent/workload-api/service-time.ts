/**
 * Service time of Workload API calls inside the agent: from the moment a call's HTTP/2 stream
 * reaches the server to its first response message (or its status, when nothing is sent). It is
 * what the agent itself adds to a call, without the time the kernel, the scheduler or the client
 * take, and it is kept per method in a fixed log-scale histogram (constant memory, O(1) record).
 */

/** Bucket i holds values up to FIRST_BOUND_MS × GROWTH^i; the last bucket is open-ended. */
const FIRST_BOUND_MS = 0.01;
const GROWTH = 1.1;
const BUCKETS = 160; // 0.01 ms … about 40 s

const BOUNDS: readonly number[] = Array.from({ length: BUCKETS }, (_, i) => FIRST_BOUND_MS * GROWTH ** i);

export interface ServiceTimeSummary {
  count: number;
  /** Upper bounds of the histogram buckets holding the 50th and 99th percentiles (within 10 %). */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class ServiceTimeHistogram {
  private counts = new Uint32Array(BUCKETS + 1);
  private n = 0;
  private max = 0;

  record(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    let i: number;
    if (ms <= FIRST_BOUND_MS) i = 0;
    else {
      i = Math.ceil(Math.log(ms / FIRST_BOUND_MS) / Math.log(GROWTH));
      // Floating-point rounding at a bound: move to the first bucket whose bound holds ms.
      while (i > 0 && i <= BUCKETS && BOUNDS[i - 1]! >= ms) i--;
      while (i < BUCKETS && BOUNDS[i]! < ms) i++;
    }
    this.counts[Math.min(i, BUCKETS)]!++;
    this.n++;
    if (ms > this.max) this.max = ms;
  }

  private percentile(p: number): number {
    if (this.n === 0) return 0;
    const rank = Math.ceil((p / 100) * this.n);
    let seen = 0;
    for (let i = 0; i <= BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return i < BUCKETS ? Math.min(BOUNDS[i]!, this.max) : this.max;
    }
    return this.max;
  }

  summary(): ServiceTimeSummary {
    return { count: this.n, p50Ms: this.percentile(50), p99Ms: this.percentile(99), maxMs: this.max };
  }

  reset(): void {
    this.counts = new Uint32Array(BUCKETS + 1);
    this.n = 0;
    this.max = 0;
  }
}
