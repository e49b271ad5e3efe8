import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { cliArgv } from '../support/cli-argv.js';

const root = resolve(__dirname, '../..');
let tv: TestVerifier;

// Asynchronous on purpose: the verifier runs in this process and must keep answering.
function sigil(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    execFile(
      cliArgv()[0]!,
      [...cliArgv().slice(1), ...args],
      { cwd: root, encoding: 'utf8', env: { ...process.env, SIGIL_ADMIN_SOCKET: tv.adminSocket, ...env }, timeout: 60_000 },
      (error, stdout, stderr) => res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr }),
    );
  });
}

beforeAll(async () => {
  tv = await startTestVerifier();
});
afterAll(async () => tv?.stop());

describe('sigil CLI against a running verifier', () => {
  it('admin socket is mode 0600', () => {
    expect(statSync(tv.adminSocket).mode & 0o777).toBe(0o600);
  });

  it('manages entries and tokens, mints SVIDs that openssl accepts, with exit codes 0/1/2', async () => {
    const created = (await sigil(['entry', 'create', '--spiffe-id', 'spiffe://example.org/cli', '--parent-id', 'spiffe://example.org/node', '--selector', 'unix:uid:1', '--selector', 'unix:gid:2', '--json']));
    expect(created.code).toBe(0);
    const entry = JSON.parse(created.out) as { id: string; selectors: string[] };
    expect(entry.selectors).toEqual(['unix:gid:2', 'unix:uid:1']);
    const list = (await sigil(['entry', 'list', '--json']));
    expect((JSON.parse(list.out) as { entries: { id: string }[] }).entries.map((e) => e.id)).toContain(entry.id);

    const bad = (await sigil(['entry', 'create', '--spiffe-id', 'spiffe://example.org/cli/', '--parent-id', 'spiffe://example.org/node', '--selector', 'unix:uid:1']));
    expect(bad.code).toBe(1);
    expect(bad.err.trim().split('\n')).toHaveLength(1);
    expect(bad.err).toMatch(/entry\.invalid_spiffe_id/);
    expect((await sigil(['entry', 'create', '--spiffe-id', 'spiffe://example.org/x'])).code).toBe(2);
    expect((await sigil(['entry', 'frobnicate'])).code).toBe(2);
    expect((await sigil(['entry', 'delete', entry.id])).code).toBe(0);
    expect((await sigil(['entry', 'delete', entry.id])).code).toBe(1);

    const tok = (await sigil(['token', 'generate', '--ttl', '120', '--spiffe-id', 'spiffe://example.org/node/n1', '--json']));
    expect(tok.code).toBe(0);
    expect(JSON.parse(tok.out)).toMatchObject({ agentId: expect.stringMatching(/^spiffe:\/\/example\.org\/sigil\/agent\/join_token\//) });
    expect((await sigil(['token', 'generate', '--ttl', 'soon'])).code).toBe(2);

    const dir = mkdtempSync(join(tmpdir(), 'sigil-cli-'));
    const mint = (await sigil(['x509', 'mint', '--spiffe-id', 'spiffe://example.org/minted', '--ttl', '300', '--write', dir]));
    expect(mint.code).toBe(0);
    expect(statSync(join(dir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(execFileSync('openssl', ['verify', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'svid.pem')], { encoding: 'utf8' })).toMatch(/OK/);
    expect(readFileSync(join(dir, 'svid.pem'), 'utf8')).toMatch(/BEGIN CERTIFICATE/);

    const jwt = (await sigil(['jwt', 'mint', '--spiffe-id', 'spiffe://example.org/minted', '--audience', 'a', '--audience', 'b']));
    expect(jwt.code).toBe(0);
    const claims = JSON.parse(Buffer.from(jwt.out.trim().split('.')[1]!, 'base64url').toString()) as { sub: string; aud: string[] };
    expect(claims.sub).toBe('spiffe://example.org/minted');
    expect(claims.aud).toEqual(['a', 'b']);

    const pem = (await sigil(['bundle', 'show']));
    expect(pem.code).toBe(0);
    expect(pem.out).toMatch(/BEGIN CERTIFICATE/);
    const jwks = JSON.parse((await sigil(['bundle', 'show', '--format', 'spiffe'])).out) as { keys: unknown[]; spiffe_sequence: number };
    expect(jwks.keys.length).toBe(2);
    expect((await sigil(['bundle', 'show', '--format', 'xml'])).code).toBe(2);

    expect((await sigil(['agent', 'list', '--json'])).code).toBe(0);
    expect((await sigil(['agent', 'evict', 'spiffe://example.org/sigil/agent/join_token/none'])).code).toBe(1);
    expect((await sigil(['healthcheck'])).code).toBe(0);
  }, 240_000); // 17 CLI processes one after another, each compiling the CLI with tsx

  it('says clearly when the verifier is not reachable', async () => {
    const r = (await sigil(['entry', 'list'], { SIGIL_ADMIN_SOCKET: join(tmpdir(), 'no-such-sigil.sock') }));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/cli\.verifier_unreachable: cannot reach the verifier admin socket .* is the verifier running\?/);
  });
});
