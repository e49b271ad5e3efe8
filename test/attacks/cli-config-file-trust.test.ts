/**
 * The daemon config decides everything the verifier trusts and runs: which plugin modules it
 * imports (`plugins`), the EK CAs and Intel/AMD pins, the admin socket, dataDir. Before this review
 * `sigil verifier run --config F` and `sigil agent run --config F` read F whoever could change it:
 * a config another user owns or can write, or one in a directory they can write (they replace the
 * file), handed them the verifier's trust policy and, through `plugins`, code run as the daemon.
 * Such a config is now refused (`config.insecure_path`) by the rule the socket directories, dataDir
 * and plugin modules follow (owned by this user or root, not group/world-writable, an ancestor
 * directory only with the sticky bit, symlinks owned by this user or root).
 */
import { chmodSync, chownSync, lchownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { readConfigFile } from '../../src/util/config-file.js';

const OTHER_UID = 65534;
const isRoot = process.geteuid?.() === 0;
let base: string;

function codeOf(path: string): string {
  try {
    readConfigFile(path);
    return 'read';
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

/** `<base>/<name>/verifier.yaml`, the directory 0755 and the file 0644. */
function config(name: string): string {
  const d = join(base, name);
  mkdirSync(d, { mode: 0o755 });
  chmodSync(d, 0o755);
  const f = join(d, 'verifier.yaml');
  writeFileSync(f, 'plugins: { evil: ./evil.mjs }\n', { mode: 0o644 });
  return f;
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-config-perm-'));
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('a config file another user could change is refused', () => {
  it('reads a config only this user or root can change', () => {
    expect(codeOf(config('ok'))).toBe('read');
  });

  it('refuses a world-writable config file', () => {
    const f = config('file-0666');
    chmodSync(f, 0o666);
    expect(codeOf(f)).toBe('config.insecure_path');
  });

  it('refuses a group-writable config file', () => {
    const f = config('file-0664');
    chmodSync(f, 0o664);
    expect(codeOf(f)).toBe('config.insecure_path');
  });

  it.runIf(isRoot)('refuses a config file another user owns', () => {
    const f = config('file-owner');
    chownSync(f, OTHER_UID, OTHER_UID);
    expect(codeOf(f)).toBe('config.insecure_path');
  });

  it('refuses a config in a directory another user can write', () => {
    const f = config('dir-0777');
    chmodSync(join(base, 'dir-0777'), 0o777);
    expect(codeOf(f)).toBe('config.insecure_path');
  });

  it.runIf(isRoot)('refuses a config reached through a symlink another user owns', () => {
    const f = config('link');
    const link = join(base, 'link', 'via.yaml');
    symlinkSync(f, link);
    lchownSync(link, OTHER_UID, OTHER_UID);
    expect(codeOf(link)).toBe('config.insecure_path');
  });
});
