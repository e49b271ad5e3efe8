/**
 * The CLI's admin socket is trusted with what the operator does next: `sigil bundle show` and
 * `sigil x509 mint --write` hand out a trust bundle, `token generate` a join token, and the
 * operator acts on what `entry list` / `agent list` say. The verifier serves the socket with mode
 * 0600 in a directory no other user can change (DESIGN §10). Before this review the CLI connected
 * to whatever was at the path: a socket another user serves (mode 0666) or one in a directory
 * another user can write, where they could have replaced the verifier's socket with theirs, and
 * believed its answers. It now refuses both (`cli.admin_socket_untrusted`) before connecting.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, lchownSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';

const OTHER_UID = 65534;
const isRoot = process.geteuid?.() === 0;
let base: string;
const servers: Server[] = [];

/** A fake verifier on `path` that hands out a forged bundle; the socket gets `mode` (and owner `uid`). */
async function fakeVerifier(path: string, mode: number, uid?: number): Promise<void> {
  const s = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('-----BEGIN CERTIFICATE-----\nFORGED\n-----END CERTIFICATE-----\n');
  });
  servers.push(s);
  await new Promise<void>((resolve) => s.listen(path, resolve));
  chmodSync(path, mode);
  if (uid !== undefined) chownSync(path, uid, uid);
}

async function outcome(path: string): Promise<string> {
  try {
    await adminCall<string>(path, 'GET', '/v1/admin/bundle?format=pem', undefined, 2000);
    return 'answered';
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-cli-admin-'));
});
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  rmSync(base, { recursive: true, force: true });
});

describe('the CLI checks whose admin socket it talks to', () => {
  it('talks to a 0600 socket of its own user in a private directory (the verifier as it binds)', async () => {
    const d = join(base, 'ok');
    mkdirSync(d, { mode: 0o700 });
    await fakeVerifier(join(d, 'admin.sock'), 0o600);
    expect(await outcome(join(d, 'admin.sock'))).toBe('answered');
  });

  it.runIf(isRoot)('refuses a socket another user serves to everyone (mode 0666)', async () => {
    const d = join(base, 'other-user');
    mkdirSync(d, { mode: 0o755 });
    await fakeVerifier(join(d, 'admin.sock'), 0o666, OTHER_UID);
    expect(await outcome(join(d, 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it('refuses a socket connectable by others, whoever owns it', async () => {
    const d = join(base, 'open-mode');
    mkdirSync(d, { mode: 0o700 });
    await fakeVerifier(join(d, 'admin.sock'), 0o666);
    expect(await outcome(join(d, 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it('refuses a socket in a directory every user can write (someone could have put theirs there)', async () => {
    const d = join(base, 'world-writable');
    mkdirSync(d);
    chmodSync(d, 0o777);
    await fakeVerifier(join(d, 'admin.sock'), 0o600);
    expect(await outcome(join(d, 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it('refuses a socket in a sticky world-writable directory such as /tmp', async () => {
    const d = join(base, 'sticky');
    mkdirSync(d);
    chmodSync(d, 0o1777);
    await fakeVerifier(join(d, 'admin.sock'), 0o600);
    expect(await outcome(join(d, 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it('refuses a socket below a directory another user can write', async () => {
    const d = join(base, 'parent-writable');
    mkdirSync(join(d, 'run'), { recursive: true, mode: 0o700 });
    chmodSync(d, 0o777);
    await fakeVerifier(join(d, 'run', 'admin.sock'), 0o600);
    expect(await outcome(join(d, 'run', 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it.runIf(isRoot)('refuses a path through a symlink another user owns', async () => {
    const d = join(base, 'link');
    mkdirSync(join(d, 'real'), { recursive: true, mode: 0o700 });
    await fakeVerifier(join(d, 'real', 'admin.sock'), 0o600);
    symlinkSync(join(d, 'real'), join(d, 'via'));
    lchownSync(join(d, 'via'), OTHER_UID, OTHER_UID);
    expect(await outcome(join(d, 'via', 'admin.sock'))).toBe('cli.admin_socket_untrusted');
  });

  it('still reports a missing socket as unreachable', async () => {
    const d = join(base, 'missing');
    mkdirSync(d, { mode: 0o700 });
    expect(await outcome(join(d, 'admin.sock'))).toBe('cli.verifier_unreachable');
  });
});
