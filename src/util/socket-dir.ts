/**
 * Unix sockets that grant something (the verifier's admin socket, the agent's Workload API):
 * - the directory a socket lives in must be one no other user can change, or another user could
 *   remove the socket and serve their own in its place (and catch the callers' requests);
 * - a socket that must be private must never be connectable by another user, not even between
 *   bind() and chmod(): `bindPrivately` binds it inside a fresh 0700 directory, sets its mode there,
 *   then links it into place, so its name appears with the final mode.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, linkSync, lstatSync, mkdirSync, readdirSync, rmdirSync, unlinkSync, type Stats } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { checkTrustedPath } from './trusted-path.js';

/** Longest Unix socket path Linux accepts (sun_path is 108 bytes with the terminating NUL). */
export const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Check that no user other than this process's user (or root) can change `dir` or any directory
 * or symlink the kernel goes through to reach it (util/trusted-path.ts: owned by this user or
 * root, an ancestor group- or world-writable only with the sticky bit, `dir` itself not at all).
 * Throws SigilError `code` naming the directory or link at fault.
 */
export function checkSocketDir(dir: string, code: string, what: string): void {
  checkDirChain(dir, code, `${what} directory`, 'the socket');
}

/**
 * The rule of `checkSocketDir` for any directory whose contents must stay this user's (e.g.
 * `dataDir`): `what` names the directory in messages ("dataDir"), `risk` what another user could
 * replace ("the keys kept there").
 */
export function checkDirChain(dir: string, code: string, what: string, risk: string): void {
  checkTrustedPath(dir, 'directory', { code, dir: what, risk });
}

/**
 * Bind a listener at `path` so that the name `path` only ever refers to a socket of mode `mode`:
 * `listen(tmpPath)` binds inside a fresh 0700 directory next to `path`, the socket is chmod'ed there,
 * hard-linked to `path` (which must not exist: link never replaces) and the temporary name removed.
 * Independent of the process umask, so it is correct under umask 000 and in worker threads.
 * Returns the socket's identity, for removing exactly this socket later (`unlinkIfSame`).
 * On failure the temporary directory is removed and the error is rethrown (the caller closes its
 * listener).
 */
