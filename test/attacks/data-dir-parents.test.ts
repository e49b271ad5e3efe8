/**
 * `dataDir` holds the CA keys (verifier) and the node key (agent). It was checked alone: owned by
 * this user, made 0700. A directory above it that another user can write (or owns) lets that user
 * rename `dataDir` away while the daemon runs and put their own in its place — the next CA key is
 * then written into their directory, and after a restart the verifier loads whatever key file they
 * left there. Now every directory above `dataDir` must pass the socket-directory rule (owned by
 * this user or root, not group/world-writable unless sticky, symlinks judged as the kernel walks
 * them): `<area>.data_dir_parent_insecure`, naming the directory.
 * Runs as root (the suite does): uid 65534 plays the other user.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { preparePrivateDir } from '../../src/util/private-dir.js';

const OTHER = 65534;
const isRoot = process.geteuid?.() === 0;
let base: string;

function codeAndMessage(dir: string): [string, string] {
  try {
    preparePrivateDir(dir, { area: 'verifier', privateSubdirs: ['keys'] });
  } catch (e) {
    return [(e as SigilError).code, (e as Error).message];
  }
  return ['accepted', ''];
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-ddparent-'));
  chmodSync(base, 0o755);
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe.skipIf(!isRoot)('directories above dataDir', () => {
  it('a world-writable parent (no sticky bit) is refused, naming it', () => {
    const shared = join(base, 'shared');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const [code, msg] = codeAndMessage(join(shared, 'data'));
    expect(code).toBe('verifier.data_dir_parent_insecure');
    expect(msg).toContain(shared);
  });

  it("a parent owned by another user is refused, even when dataDir itself is ours", () => {
    const theirs = join(base, 'theirs');
    mkdirSync(join(theirs, 'data'), { recursive: true });
    chownSync(theirs, OTHER, OTHER);
    const [code, msg] = codeAndMessage(join(theirs, 'data'));
    expect(code).toBe('verifier.data_dir_parent_insecure');
    expect(msg).toContain(`uid ${OTHER}`);
  });

  it('a dataDir reached through a symlink into another user\'s directory is refused', () => {
    const theirs2 = join(base, 'theirs2');
    mkdirSync(join(theirs2, 'data'), { recursive: true });
    chownSync(theirs2, OTHER, OTHER);
    symlinkSync(join(theirs2, 'data'), join(base, 'link'));
    expect(codeAndMessage(join(base, 'link'))[0]).toBe('verifier.data_dir_parent_insecure');
  });

  it('under a sticky world-writable directory (as /tmp) and in ordinary directories it is accepted', () => {
    const sticky = join(base, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    expect(codeAndMessage(join(sticky, 'data'))[0]).toBe('accepted');
    expect(codeAndMessage(join(base, 'plain', 'data'))[0]).toBe('accepted');
  });
});
