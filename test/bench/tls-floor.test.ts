/**
 * bench/tls-floor.ts: the memory floor the fleet's RSS goal is judged against. It must really hold
 * the connections it reports (the server counts them, and the bench fails when the count differs),
 * report both modes, and name a bad argument.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const BENCH = fileURLToPath(new URL('../../bench/tls-floor.ts', import.meta.url));

function run(args: string[], nofile?: number): Promise<{ code: number; out: string; err: string }> {
  const argv = [process.execPath, '--import', 'tsx', BENCH, ...args];
  const cmd = nofile === undefined ? argv : ['prlimit', `--nofile=${nofile}:${nofile}`, '--', ...argv];
  return new Promise((resolve) => {
    execFile(cmd[0] as string, cmd.slice(1), { timeout: 60_000 }, (e, out, err) => {
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, out, err });
    });
  });
}

describe('bench/tls-floor.ts', () => {
  it('holds the connections it reports, with and without client certificates', async () => {
    const r = await run(['--connections', '40']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const line = (mode: string): RegExpMatchArray => {
      const m = new RegExp(`^${mode}: 40 idle kept-alive connections .*server RSS (\\d+) MB → (\\d+) MB \\(\\+(-?[\\d.]+) KiB per connection\\)`, 'm').exec(r.out);
      if (!m) throw new Error(`no ${mode} line in:\n${r.out}`);
      return m;
    };
    line('server TLS');
    const mutual = line('mutual TLS');
    expect(Number(mutual[2])).toBeGreaterThan(20);
  }, 60_000);

  it('names a bad argument', async () => {
    const r = await run(['--connections', '0']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/--connections must be a whole number from 1 to 50000/);
    const m = await run(['--mode', 'tls13']);
    expect(m.code).toBe(1);
    expect(m.err).toMatch(/--mode must be mutual, server or both/);
  }, 60_000);

  it('says what open-file limit it needs when it cannot have it, before opening anything', async () => {
    const r = await run(['--connections', '1000'], 400);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/--connections 1000 needs an open-file limit of at least 1256; this process has 400 \(hard limit 400\)/);
    expect(r.out).toBe('');
  }, 60_000);
});
