/**
 * The check of paths this process trusts (configs, plugin modules, socket directories, dataDir:
 * util/trusted-path.ts) must judge every directory the kernel goes through, as the kernel goes
 * through it. It walked the path as written and the path's final real location, so two ways
 * through another user's directory passed:
 * (1) a symlink in the middle of the path whose own directory (not its target's) is another
 *     user's: that user renames the directory holding the link away and puts one with a link of
 *     their choosing in its place;
 * (2) `..` after a symlink: the kernel goes up from where the link leads, the check went up
 *     lexically (`/a/link/../x` was read as `/a/x`), so it judged a different file from the one
 *     read.
 * Runs as root (the suite does): uid 65534 plays the other user.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { resolvePluginModule } from '../../src/plugins/resolve.js';
import { readConfigFile } from '../../src/util/config-file.js';
import { checkSocketDir } from '../../src/util/socket-dir.js';
import { checkTrustedPath } from '../../src/util/trusted-path.js';

const OTHER = 65534;
const isRoot = process.geteuid?.() === 0;
const RULE = { code: 'test.untrusted', dir: 'test directory', leaf: 'test file', risk: 'the test file' };
let base: string;

function refusal(run: () => unknown): SigilError | 'accepted' {
  try {
    run();
    return 'accepted';
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
}

function dir(...parts: string[]): string {
  const d = join(base, ...parts);
  mkdirSync(d, { recursive: true, mode: 0o755 });
  chmodSync(d, 0o755);
  return d;
}

/**
 * `<base>/<name>/ours/via` → `<base>/<name>/theirs/hop` (a root-owned 0755 directory inside a
 * directory the other user owns), and `hop/next` → `<base>/<name>/safe`, where `file` is written.
 * The path `ours/via/next/<file>` ends in `safe`, whose directories are all root's.
 */
function throughTheirs(name: string, file: string, text: string): string {
  const ours = dir(name, 'ours');
  const theirs = dir(name, 'theirs');
  const hop = dir(name, 'theirs', 'hop');
  const safe = dir(name, 'safe');
  chownSync(theirs, OTHER, OTHER);
  symlinkSync(hop, join(ours, 'via'));
  symlinkSync(safe, join(hop, 'next'));
  writeFileSync(join(safe, file), text, { mode: 0o644 });
  return join(ours, 'via', 'next', file);
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-trusted-path-'));
  chmodSync(base, 0o755);
});
afterAll(async () => {
  await Promise.all(servers.map((srv) => new Promise((r) => srv.close(r))));
  rmSync(base, { recursive: true, force: true });
});
const servers: Server[] = [];

describe.skipIf(!isRoot)('a symlink in the middle of the path, held in another user\'s directory', () => {
  it('a config reached that way is refused, naming that directory', () => {
    const path = throughTheirs('config', 'verifier.yaml', 'plugins: {}\n');
    const e = refusal(() => readConfigFile(path));
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('config.insecure_path');
    expect((e as SigilError).message).toContain(join(base, 'config', 'theirs'));
    expect((e as SigilError).message).toContain(`uid ${OTHER}`);
  });

  it('a plugin module reached that way is refused', () => {
    const path = throughTheirs('plugin', 'x.mjs', 'export default {};\n');
    const e = refusal(() => resolvePluginModule('x', path, base));
    expect((e as SigilError).code).toBe('plugin.insecure_path');
  });

  it('a socket directory reached that way is refused', () => {
    const ours = dir('sock', 'ours');
    const theirs = dir('sock', 'theirs');
    const hop = dir('sock', 'theirs', 'hop');
    const run = dir('sock', 'run');
    chownSync(theirs, OTHER, OTHER);
    symlinkSync(hop, join(ours, 'via'));
    symlinkSync(run, join(hop, 'next'));
    const e = refusal(() => checkSocketDir(join(ours, 'via', 'next'), 'test.socket_dir_insecure', 'socket'));
    expect((e as SigilError).code).toBe('test.socket_dir_insecure');
    expect((e as SigilError).message).toContain(theirs);
  });

  it('the same path through root\'s directories only is accepted', () => {
    const ours = dir('fine', 'ours');
    const hop = dir('fine', 'mine', 'hop');
    const safe = dir('fine', 'safe');
    symlinkSync(hop, join(ours, 'via'));
    symlinkSync(safe, join(hop, 'next'));
    writeFileSync(join(safe, 'verifier.yaml'), 'plugins: {}\n', { mode: 0o644 });
    expect(refusal(() => readConfigFile(join(ours, 'via', 'next', 'verifier.yaml')))).toBe('accepted');
  });
});

describe.skipIf(!isRoot)('`..` after a symlink goes up from where the link leads', () => {
  it('a config named `ours/link/../verifier.yaml` is the file in the link target\'s parent, and that one is judged', () => {
    // ours/verifier.yaml is root's and fine; ours/link → theirs/sub, so ../verifier.yaml is theirs/verifier.yaml.
    const ours = dir('dotdot', 'ours');
    const theirs = dir('dotdot', 'theirs');
    dir('dotdot', 'theirs', 'sub');
    writeFileSync(join(ours, 'verifier.yaml'), 'plugins: {}\n', { mode: 0o644 });
    writeFileSync(join(theirs, 'verifier.yaml'), 'plugins: { evil: ./evil.mjs }\n', { mode: 0o644 });
    chownSync(theirs, OTHER, OTHER);
    chownSync(join(theirs, 'verifier.yaml'), OTHER, OTHER);
    symlinkSync(join(theirs, 'sub'), join(ours, 'link'));
    const path = `${ours}/link/../verifier.yaml`;
    const e = refusal(() => readConfigFile(path));
    expect((e as SigilError).code).toBe('config.insecure_path');
    expect((e as SigilError).message).toContain(theirs);
  });

  it('the CLI connects to the admin socket `ours/link/../admin.sock` only if that path, as walked, is trusted', async () => {
    const ours = dir('dotdot-sock', 'ours');
    const theirs = dir('dotdot-sock', 'theirs');
    dir('dotdot-sock', 'theirs', 'sub');
    const srv = createServer((_req, res) => res.end('forged'));
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(join(theirs, 'admin.sock'), r));
    chmodSync(join(theirs, 'admin.sock'), 0o600);
    chownSync(theirs, OTHER, OTHER);
    symlinkSync(join(theirs, 'sub'), join(ours, 'link'));
    const code = await adminCall<string>(`${ours}/link/../admin.sock`, 'GET', '/v1/admin/bundle', undefined, 2000).then(
      () => 'answered',
      (e: unknown) => (e instanceof SigilError ? e.code : String(e)),
    );
    expect(code).toBe('cli.admin_socket_untrusted');
  });

  it('checkTrustedPath returns the path the kernel reaches', () => {
    const a = dir('reach', 'a');
    dir('reach', 'b', 'c');
    symlinkSync(join(base, 'reach', 'b', 'c'), join(a, 'l'));
    writeFileSync(join(base, 'reach', 'b', 'f'), 'x', { mode: 0o644 });
    expect(checkTrustedPath(`${a}/l/../f`, 'file', RULE)).toBe(join(base, 'reach', 'b', 'f'));
  });
});
