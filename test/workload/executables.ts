/**
 * Real executables and real processes for the `unix` attestor's hashing tests: copies of
 * /usr/bin/sleep (each its own file, so its own hash-cache key), optionally padded with a hole to
 * a large apparent size (a sparse file: no disk used, but every byte is read and hashed), run as a
 * given uid. As root (CI) the processes really run under that uid; otherwise they run as the test's
 * own uid and the uid is only what the attestor is told, as SO_PEERCRED would tell it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach } from 'vitest';
import type { WorkloadCaller } from '../../src/plugins/types.js';

export const isRoot = process.getuid!() === 0;
export const MiB = 1024 * 1024;
const SLEEP = '/usr/bin/sleep';

export interface Executables {
  /** A new copy of sleep named `name`, `size` bytes long (a hole after the program). */
  file(name: string, size?: number): string;
  /** Run `path` (`sleep 30`) as `uid`; resolves once it runs. */
  run(path: string, uid: number): Promise<{ child: ChildProcess; caller: WorkloadCaller }>;
  /** Kill `child` and wait until it has been reaped. */
  reap(child: ChildProcess): Promise<void>;
}

/** A directory of executables for the test file, and its processes, all cleaned up after it. */
export function executables(): Executables {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-exe-'));
  chmodSync(dir, 0o755); // other uids run the files in it
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return {
    file(name, size) {
      const p = join(dir, name);
      copyFileSync(SLEEP, p);
      if (size !== undefined) truncateSync(p, size);
      chmodSync(p, 0o755);
      return p;
    },
    async run(path, uid) {
      const child = spawn(path, ['30'], { stdio: 'ignore', ...(isRoot ? { uid, gid: uid } : {}) });
      children.push(child);
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
      return { child, caller: { pid: child.pid!, uid, gid: uid } };
    },
    async reap(child) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

export function sha256Of(selectors: string[]): string | undefined {
  return selectors.find((s) => s.startsWith('unix:sha256:'))?.slice('unix:sha256:'.length);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` holds, checking every 5 ms; throws after `ms`. */
export async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}
