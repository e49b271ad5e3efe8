/** Exit codes of usage errors (DESIGN §9: 2 = usage error), from the real CLI entry point. */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliArgv } from '../support/cli-argv.js';

const root = resolve(__dirname, '../..');

function sigil(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    execFile(cliArgv()[0]!, [...cliArgv().slice(1), ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) =>
      res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr }),
    );
  });
}

describe('sigil usage errors exit 2', () => {
  it('no arguments at all: usage on stderr, exit 2', async () => {
    const r = await sigil([]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^Usage: sigil /);
    expect(r.out).toBe('');
  });

  it('a command group without its subcommand, an unknown command or option: exit 2', async () => {
    const cases = [['agent'], ['entry'], ['svid'], ['evidence'], ['evidence', 'verify'], ['frobnicate'], ['--bogus'], ['svid', 'jwt'], ['svid', 'fetch', '--timeout', 'x']];
    const codes: (readonly [string, number | null])[] = [];
    // Three at a time: each is a Node process compiling the CLI through tsx.
    for (let i = 0; i < cases.length; i += 3) {
      codes.push(...(await Promise.all(cases.slice(i, i + 3).map(async (c) => [c.join(' '), (await sigil(c)).code] as const))));
    }
    expect(Object.fromEntries(codes)).toEqual(Object.fromEntries(cases.map((c) => [c.join(' '), 2])));
  }, 240_000);

  it('help asked for explicitly still exits 0, on stdout', async () => {
    for (const args of [['--help'], ['help'], ['agent', '--help'], ['help', 'entry'], ['--version']]) {
      const r = await sigil(args);
      expect({ args, code: r.code }).toEqual({ args, code: 0 });
      expect(r.out.length).toBeGreaterThan(0);
    }
  }, 240_000);
});