export async function bindPrivately(path: string, mode: number, listen: (tmpPath: string) => Promise<void>): Promise<{ dev: number; ino: number }> {
  const dir = dirname(path);
  let tmpDir: string | undefined;
  for (let i = 0; i < 8 && tmpDir === undefined; i++) {
    const candidate = join(dir, `.s${randomBytes(3).toString('hex')}`);
    try {
      mkdirSync(candidate, { mode: 0o700 });
      tmpDir = candidate;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  if (tmpDir === undefined) throw new Error(`cannot create a temporary directory in ${dir}`);
  const tmpPath = join(tmpDir, 's');
  try {
    // mkdir's mode is masked by the umask; 0700 minus any mask is still private, but make sure.
    chmodSync(tmpDir, 0o700);
    await listen(tmpPath);
    chmodSync(tmpPath, mode);
    linkSync(tmpPath, path);
    const st = lstatSync(path);
    return { dev: st.dev, ino: st.ino };
  } finally {
    try {
      unlinkSync(tmpPath);
    } catch {
      // never bound
    }
    try {
      rmdirSync(tmpDir);
    } catch {
      // the original error (if any) is the one to report
    }
  }
}

const BIND_DIR_NAME = /^\.s[0-9a-f]{6}$/;

/**
 * Remove what `bindPrivately` leaves in `dir` when its process is killed mid-bind: directories named
 * `.sXXXXXX`, owned by this user, holding nothing or only the socket `s`, and older than `minAgeMs`
 * (younger ones may belong to a process binding right now). Anything else is left alone.
 */
export function removeStaleBindDirs(dir: string, nowMs: number, minAgeMs = 60_000): string[] {
  const euid = process.geteuid?.();
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const name of names) {
    if (!BIND_DIR_NAME.test(name)) continue;
    const p = join(dir, name);
    try {
      const st = lstatSync(p);
      if (!st.isDirectory() || (euid !== undefined && st.uid !== euid) || nowMs - st.mtimeMs < minAgeMs) continue;
      const inside = readdirSync(p);
      if (inside.some((n) => n !== 's')) continue;
      if (inside.length === 1) {
        if (!lstatSync(join(p, 's')).isSocket()) continue;
        unlinkSync(join(p, 's'));
      }
      rmdirSync(p);
      removed.push(p);
    } catch {
      // changed meanwhile: leave it
    }
  }
  return removed;
}

/** Error codes `removeStaleSocket` throws, in the caller's area. */
export interface StaleSocketCodes {
  /** Something other than a socket is at the path (it is never removed). */
  notSocket: string;
  /** A process accepts connections on the socket. */
  inUse: string;
  /** The path cannot be inspected, or the socket answers neither "connected" nor "refused". */
  unusable: string;
}

/** How long a connect may take before the socket counts as live (a busy server still answers). */
const LIVE_PROBE_MS = 1000;

/**
 * Decide whether a socket file is served: `connect` succeeds (or does not fail within
 * `LIVE_PROBE_MS`) → live; ECONNREFUSED → nobody listens (stale); ENOENT → gone meanwhile. Any
 * other failure (EACCES, EPERM …) tells nothing about the server and is returned as is.
 */
function probeSocket(path: string): Promise<'live' | 'stale' | 'gone' | NodeJS.ErrnoException> {
  return new Promise((res) => {
    const s = connect(path);
    const done = (r: 'live' | 'stale' | 'gone' | NodeJS.ErrnoException): void => {
      clearTimeout(t);
      s.destroy();
      res(r);
    };
    const t = setTimeout(() => done('live'), LIVE_PROBE_MS);
    s.once('connect', () => done('live'));
    s.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED' ? 'stale' : e.code === 'ENOENT' ? 'gone' : e));
  });
}

/**
 * Make `path` free for a new listener: nothing there → 'absent'; a socket nobody serves (left by a
 * stopped process) → removed, 'removed'. Refuses, with the caller's codes and `what` naming the
 * socket ("adminSocket", "Workload API socket"): anything that is not a socket (`notSocket`), a
 * socket a process still serves (`inUse`), a path or socket that cannot be inspected (`unusable`).
 */
export async function removeStaleSocket(path: string, what: string, codes: StaleSocketCodes): Promise<'absent' | 'removed'> {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw new SigilError(codes.unusable, `${what} ${path} cannot be inspected: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  if (!st.isSocket()) {
    const kind = st.isFile() ? 'a regular file' : st.isDirectory() ? 'a directory' : st.isSymbolicLink() ? 'a symlink' : 'not a socket';
    throw new SigilError(codes.notSocket, `${what} ${path} exists and is ${kind}; refusing to remove it: remove it or choose another path`, { status: 500 });
  }
  // Hold the socket's inode under a second name while deciding: once its last name goes, a freed
  // inode number can be handed straight to the next socket bound at `path` (ext4 does), and a
  // (dev, ino) identity would then match another process's live socket. A held inode is not freed.
  const hold = holdInode(path, what, codes);
  if (hold === undefined) return 'absent';
  try {
    const probe = await probeSocket(path);
    if (probe === 'gone') return 'absent';
    if (probe === 'live') throw new SigilError(codes.inUse, `another process is serving ${what} ${path}; is one already running?`, { status: 500 });
    if (probe !== 'stale') throw new SigilError(codes.unusable, `${what} ${path} cannot be probed: ${errorMessage(probe)}`, { status: 500, cause: probe });
    // Remove exactly the socket held: one bound in its place meanwhile is another process's.
    unlinkIfSame(path, hold.id);
    return 'removed';
  } finally {
    hold.release();
  }
}

/**
 * A second name for the socket at `path`, in a fresh 0700 `.sXXXXXX` directory next to it (what
 * `removeStaleBindDirs` cleans up after a crash), and the identity of what was linked. undefined
 * when `path` is gone; refuses a path that is no longer a socket, or that cannot be linked (e.g.
 * another user's socket under fs.protected_hardlinks: it is left for the operator to remove).
 */
function holdInode(path: string, what: string, codes: StaleSocketCodes): { id: { dev: number; ino: number }; release: () => void } | undefined {
  const dir = dirname(path);
  let holdDir: string | undefined;
  for (let i = 0; i < 8 && holdDir === undefined; i++) {
    const candidate = join(dir, `.s${randomBytes(3).toString('hex')}`);
    try {
      mkdirSync(candidate, { mode: 0o700 });
      holdDir = candidate;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new SigilError(codes.unusable, `${what} ${path} cannot be checked: ${errorMessage(e)}`, { status: 500, cause: e });
    }
  }
  if (holdDir === undefined) throw new SigilError(codes.unusable, `${what} ${path} cannot be checked: no free temporary directory name in ${dir}`, { status: 500 });
  const held = join(holdDir, 's');
  const release = (): void => {
    try {
      unlinkSync(held);
    } catch {
      // never linked
    }
    try {
      rmdirSync(holdDir);
    } catch {
      // left for removeStaleBindDirs
    }
  };
  try {
    linkSync(path, held); // link() does not follow a symlink at `path`: the name itself is held
    const st = lstatSync(held);
    if (!st.isSocket()) throw new SigilError(codes.notSocket, `${what} ${path} was replaced by something that is not a socket; refusing to remove it`, { status: 500 });
    return { id: { dev: st.dev, ino: st.ino }, release };
  } catch (e) {
    release();
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (e instanceof SigilError) throw e;
    throw new SigilError(codes.unusable, `${what} ${path} cannot be held for removal (${errorMessage(e)}); remove it by hand if no process serves it`, { status: 500, cause: e });
  }
}

/** Remove `path` if it is still the socket `id` (not one a later process put there). */
export function unlinkIfSame(path: string, id: { dev: number; ino: number }): void {
  try {
    const st = lstatSync(path);
    if (st.dev === id.dev && st.ino === id.ino) unlinkSync(path);
  } catch {
    // already gone
  }
}

/** Byte length check for a socket path and the temporary path `bindPrivately` uses next to it. */
export function privateBindPathFits(path: string): boolean {
  return Buffer.byteLength(join(dirname(path), '.s000000', 's')) <= MAX_SOCKET_PATH_BYTES && Buffer.byteLength(path) <= MAX_SOCKET_PATH_BYTES;
}
