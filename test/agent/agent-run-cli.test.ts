/** `sigil agent run`: startup failures exit 1 with one line; an unreachable verifier is retried, SIGTERM stops cleanly. */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { freePort, waitFor } from './harness.js';

const runner = fileURLToPath(new URL('./fixtures/run-cli.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'sigil-agent-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(args: string[]) {
  const child = spawn(process.execPath, ['--import', 'tsx', runner, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '', code: undefined as number | null | undefined };
  child.stdout.on('data', (c: Buffer) => (out.stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out.stderr += c.toString()));
  const done = new Promise<void>((r) => child.on('exit', (code) => ((out.code = code), r())));
  return { child, out, done };
}

function caPem(): string {
  const k = generateKey('ec-p256');
  return certsToPem([issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) })]);
}

describe('sigil agent run', () => {
  it('exits 1 with a one-line reason on a bad config', async () => {
    const cfg = join(dir, 'bad.yaml');
    writeFileSync(cfg, 'trustDomain: example.org\nverifier: { address: 127.0.0.1, port: "x" }\ntrustBundle: b.pem\ndataDir: d\nnodeAttestors: { join_token: { token: aaaaaaaaaaaaaaaaaaaa } }\n');
    const r = run(['agent', 'run', '--config', cfg]);
    await r.done;
    expect(r.out.code).toBe(1);
    expect(r.out.stderr.trim().split('\n')).toEqual(['sigil: config.invalid: agent config: /verifier/port must be integer']);
  }, 30_000);

  it('exits 1 when a plugin config is wrong or the trust bundle is missing', async () => {
    const cfg = join(dir, 'plugin.yaml');
    writeFileSync(cfg, `trustDomain: example.org\nverifier: { address: 127.0.0.1 }\ntrustBundle: missing.pem\ndataDir: ${join(dir, 'd1')}\nworkloadApiSocket: ${join(dir, 'a1.sock')}\nnodeAttestors: { join_token: { token: short } }\n`);
    const r = run(['agent', 'run', '--config', cfg]);
    await r.done;
    expect(r.out.code).toBe(1);
    expect(r.out.stderr).toMatch(/^sigil: join_token\.config_invalid: plugin "join_token" config/);
    writeFileSync(cfg, `trustDomain: example.org\nverifier: { address: 127.0.0.1 }\ntrustBundle: missing.pem\ndataDir: ${join(dir, 'd1')}\nworkloadApiSocket: ${join(dir, 'a1.sock')}\nnodeAttestors: { join_token: { token: aaaaaaaaaaaaaaaaaaaa } }\n`);
    const r2 = run(['agent', 'run', '--config', cfg]);
    await r2.done;
    expect(r2.out.code).toBe(1);
    expect(r2.out.stderr).toMatch(/^sigil: agent\.trust_bundle_unreadable: cannot read trustBundle .*missing\.pem/);
  }, 30_000);

  it('keeps retrying an unreachable verifier, logs JSON to stdout, and stops cleanly on SIGTERM', async () => {
    const port = await freePort();
    writeFileSync(join(dir, 'bundle.pem'), caPem());
    const cfg = join(dir, 'agent.yaml');
    writeFileSync(
      cfg,
      [
        'trustDomain: example.org',
        `verifier: { address: 127.0.0.1, port: ${port} }`,
        'trustBundle: bundle.pem',
        `dataDir: ${join(dir, 'd2')}`,
        `workloadApiSocket: ${join(dir, 'a2.sock')}`,
        'nodeAttestors: { join_token: { token: aaaaaaaaaaaaaaaaaaaa } }',
        'workloadAttestors: { unix: { hashBinaries: false } }',
        '',
      ].join('\n'),
    );
    const r = run(['agent', 'run', '--config', cfg]);
    await waitFor(() => r.out.stdout.includes('agent.verifier_unreachable'), 20_000, 'unreachable verifier logged');
    const lines = r.out.stdout.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; code?: string; svc: string });
    expect(lines.every((l) => l.svc === 'sigil-agent')).toBe(true);
    expect(lines.map((l) => l.msg)).toContain('agent running');
    expect(lines.find((l) => l.code === 'agent.verifier_unreachable')!.msg).toBe('node attestation failed');
    expect(r.out.code).toBeUndefined();
    r.child.kill('SIGTERM');
    await r.done;
    expect(r.out.code).toBe(0);
    expect(r.out.stdout).toContain('"msg":"agent stopped"');
  }, 40_000);
});
