/**
 * Process metrics for the verifier's and the agent's /metrics: prom-client's defaults (CPU,
 * resident memory, heap, event-loop lag, GC, file-descriptor limit) and an open-descriptor count,
 * without the collectors whose cost grows with the number of open connections.
 *
 * prom-client's `nodejs_active_handles*` and `nodejs_active_requests*` call
 * `process._getActiveHandles()` / `_getActiveRequests()` (undocumented Node internals) and build an
 * array of every handle on each scrape; `nodejs_active_resources*` builds one string per resource;
 * its `process_open_fds` lists `/proc/self/fd`. With 10,000 agent connections one scrape blocked the
 * verifier's event loop for about 130 ms (a CPU profile of `bench/fleet.ts`), so every scrape
 * delayed every held long-poll and request by that much. Those are left out; the descriptor count
 * is kept, read with one stat where the kernel allows (below).
 *
 * prom-client's CPU counters count from their own registration (each scrape adds the CPU used since
 * the last), so start-up was missing from them and a scrape right after start could read 0. Sigil's
 * count the process's CPU time since it started, as `process_cpu_*_seconds_total` are meant to.
 */
import { readdirSync, statSync } from 'node:fs';
import { Counter, Gauge, collectDefaultMetrics, type Registry } from 'prom-client';

/** prom-client default metric names (without prefix) that Sigil does not register. */
export const DROPPED_DEFAULT_METRICS = [
  'nodejs_active_handles',
  'nodejs_active_handles_total',
  'nodejs_active_requests',
  'nodejs_active_requests_total',
  'nodejs_active_resources',
  'nodejs_active_resources_total',
  'process_open_fds',
] as const;

/** prom-client default metric names replaced by Sigil's own (counted from process start). */
const REPLACED_DEFAULT_METRICS = ['process_cpu_user_seconds_total', 'process_cpu_system_seconds_total', 'process_cpu_seconds_total'] as const;

export interface ProcessMetricsOptions {
  /** Sampling interval of the event-loop-lag monitor, ms (prom-client's default is 10). */
  eventLoopMonitoringPrecision?: number;
}

/** Register the process metrics under `prefix` in `registry` (never the global one). */
export function registerProcessMetrics(registry: Registry, prefix: string, opts: ProcessMetricsOptions = {}): void {
  collectDefaultMetrics({ register: registry, prefix, ...opts });
  for (const name of [...DROPPED_DEFAULT_METRICS, ...REPLACED_DEFAULT_METRICS]) registry.removeSingleMetric(prefix + name);
  // process.cpuUsage() is cumulative since the process started; each counter is set to it.
  const cpuCounter = (name: string, help: string, seconds: (u: NodeJS.CpuUsage) => number): void => {
    new Counter({
      name: prefix + name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(seconds(process.cpuUsage()));
      },
    });
  };
  cpuCounter('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds, since the process started.', (u) => u.user / 1e6);
  cpuCounter('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds, since the process started.', (u) => u.system / 1e6);
  cpuCounter('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds, since the process started.', (u) => (u.user + u.system) / 1e6);
  if (process.platform !== 'linux') return;
  new Gauge({
    name: `${prefix}process_open_fds`,
    help: 'Number of open file descriptors.',
    registers: [registry],
    collect() {
      const n = openFdCount();
      if (n !== undefined) this.set(n);
    },
  });
}

/**
 * The number of descriptors this process has open (Linux). Since Linux 6.2 the size of the
 * `/proc/self/fd` directory is that number, so one stat answers it; older kernels report 0 there,
 * and then the directory is listed (the listing's own descriptor is not counted).
 */
export function openFdCount(): number | undefined {
  try {
    const size = statSync('/proc/self/fd').size;
    if (size > 0) return size;
    return readdirSync('/proc/self/fd').length - 1;
  } catch {
    return undefined;
  }
}
