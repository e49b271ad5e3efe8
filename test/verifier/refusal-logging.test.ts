/**
 * Issue 11 item 6: expected refusals (attest.busy, every refused attestation) were logged as
 * errors with stack traces and the message twice, so a flood filled the disk. Now a refusal is one
 * `warn` line without a stack, at most 5 per error code per 10 s with a count of what was left out;
 * an unexpected failure is still an `error` with its stack. Checked on the verifier's pino output.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';
import { httpsJson } from '../support/verifier.js';

interface Line {
  level: number;
  msg: string;
  code?: string;
  suppressed?: number;
  err?: string;
  stack?: string;
  [k: string]: unknown;
}

let dir = '';
let v: RunningVerifier;
let caPem: string;
let clock = Date.now();
const lines: Line[] = [];

// A plugin whose begin fails with a plain Error: a bug, not a refusal.
const BUGGY = `export default { nodeAttestorVerifier: { name: 'buggy', configSchema: { type: 'object' },
  create() { return { async begin() { throw new TypeError('cannot read properties of undefined'); }, async finish() { throw new Error('unreachable'); } }; } } };\n`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-log-'));
  writeFileSync(join(dir, 'buggy.mjs'), BUGGY);
  const cfg = verifierConfigFrom(
    {
      trustDomain: 'example.org',
      listen: { address: '127.0.0.1', port: 0 },
      adminSocket: join(dir, 'admin.sock'),
      dataDir: join(dir, 'data'),
      nodeAttestors: { join_token: {}, buggy: {} },
      plugins: { buggy: join(dir, 'buggy.mjs') },
      attestation: { maxSessions: 3, reservedSessions: 0 },
    },
    dir,
  );
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Line);
      cb();
    },
  });
  v = await startVerifier(cfg, { logger: pino({ level: 'info' }, sink), tickMs: 0, now: () => new Date(clock) });
  caPem = await adminCall<string>(join(dir, 'admin.sock'), 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => {
  await v?.close();
  rmSync(dir, { recursive: true, force: true });
});

const hello = (attestors: Record<string, unknown>) => httpsJson(v.port, 'POST', '/v1/attest', { caPem, body: { attestors, csr: createCsr(generateKey('ec-p256')).toString('base64') } });
const since = (n: number) => lines.slice(n);
const settle = () => new Promise((r) => setTimeout(r, 50));

describe('refusal logging', () => {
  it('a refused attestation is one warn line: no stack, the reason once', async () => {
    const n = lines.length;
    const r = await hello({ join_token: { token: 'x'.repeat(32) } });
    expect(r.status).toBe(401);
    const reason = (r.body as { error: { message: string } }).error.message;
    await settle();
    const got = since(n).filter((l) => l.level >= 40);
    expect(got).toHaveLength(1);
    const line = got[0] as Line;
    expect(line.level).toBe(30 + 10); // warn
    expect(line.code).toBe((r.body as { error: { code: string } }).error.code);
    expect(line.err).toBeUndefined();
    expect(JSON.stringify(line)).not.toMatch(/stack| {4}at /);
    expect(JSON.stringify(line).split(reason).length - 1).toBe(1);
  });

  it('a flood of one refusal logs at most 5 lines per 10 s; the next line says how many were left out', async () => {
    clock += 10_000; // a fresh window for this code
    const n = lines.length;
    for (let i = 0; i < 30; i++) await hello({ join_token: { token: `${'y'.repeat(31)}${i % 10}` } });
    await settle();
    const flood = since(n).filter((l) => l.level >= 40);
    expect(flood).toHaveLength(5);
    clock += 10_000;
    await hello({ join_token: { token: 'z'.repeat(32) } });
    await settle();
    const next = since(n + flood.length).filter((l) => l.level >= 40);
    expect(next).toHaveLength(1);
    expect(next[0]?.suppressed).toBe(25);
    const metrics = await httpsJson(v.port, 'GET', '/metrics', { caPem });
    expect(String(metrics.body)).toMatch(new RegExp(`sigil_refusals_total\\{code="${String(next[0]?.code).replace('.', '\\.')}"\\} 3[2-9]`));
  });

  it('a reason quoting the request is cut short in the log', async () => {
    const n = lines.length;
    const r = await hello({ ['a'.repeat(5000)]: {} });
    expect((r.body as { error: { code: string } }).error.code).toBe('attest.unknown_attestor');
    await settle();
    const got = since(n).filter((l) => l.code === 'attest.unknown_attestor');
    expect(got).toHaveLength(1);
    expect(JSON.stringify(got[0]).length).toBeLessThan(1000);
    expect(got[0]?.msg).toMatch(/… \(\d+ characters\)$/);
  });

  it('attest.busy is a warn line without a stack', async () => {
    clock += 10_000;
    const tokens = await Promise.all(Array.from({ length: 4 }, () => adminCall<{ token: string }>(join(dir, 'admin.sock'), 'POST', '/v1/admin/tokens', {})));
    const n = lines.length;
    const rs = [];
    for (const t of tokens) rs.push(await hello({ join_token: { token: t.token } }));
    expect(rs.map((r) => r.status)).toEqual([200, 200, 200, 503]);
    await settle();
    const busy = since(n).filter((l) => l.code === 'attest.busy');
    expect(busy).toHaveLength(1);
    expect(busy[0]?.level).toBe(40);
    expect(busy[0]?.err).toBeUndefined();
  });

  it('an unexpected failure is still an error line with its stack', async () => {
    clock += 60_000; // the sessions above have expired
    const n = lines.length;
    const r = await hello({ buggy: {} });
    expect(r.status).toBe(500);
    await settle();
    const errs = since(n).filter((l) => l.level >= 50);
    expect(errs).toHaveLength(1);
    expect(errs[0]?.err).toContain('cannot read properties of undefined');
    expect(errs[0]?.stack).toMatch(/TypeError: cannot read properties of undefined\n\s+at /);
  });
});
