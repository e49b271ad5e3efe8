/**
 * Where third-party plugin modules come from (issue 11, item 11), and nowhere else:
 *
 * - a **path** (`./x.mjs`, `../plugins/x/`, `/opt/x.mjs`, `file:///opt/x.mjs`): relative to the
 *   directory of the config file; a directory is read as a package (its package.json);
 * - a **package name** (`sigil-plugin-x`, `@acme/sigil-x`, `@acme/sigil-x/verifier`): only from
 *   `<config dir>/node_modules/<name>` — not from parent directories, `NODE_PATH`, the global
 *   folder or Sigil's own install, so a name never silently means a package Sigil happens to
 *   depend on. The package's `exports` is honoured with the conditions `node`, `import`, `default`
 *   (ESM-only packages work), else `main`, else `index.js`.
 *
 * Nothing found → `plugin.not_found`, listing every path tried. A module found where another user
 * could change it (the file, its directory or one above, or a symlink on the way) is refused with
 * `plugin.insecure_path` before it is imported: its code would run with the host's rights.
 */
import { lstatSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SigilError, errorMessage } from '../errors.js';
import { checkDirChain } from '../util/socket-dir.js';

/** The conditions Node uses for `import()`, in the order a package's `exports` is matched against. */
const CONDITIONS = new Set(['node', 'import', 'default']);
const PACKAGE_RE = /^(?:@[a-z0-9][a-z0-9._~-]*\/)?[a-z0-9][a-z0-9._~-]*$/;
const SUBPATH_RE = /^[A-Za-z0-9._~@-]+(?:\/[A-Za-z0-9._~@-]+)*$/;

export interface ResolvedPlugin {
  /** Absolute path of the module file to import. */
  file: string;
  /** Every path looked at, in order (the last one is `file`). */
  tried: string[];
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

class NotFound extends Error {}

/**
 * Refuse module `file` of plugin `name` unless only this process's user or root can change it:
 * the file (after symlinks) owned by one of them and not group- or world-writable, a symlink at
 * `file` owned by one of them, and the directories holding both passing the rule of the socket
 * directories (util/socket-dir.ts checkDirChain). Throws SigilError `plugin.insecure_path`.
 */
function checkModuleFile(name: string, file: string): void {
  const euid = process.geteuid?.();
  if (euid === undefined) return;
  const fail = (why: string): never => {
    throw new SigilError('plugin.insecure_path', `plugin "${name}": module ${file} ${why}; another user could replace the plugin's code, which runs with this process's rights`, { status: 500 });
  };
  let real: string;
  try {
    const link = lstatSync(file);
    if (link.isSymbolicLink() && link.uid !== euid && link.uid !== 0) fail(`is a symlink owned by uid ${link.uid}, neither this process's uid ${euid} nor root`);
    real = realpathSync(file);
    const st = statSync(real);
    if (st.uid !== euid && st.uid !== 0) fail(`${real === file ? 'is' : `leads to ${real}, which is`} owned by uid ${st.uid}, neither this process's uid ${euid} nor root`);
    if ((st.mode & 0o022) !== 0) fail(`${real === file ? 'is' : `leads to ${real}, which is`} writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode 0${(st.mode & 0o777).toString(8)})`);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    return fail(`cannot be inspected: ${errorMessage(e)}`);
  }
  const what = `plugin "${name}" module directory`;
  checkDirChain(dirname(file), 'plugin.insecure_path', what, "the plugin's code");
  if (dirname(real) !== dirname(file)) checkDirChain(dirname(real), 'plugin.insecure_path', what, "the plugin's code");
}

/** A target from `exports` (`./dist/x.js`, with `*` replaced): inside the package, no `..` or node_modules. */
function targetPath(pkgDir: string, target: string, star: string | undefined): string {
  if (!target.startsWith('./')) throw new NotFound(`exports target "${target}" does not start with "./"`);
  const t = star === undefined ? target : target.split('*').join(star);
  const segments = t.slice(2).split(/[/\\]/);
  if (segments.some((s) => s === '..' || s === '.' || s === '' || s.toLowerCase() === 'node_modules')) {
    throw new NotFound(`exports target "${t}" leaves the package or names node_modules`);
  }
  const p = resolve(pkgDir, t);
  const rel = relative(pkgDir, p);
  if (rel.startsWith('..') || isAbsolute(rel)) throw new NotFound(`exports target "${t}" leaves the package`);
  return p;
}

/**
 * Resolve one `exports` value (string, conditions object, or fallback array) to a path; null when
 * blocked or missing, undefined when a conditions object matches none of CONDITIONS (Node then
 * tries the enclosing object's next key).
 */
function conditional(pkgDir: string, value: unknown, star: string | undefined, tried: string[]): string | null | undefined {
  if (typeof value === 'string') {
    const p = targetPath(pkgDir, value, star);
    tried.push(p);
    return isFile(p) ? p : null;
  }
  if (Array.isArray(value)) {
    for (const v of value) {
      try {
        const p = conditional(pkgDir, v, star, tried);
        if (p) return p;
      } catch (e) {
        if (!(e instanceof NotFound)) throw e;
      }
    }
    return null;
  }
  if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (!CONDITIONS.has(k)) continue;
      const r = conditional(pkgDir, v, star, tried);
      if (r !== undefined) return r;
    }
    return undefined; // no matching condition
  }
  return null; // null target: explicitly blocked
}

