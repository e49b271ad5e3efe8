import { afterEach, describe, expect, it, vi } from 'vitest';
import { Deadlines, timerDeadline } from '../../src/agent/workload-api/deadlines.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Wait until `cond` holds (polling), failing after `ms`: tolerant of a slow, loaded machine. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error('condition not reached in time');
    await sleep(5);
  }
}

describe('Deadlines', () => {
  let d: Deadlines | undefined;
  afterEach(() => d?.clear());

  it('fires a deadline once its time has come, and not before', async () => {
    let now = 0;
    d = new Deadlines(5, 50, () => now);
    let fired = 0;
    d.schedule(60, () => fired++);
    now = 59;
    await sleep(40); // several ticks
    expect(fired).toBe(0);
    now = 60;
    await until(() => fired > 0);
    expect(fired).toBe(1);
    expect(d.size).toBe(0);
    await sleep(20);
    expect(fired).toBe(1);
  });

  it('fires within about one tick of real time', async () => {
    d = new Deadlines(10);
    const t0 = performance.now();
    let firedAt = 0;
    d.schedule(30, () => (firedAt = performance.now()));
    await until(() => firedAt > 0);
    expect(firedAt - t0).toBeGreaterThanOrEqual(30);
  });

  it('never fires a cancelled deadline, and cancelling twice is harmless', async () => {
    d = new Deadlines(5);
    let fired = false;
    const cancel = d.schedule(10, () => (fired = true));
    cancel();
    cancel();
    expect(d.size).toBe(0);
    await sleep(40);
    expect(fired).toBe(false);
  });

  it('keeps a bucket emptied by cancel until it is due, reuses it, and still fires what is put in it later', async () => {
    let now = 0;
    d = new Deadlines(10, 2, () => now);
    // Set and cleared over and over (a call's timeout): one bucket, not one per call.
    for (let i = 0; i < 1000; i++) d.schedule(50, () => undefined)();
    expect(d.size).toBe(0);
    expect(d.bucketCount).toBe(1);
    let fired = 0;
    d.schedule(50, () => fired++); // lands in the emptied bucket
    expect(d.bucketCount).toBe(1);
    now = 49;
    await sleep(40);
    expect(fired).toBe(0);
    now = 50;
    await until(() => fired === 1);
    expect(d.bucketCount).toBe(0); // a due bucket is dropped by its tick
    // Emptied buckets that never come due are dropped when the interval stops for lack of work.
    for (let i = 0; i < 10; i++) d.schedule(1000 + i * 10, () => undefined)();
    expect(d.bucketCount).toBe(10);
    await until(() => !d!.running);
    expect(d.bucketCount).toBe(0);
    expect(fired).toBe(1);
  });

  it('does not fire a due deadline that an earlier handler cancelled in the same tick', async () => {
    let now = 0;
    d = new Deadlines(5, 50, () => now);
    const fired: string[] = [];
    let cancelB: () => void = () => undefined;
    d.schedule(10, () => {
      fired.push('a');
      cancelB();
    });
    cancelB = d.schedule(10, () => fired.push('b'));
    d.schedule(10, () => {
      throw new Error('a broken handler');
    });
    d.schedule(10, () => fired.push('c'));
    now = 20;
    await until(() => d!.size === 0);
    expect(fired).toEqual(['a', 'c']);
    expect(d.size).toBe(0);
  });

  it('stops its interval after idle ticks and starts it again on demand', async () => {
    d = new Deadlines(5, 3);
    d.schedule(1, () => undefined);
    expect(d.running).toBe(true);
    await until(() => !d!.running);
    expect(d.size).toBe(0);
    let fired = false;
    d.schedule(1, () => (fired = true));
    expect(d.running).toBe(true);
    await until(() => fired);
  });

  it('refuses a non-positive tick and a horizon shorter than a tick', () => {
    expect(() => new Deadlines(0)).toThrow(RangeError);
    expect(() => new Deadlines(Number.NaN)).toThrow(RangeError);
    expect(() => new Deadlines(100, 50, undefined, 50)).toThrow(RangeError);
  });

  it('touches only the buckets that came due: far deadlines do not slow a near one', async () => {
    let now = 0;
    d = new Deadlines(5, 50, () => now, 120_000);
    let far = 0;
    for (let i = 0; i < 20_000; i++) d.schedule(100_000 + (i % 1000) * 10, () => far++);
    let near = false;
    d.schedule(10, () => (near = true));
    now = 10;
    await until(() => near);
    expect(far).toBe(0);
    expect(d.size).toBe(20_000);
    now = 200_000;
    await until(() => d!.size === 0);
    expect(far).toBe(20_000);
  });

  it('NaN and negative delays fire at the next tick; Infinity never fires and keeps nothing pending', async () => {
    d = new Deadlines(5);
    const fired: string[] = [];
    d.schedule(Number.NaN, () => fired.push('nan'));
    d.schedule(-5, () => fired.push('negative'));
    const cancel = d.schedule(Number.POSITIVE_INFINITY, () => fired.push('never'));
    expect(d.size).toBe(2);
    await until(() => fired.length === 2);
    cancel();
    expect(fired.sort()).toEqual(['nan', 'negative']);
  });

  it('puts deadlines beyond the horizon on a plain timer, which does not keep the interval running', () => {
    vi.useFakeTimers();
    try {
      const w = new Deadlines(100, 50, undefined, 1000);
      let fired = false;
      const cancelLater = w.schedule(5000, () => undefined);
      w.schedule(2000, () => (fired = true));
      expect(w.size).toBe(0);
      expect(w.running).toBe(false);
      vi.advanceTimersByTime(1999);
      expect(fired).toBe(false);
      vi.advanceTimersByTime(1);
      expect(fired).toBe(true);
      cancelLater();
    } finally {
      vi.useRealTimers();
    }
  });

  it('honours delays longer than a Node timer can hold (2^31-1 ms) instead of firing at once', () => {
    vi.useFakeTimers();
    try {
      let fired = 0;
      timerDeadline(2 ** 31 + 5000, () => fired++);
      const w = new Deadlines(100);
      w.schedule(2 ** 31 + 5000, () => fired++);
      vi.advanceTimersByTime(2 ** 31 - 1);
      expect(fired).toBe(0);
      vi.advanceTimersByTime(5000);
      expect(fired).toBe(0);
      vi.advanceTimersByTime(2);
      expect(fired).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('timerDeadline fires and cancels like setTimeout', async () => {
    let n = 0;
    timerDeadline(5, () => n++);
    const cancel = timerDeadline(5, () => (n += 10));
    cancel();
    await until(() => n > 0);
    await sleep(20);
    expect(n).toBe(1);
  });
});
