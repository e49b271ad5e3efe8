/**
 * Coarse deadlines for the Workload API's per-call and per-attestation timeouts, served by one
 * interval timer.
 *
 * Why not a setTimeout each: Node keeps one timer list per distinct duration and tears it down
 * when its last timer is cleared. A call's request timeout or an attestation's timeout is almost
 * always cleared within a millisecond, so at a thousand calls a second the list for that duration
 * was built and torn down on every call; those list objects hang off long-lived structures,
 * outlive the young generation and were a steady share of what brought on full collections
 * (which pause every call). Here a deadline is one list node, allocated and dropped with its call.
 *
 * Deadlines up to `horizonMs` away go into buckets of `tickMs` (a timing wheel): a tick touches
 * only the buckets that have come due, whatever else is pending, so a client holding thousands of
 * streams with deadlines cannot make every tick expensive. A deadline fires between `ms` and
 * `ms + tickMs` after it is set. Deadlines further away (rare: a client's own long deadline) use a
 * plain timer, re-armed in steps for anything beyond the 2^31-1 ms a Node timer can hold; they do
 * not keep the interval running. The interval runs while bucketed deadlines are pending and stops
 * after `idleTicks` ticks without any, so an idle agent does not wake up.
 */
import { LinkedList, type ListEntry } from './linked-list.js';

interface Pending {
  fire: () => void;
}

export type CancelDeadline = () => void;

/**
 * Schedule `fire` after `ms`; returns a function that cancels it (calling it again does nothing).
 * `ms` ≤ 0 or NaN means "as soon as possible"; +Infinity means never.
 */
export type ScheduleDeadline = (ms: number, fire: () => void) => CancelDeadline;

/** The longest delay one Node timer can hold. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const NEVER: CancelDeadline = () => undefined;

/** Normalise a delay: NaN and negatives become 0. */
function delayOf(ms: number): number {
  return Number.isNaN(ms) || ms < 0 ? 0 : ms;
}

/** A plain timer for any delay, re-armed in steps of at most MAX_TIMER_MS. */
function longTimer(ms: number, fire: () => void): CancelDeadline {
  let left = ms;
  let t: NodeJS.Timeout | undefined;
  const arm = (): void => {
    const step = Math.min(left, MAX_TIMER_MS);
    left -= step;
    t = setTimeout(() => {
      if (left > 0) arm();
      else fire();
    }, step);
  };
  arm();
  return () => clearTimeout(t);
}

/** A ScheduleDeadline on plain timers (exact; for callers outside the Workload API server). */
export const timerDeadline: ScheduleDeadline = (ms, fire) => {
  const d = delayOf(ms);
  if (d === Number.POSITIVE_INFINITY) return NEVER;
  return longTimer(d, fire);
};

export class Deadlines {
  /** Bucket index (due at index × tickMs on `now`'s clock) → deadlines in it. */
  private readonly buckets = new Map<number, LinkedList<Pending>>();
  private bucketed = 0;
  private timer: NodeJS.Timeout | undefined;
  private emptyTicks = 0;

  constructor(
    readonly tickMs = 100,
    private readonly idleTicks = 50,
    private readonly now: () => number = () => performance.now(),
    readonly horizonMs = 120_000,
  ) {
    if (!(tickMs > 0) || !Number.isFinite(tickMs)) throw new RangeError('tickMs must be a positive number');
    if (!(horizonMs >= tickMs) || !Number.isFinite(horizonMs)) throw new RangeError('horizonMs must be finite and at least tickMs');
  }

  /** See ScheduleDeadline. */
  readonly schedule: ScheduleDeadline = (ms, fire) => {
    const d = delayOf(ms);
    if (d === Number.POSITIVE_INFINITY) return NEVER;
    if (d > this.horizonMs) return longTimer(d, fire);
    const index = Math.ceil((this.now() + d) / this.tickMs);
    let list = this.buckets.get(index);
    if (list === undefined) {
      list = new LinkedList<Pending>();
      this.buckets.set(index, list);
    }
    const bucket = list;
    const node = bucket.add({ fire });
    this.bucketed++;
    this.emptyTicks = 0;
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
    return () => this.cancel(bucket, node);
  };

  /** Deadlines waiting in buckets (long ones on their own timers are not counted). */
  get size(): number {
    return this.bucketed;
  }

  /** Buckets held, empty ones included (for tests: an emptied bucket is kept until it is due). */
  get bucketCount(): number {
    return this.buckets.size;
  }

  /** Whether the interval timer is running. */
  get running(): boolean {
    return this.timer !== undefined;
  }

  private cancel(bucket: LinkedList<Pending>, node: ListEntry<Pending>): void {
    if (!node.linked) return;
    bucket.remove(node);
    this.bucketed--;
    // An emptied bucket stays in the map until its tick comes (at most horizonMs / tickMs of
    // them exist). Deleting it here, as before, made every call that set and cleared a deadline
    // (an attestation's timeout, a request's read timeout) delete a key of this long-lived Map
    // and the next one add it back with a new list: the Map's backing table was reallocated
    // over and over, each table outlived the young generation (the Map is old) and was promoted.
  }

  private tick(): void {
    if (this.bucketed === 0) {
      if (++this.emptyTicks >= this.idleTicks) this.stop();
      return;
    }
    this.emptyTicks = 0;
    const dueIndex = Math.floor(this.now() / this.tickMs);
    // At most horizonMs / tickMs buckets exist, so this walk is bounded however many deadlines
    // are pending; only the due buckets' members are touched.
    const due: number[] = [];
    for (const index of this.buckets.keys()) if (index <= dueIndex) due.push(index);
    due.sort((a, b) => a - b);
    for (const index of due) {
      const bucket = this.buckets.get(index);
      if (bucket === undefined) continue;
      this.buckets.delete(index);
      for (const n of bucket.entries()) {
        if (!n.linked) continue; // cancelled by a handler fired before it
        bucket.remove(n);
        this.bucketed--;
        try {
          n.value.fire();
        } catch {
          // a deadline handler must not break the others
        }
      }
    }
  }

  private stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    // Only called with nothing bucketed: the buckets left are empty ones kept by cancel().
    if (this.bucketed === 0) this.buckets.clear();
  }

  /** Drop every bucketed deadline without firing it, and stop the interval. */
  clear(): void {
    for (const bucket of this.buckets.values()) for (const n of bucket.entries()) bucket.remove(n);
    this.buckets.clear();
    this.bucketed = 0;
    this.stop();
  }
}
