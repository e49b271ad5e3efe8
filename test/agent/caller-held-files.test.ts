/**
 * CallerConnection (src/agent/workload-api/caller.ts) reads /proc/<pid>/stat, /proc/<pid>/status
 * and the pidfd's fdinfo through files held open for the connection's life. Real processes and
 * the real /proc (the pidfd's fdinfo is a stand-in file: the pid it names is what is checked):
 * the checks still refuse a caller that has gone, and nothing is read after close.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';
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
});
