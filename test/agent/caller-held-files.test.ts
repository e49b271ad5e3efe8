/**
 * CallerConnection (src/agent/workload-api/caller.ts) reads /proc/<pid>/stat, /proc/<pid>/status,
 * /proc/<pid>/cgroup and the pidfd's fdinfo through files held open for the connection's life, and
 * the built-in attestors read status and cgroup through it. Real processes and the real /proc (the
 * pidfd's fdinfo is a stand-in file: the pid it names is what is checked): the checks still refuse
 * a caller that has gone, the attestors get nothing from a caller that has gone, and nothing is
 * read after close.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import type { ServerHttp2Session } from 'node:http2';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';
import { attestCaller } from '../../src/agent/workload-api/attest.js';
import { WorkloadConnection } from '../../src/agent/workload-api/connection.js';
import { timerDeadline } from '../../src/agent/workload-api/deadlines.js';
import type { CallerProcFiles } from '../../src/workload/proc.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { createContainerAttestor } from '../../src/workload/container.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { childProcesses } from '../support/child-processes.js';

const { sleeper, reap } = childProcesses();
const fdinfo = mkdtempSync(join(tmpdir(), 'sigil-fdinfo-'));
afterAll(() => rmSync(fdinfo, { recursive: true, force: true }));


const me = { uid: process.geteuid!(), gid: process.getegid!() };
const CHANGED = { code: 'workload_api.caller_changed' };

describe('caller checks through held /proc files', () => {
  it('pass for a live, unchanged process again and again', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    await conn.ready;
    for (let i = 0; i < 3; i++) await expect(conn.verifyUnchanged()).resolves.toBeUndefined();
    conn.checkImage();
    conn.close();
  });

  it('refuse a process that has exited and been reaped since it connected', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    await conn.ready;
    await conn.verifyUnchanged();
    await reap(c);
    await expect(conn.verifyUnchanged()).rejects.toMatchObject(CHANGED);
    expect(() => conn.checkImage()).toThrow(expect.objectContaining(CHANGED) as Error);
    conn.close();
  });

  it('refuse once the pidfd fdinfo no longer names the pid (reaped), and after close', async () => {
    const c = await sleeper();
    const fd = 999_990; // a number no process holds: close() fails quietly on it
    writeFileSync(join(fdinfo, String(fd)), `pos:\t0\nflags:\t02000002\nPid:\t${c.pid}\n`);
    const conn = new CallerConnection({ pid: c.pid!, ...me, pidfd: fd }, '/proc', fdinfo);
    await conn.ready;
    await expect(conn.verifyUnchanged()).resolves.toBeUndefined();
    // Rewritten in place, as the kernel regenerates it on every read of the held file.
    writeFileSync(join(fdinfo, String(fd)), 'pos:\t0\nflags:\t02000002\nPid:\t-1\n');
    await expect(conn.verifyUnchanged()).rejects.toMatchObject(CHANGED);
    writeFileSync(join(fdinfo, String(fd)), `pos:\t0\nflags:\t02000002\nPid:\t${c.pid}\n`);
    await expect(conn.verifyUnchanged()).resolves.toBeUndefined();
    conn.close();
    await expect(conn.verifyUnchanged()).rejects.toMatchObject(CHANGED);
  });

  it('refuse a pidfd whose fdinfo cannot be read', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me, pidfd: 999_991 }, '/proc', fdinfo);
    await expect(conn.ready).rejects.toMatchObject(CHANGED);
    conn.close();
  });

  it('give the built-in attestors what the paths give, and nothing once the caller is reaped', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    await conn.ready;
    const unix = createUnixAttestor({ hashBinaries: false });
    const container = createContainerAttestor({});
    const signal = new AbortController().signal;
    const caller = { ...conn.caller };
    expect(await unix.attestWithFiles(caller, conn, signal)).toEqual(await unix.attest(caller, signal));
    expect(await container.attestWithFiles(caller, conn, signal)).toEqual(await container.attest(caller, signal));
    expect(await unix.attestWithFiles(caller, conn, signal)).toContain(`unix:uid:${me.uid}`);
    await reap(c);
    // Whoever gets the pid number next, the held files describe nobody now.
    await expect(unix.attestWithFiles(caller, conn, signal)).rejects.toMatchObject({ code: 'workload.process_gone' });
    await expect(container.attestWithFiles(caller, conn, signal)).rejects.toMatchObject({ code: 'workload.process_gone' });
    conn.close();
  });

  it('a caller reaped while it is attested: the attestors fail and the connection check refuses it', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    await conn.ready;
    const attestors = new Map<string, WorkloadAttestor>([
      ['unix', createUnixAttestor({ hashBinaries: false })],
      ['container', createContainerAttestor({})],
    ]);
    const logger = pino({ level: 'silent' });
    const ok = await attestCaller(conn.caller, attestors, logger, 5000, undefined, conn);
    expect(ok.failed).toEqual([]);
    await reap(c);
    const gone = await attestCaller(conn.caller, attestors, logger, 5000, undefined, conn);
    expect(gone.failed).toEqual(['container', 'unix']);
    expect(gone.selectors).toEqual([]);
    expect(() => conn.checkUnchanged()).toThrow(expect.objectContaining(CHANGED) as Error);
    conn.close();
  });

  it('never read the held files after close (their fd numbers may be reused)', async () => {
    const c = await sleeper();
    const conn = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    await conn.ready;
    conn.statusText();
    conn.cgroupText();
    conn.close();
    expect(() => conn.statusText()).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
    expect(() => conn.cgroupText()).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
    expect(() => conn.checkUnchanged()).toThrow(expect.objectContaining(CHANGED) as Error);
  });

  it('check nothing synchronously before the start time was captured', () => {
    const conn = new CallerConnection({ pid: 2 ** 30, ...me }, '/proc');
    expect(() => conn.checkUnchanged()).toThrow(expect.objectContaining(CHANGED) as Error);
    conn.close();
  });
});

describe('one attestation of a connection', () => {
  it('reads status twice: the baseline, which the built-in attestors get, and the check after them, compared with it', async () => {
    const c = await sleeper();
    const peer = new CallerConnection({ pid: c.pid!, ...me }, '/proc');
    const statusReads = vi.spyOn(peer, 'statusText');
    const unix = createUnixAttestor({ hashBinaries: false });
    const container = createContainerAttestor({});
    const seenByUnix: string[] = [];
    const realAttest = unix.attestWithFiles.bind(unix);
    unix.attestWithFiles = (caller, files: CallerProcFiles, signal) => {
      seenByUnix.push(files.statusText());
      return realAttest(caller, files, signal);
    };
    const session = { close() {}, destroy() {} } as unknown as ServerHttp2Session;
    const conn = new WorkloadConnection(peer, session, {
      attestors: new Map<string, WorkloadAttestor>([
        ['unix', unix],
        ['container', container],
      ]),
      logger: pino({ level: 'silent' }),
      attestTimeoutMs: 5000,
      selectorCacheMs: 60_000,
      schedule: timerDeadline,
      onCallerChanged: () => undefined,
    });
    const signal = new AbortController().signal;
    const expected = [...(await unix.attest({ ...peer.caller }, signal)), ...(await container.attest({ ...peer.caller }, signal))].sort();
    for (let i = 1; i <= 3; i++) {
      statusReads.mockClear();
      const a = await conn.attest(true);
      expect(a.failed).toEqual([]);
      expect(a.selectors).toEqual(expected);
      // Before the attestors (the baseline) and in the check after them: no third or fourth read.
      expect(statusReads).toHaveBeenCalledTimes(2);
      // The unix attestor's groups come from the baseline read itself.
      expect(seenByUnix[i - 1]).toBe(statusReads.mock.results[0]!.value);
      // Kept (steady credentials): the next call is answered from the cache, after one status read.
      statusReads.mockClear();
      expect(conn.cachedAttestation()).toBe(a);
      expect(statusReads).toHaveBeenCalledTimes(1);
    }
    expect(conn.poisoned).toBe(false);
    // A caller that is gone: refused as before.
    await reap(c);
    await expect(conn.attest(true)).rejects.toMatchObject({ message: expect.stringContaining('caller process changed') as string });
    expect(conn.poisoned).toBe(true);
    peer.close();
  });
});
