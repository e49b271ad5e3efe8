/** `sigil svid fetch|jwt` and the healthcheck probe against a running Workload API server. */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerSvidCommands, workloadHealthcheck } from '../../src/cli/svid-commands.js';
import { pemToDers } from '../../src/spiffe/pem.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { FakeSource, TD, makePki, startTestServer } from './support.js';

async function runCli(args: string[], env: Record<string, string | undefined> = {}): Promise<{ out: string; err: string; error: unknown; exitCode: number | undefined }> {
  const program = new Command('sigil').exitOverride();
  program.configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  registerSvidCommands(program);
  for (const c of program.commands) {
    c.exitOverride();
    for (const s of c.commands) s.exitOverride();
  }
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    err += String(s);
    return true;
  });
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  process.exitCode = undefined;
  let error: unknown;
  try {
    await program.parseAsync(['node', 'sigil', ...args]);
  } catch (x) {
    error = x;
  } finally {
    o.mockRestore();
    e.mockRestore();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  const exitCode = process.exitCode as number | undefined;
  process.exitCode = undefined;
  return { out, err, error, exitCode };
}

describe('sigil svid commands', () => {
  const source = new FakeSource(makePki());
  const dir = mkdtempSync(join(tmpdir(), 'sigil-cli-'));
  let t: Awaited<ReturnType<typeof startTestServer>>;
  beforeAll(async () => {
    source.addEntry({ id: 'a', spiffeId: `spiffe://${TD}/cli`, selectors: [`unix:uid:${process.getuid!()}`] });
    source.addEntry({ id: 'b', spiffeId: `spiffe://${TD}/cli-2`, selectors: [`unix:uid:${process.getuid!()}`], hint: 'second' });
    t = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]));
  });
  afterAll(async () => {
    await t.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(() => {
    process.exitCode = undefined;
  });

  it('svid fetch --write writes svid.pem (leaf first), key.pem 0600 and bundle.pem', async () => {
    const r = await runCli(['svid', 'fetch', '--socket', `unix://${t.socket}`, '--write', dir]);
    expect(r.error).toBeUndefined();
    expect(r.out).toContain(`SPIFFE ID: spiffe://${TD}/cli (default)`);
    expect(r.out).toContain('Hint: second');
    const chain = pemToDers(readFileSync(join(dir, 'svid.pem'), 'utf8'));
    expect(chain).toHaveLength(2);
    expect(new X509Certificate(chain[0]!).subjectAltName).toBe(`URI:spiffe://${TD}/cli`);
    expect(pemToDers(readFileSync(join(dir, 'bundle.pem'), 'utf8'))[0]!.equals(source.pki.rootDer)).toBe(true);
    expect(readFileSync(join(dir, 'key.pem'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(statSync(join(dir, 'key.pem')).mode & 0o777).toBe(0o600);
  });

  it('svid fetch --json uses SPIFFE_ENDPOINT_SOCKET when --socket is absent', async () => {
    const r = await runCli(['svid', 'fetch', '--json'], { SPIFFE_ENDPOINT_SOCKET: `unix:${t.socket}` });
    const j = JSON.parse(r.out) as { ok: boolean; svids: { spiffeId: string; chainLength: number; expiresAt: string }[] };
    expect(j.ok).toBe(true);
    expect(j.svids.map((s) => s.spiffeId)).toEqual([`spiffe://${TD}/cli`, `spiffe://${TD}/cli-2`]);
    expect(j.svids[0]!.chainLength).toBe(2);
    expect(Number.isNaN(Date.parse(j.svids[0]!.expiresAt))).toBe(false);
  });

  it('svid fetch --json reports a failure as JSON with exit code 1', async () => {
    const r = await runCli(['svid', 'fetch', '--json', '--timeout', '2', '--socket', join(dir, 'nothing.sock')]);
    const j = JSON.parse(r.out) as { ok: boolean; error: { code: string } };
    expect(j).toMatchObject({ ok: false, error: { code: 'workload_client.unavailable' } });
    expect(r.exitCode).toBe(1);
  });

  it('svid jwt prints one token, or the one for --spiffe-id', async () => {
    const r = await runCli(['svid', 'jwt', '--audience', 'db', '--socket', t.socket]);
    const token = r.out.trim();
    expect(token.split('.')).toHaveLength(3);
    expect((await source.validateJwtSvid(token, 'db')).spiffeId).toBe(`spiffe://${TD}/cli`);
    expect(r.err).toContain('1 more identity');
    const r2 = await runCli(['svid', 'jwt', '--audience', 'db', '--audience', 'q', '--spiffe-id', `spiffe://${TD}/cli-2`, '--socket', t.socket]);
    expect((await source.validateJwtSvid(r2.out.trim(), 'q')).spiffeId).toBe(`spiffe://${TD}/cli-2`);
    const r3 = await runCli(['svid', 'jwt', '--audience', 'db', '--spiffe-id', `spiffe://${TD}/not-mine`, '--socket', t.socket]);
    expect(r3.error).toMatchObject({ code: 'workload_client.permission_denied' });
  });

  it('usage errors: svid jwt without --audience, a tcp:// endpoint', async () => {
    const r = await runCli(['svid', 'jwt', '--socket', t.socket]);
    expect(r.error).toMatchObject({ code: 'cli.usage' });
    const r2 = await runCli(['svid', 'fetch'], { SPIFFE_ENDPOINT_SOCKET: 'tcp://127.0.0.1:1' });
    expect(r2.error).toMatchObject({ code: 'workload_client.bad_endpoint' });
  });

  it('workloadHealthcheck passes against a live agent and fails with a reason otherwise', async () => {
    await expect(workloadHealthcheck(`unix://${t.socket}`)).resolves.toBeUndefined();
    await expect(workloadHealthcheck(join(dir, 'nothing.sock'), 1000)).rejects.toMatchObject({ code: 'workload_client.unhealthy' });
  });
});
