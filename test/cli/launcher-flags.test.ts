/**
 * bin/sigil is a sh launcher that execs Node: the agent daemon (`agent run`) gets a small young
 * generation and no allocation-site pretenuring (docs/agent.md "Memory"), every other command,
 * the verifier's included, Node's defaults. A fake `node` first on PATH records what the launcher
 * runs.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const LAUNCHER = fileURLToPath(new URL('../../bin/sigil', import.meta.url));

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-launcher-'));
  // Prints each argument on a line of its own, then exits.
  writeFileSync(join(dir, 'node'), '#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n');
  chmodSync(join(dir, 'node'), 0o755);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The arguments the launcher gives `node` for `args`. */
function launched(...args: string[]): string[] {
  const out = execFileSync('sh', [LAUNCHER, ...args], { env: { PATH: `${dir}:/usr/bin:/bin` }, encoding: 'utf8' });
  return out.split('\n').slice(0, -1);
}

describe('bin/sigil launcher', () => {
  it('starts the agent daemon with its young-generation flags', () => {
    expect(launched('agent', 'run', '--config', 'a b.yaml')).toEqual(['--max-semi-space-size=4', '--no-allocation-site-pretenuring', LAUNCHER, 'agent', 'run', '--config', 'a b.yaml']);
  });

  it('gives every other command Node\'s defaults, arguments untouched', () => {
    expect(launched('verifier', 'run', '--config', 'v.yaml')).toEqual([LAUNCHER, 'verifier', 'run', '--config', 'v.yaml']);
    expect(launched('entry', 'create', '--spiffe-id', 'spiffe://example.org/x')).toEqual([LAUNCHER, 'entry', 'create', '--spiffe-id', 'spiffe://example.org/x']);
    expect(launched('verifier', 'healthcheck')).toEqual([LAUNCHER, 'verifier', 'healthcheck']);
    expect(launched('agent')).toEqual([LAUNCHER, 'agent']);
    expect(launched()).toEqual([LAUNCHER]);
  });

  it('is a JavaScript module after the launcher lines', () => {
    // Node reads the file too: the sh line must stay a string statement and a comment to it.
    const second = readFileSync(LAUNCHER, 'utf8').split('\n')[1] as string;
    expect(second.startsWith("':' //;")).toBe(true);
  });
});
