/**
 * CPU quotas for benchmark processes: one Linux control group per process with a CFS bandwidth limit
 * ("this process may use F of one CPU"), so that two verifiers sharing one core of a small machine
 * each get a budget of their own, as if each had its own (slower) core. cgroup v2 (`cpu.max`) and
 * v1 (`cpu.cfs_quota_us`) are both handled; creating a group needs root (or a delegated hierarchy).
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const PERIOD_US = 100_000;

export interface CpuQuotaGroup {
  /** The group's directory. */
  dir: string;
  /** The file a process ID is written to, to move that process (and its later children) in. */
  procs: string;
  /** How often the group used up its quota and waited, so far (from its cpu.stat). */
  throttled(): { periods: number; throttled: number; throttledMs: number };
  /** Removes the group (once its processes have exited). */
  remove(): void;
}

function statOf(file: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [k, v] = line.split(' ');
    if (k && v !== undefined) m.set(k, Number(v));
  }
  return m;
}

/** Removes a group made before a later step failed (nothing is in it yet). */
function removeQuietly(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // Not made, or not empty: nothing more to do here.
  }
}

/** Where and how a hierarchy takes a quota: the files written in a new group, and how its cpu.stat counts throttled time. */
interface Hierarchy {
  parent: string;
  /** Run before the group is made (cgroup v2: the cpu controller enabled for the parent's children). */
  prepare(): void;
  limits(quotaUs: number): [file: string, value: string][];
  throttledKey: string;
  /** cpu.stat's unit of throttled time, in ms. */
  throttledUnitMs: number;
}

function hierarchy(): Hierarchy {
  const root = '/sys/fs/cgroup';
  if (existsSync(join(root, 'cgroup.controllers'))) {
    const controllers = readFileSync(join(root, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (!controllers.includes('cpu')) throw new Error(`--cpu-quota: the cgroup v2 hierarchy at ${root} offers no cpu controller (${controllers.join(' ') || 'none'})`);
    return {
      parent: root,
      prepare: () => {
        const subtree = readFileSync(join(root, 'cgroup.subtree_control'), 'utf8');
        if (!subtree.split(/\s+/).includes('cpu')) writeFileSync(join(root, 'cgroup.subtree_control'), '+cpu');
      },
      limits: (quotaUs) => [['cpu.max', `${quotaUs} ${PERIOD_US}`]],
      throttledKey: 'throttled_usec',
      throttledUnitMs: 1e-3,
    };
  }
  const v1 = [join(root, 'cpu'), join(root, 'cpu,cpuacct')].find((d) => existsSync(join(d, 'cpu.cfs_quota_us')));
  if (v1 === undefined) throw new Error(`--cpu-quota: no cgroup cpu controller under ${root} (neither v2 cpu.max nor v1 cpu.cfs_quota_us)`);
  return {
    parent: v1,
    prepare: () => undefined,
    limits: (quotaUs) => [
      ['cpu.cfs_period_us', String(PERIOD_US)],
      ['cpu.cfs_quota_us', String(quotaUs)],
    ],
    throttledKey: 'throttled_time',
    throttledUnitMs: 1e-6,
  };
}

/**
 * A new control group limited to `fraction` of one CPU (0 < fraction ≤ 64). Throws an error that says
 * what is missing when this machine has no usable CPU controller or the caller may not create groups.
 */
export function createCpuQuotaGroup(name: string, fraction: number): CpuQuotaGroup {
  if (!(fraction > 0 && fraction <= 64)) throw new Error(`--cpu-quota must be a fraction of a CPU above 0 (e.g. 0.4), not ${fraction}`);
  const quotaUs = Math.max(1000, Math.round(fraction * PERIOD_US));
  const h = hierarchy();
  const dir = join(h.parent, name);
  try {
    h.prepare();
    mkdirSync(dir);
    for (const [file, value] of h.limits(quotaUs)) writeFileSync(join(dir, file), value);
  } catch (e) {
    removeQuietly(dir);
    throw new Error(`--cpu-quota: cannot make the control group ${dir} (needs root): ${e instanceof Error ? e.message : String(e)}`);
  }
  return {
    dir,
    procs: join(dir, 'cgroup.procs'),
    throttled: () => {
      const s = statOf(join(dir, 'cpu.stat'));
      return { periods: s.get('nr_periods') ?? 0, throttled: s.get('nr_throttled') ?? 0, throttledMs: (s.get(h.throttledKey) ?? 0) * h.throttledUnitMs };
    },
    remove: () => rmdirSync(dir),
  };
}

/**
 * The command line that runs `cmd` inside `group`: a shell moves itself in, then execs the command,
 * so the process is limited from its first instruction.
 */
export function inGroup(group: CpuQuotaGroup, cmd: string[]): string[] {
  return ['sh', '-c', 'echo $$ > "$0" && exec "$@"', group.procs, ...cmd];
}
