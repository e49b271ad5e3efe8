/**
 * The socket-directory check must judge the directories the kernel actually walks to reach the
 * socket. It followed symlinks with stat() and then walked the parents of the path as written, so
 * (1) a symlink into a directory whose parent another user owns passed (that user can rename the
 * target away and put their own socket in its place), and (2) a symlink owned by another user in a
 * sticky directory such as /tmp passed (that user can delete it and point a new one anywhere).
 * Runs as root (the suite does): uid 65534 plays the other user.
 */
import { chownSync, lchownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { checkSocketDir } from '../../src/util/socket-dir.js';

const OTHER = 65534;
const isRoot = process.geteuid?.() === 0;

function refusal(dir: string): SigilError {
  try {
    checkSocketDir(dir, 'test.socket_dir_insecure', 'socket');
  } catch (e) {
    return e as SigilError;
  }
  throw new Error(`${dir} was accepted`);
}

describe.skipIf(!isRoot)('socket directory check and symlinks', () => {
  let base: string;
  beforeAll(() => {
    base = mkdtempSync(join(tmpdir(), 'sigil-sockdir-'));
    chmodSync(base, 0o755);
  });
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  it('a symlink into a directory whose parent another user owns is refused, naming that parent', () => {
    const evil = join(base, 'evil');
    mkdirSync(join(evil, 'inner'), { recursive: true, mode: 0o755 });
    chownSync(evil, OTHER, OTHER); // inner stays root's, 0755: only its parent is the other user's
    mkdirSync(join(base, 'safe'), { mode: 0o755 });
    symlinkSync(join(evil, 'inner'), join(base, 'safe', 'link'));
    const e = refusal(join(base, 'safe', 'link'));
    expect(e.code).toBe('test.socket_dir_insecure');
    expect(e.message).toContain(evil);
    expect(e.message).toContain(`uid ${OTHER}`);
  });

  it("a symlink another user owns in a sticky directory is refused, naming the link", () => {
    const sticky = join(base, 'sticky');
    mkdirSync(sticky, { mode: 0o755 });
    chmodSync(sticky, 0o1777);
    const real = join(base, 'real');
    mkdirSync(real, { mode: 0o755 });
    const link = join(sticky, 'link');
    symlinkSync(real, link);
    lchownSync(link, OTHER, OTHER);
    const e = refusal(link);
    expect(e.code).toBe('test.socket_dir_insecure');
    expect(e.message).toContain(link);
  });

  it("symlinks that only root or this user can change still pass (e.g. /var/run -> /run)", () => {
    const real = join(base, 'real2');
    mkdirSync(real, { mode: 0o755 });
    mkdirSync(join(base, 'ours'), { mode: 0o755 });
    symlinkSync(real, join(base, 'ours', 'link'));
    expect(() => checkSocketDir(join(base, 'ours', 'link'), 'test.socket_dir_insecure', 'socket')).not.toThrow();
  });

  it('a world-writable directory reached through a symlink is still refused', () => {
    const wide = join(base, 'wide');
    mkdirSync(wide, { mode: 0o755 });
    chmodSync(wide, 0o777);
    symlinkSync(wide, join(base, 'ours', 'to-wide'));
    const e = refusal(join(base, 'ours', 'to-wide'));
    expect(e.message).toContain(wide);
  });
});
