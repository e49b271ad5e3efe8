/**
 * Paths whose contents this process trusts (its config, plugin code, the directories of its sockets
 * and of dataDir, the admin socket the CLI talks to) and the one rule for them: no user but this
 * process's user or root (`TrustRule.alsoOwner`: and one more, named) can change what the path
 * leads to.
 *
 * `checkTrustedPath` walks a path as the kernel resolves it, one component at a time, following
 * every symlink (relative or absolute, at any depth) and every `..` after the links before it, so
 * each directory and link the kernel would go through is judged, not the path as written alone:
 * - a symlink must be owned by a trusted user (its owner could point it elsewhere);
 * - a directory must be owned by a trusted user, and not group- or world-writable unless it has the
 *   sticky bit (as /tmp: others cannot rename or remove what is ours in it);
 * - the directory that holds the entry named last (the file, the socket; for a symlink at the end,
 *   the link and where it leads) — for a directory path, that directory itself — must not be
 *   group- or world-writable at all, sticky or not;
 * - a file at the end must be owned by a trusted user and not group- or world-writable.
 * `checkTrustedTree` holds everything below a directory (code with its dependencies) to the rule
 * of the last directory and the file: every directory, file and symlink in it, and what each
 * symlink leads to, wherever that is.
 * Without `process.geteuid` (Windows) nothing is checked.
 */
import { lstatSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { SigilError, errorMessage } from '../errors.js';

/** What the path names at its end: a directory, a file whose contents are trusted, or any entry (a socket) the caller checks itself. */
export type TrustedLeaf = 'directory' | 'file' | 'entry';

export interface TrustRule {
  /** SigilError code of every refusal (HTTP 500). */
  code: string;
  /** Names a directory in messages, before its path: "adminSocket directory". */
  dir: string;
  /** Names the entry at the end of a path, or a file in a tree, before its path: `plugin "x" module`. Default: `dir`. */
  leaf?: string;
  /** What another user could replace, ending messages: "the socket", "the keys kept in dataDir". */
  risk: string;
  /** One more uid trusted to own what is on the path (the admin socket's owner), and who that is. */
  alsoOwner?: { uid: number; who: string };
}

/** Most symlinks followed in one path, as Linux's ELOOP limit. */
const MAX_LINKS = 40;
const DIR_ADVICE = 'make it 0755 or 0700';
const FILE_ADVICE = 'make it 0644 or 0600';

function fmtMode(mode: number): string {
  return '0' + (mode & 0o7777).toString(8).padStart(3, '0');
}

function components(path: string): string[] {
  return path.split('/').filter((c) => c !== '' && c !== '.');
}

/** The rule's judgements, with messages naming what is at fault. */
class Judge {
  readonly leafWhat: string;
  private readonly extra: { uid: number; who: string } | undefined;

  constructor(
    readonly rule: TrustRule,
    private readonly euid: number,
  ) {
    this.leafWhat = rule.leaf ?? rule.dir;
    const a = rule.alsoOwner;
    this.extra = a !== undefined && a.uid !== euid && a.uid !== 0 ? a : undefined;
  }

  refuse(message: string, cause?: unknown): never {
    throw new SigilError(this.rule.code, message, { status: 500, ...(cause === undefined ? {} : { cause }) });
  }

  private trusted(uid: number): boolean {
    return uid === this.euid || uid === 0 || uid === this.extra?.uid;
  }

  private neither(): string {
    return this.extra ? `neither this process's uid ${this.euid}, root nor ${this.extra.who} (uid ${this.extra.uid})` : `neither this process's uid ${this.euid} nor root`;
  }

  /** lstat, refusing what cannot be inspected; `undefined` for a missing entry when `missingOk`. */
  inspect(p: string, what: string, missingOk = false): Stats | undefined {
    try {
      return lstatSync(p);
    } catch (e) {
      if (missingOk && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return this.refuse(`${what} ${p} cannot be inspected: ${errorMessage(e)}`, e);
    }
  }

  link(p: string, st: Stats, what: string): void {
    if (!this.trusted(st.uid)) this.refuse(`${what} path goes through the symlink ${p}, owned by uid ${st.uid}, ${this.neither()}; its owner could point it elsewhere`);
  }

  /** Owner, and mode: group/world-writable only with the sticky bit unless `strict`. */
  dir(p: string, st: Stats, strict: boolean): void {
    this.owner(p, st, this.rule.dir);
    this.mode(p, st, this.rule.dir, strict, DIR_ADVICE);
  }

  file(p: string, st: Stats): void {
    this.owner(p, st, this.leafWhat);
    this.mode(p, st, this.leafWhat, true, FILE_ADVICE);
  }

  mode(p: string, st: Stats, what: string, strict: boolean, advice = DIR_ADVICE): void {
    if ((st.mode & 0o022) === 0 || (!strict && (st.mode & 0o1000) !== 0)) return;
    this.refuse(
      `${what} ${p} is writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode ${fmtMode(st.mode)}); another user could replace ${this.rule.risk}: ${advice}, or choose another path`,
    );
  }

  private owner(p: string, st: Stats, what: string): void {
    if (!this.trusted(st.uid)) this.refuse(`${what} ${p} is owned by uid ${st.uid}, ${this.neither()}; its owner could replace ${this.rule.risk}`);
  }
}

/**
 * The walk of `checkTrustedPath`. With `missingOk`, a name missing from a directory no other user
 * can write (so none can create it) ends the walk with `undefined` instead of a refusal.
 */
function walk(path: string, leaf: TrustedLeaf, j: Judge, missingOk: boolean): string | undefined {
  const root = j.inspect('/', j.rule.dir) as Stats;
  j.dir('/', root, false);
  // The directories the walk stands in, from `/`: `..` goes back one, an absolute link to `/` alone.
  let stack: { path: string; st: Stats }[] = [{ path: '/', st: root }];
  const queue = components(path.startsWith('/') ? path : `${process.cwd()}/${path}`);
  let links = 0;
  for (;;) {
    const c = queue.shift();
    if (c === undefined) break;
    const here = stack[stack.length - 1] as { path: string; st: Stats };
    if (c === '..') {
      if (stack.length > 1) stack.pop();
      continue;
    }
    const p = here.path === '/' ? `/${c}` : `${here.path}/${c}`;
    const last = queue.length === 0;
    const what = last && leaf !== 'directory' ? j.leafWhat : j.rule.dir;
    // The directory holding the entry named last: another user able to write it could swap the entry.
    if (last && leaf !== 'directory') j.mode(here.path, here.st, j.rule.dir, true);
    const st = j.inspect(p, what, missingOk);
    if (st === undefined) {
      j.mode(here.path, here.st, j.rule.dir, true); // else another user could create the name
      return undefined;
    }
    if (st.isSymbolicLink()) {
      j.link(p, st, what);
      if (++links > MAX_LINKS) j.refuse(`${what} ${path} cannot be inspected: more than ${MAX_LINKS} symlinks`);
      let target: string;
      try {
        target = readlinkSync(p);
      } catch (e) {
        return j.refuse(`${what} ${p} cannot be inspected: ${errorMessage(e)}`, e);
      }
      if (target.startsWith('/')) stack = [stack[0] as { path: string; st: Stats }];
      queue.unshift(...components(target));
      continue;
    }
    if (st.isDirectory()) {
      j.dir(p, st, false);
      stack.push({ path: p, st });
      continue;
    }
    if (!last || leaf === 'directory') j.refuse(`${j.rule.dir} ${p} is not a directory`);
    if (leaf === 'file') j.file(p, st);
    return p;
  }
  const end = stack[stack.length - 1] as { path: string; st: Stats };
  if (leaf === 'file') j.refuse(`${j.leafWhat} ${end.path} is a directory, not a file`);
  if (leaf === 'directory') j.mode(end.path, end.st, j.rule.dir, true);
  return end.path;
}

/**
 * Check `path` by TrustRule `rule` (see the module comment); `leaf` says what it must name. A path
 * that does not exist, or cannot be walked, is refused too ("cannot be inspected"). Returns the
 * path the kernel reaches (no symlink or `..` left in it). Throws SigilError `rule.code` naming
 * the directory, link or file at fault.
 */
export function checkTrustedPath(path: string, leaf: TrustedLeaf, rule: TrustRule): string {
  const euid = process.geteuid?.();
  if (euid === undefined) return path;
  return walk(path, leaf, new Judge(rule, euid), false) as string;
}

/**
 * Check each directory of `roots` (by `checkTrustedPath`) and everything below it: every directory
 * and file owned by a trusted user and not group- or world-writable, every symlink owned by a
 * trusted user and what it leads to checked the same way — a directory elsewhere is walked as one
 * more root, with the roots `alsoFor(itsRealPath)` adds (e.g. the node_modules above it). A symlink
 * that leads nowhere passes when no other user could create what it names. Sockets, FIFOs and
 * devices are left alone. Each directory is read once, however many ways lead to it. Throws
 * SigilError `rule.code` naming the first entry at fault.
 */
export function checkTrustedTree(roots: readonly string[], rule: TrustRule, alsoFor: (dir: string) => string[] = () => []): void {
  const euid = process.geteuid?.();
  if (euid === undefined) return;
  const j: Judge = new Judge(rule, euid);
  const seen = new Set<string>();
  const todo: string[] = [];
  const addRoot = (dir: string): void => {
    const real = walk(dir, 'directory', j, false) as string;
    if (!seen.has(real)) todo.push(real);
  };
  for (const r of roots) addRoot(r);
  for (;;) {
    const dir = todo.pop();
    if (dir === undefined) return;
    if (seen.has(dir)) continue;
    seen.add(dir);
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (e) {
      j.refuse(`${rule.dir} ${dir} cannot be inspected: ${errorMessage(e)}`, e);
    }
    for (const n of names) {
      const p = dir === '/' ? `/${n}` : `${dir}/${n}`;
      const st = j.inspect(p, j.leafWhat) as Stats;
      if (st.isDirectory()) {
        j.dir(p, st, true);
        todo.push(p);
      } else if (st.isFile()) {
        j.file(p, st);
      } else if (st.isSymbolicLink()) {
        const real = walk(p, 'entry', j, true);
        if (real === undefined) continue;
        const t = j.inspect(real, j.leafWhat) as Stats;
        if (t.isDirectory()) {
          j.dir(real, t, true);
          if (!seen.has(real)) {
            todo.push(real);
            for (const a of alsoFor(real)) addRoot(a);
          }
        } else if (t.isFile()) {
          j.file(real, t);
        }
      }
    }
  }
}
