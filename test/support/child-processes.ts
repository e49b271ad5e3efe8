/** Real child processes for tests of the /proc-based caller checks: started, reaped, cleaned up. */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach } from 'vitest';

/** Children to kill after each test of the file that calls this. */
export function childProcesses(): { sleeper: () => Promise<ChildProcess>; reap: (c: ChildProcess) => Promise<void> } {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });
  return {
    /** A `sleep 30` child, once it has started. */
    sleeper: async () => {
      const c = spawn('sleep', ['30'], { stdio: 'ignore' });
      children.push(c);
      await new Promise((r) => c.once('spawn', r));
      return c;
    },
    /** Kill `c` and wait until it has been reaped (its pid is then free for reuse). */
    reap: async (c) => {
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await exited;
    },
  };
}
