/**
 * `sigil evidence verify aws-nitro` run in-process through commander: real documents (raw, hex and
 * base64 input), --json output, exit codes 0/1/2, --at, --allow-debug, --nonce and --root.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { decode } from 'cbor2';
import { Command } from 'commander';
import { afterEach, describe, expect, it } from 'vitest';
import { registerNitroEvidence } from '../../src/cli/evidence-commands.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();
const dir = mkdtempSync(join(tmpdir(), 'sigil-nitro-cli-'));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  json: { ok: boolean; attestor: string; selectors: string[]; claims: Record<string, unknown>; error?: { code: string; message: string } } | undefined;
}

async function sigil(...args: string[]): Promise<Run> {
  const verify = new Command('verify').exitOverride();
  registerNitroEvidence(verify);
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => ((stderr += String(c)), true)) as typeof process.stderr.write;
  process.exitCode = undefined;
  try {
    await verify.parseAsync(['aws-nitro', ...args], { from: 'user' });
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = undefined;
  const json = args.includes('--json') ? (JSON.parse(stdout.trim()) as Run['json']) : undefined;
  return { code, stdout, stderr, json };
}

afterEach(() => {
  process.exitCode = undefined;
});

describe.skipIf(!have)('sigil evidence verify aws-nitro', () => {
  const marlin = td('nitro', 'marlin-aws.cbor');
  const marlinAt = '2024-12-13T07:37:58.960Z';

  it('verifies a raw document at its own time (--json, exit 0)', async () => {
    const r = await sigil(marlin, '--at', marlinAt, '--json');
    expect(r.code).toBe(0);
    expect(r.json?.ok).toBe(true);
    expect(r.json?.attestor).toBe('aws_nitro');
    expect(r.json?.selectors).toContain('aws_nitro:module_id:i-0f1cd77d37fd8bcc9-enc018e7aa61e2040ff');
    expect(r.json?.selectors).toContain('aws_nitro:instance_id:i-0f1cd77d37fd8bcc9');
    expect(r.json?.claims.freshness).toMatch(/not applied offline/);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
  });

  it('accepts hex and base64 input and prints a verdict without --json', async () => {
    const hexFile = join(dir, 'marlin.hex');
    writeFileSync(hexFile, readFileSync(marlin).toString('hex') + '\n');
    expect((await sigil(hexFile, '--at', marlinAt, '--json')).code).toBe(0);
    const r = await sigil(td('nitro', 'evervault-beta-valid.cbor'), '--at', '2022-10-13T08:58:02.136Z');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^OK aws_nitro/);
    expect(r.stdout).toMatch(/selector aws_nitro:pcr8:/);
  });

  it('debug document: exit 1 by default, 0 with --allow-debug', async () => {
    const f = td('nitro', 'evervault-debug.b64');
    const at = '2023-09-18T15:03:30.860Z';
    const r = await sigil(f, '--at', at, '--json');
    expect(r.code).toBe(1);
    expect(r.json?.ok).toBe(false);
    expect(r.json?.error?.code).toBe('nitro.debug_enclave');
    const r2 = await sigil(f, '--at', at, '--allow-debug', '--json');
    expect(r2.code).toBe(0);
    expect(r2.json?.selectors).toContain('aws_nitro:debug:true');
    const plain = await sigil(f, '--at', at);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toMatch(/^REJECTED aws_nitro: nitro\.debug_enclave/);
  });

  it('custom root: rejected against the AWS pin, accepted with --root', async () => {
    const f = td('nitro', 'marlin-custom-root.cbor');
    const at = '2024-12-13T09:05:45.008Z';
    const r = await sigil(f, '--at', at, '--json');
    expect(r.code).toBe(1);
    expect(r.json?.error?.code).toBe('nitro.untrusted_root');
    const cose = decode(readFileSync(f), { preferMap: true }) as Uint8Array[];
    const root = ((decode(cose[2] as Uint8Array, { preferMap: true }) as Map<string, unknown>).get('cabundle') as Uint8Array[])[0] as Uint8Array;
    const pem = join(dir, 'custom-root.pem');
    writeFileSync(pem, new X509Certificate(root).toString());
    expect((await sigil(f, '--at', at, '--root', pem, '--json')).code).toBe(0);
    // the AWS root given explicitly behaves like the default
    expect((await sigil(marlin, '--at', marlinAt, '--root', td('nitro', 'aws-nitro-root-g1.pem'), '--json')).code).toBe(0);
    const notPem = join(dir, 'not.pem');
    writeFileSync(notPem, 'hello');
    expect((await sigil(marlin, '--at', marlinAt, '--root', notPem, '--json')).json?.error?.code).toBe('nitro.bad_root_cert');
  });

  it('--nonce must match', async () => {
    const f = td('nitro', 'evervault-beta-valid.cbor');
    const at = '2022-10-13T08:58:02.136Z';
    const cose = decode(readFileSync(f), { preferMap: true }) as Uint8Array[];
    const nonce = Buffer.from((decode(cose[2] as Uint8Array, { preferMap: true }) as Map<string, unknown>).get('nonce') as Uint8Array).toString('hex');
    expect((await sigil(f, '--at', at, '--nonce', nonce, '--json')).code).toBe(0);
    const r = await sigil(f, '--at', at, '--nonce', 'ab'.repeat(32), '--json');
    expect(r.code).toBe(1);
    expect(r.json?.error?.code).toBe('nitro.nonce_mismatch');
  });

  it('without --at the time is now: expired certificates are rejected', async () => {
    const r = await sigil(marlin, '--json');
    expect(r.code).toBe(1);
    expect(r.json?.error?.code).toBe('nitro.cert_expired');
  });

  it('usage errors exit 2; unreadable files exit 1', async () => {
    const r = await sigil(marlin, '--at', 'yesterday', '--json');
    expect(r.code).toBe(2);
    expect(r.json?.error?.code).toBe('cli.usage');
    expect((await sigil(marlin, '--nonce', 'xyz')).code).toBe(2);
    const missing = await sigil(join(dir, 'nope.cbor'), '--json');
    expect(missing.code).toBe(1);
    expect(missing.json?.error?.code).toBe('input.unreadable');
  });
});
