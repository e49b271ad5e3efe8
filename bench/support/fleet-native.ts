/**
 * `bench/fleet.ts --client native`: the simulated agents' connections and held long-polls run in
 * bench/support/fleet-agents.c (one epoll loop, OpenSSL) instead of Node.js, driven over its standard
 * input and output with the same messages the worker threads of `--threads` take
 * (bench/support/fleet-worker.ts). With ten thousand agents in one Node.js process, that process's own
 * collections and answer batches (event-loop p99 20-30 ms) are part of every latency it measures; the
 * C client's share is the time to read a socket.
 *
 * Times crossing the pipe are CLOCK_MONOTONIC milliseconds (`monoNow()` here, `clock_gettime` there).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { WindowStats, WorkerAgent } from './fleet-worker.js';

/** CLOCK_MONOTONIC in milliseconds (libuv's high-resolution clock is that clock on Linux). */
export const monoNow = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Compiles the C client into `outDir` and returns its path; a clear error when no compiler or OpenSSL headers are there. */
export function buildNativeClient(outDir: string): string {
  const src = fileURLToPath(new URL('./fleet-agents.c', import.meta.url));
  const out = join(outDir, 'fleet-agents');
  mkdirSync(outDir, { recursive: true });
  try {
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', out, src, '-lssl', '-lcrypto'], { stdio: 'pipe' });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    const detail = err.code === 'ENOENT' ? 'no C compiler (cc) on PATH' : String(err.stderr ?? '').trim().split('\n').slice(0, 5).join('\n  ');
    throw new Error(`--client native: cannot build ${src} (it needs a C compiler and OpenSSL's headers; Debian: apt-get install gcc libssl-dev):\n  ${detail}`);
  }
  return out;
}

export class NativeAgents {
  failure: string | undefined;
  private readonly child: ChildProcess;
  private readonly waiters = new Map<string, ((rest: string) => void)[]>();
  private readonly exited: Promise<void>;

  constructor(binary: string, dir: string, agents: WorkerAgent[], ca: string, serverId: string, wait: number, onSeen: (id: string, create: boolean, i: number, at: number) => void) {
    const keys = join(dir, 'native-agents');
    mkdirSync(keys, { recursive: true, mode: 0o700 });
    writeFileSync(join(keys, 'ca.pem'), ca);
    const lines = [`ca ${join(keys, 'ca.pem')}`, `server ${serverId}`, `wait ${wait}`, 'concurrency 16'];
    for (const a of [...agents].sort((x, y) => x.i - y.i)) {
      const pem = join(keys, `${a.i}.pem`);
      writeFileSync(pem, a.tls.cert.trimEnd() + '\n' + a.tls.key, { mode: 0o600 });
      lines.push(`agent ${a.i} ${a.port} ${a.localAddress} ${pem}`);
    }
    writeFileSync(join(keys, 'agents.txt'), lines.join('\n') + '\n');
    this.child = spawn(binary, [join(keys, 'agents.txt')], { stdio: ['pipe', 'pipe', 'inherit'] });
    // 'close' (not 'exit'): it comes after the child's output has been read, so a `failed` line it
    // printed is the failure reported. A child that could not be started has 'error' and no 'close'.
    const release = (): void => {
      for (const list of this.waiters.values()) for (const w of list.splice(0)) w('');
    };
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        if (code !== 0) this.failure ??= `native load generator exited (${signal ?? `status ${String(code)}`})`;
        release();
        resolve();
      });
      this.child.once('error', (e) => {
        this.failure ??= `native load generator: ${e.message}`;
        release();
        if (this.child.pid === undefined) resolve(); // never started: no 'close' follows
      });
    });
    const rl = createInterface({ input: this.child.stdout as NodeJS.ReadableStream });
    rl.on('line', (line) => {
      const sp = line.indexOf(' ');
      const kind = sp < 0 ? line : line.slice(0, sp);
      const rest = sp < 0 ? '' : line.slice(sp + 1);
      if (kind === 'seen') {
        const [id, create, i, at] = rest.split(' ');
        onSeen(id as string, create === '1', Number(i), Number(at));
      } else if (kind === 'failed') this.failure ??= `native load generator: ${rest}`;
      else this.waiters.get(kind)?.shift()?.(rest);
    });
  }

  private ask(command: string, reply: string): Promise<string> {
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(new Error(this.failure));
      const list = this.waiters.get(reply) ?? [];
      list.push((rest) => (this.failure ? reject(new Error(this.failure)) : resolve(rest)));
      this.waiters.set(reply, list);
      this.child.stdin?.write(`${command}\n`);
    });
  }

  async start(): Promise<number> {
    return Number(await this.ask('start', 'started'));
  }

  measure(): void {
    this.child.stdin?.write('measure 1\n');
  }

  async window(): Promise<WindowStats[]> {
    return [JSON.parse(await this.ask('measure 0', 'window')) as WindowStats];
  }

  /** A change made at `t0` (monoNow() ms): the client reports each of `affected` once it holds the new set. */
  op(id: string, create: boolean, t0: number, affected: number[]): void {
    if (!/^[A-Za-z0-9_.:-]{1,127}$/.test(id)) throw new Error(`entry ID ${id} cannot go on the native client's command line`);
    this.child.stdin?.write(`op ${id} ${create ? 1 : 0} ${t0.toFixed(3)} ${affected.join(',')}\n`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) await this.ask('stop', 'stopped').catch(() => undefined);
    await this.exited;
  }
}
