/**
 * Directories that hold secrets (the verifier's and the agent's `dataDir`): created 0700, owned by
 * this process's user, tightened to 0700 when they are ours and wider, refused when another user
 * owns them, and probed for writability so a read-only or pseudo filesystem (e.g. /proc) fails
 * at start with a clear error instead of later (or never).
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, constants as fsc, mkdirSync, openSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { checkDirChain } from './socket-dir.js';

function errnoText(e: unknown): string {
  return errorMessage(e);
}

/**
 * `mkdir -p` that always terminates. Node's `mkdirSync(p, { recursive: true })` loops forever when
 * the kernel answers ENOENT for a directory whose parent exists (as /proc does), so this walks the
 * path itself: it finds the deepest existing ancestor, then creates each missing component once with
 * `mode`. Throws the underlying error (its message names the path) when a component cannot be
 * created or an ancestor is not a directory.
 */
export function makeDirs(path: string, mode: number): void {
  const missing: string[] = [];
  let p = resolve(path);
  for (;;) {
    let st: Stats;
    try {
      st = statSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      missing.push(p);
      const parent = dirname(p);
      if (parent === p) break;
      p = parent;
      continue;
    }
    if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, ${p}`), { code: 'ENOTDIR' });
    break;
  }
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d, { mode });
    } catch (e) {
      // Created meanwhile by someone else: fine when it is a directory.
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statSync(d).isDirectory()) continue;
      throw e;
    }
  }
}

export interface PrivateDirOptions {
  /** Error code area: codes are `<area>.data_dir_not_directory`, `.data_dir_not_owned`, `.data_dir_unusable`. */
  area: string;
  /** Subdirectories that hold secrets too (e.g. `keys`): tightened to 0700 like the directory itself when they exist. */
  privateSubdirs?: readonly string[];
}

export interface PrivateDirResult {
  /** Paths whose group/other permission bits were removed, with their previous mode (for a warning). */
  tightened: { path: string; mode: number }[];
}

function fmtMode(mode: number): string {
  return '0' + (mode & 0o7777).toString(8).padStart(3, '0');
}

/**
 * Make `dir` a private directory of this process's user:
 * - missing → created 0700 (missing parents too, 0700);
 * - exists and is not a directory → `<area>.data_dir_not_directory`;
 * - owned by another user → `<area>.data_dir_not_owned` (that user could read everything in it);
 * - ours with group/other bits → chmod 0700 (reported in `tightened`), likewise `privateSubdirs`;
 * - a directory above it that another user owns or can write (unless sticky), or a symlink on its
 *   path another user owns → `<area>.data_dir_parent_insecure` (util/socket-dir.ts checkDirChain);
 * - a file cannot be created in it → `<area>.data_dir_unusable`.
 * Every message names the directory.
 */
export function preparePrivateDir(dir: string, opts: PrivateDirOptions): PrivateDirResult {
  const code = (reason: string) => `${opts.area}.data_dir_${reason}`;
  const tightened: { path: string; mode: number }[] = [];
  let st: Stats | undefined;
  try {
    st = statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new SigilError(code('unusable'), `dataDir ${dir} cannot be inspected: ${errnoText(e)}`, { status: 500, cause: e });
    }
  }
  if (st === undefined) {
    try {
      makeDirs(dir, 0o700);
      st = statSync(dir);
    } catch (e) {
      throw new SigilError(code('unusable'), `dataDir ${dir} cannot be created: ${errnoText(e)}`, { status: 500, cause: e });
    }
  }
  if (!st.isDirectory()) {
    const what = st.isFile() ? 'a regular file' : 'not a directory';
    throw new SigilError(code('not_directory'), `dataDir ${dir} exists and is ${what}; point dataDir at a directory`, { status: 500 });
  }
  const euid = process.geteuid?.();
  if (euid !== undefined && st.uid !== euid) {
    throw new SigilError(
      code('not_owned'),
      `dataDir ${dir} is owned by uid ${st.uid}, not by this process's uid ${euid}; its owner could read the keys and secrets kept there: chown it to uid ${euid} or choose another dataDir`,
      { status: 500 },
    );
  }
  const tighten = (path: string, s: Stats) => {
    if ((s.mode & 0o077) === 0) return;
    try {
      chmodSync(path, 0o700);
    } catch (e) {
      throw new SigilError(code('unusable'), `${path} is ${fmtMode(s.mode)} (open to other users) and cannot be made 0700: ${errnoText(e)}`, { status: 500, cause: e });
    }
    tightened.push({ path, mode: s.mode & 0o7777 });
  };
  tighten(dir, st);
  for (const sub of opts.privateSubdirs ?? []) {
    const p = join(dir, sub);
    let s: Stats;
    try {
      s = statSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new SigilError(code('unusable'), `${p} cannot be inspected: ${errnoText(e)}`, { status: 500, cause: e });
    }
    if (!s.isDirectory()) throw new SigilError(code('unusable'), `${p} exists and is not a directory`, { status: 500 });
    if (euid !== undefined && s.uid !== euid) {
      throw new SigilError(code('not_owned'), `${p} is owned by uid ${s.uid}, not by this process's uid ${euid}: chown it or move it aside`, { status: 500 });
    }
    tighten(p, s);
  }
  // The directories above it: another user who can rename dataDir away could put their own in its
  // place while we run (new keys would be written there, and loaded from there after a restart).
  checkDirChain(dir, code('parent_insecure'), `dataDir ${dir}: directory`, 'the keys and secrets kept in dataDir');
  // Probe: a pseudo or read-only filesystem passes every check above and then fails every write.
  const probe = join(dir, `.sigil-probe-${randomBytes(6).toString('hex')}`);
  try {
    closeSync(openSync(probe, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600));
    unlinkSync(probe);
  } catch (e) {
    throw new SigilError(code('unusable'), `dataDir ${dir} is not writable: ${errnoText(e)}`, { status: 500, cause: e });
  }
  return { tightened };
}
