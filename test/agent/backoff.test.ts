import { describe, expect, it } from 'vitest';
import { Backoff } from '../../src/agent/backoff.js';

describe('backoff with full jitter', () => {
  it('doubles the ceiling from 1 s up to the 60 s cap', () => {
    const b = new Backoff({ random: () => 0.999999 });
    const got = Array.from({ length: 10 }, () => b.next());
    const ceilings = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000];
    got.forEach((d, i) => {
      expect(d).toBeLessThan(ceilings[i]!);
      expect(d).toBeGreaterThanOrEqual(ceilings[i]! - 1);
    });
    expect(b.failures()).toBe(10);
    b.reset();
    expect(b.ceilingMs()).toBe(1000);
  });

  it('draws uniformly from [0, ceiling) and stays bounded after many failures', () => {
    const b = new Backoff();
    let min = Infinity;
    let max = 0;
    for (let i = 0; i < 2000; i++) {
      const d = b.next();
      if (i >= 10) {
        min = Math.min(min, d);
        max = Math.max(max, d);
      }
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(60_000);
    }
    // With ~2000 uniform draws the extremes come close to both ends.
    expect(min).toBeLessThan(1000);
    expect(max).toBeGreaterThan(59_000);
    expect(new Backoff({ random: () => 0 }).next()).toBe(0);
  });

  it('honours custom base and cap and rejects nonsense', () => {
    const b = new Backoff({ baseMs: 100, capMs: 250, random: () => 0.5 });
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([50, 100, 125, 125]);
    expect(() => new Backoff({ baseMs: 0 })).toThrow(RangeError);
    expect(() => new Backoff({ baseMs: 10, capMs: 5 })).toThrow(RangeError);
  });
});
