/**
 * The process metrics of /metrics: prom-client's defaults without the collectors whose cost grows
 * with every open connection (and that call Node internals), plus a cheap open-descriptor count.
 */
import { closeSync, openSync, readdirSync } from 'node:fs';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { DROPPED_DEFAULT_METRICS, openFdCount, registerProcessMetrics } from '../../src/util/process-metrics.js';

const proc = process as unknown as Record<string, unknown>;
const watched = ['_getActiveHandles', '_getActiveRequests', 'getActiveResourcesInfo'] as const;
const saved = new Map<string, unknown>();
afterEach(() => {
  for (const [k, v] of saved) proc[k] = v;
  saved.clear();
});

const value = (text: string, name: string): number | undefined => {
  const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
};

describe('process metrics', () => {
  it('a scrape lists no handles, requests or resources (whose cost grows with every connection)', async () => {
    const calls: string[] = [];
    for (const k of watched) {
      if (typeof proc[k] !== 'function') continue;
      saved.set(k, proc[k]);
      const orig = proc[k] as (...a: unknown[]) => unknown;
      proc[k] = (...a: unknown[]) => {
        calls.push(k);
        return orig.apply(process, a);
      };
    }
    expect(saved.size).toBeGreaterThan(0);
    const registry = new Registry();
    const cpu0 = process.cpuUsage();
    registerProcessMetrics(registry, 't1_');
    const text = await registry.metrics();
    expect(calls).toEqual([]);
    for (const name of DROPPED_DEFAULT_METRICS.filter((n) => n !== 'process_open_fds')) expect(text).not.toMatch(new RegExp(`^t1_${name}[ {]`, 'm'));
    // What is kept: CPU, memory, heap, event-loop lag, GC, the descriptor limit and count.
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes', 'process_max_fds', 'process_open_fds']) {
      expect(value(text, `t1_${name}`), name).toBeGreaterThan(0);
    }
    expect(value(text, 't1_nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    // CPU since the process started, not since the registry was made (prom-client's own counters
    // read 0 here when the kernel had not yet accounted a tick since their registration, as in a CI run).
    expect(value(text, 't1_process_cpu_user_seconds_total')).toBeGreaterThanOrEqual(cpu0.user / 1e6);
    expect(value(text, 't1_process_cpu_system_seconds_total')).toBeGreaterThanOrEqual(cpu0.system / 1e6);
    expect(value(text, 't1_process_cpu_seconds_total')).toBeGreaterThanOrEqual((cpu0.user + cpu0.system) / 1e6);
    expect(text.match(/^t1_process_cpu_user_seconds_total /gm)).toHaveLength(1);
    registry.clear();
  });

  it('counts open descriptors as the kernel lists them, and follows opens and closes', () => {
    const listed = () => readdirSync('/proc/self/fd').length - 1;
    const before = openFdCount();
    expect(before).toBe(listed());
    const fds = Array.from({ length: 40 }, () => openSync('/dev/null', 'r'));
    try {
      expect(openFdCount()).toBe(before! + 40);
      expect(openFdCount()).toBe(listed());
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    expect(openFdCount()).toBe(before);
  });

  it('the CPU counters grow with the CPU the process uses, and never go back', async () => {
    const registry = new Registry();
    registerProcessMetrics(registry, 't3_');
    const first = value(await registry.metrics(), 't3_process_cpu_user_seconds_total') as number;
    const spin = process.cpuUsage().user;
    while (process.cpuUsage().user - spin < 20_000) Math.sqrt(Math.random());
    const second = value(await registry.metrics(), 't3_process_cpu_user_seconds_total') as number;
    expect(second - first).toBeGreaterThanOrEqual(0.02);
    expect(second).toBeLessThanOrEqual(process.cpuUsage().user / 1e6);
    registry.clear();
  });

  it('the scraped descriptor count is the process count', async () => {
    const registry = new Registry();
    registerProcessMetrics(registry, 't2_');
    const fds = Array.from({ length: 25 }, () => openSync('/dev/null', 'r'));
    try {
      expect(value(await registry.metrics(), 't2_process_open_fds')).toBe(openFdCount());
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    registry.clear();
  });
});
