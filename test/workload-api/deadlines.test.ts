import { afterEach, describe, expect, it } from 'vitest';
import { Deadlines, timerDeadline } from '../../src/agent/workload-api/deadlines.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('Deadlines', () => {
  let d: Deadlines | undefined;
  afterEach(() => d?.clear());

  it('fires a deadline after its time, within one tick, and not before', async () => {
    d = new Deadlines(10);
    const t0 = performance.now();
    let firedAt = 0;
    d.schedule(60, () => (firedAt = performance.now()));
    await sleep(40);
    expect(firedAt).toBe(0);
    await sleep(80);
    expect(firedAt - t0).toBeGreaterThanOrEqual(60);
    expect(firedAt - t0).toBeLessThan(60 + 10 + 50); // one tick plus scheduling slack
    expect(d.size).toBe(0);
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
    await sleep(30);
    expect(fired).toEqual(['a', 'c']);
    expect(d.size).toBe(0);
  });

  it('stops its interval after idle ticks and starts it again on demand', async () => {
    d = new Deadlines(5, 3);
    d.schedule(1, () => undefined);
    expect(d.running).toBe(true);
    await sleep(80);
    expect(d.size).toBe(0);
    expect(d.running).toBe(false);
    let fired = false;
    d.schedule(1, () => (fired = true));
    expect(d.running).toBe(true);
    await sleep(40);
    expect(fired).toBe(true);
  });

  it('refuses a non-positive tick', () => {
    expect(() => new Deadlines(0)).toThrow(RangeError);
  });

  it('timerDeadline fires and cancels like setTimeout', async () => {
    let n = 0;
    timerDeadline(5, () => n++);
    const cancel = timerDeadline(5, () => (n += 10));
    cancel();
    await sleep(30);
    expect(n).toBe(1);
  });
});
