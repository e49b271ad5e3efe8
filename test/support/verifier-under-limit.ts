/** A real verifier process started under a lowered open-file limit (prlimit), for start-up checks. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';

/**
 * Run test/support/run-verifier.ts with `config` under an open-file limit of `limit` until it says
 * READY, stop it, and return what it printed (stdout and stderr). `root` is the repository root.
 */
export async function startupOutputUnder(root: string, config: string, limit: number): Promise<string> {
  const child = spawn('prlimit', [`--nofile=${limit}:${limit}`, '--', process.execPath, '--import', 'tsx', join(root, 'test/support/run-verifier.ts'), config], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  try {
    await new Promise<void>((res, rej) => {
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('READY')) res();
      });
      child.once('exit', (code) => rej(new Error(`verifier exited early (${code}): ${err}`)));
    });
  } finally {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  }
  return out + err;
}
