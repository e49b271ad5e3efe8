/**
 * Coarse deadlines for the Workload API's per-call and per-attestation timeouts, all served by
 * one interval timer.
 *
 * Why not a setTimeout each: Node keeps one timer list per distinct duration and tears it down
 * when its last timer is cleared. A call's request timeout or an attestation's timeout is almost
 * always cleared within a millisecond, so at a thousand calls a second the list for that duration
 * was built and torn down on every call; those list objects hang off long-lived structures,
 * outlive the young generation and were a steady share of what brought on full collections
 * (which pause every call). Here a deadline is one list node, allocated and dropped with its call.
 *
 * A deadline fires between `ms` and `ms + tickMs` after it is set. The interval runs while
 * deadlines are pending and stops after `idleTicks` ticks without any, so an idle agent does not
 * wake up.
 */
import { NodeList, type ListNode } from './node-list.js';

interface Pending {
  at: number;
  fire: () => void;
}

export type CancelDeadline = () => void;

/** Schedule `fire` after `ms`; returns a function that cancels it (calling it again does nothing). */
export type ScheduleDeadline = (ms: number, fire: () => void) => CancelDeadline;

/** A ScheduleDeadline on plain timers (exact; for callers outside the Workload API server). */
export const timerDeadline: ScheduleDeadline = (ms, fire) => {
  const t = setTimeout(fire, ms);
  return () => clearTimeout(t);
};

export class Deadlines {
  private readonly pending = new NodeList<Pending>();
  private timer: NodeJS.Timeout | undefined;
  private emptyTicks = 0;

  constructor(
    readonly tickMs = 100,
    private readonly idleTicks = 50,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(tickMs > 0)) throw new RangeError('tickMs must be positive');
  }

  /** See ScheduleDeadline. */
  readonly schedule: ScheduleDeadline = (ms, fire) => {
    const node = this.pending.add({ at: this.now() + Math.max(0, ms), fire });
    this.emptyTicks = 0;
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
    return () => this.pending.remove(node);
  };

  get size(): number {
    return this.pending.size;
  }

  /** Whether the interval timer is running. */
  get running(): boolean {
    return this.timer !== undefined;
  }

  private tick(): void {
    if (this.pending.size === 0) {
      if (++this.emptyTicks >= this.idleTicks) this.stop();
      return;
    }
    this.emptyTicks = 0;
    const now = this.now();
    const due: ListNode<Pending>[] = [];
    for (const n of this.pending.nodes()) if (n.value.at <= now) due.push(n);
    for (const n of due) {
      if (!n.linked) continue; // cancelled by a handler fired before it
      this.pending.remove(n);
      try {
        n.value.fire();
      } catch {
        // a deadline handler must not break the others
      }
    }
  }

  /** Stop the interval (pending deadlines stay; the next schedule() starts it again). */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Drop every pending deadline without firing it, and stop. */
  clear(): void {
    for (const n of this.pending.nodes()) this.pending.remove(n);
    this.stop();
  }
}
