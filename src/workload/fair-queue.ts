/**
 * Work queued per uid and started round-robin between uids, with at most one item of each uid
 * running at a time and at most `slots` running in all. Whatever one uid queues, another uid's
 * item waits for no item of that uid: it starts on a free slot, and a slot is taken by one uid at
 * most once, so with `slots` ≥ 2 a single uid can never hold every slot. Bounded: at most `perUid`
 * items queued per uid and `total` in all (uid 0 is exempt from `total`, as root keeps connections
 * the other uids cannot take: many uids together cannot lock root out).
 */

export interface FairQueueLimits {
  /** Items running at once, in all. */
  slots: number;
  /** Items queued (not yet running) per uid. */
  perUid: number;
  /** Items queued in all (uid 0 exempt). */
  total: number;
}

/** Why an item was not queued. */
export type QueueRefusal = { limit: 'perUid' | 'total'; queued: number; max: number };

export class FairQueue<T> {
  /** Non-empty queues in round-robin order: a uid served goes to the back. */
  private readonly queues = new Map<number, T[]>();
  /** Uids with an item running. */
  private readonly runningUids = new Set<number>();
  private queuedCount = 0;

  constructor(readonly limits: FairQueueLimits) {}

  /** Queue `item` for `uid`, or say which bound it would break. */
  push(uid: number, item: T): QueueRefusal | undefined {
    const q = this.queues.get(uid);
    const mine = q?.length ?? 0;
    if (mine >= this.limits.perUid) return { limit: 'perUid', queued: mine, max: this.limits.perUid };
    if (uid !== 0 && this.queuedCount >= this.limits.total) return { limit: 'total', queued: this.queuedCount, max: this.limits.total };
    if (q) q.push(item);
    else this.queues.set(uid, [item]);
    this.queuedCount++;
    return undefined;
  }

  /** Take `item` out of `uid`'s queue (nobody waits for it any more); false if it is not queued. */
  remove(uid: number, item: T): boolean {
    const q = this.queues.get(uid);
    const i = q?.indexOf(item) ?? -1;
    if (q === undefined || i < 0) return false;
    q.splice(i, 1);
    if (q.length === 0) this.queues.delete(uid);
    this.queuedCount--;
    return true;
  }

  /**
   * The next item to start, if a slot is free and a uid without a running item has one queued:
   * the first such uid in round-robin order. The item counts as running until finish(uid).
   */
  take(): { uid: number; item: T } | undefined {
    if (this.runningUids.size >= this.limits.slots) return undefined;
    for (const [uid, q] of this.queues) {
      if (this.runningUids.has(uid)) continue;
      const item = q.shift() as T;
      this.queues.delete(uid);
      if (q.length > 0) this.queues.set(uid, q); // to the back of the round
      this.queuedCount--;
      this.runningUids.add(uid);
      return { uid, item };
    }
    return undefined;
  }

  /** `uid`'s running item ended. */
  finish(uid: number): void {
    this.runningUids.delete(uid);
  }
}
