/**
 * HeldProcFile (src/workload/proc.ts): a /proc/<pid>/ file held open stays bound to the process it
 * was opened for. Real processes and the real /proc: the Workload API's caller checks rely on the
 * kernel failing a read of a reaped process's held file (whoever gets its pid number next).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HeldProcFile, parseStatStartTime, parseStatus } from '../../src/workload/proc.js';
import { childProcesses } from '../support/child-processes.js';

const { sleeper, reap } = childProcesses();


describe('HeldProcFile', () => {
  it('reads the live process again from the start on every read', async () => {
    const c = await sleeper();
    const stat = HeldProcFile.openSync(`/proc/${c.pid}/stat`, 8192);
    const status = HeldProcFile.openSync(`/proc/${c.pid}/status`, 64 * 1024);
    const a = stat.read().toString('utf8');
    expect(a.startsWith(`${c.pid} (sleep) `)).toBe(true);
    expect(parseStatStartTime(stat.read().toString('utf8'))).toBe(parseStatStartTime(a));
    expect(parseStatus(status.read().toString('utf8')).uids[1]).toBe(process.geteuid!());
    expect(parseStatus(status.read().toString('utf8')).uids[1]).toBe(process.geteuid!());
    stat.close();
    status.close();
  });

  it('fails with workload.process_gone once the process has been reaped', async () => {
    const c = await sleeper();
    const stat = HeldProcFile.openSync(`/proc/${c.pid}/stat`, 8192);
    const status = HeldProcFile.openSync(`/proc/${c.pid}/status`, 64 * 1024);
    stat.read();
    await reap(c);
    expect(() => stat.read()).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
    expect(() => status.read()).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
    stat.close();
    status.close();
  });

  it('never reads after close (the fd number may belong to another file by then)', async () => {
    const c = await sleeper();
    const stat = HeldProcFile.openSync(`/proc/${c.pid}/stat`, 8192);
    stat.close();
    stat.close();
    expect(() => stat.read()).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
  });

  it('a process already gone cannot be opened; a file over the bound is refused', () => {
    expect(() => HeldProcFile.openSync('/proc/999999999/stat')).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
    const dir = mkdtempSync(join(tmpdir(), 'sigil-held-'));
    try {
      expect(() => HeldProcFile.openSync(join(dir, 'missing'))).toThrow(expect.objectContaining({ code: 'workload.process_gone' }) as Error);
      writeFileSync(join(dir, 'big'), 'x'.repeat(100));
      const f = HeldProcFile.openSync(join(dir, 'big'), 99);
      expect(() => f.read()).toThrow(expect.objectContaining({ code: 'workload.proc_file_too_large' }) as Error);
      f.close();
      const g = HeldProcFile.openSync(join(dir, 'big'), 100);
      expect(g.read().length).toBe(100);
      writeFileSync(join(dir, 'big'), 'y'.repeat(20)); // same inode, new contents: read from the start again
      expect(g.read().toString()).toBe('y'.repeat(20));
      g.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
