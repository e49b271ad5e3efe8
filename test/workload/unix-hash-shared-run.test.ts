/**
 * Callers running the same executable share one hashing run. When the process the run was started
 * for has exited before the run opens the file, every other caller still gets its `unix:sha256`
 * selector (through its own /proc/<pid>/exe link), and a caller whose hash cannot be computed gets
 * a failure (Unavailable in the Workload API), never an answer that silently lacks the selector.
 * Real processes, real files, the real /proc; the hashing slots are kept busy with large sparse
 * executables so that the shared run is still waiting when its first caller exits.
 */
import { utimesSync } from 'node:fs';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { attestCaller } from '../../src/agent/workload-api/attest.js';
import { noIdentity } from '../../src/agent/workload-api/status.js';
import type { Selector, WorkloadAttestor, WorkloadCaller } from '../../src/plugins/types.js';
import { createUnixAttestor, type UnixAttestor } from '../../src/workload/unix.js';
import { MiB, executables, sha256File, sha256Of, sleep, until } from './executables.js';

const ATTACKER = 65534;
const OTHER = 65533;
const VICTIM = 4242;
const BIG = 255 * MiB; // keeps its uid's turn busy while a process is reaped (over 100 ms even at 2 GB/s)

const exe = executables();
const forever = new AbortController().signal;


/** Both hashing slots busy for a while: a large sparse executable of ATTACKER and one of OTHER. */
async function occupy(a: UnixAttestor, tag: string): Promise<Promise<unknown>[]> {
  const bigs = await Promise.all([exe.run(exe.file(`${tag}-big-a`, BIG), ATTACKER), exe.run(exe.file(`${tag}-big-b`, BIG), OTHER)]);
  const m0 = a.stats.hashMisses;
  const done = bigs.map((p) => a.attest(p.caller, forever).catch((e: unknown) => e));
  await until(() => a.stats.hashMisses === m0 + 2);
  return done;
}

/** Start attesting `caller`; resolves once its hashing run is queued, with its outcome to come. */
async function attestQueued(a: UnixAttestor, caller: WorkloadCaller): Promise<{ outcome: Promise<unknown> }> {
  const m0 = a.stats.hashMisses;
  const outcome = a.attest(caller, forever).catch((e: unknown) => e);
  await until(() => a.stats.hashMisses === m0 + 1);
  return { outcome };
}

describe('unix attestor: callers sharing a hashing run', () => {
  it('a caller of another uid gets its sha256 although the process the run was started for exited', async () => {
    const a = createUnixAttestor({});
    const shared = exe.file('shared-1');
    const first = await exe.run(shared, ATTACKER);
    const busy = await occupy(a, 's1');
    const firstDone = (await attestQueued(a, first.caller)).outcome;
    await exe.reap(first.child);

    const victim = await exe.run(shared, VICTIM);
    const sel = await a.attest(victim.caller, forever);
    expect(sha256Of(sel)).toBe(sha256File(shared));
    // The exited caller: its hash or a failure, never selectors without it.
    const r = await firstDone;
    if (Array.isArray(r)) expect(sha256Of(r as Selector[])).toBe(sha256File(shared));
    else expect(r).toMatchObject({ code: 'workload.binary_hash_failed' });
    await Promise.all(busy);
  });

  it('a caller of the same uid joining the run gets its sha256 through its own link; the exited caller fails', async () => {
    const a = createUnixAttestor({});
    const shared = exe.file('shared-2');
    const first = await exe.run(shared, ATTACKER);
    const second = await exe.run(shared, ATTACKER);
    const busy = await occupy(a, 's2');
    const firstDone = (await attestQueued(a, first.caller)).outcome;
    await exe.reap(first.child);

    const sel = await a.attest(second.caller, forever);
    expect(sha256Of(sel)).toBe(sha256File(shared));
    expect(await firstDone).toMatchObject({
      code: 'workload.binary_hash_failed',
      message: expect.stringContaining(`cannot open /proc/${first.caller.pid}/exe`) as string,
    });
    expect(a.stats.hashMisses).toBe(3); // one run for both callers
    await Promise.all(busy);
  });

  it('an executable that changes while it is hashed gives a failure, not an answer without unix:sha256', async () => {
    const a = createUnixAttestor({});
    const file = exe.file('changing', BIG);
    const p = await exe.run(file, VICTIM);
    const { outcome } = await attestQueued(a, p.caller);
    await sleep(20);
    utimesSync(file, new Date(), new Date(Date.now() + 5000)); // another mtime and ctime: another file identity
    expect(await outcome).toMatchObject({ code: 'workload.binary_hash_failed' });
    expect(a.hashCacheSize).toBe(0);
  });

  it('a caller whose hash cannot be computed fails the unix attestor: Unavailable, not an answer without unix:sha256', async () => {
    const a = createUnixAttestor({});
    const alone = await exe.run(exe.file('alone'), ATTACKER);
    const busy = await occupy(a, 's3'); // its run waits behind its uid's large one
    const m0 = a.stats.hashMisses;
    const logger = pino({ level: 'silent' });
    const attested = attestCaller(alone.caller, new Map<string, WorkloadAttestor>([['unix', a]]), logger);
    await until(() => a.stats.hashMisses === m0 + 1);
    await exe.reap(alone.child);
    const r = await attested;
    expect(r).toEqual({ selectors: [], failed: ['unix'] });
    expect(noIdentity(r).code).toBe(14); // UNAVAILABLE: retry
    await Promise.all(busy);
  });
});
