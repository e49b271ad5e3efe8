/**
 * A CLI command whose stdout is a pipe nobody reads any more (`sigil svid fetch | head -1`) ends
 * quietly: no EPIPE stack trace, exit 0. Real pipes made by bash, the read end closed by the
 * consumer before the CLI writes.
 */
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { FakeSource, TD, makePki, startTestServer } from '../workload-api/support.js';

const root = resolve(__dirname, '../..');
const cli = `${JSON.stringify(process.execPath)} --import tsx ${JSON.stringify(join(root, 'test/support/run-cli.ts'))}`;

/**
 * Run `sigil ARGS | CONSUMER` in bash; returns the CLI's own exit status (PIPESTATUS[0]), its
 * stderr, and what the consumer printed.
 */
function piped(args: string[], consumer: string): Promise<{ status: number; err: string; out: string }> {
  const quoted = args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const script = `${cli} ${quoted} 2>"$ERRFILE" | ${consumer}; echo "status=\${PIPESTATUS[0]}"; cat "$ERRFILE"`;
  return new Promise((res, rej) => {
    const errFile = join(tmpdir(), `closed-stdout-${process.pid}-${Math.random().toString(36).slice(2)}.err`);
    execFile('bash', ['-c', `${script}; rm -f "$ERRFILE"`], { cwd: root, encoding: 'utf8', env: { ...process.env, ERRFILE: errFile }, timeout: 120_000 }, (error, stdout) => {
      if (error) return rej(error);
      const m = /^([\s\S]*?)status=(\d+)\n([\s\S]*)$/.exec(stdout);
      if (!m) return rej(new Error(`unexpected output: ${stdout}`));
      res({ out: m[1]!, status: Number(m[2]), err: m[3]! });
    });
  });
}

/** A consumer that closes the pipe's read end at once, so the CLI's first write meets EPIPE. */
const CLOSED_AT_ONCE = '{ exec 0<&-; sleep 0.1; }';

describe('sigil writing to a closed pipe', () => {
  const source = new FakeSource(makePki());
  let t: Awaited<ReturnType<typeof startTestServer>>;
  beforeAll(async () => {
    for (let i = 0; i < 3; i++) source.addEntry({ id: `e${i}`, spiffeId: `spiffe://${TD}/pipe/${i}`, selectors: [`unix:uid:${process.getuid!()}`], hint: `h${i}` });
    t = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]));
  });
  afterAll(async () => t?.cleanup());

  it('svid fetch into a pipe closed before it writes: exit 0, nothing on stderr', async () => {
    const r = await piped(['svid', 'fetch', '--socket', `unix://${t.socket}`], CLOSED_AT_ONCE);
    expect(r.err).toBe('');
    expect(r.status).toBe(0);
  });

  it('svid fetch | head -1: the first line arrives, no stack trace', async () => {
    const r = await piped(['svid', 'fetch', '--socket', `unix://${t.socket}`], 'head -1');
    expect(r.out).toBe(`SPIFFE ID: spiffe://${TD}/pipe/0 (default)\n`);
    expect(r.err).not.toMatch(/EPIPE|at .*\(|Error/);
    expect(r.status).toBe(0);
  });

  it('--help and --json output into a closed pipe end quietly too', async () => {
    const help = await piped(['--help'], CLOSED_AT_ONCE);
    expect(help).toMatchObject({ status: 0, err: '' });
    const json = await piped(['svid', 'fetch', '--json', '--socket', `unix://${t.socket}`], CLOSED_AT_ONCE);
    expect(json).toMatchObject({ status: 0, err: '' });
  }, 240_000);

  it('a failure before the pipe closes keeps its exit code and its one-line reason', async () => {
    const r = await piped(['svid', 'fetch', '--socket', `unix://${t.socket}.missing`, '--timeout', '2'], CLOSED_AT_ONCE);
    expect(r.status).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^sigil: /);
  });
});
