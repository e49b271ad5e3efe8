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
 * Nothing found → `plugin.not_found`, listing every path tried. Code another user could change is
 * refused with `plugin.insecure_path` before anything is imported, since it would run with the
 * host's rights: the module (the file, a directory or symlink on the way), the package.json that
 * chose it (checked before it is read) or gives its module type, any file of its package, and any
 * file of the node_modules directories Node's resolver looks in for its imports (from the module's
 * directory up; dependencies linked in from elsewhere are followed). Not covered: modules the code
 * reaches by relative or absolute paths outside these trees (a single-file plugin's sibling
 * modules), CommonJS's global folders and NODE_PATH, and files it opens itself.
 */
import { lstatSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SigilError, errorMessage } from '../errors.js';
import { checkTrustedPath, checkTrustedTree, type TrustRule } from '../util/trusted-path.js';

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

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
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
 * The rule a plugin's code is held to (util/trusted-path.ts): only this process's user or root can
 * change it. `leaf` names the file in messages ("module", "file").
 */
function codeRule(name: string, leaf: string): TrustRule {
  return {
    code: 'plugin.insecure_path',
    dir: `plugin "${name}": directory`,
    leaf: `plugin "${name}": ${leaf}`,
    risk: "the plugin's code, which runs with this process's rights",
  };
}

/** The `node_modules` directories Node's resolver searches, in order, for a bare import from a module in `dir` (those that exist). */
function nodeModulesAbove(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    if (isDir(join(d, 'node_modules'))) out.push(join(d, 'node_modules'));
    if (dirname(d) === d) return out;
  }
}

/**
 * The package.json Node reads for the module type of a file in `dir` (its package scope): the first
 * one found going up, not looking past a `node_modules` directory. Throws `plugin.insecure_path`
 * when another user could change it.
 */
function checkPackageScope(dir: string, rule: TrustRule): void {
  for (let d = dir; basename(d) !== 'node_modules'; d = dirname(d)) {
    const pj = join(d, 'package.json');
    if (exists(pj)) {
      checkTrustedPath(pj, 'file', rule);
      return;
    }
    if (dirname(d) === d) return;
  }
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

/**
 * The entry module of the package in `pkgDir` for `subpath` ("." or "./x"). Its package.json is
 * held to `rule` before it is read: whoever can change it chooses which file runs.
 */
function packageEntry(pkgDir: string, subpath: string, tried: string[], rule: TrustRule): string | null {
  const pjPath = join(pkgDir, 'package.json');
  tried.push(pjPath);
  let pj: { exports?: unknown; main?: unknown } = {};
  if (isFile(pjPath)) {
    checkTrustedPath(pjPath, 'file', rule);
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
 * `plugin.bad_specifier`, or `plugin.insecure_path`: another user could change the code that
 * would run — the module, the package.json that chose it or gives its module type, any file of
 * its package (a package or directory plugin), or of the node_modules directories Node finds its
 * imports in (util/trusted-path.ts checkTrustedTree; README.md ("Who may change a plugin's code") and LIMITATIONS.md say what is not covered).
 */
export function resolvePluginModule(name: string, spec: string, configDir: string): ResolvedPlugin {
  const rule = codeRule(name, 'file');
  const { file, tried, packageDir } = findPluginModule(name, spec, configDir, rule);
  const real = checkTrustedPath(file, 'file', codeRule(name, 'module'));
  checkPackageScope(dirname(real), rule);
  checkTrustedTree([...(packageDir === undefined ? [] : [packageDir]), ...nodeModulesAbove(dirname(real))], rule, nodeModulesAbove);
  return { file, tried };
}

function findPluginModule(name: string, spec: string, configDir: string, rule: TrustRule): ResolvedPlugin & { packageDir?: string } {
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
        const p = packageEntry(path, '.', tried, rule);
        return p ? { file: p, tried, packageDir: path } : notFound();
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
    const p = packageEntry(pkgDir, rest === '' ? '.' : `.${rest}`, tried, rule);
    return p ? { file: p, tried, packageDir: pkgDir } : notFound(isDir(pkgDir) ? undefined : `no ${pkgDir}`);
  } catch (e) {
    if (e instanceof NotFound) return notFound(e.message);
    throw e;
  }
}

