import { describe, expect, it } from 'vitest';
import { ServiceTimeHistogram } from '../../src/agent/workload-api/service-time.js';

describe('ServiceTimeHistogram', () => {
  it('is empty until something is recorded', () => {
    expect(new ServiceTimeHistogram().summary()).toEqual({ count: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 });
  });

  it('puts percentiles within 10 % above the true value and never above the maximum', () => {
    const h = new ServiceTimeHistogram();
    for (let i = 1; i <= 1000; i++) h.record(i / 100); // 0.01 … 10 ms
    const s = h.summary();
    expect(s.count).toBe(1000);
    expect(s.maxMs).toBe(10);
    expect(s.p50Ms).toBeGreaterThanOrEqual(5);
    expect(s.p50Ms).toBeLessThanOrEqual(5 * 1.1);
    expect(s.p99Ms).toBeGreaterThanOrEqual(9.9);
    expect(s.p99Ms).toBeLessThanOrEqual(10);
  });

  it('sees a rare slow call at p99 only when it is more than 1 % of calls', () => {
    const h = new ServiceTimeHistogram();
    for (let i = 0; i < 995; i++) h.record(0.2);
    for (let i = 0; i < 5; i++) h.record(50);
    expect(h.summary().p99Ms).toBeLessThan(0.25);
    for (let i = 0; i < 20; i++) h.record(50);
    expect(h.summary().p99Ms).toBeGreaterThan(45);
    expect(h.summary().maxMs).toBe(50);
  });

  it('ignores values that are not durations, keeps huge ones in the last bucket, and resets', () => {
    const h = new ServiceTimeHistogram();
    h.record(Number.NaN);
    h.record(-1);
    h.record(Number.POSITIVE_INFINITY);
    expect(h.summary().count).toBe(0);
    h.record(0);
    h.record(3_600_000);
    expect(h.summary()).toMatchObject({ count: 2, maxMs: 3_600_000, p99Ms: 3_600_000 });
    h.reset();
    expect(h.summary().count).toBe(0);
  });

  it('puts a value exactly on a bucket bound in that bucket', () => {
    const h = new ServiceTimeHistogram();
    h.record(0.01 * 1.1 ** 10);
    const s = h.summary();
    expect(s.p50Ms).toBeCloseTo(0.01 * 1.1 ** 10, 12);
  });
});