/** The `exports` entry for `subpath` ("." or "./x"): exact key, else the `*` pattern with the longest prefix. */
function exportsEntry(exportsField: unknown, subpath: string): { value: unknown; star?: string } | undefined {
  const isSubpathMap = typeof exportsField === 'object' && exportsField !== null && !Array.isArray(exportsField) && Object.keys(exportsField).some((k) => k.startsWith('.'));
  if (!isSubpathMap) return subpath === '.' ? { value: exportsField } : undefined;
  const map = exportsField as Record<string, unknown>;
  if (Object.prototype.hasOwnProperty.call(map, subpath)) return { value: map[subpath] };
  let best: { value: unknown; star: string; prefix: number } | undefined;
  for (const [k, v] of Object.entries(map)) {
    const i = k.indexOf('*');
    if (i < 0 || k.indexOf('*', i + 1) >= 0) continue;
    const pre = k.slice(0, i);
    const post = k.slice(i + 1);
    if (subpath.length >= k.length && subpath.startsWith(pre) && subpath.endsWith(post) && (!best || pre.length > best.prefix)) {
      best = { value: v, star: subpath.slice(pre.length, subpath.length - post.length), prefix: pre.length };
    }
  }
  return best ? { value: best.value, star: best.star } : undefined;
}

/** The entry module of the package in `pkgDir` for `subpath` ("." or "./x"). */
function packageEntry(pkgDir: string, subpath: string, tried: string[]): string | null {
  const pjPath = join(pkgDir, 'package.json');
  tried.push(pjPath);
  let pj: { exports?: unknown; main?: unknown } = {};
  if (isFile(pjPath)) {
    try {
      pj = JSON.parse(readFileSync(pjPath, 'utf8')) as typeof pj;
    } catch (e) {
      throw new SigilError('plugin.load_failed', `${pjPath} is not valid JSON: ${errorMessage(e)}`, { cause: e });
    }
  } else if (!isDir(pkgDir)) {
    return null;
  }
  if (pj.exports !== undefined && pj.exports !== null) {
    const entry = exportsEntry(pj.exports, subpath);
    if (!entry) throw new NotFound(`package.json "exports" of ${pkgDir} has no "${subpath}"`);
    return conditional(pkgDir, entry.value, entry.star, tried) ?? null;
  }
  const candidates =
    subpath === '.'
      ? [...(typeof pj.main === 'string' && pj.main !== '' ? [pj.main, `${pj.main}.js`, join(pj.main, 'index.js')] : []), 'index.js']
      : [subpath, `${subpath}.js`, join(subpath, 'index.js')];
  for (const c of candidates) {
    const p = resolve(pkgDir, c);
    const rel = relative(pkgDir, p);
    if (rel.startsWith('..') || isAbsolute(rel)) continue;
    tried.push(p);
    if (isFile(p)) return p;
  }
  return null;
}

/**
 * Find the module file for plugin `name`'s specifier `spec` (from the `plugins` config map),
 * looking only where the docs say; throws SigilError `plugin.not_found` (with every path tried),
 * `plugin.bad_specifier`, or `plugin.insecure_path` (a module another user could change).
 */
export function resolvePluginModule(name: string, spec: string, configDir: string): ResolvedPlugin {
  const found = findPluginModule(name, spec, configDir);
  checkModuleFile(name, found.file);
  return found;
}

function findPluginModule(name: string, spec: string, configDir: string): ResolvedPlugin {
  const tried: string[] = [];
  const where = `third-party plugins are found only at paths relative to the config directory (${configDir}) and as packages in ${join(configDir, 'node_modules')}`;
  const notFound = (why?: string): never => {
    throw new SigilError('plugin.not_found', `plugin "${name}": cannot find module "${spec}"${why ? ` (${why})` : ''}; tried ${tried.length > 0 ? tried.join(', ') : 'nothing'}; ${where}`, {
      details: { tried: [...tried] },
    });
  };
  try {
    let path: string | undefined;
    if (spec.startsWith('file:')) {
      try {
        path = fileURLToPath(spec);
      } catch {
        throw new SigilError('plugin.bad_specifier', `plugin "${name}": "${spec}" is not a valid file URL`);
      }
    } else if (spec.startsWith('./') || spec.startsWith('../') || spec === '.' || spec === '..' || isAbsolute(spec)) {
      path = resolve(configDir, spec);
    }
    if (path !== undefined) {
      if (isDir(path)) {
        const p = packageEntry(path, '.', tried);
        return p ? { file: p, tried } : notFound();
      }
      tried.push(path);
      return isFile(path) ? { file: path, tried } : notFound();
    }
    const parts = spec.split('/');
    const pkgName = spec.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] as string);
    const rest = spec.slice(pkgName.length);
    const badRest = rest !== '' && (!rest.startsWith('/') || !SUBPATH_RE.test(rest.slice(1)) || rest.split('/').some((seg) => seg === '.' || seg === '..'));
    if (!PACKAGE_RE.test(pkgName) || badRest) {
      throw new SigilError(
        'plugin.bad_specifier',
        `plugin "${name}": "${spec}" is neither a path (start it with ./, ../ or /) nor an npm package name (optionally with a subpath)`,
      );
    }
    const pkgDir = join(configDir, 'node_modules', ...pkgName.split('/'));
    const p = packageEntry(pkgDir, rest === '' ? '.' : `.${rest}`, tried);
    return p ? { file: p, tried } : notFound(isDir(pkgDir) ? undefined : `no ${pkgDir}`);
  } catch (e) {
    if (e instanceof NotFound) return notFound(e.message);
    throw e;
  }
}

