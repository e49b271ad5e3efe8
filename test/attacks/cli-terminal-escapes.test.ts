/**
 * Strings an attacker chooses reach the operator's terminal through the CLI's text output: a
 * foreign trust domain's bundle endpoint picks the text of the refresh error that
 * `sigil federation show|list` prints (e.g. `duplicate kid "<kid>"`, the kid taken from its
 * bundle), and the verifier's error messages that `main` prints quote what they refused. Before
 * this review these were written as they came: an ESC sequence could rewrite the screen (erase the
 * line and print a fake "OK"), set the window title or, on terminals that allow OSC 52, the
 * clipboard; a newline could forge further lines. Text output now shows every control character
 * (C0, DEL, C1, and the bidi overrides) as an escape.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { printEvidenceOutcome } from '../../src/cli/output.js';

const EVIL = '\x1b[2K\r\x1b]52;c;Y3VybCBldmlsfHNo\x07OK\nforged line\u009b31m\u202e';
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;
let dir: string;
let sock: string;
let server: Server;

function view(message: string): unknown {
  return {
    trustDomain: 'foreign.example',
    bundleEndpointUrl: 'https://foreign.example/bundle',
    profile: 'https_web',
    bundleSequence: null,
    bundleUpdatedAt: null,
    x509Authorities: 0,
    jwtAuthorities: 0,
    declaredInConfig: false,
    refresh: { consecutiveFailures: 3, lastError: { code: 'bundle.invalid', message, at: '2026-01-01T00:00:00.000Z' } },
    bundle: null,
  };
}

/** Run the CLI in-process; returns what it wrote to stdout and stderr. */
async function run(args: string[]): Promise<{ out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string | Uint8Array) => (out.push(String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => (err.push(String(s)), true)) as typeof process.stderr.write;
  const code = process.exitCode;
  try {
    await main(['node', 'sigil', ...args]);
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
    process.exitCode = code;
  }
  return { out: out.join(''), err: err.join('') };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-cli-esc-'));
  mkdirSync(join(dir, 'run'), { mode: 0o700 });
  sock = join(dir, 'run', 'admin.sock');
  server = createServer((req, res) => {
    if (req.url?.startsWith('/v1/admin/federations/foreign.example')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(view(`bundle: keys[1]: duplicate kid "${EVIL}"`)));
      return;
    }
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'entry.invalid', message: `selector "${EVIL}" is refused` } }));
  });
  await new Promise<void>((r) => server.listen(sock, r));
  chmodSync(sock, 0o600);
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

describe('attacker strings are escaped before they reach a terminal', () => {
  it('federation show: a foreign bundle endpoint chooses the refresh error text', async () => {
    const { out } = await run(['federation', 'show', 'foreign.example', '--admin-socket', sock]);
    expect(out).toContain('duplicate kid');
    expect(out).not.toMatch(CONTROL);
    expect(out).not.toContain('\nforged line');
  });

  it('an error message from the verifier is printed on one line, without control characters', async () => {
    const { err } = await run(['entry', 'delete', 'x', '--admin-socket', sock]);
    expect(err).toContain('entry.invalid');
    expect(err).not.toMatch(CONTROL);
    expect(err.trimEnd().split('\n')).toHaveLength(1);
  });

  it('an evidence verdict in text mode escapes selectors, claims and errors (JSON mode is JSON)', () => {
    const out: string[] = [];
    const ow = process.stdout.write.bind(process.stdout);
    const ew = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((s: string | Uint8Array) => (out.push(String(s)), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string | Uint8Array) => (out.push(String(s)), true)) as typeof process.stderr.write;
    try {
      printEvidenceOutcome({ ok: true, attestor: 'x', selectors: [`x:${EVIL}`], claims: { [`k${EVIL}`]: EVIL } }, false);
      printEvidenceOutcome({ ok: false, attestor: 'x', selectors: [], claims: {}, error: { code: 'x.bad', message: EVIL } }, false);
    } finally {
      process.stdout.write = ow;
      process.stderr.write = ew;
    }
    const text = out.join('');
    expect(text).not.toMatch(CONTROL);
    expect(text.split('\n').filter((l) => l !== '')).toHaveLength(4);
  });
});
