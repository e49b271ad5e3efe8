/**
 * A third-party plugin is more than its entry file: the loader reads the package's package.json to
 * choose the entry (`exports`, `main`), Node reads the nearest package.json for the entry's module
 * type, and the plugin's dependencies are imported by Node's resolver from the plugin's own
 * node_modules and the node_modules directories above it (`<config dir>/node_modules`, where npm
 * hoists them). Before this review only the entry file and the directories above it were checked:
 * another user who could write a package.json chose which file of the package ran (any file the
 * package ships, such as a test fixture or a debug hook), and one who could write a dependency's
 * file or directory had their code run inside the verifier (or agent), with its rights. All of
 * these are now held to the rule of the entry file (`plugin.insecure_path`), before anything is
 * read or imported.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { fakeAgentDeps } from '../../src/plugin-kit/testing.js';
import { resolvePluginModule } from '../../src/plugins/resolve.js';

const OTHER_UID = 65534;
const isRoot = process.geteuid?.() === 0;
let base: string;

const ran = (): string[] => ((globalThis as { __sigilRan?: string[] }).__sigilRan ??= []);

/** Plugin `x`, recording `tag` when its module is evaluated; its selector says which file ran (and what `dep` said, when it imports it). */
function plugin(tag: string, importsDep = false): string {
  return `${importsDep ? "import { tag as depTag } from 'dep';\n" : 'const depTag = "none";\n'}(globalThis.__sigilRan ??= []).push(${JSON.stringify(tag)});
export default { workloadAttestor: { name: 'x', configSchema: { type: 'object' }, create: () => ({ attest: async () => ['x:' + ${JSON.stringify(tag)} + ':' + depTag] }) } };\n`;
}

const DEP = `(globalThis.__sigilRan ??= []).push('dep');\nexport const tag = 'dep';\n`;

function write(path: string, text: string, mode = 0o644): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  writeFileSync(path, text);
  chmodSync(path, mode);
}

/** A config directory `name` (0755) under base. */
function configDir(name: string): string {
  const d = join(base, name);
  mkdirSync(d, { mode: 0o755 });
  chmodSync(d, 0o755);
  return d;
}

/** `<dir>/node_modules/<name>`: a package whose entry is index.js; it also ships tools/payload.js (code that must not run as the plugin). */
function pluginPackage(dir: string, name = 'sigil-plugin-x', importsDep = false): string {
  const pkg = join(dir, 'node_modules', name);
  write(join(pkg, 'package.json'), JSON.stringify({ name, type: 'module', exports: './index.js' }));
  write(join(pkg, 'index.js'), plugin('index', importsDep));
  write(join(pkg, 'tools', 'payload.js'), plugin('payload'));
  return pkg;
}

/** The package `dep` at `dir` (a node_modules/dep directory). */
function depPackage(dir: string, mode = 0o644): void {
  write(join(dir, 'package.json'), JSON.stringify({ name: 'dep', type: 'module', exports: './index.js' }));
  write(join(dir, 'index.js'), DEP, mode);
}

function codeOf(run: () => unknown): string {
  try {
    run();
    return 'resolved';
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

/** Load plugin x from `spec` as the agent does and run it: its selector, or the refusal's code. */
async function load(dir: string, spec: string): Promise<string> {
  try {
    const m = await loadWorkloadAttestors({ x: {} }, fakeAgentDeps({ configDir: dir }), { x: spec });
    const sel = await m.get('x')?.attest({ pid: 1, uid: 0, gid: 0 }, new AbortController().signal);
    return String(sel?.[0]);
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-plugin-pkg-'));
  chmodSync(base, 0o755);
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('the package.json the loader reads is held to the rule of the module', () => {
  it('loads a package whose files only this user (or root) can change, with its dependency', async () => {
    const d = configDir('ok');
    pluginPackage(d, 'sigil-plugin-x', true);
    depPackage(join(d, 'node_modules', 'sigil-plugin-x', 'node_modules', 'dep'));
    expect(await load(d, 'sigil-plugin-x')).toBe('x:index:dep');
  });

  it('a world-writable package.json that redirects "exports" to another file of the package: refused, that file never runs', async () => {
    const d = configDir('exports-0666');
    const pkg = pluginPackage(d);
    chmodSync(join(pkg, 'package.json'), 0o666);
    // What the other user writes into it:
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'sigil-plugin-x', type: 'module', exports: './tools/payload.js' }));
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
    expect(await load(d, 'sigil-plugin-x')).toBe('plugin.insecure_path');
    expect(ran()).not.toContain('payload');
  });

  it('a group-writable package.json of a directory plugin that redirects "main": refused', () => {
    const d = configDir('main-0664');
    const p = join(d, 'plugins', 'x');
    write(join(p, 'package.json'), JSON.stringify({ name: 'x', type: 'module', main: 'tools/payload.js' }), 0o664);
    write(join(p, 'index.js'), plugin('index'));
    write(join(p, 'tools', 'payload.js'), plugin('payload'));
    expect(codeOf(() => resolvePluginModule('x', './plugins/x/', d))).toBe('plugin.insecure_path');
  });

  it('it is refused before it is read: what another user wrote there is never parsed (no plugin.load_failed for broken JSON)', () => {
    const d = configDir('pj-unparsed');
    const pkg = pluginPackage(d);
    chmodSync(join(pkg, 'package.json'), 0o666);
    writeFileSync(join(pkg, 'package.json'), '{ "exports": ');
    const e = (() => {
      try {
        resolvePluginModule('x', 'sigil-plugin-x', d);
      } catch (err) {
        return err as SigilError;
      }
      throw new Error('resolved');
    })();
    expect(e.code).toBe('plugin.insecure_path');
    expect(e.message).toContain(join(pkg, 'package.json'));
  });

  it.runIf(isRoot)('a package.json another user owns: refused', () => {
    const d = configDir('pj-owner');
    const pkg = pluginPackage(d);
    chownSync(join(pkg, 'package.json'), OTHER_UID, OTHER_UID);
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it('the package.json Node reads for the module type of a .js plugin file (its package scope): refused when writable', () => {
    const d = configDir('scope-0666');
    write(join(d, 'p', 'x.js'), plugin('file'));
    write(join(d, 'p', 'package.json'), JSON.stringify({ type: 'module' }), 0o666);
    expect(codeOf(() => resolvePluginModule('x', './p/x.js', d))).toBe('plugin.insecure_path');
  });
});

describe("the plugin's dependencies are held to the same rule", () => {
  it("a world-writable file of a dependency in the plugin's own node_modules: refused, the dependency never runs", async () => {
    const d = configDir('dep-own-0666');
    const pkg = pluginPackage(d, 'sigil-plugin-x', true);
    depPackage(join(pkg, 'node_modules', 'dep'), 0o666);
    const before = ran().filter((t) => t === 'dep').length;
    expect(await load(d, 'sigil-plugin-x')).toBe('plugin.insecure_path');
    expect(ran().filter((t) => t === 'dep').length).toBe(before);
  });

  it('a group-writable file of a dependency hoisted into <config dir>/node_modules: refused', () => {
    const d = configDir('dep-hoisted-0664');
    pluginPackage(d, 'sigil-plugin-x', true);
    depPackage(join(d, 'node_modules', 'dep'), 0o664);
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it('a dependency directory every user can write (they could add or swap its files): refused', () => {
    const d = configDir('dep-dir-0777');
    pluginPackage(d, 'sigil-plugin-x', true);
    depPackage(join(d, 'node_modules', 'dep'));
    chmodSync(join(d, 'node_modules', 'dep'), 0o777);
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it('a single-file plugin: the node_modules next to it, where its imports are found, is checked too', () => {
    const d = configDir('file-plugin-dep');
    write(join(d, 'x.mjs'), plugin('file', true));
    depPackage(join(d, 'node_modules', 'dep'), 0o666);
    expect(codeOf(() => resolvePluginModule('x', './x.mjs', d))).toBe('plugin.insecure_path');
  });

  it('a dependency linked in from elsewhere (npm link, pnpm) is followed: a writable file there is refused', () => {
    const d = configDir('dep-linked');
    const pkg = pluginPackage(d, 'sigil-plugin-x', true);
    const elsewhere = join(base, 'dep-linked-src', 'dep');
    depPackage(elsewhere, 0o666);
    mkdirSync(join(pkg, 'node_modules'), { mode: 0o755 });
    symlinkSync(elsewhere, join(pkg, 'node_modules', 'dep'), 'dir');
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it('a symlink that leads nowhere passes when no other user could create what it names, and is refused when one could', () => {
    const d = configDir('dangling');
    const pkg = pluginPackage(d);
    mkdirSync(join(pkg, 'node_modules', '.bin'), { recursive: true, mode: 0o755 });
    symlinkSync('../gone/cli.js', join(pkg, 'node_modules', '.bin', 'gone'));
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('resolved');
    const shared = join(base, 'dangling-shared');
    mkdirSync(shared, { mode: 0o755 });
    chmodSync(shared, 0o1777); // as /tmp: anyone can create the name the link points at
    symlinkSync(join(shared, 'cli.js'), join(pkg, 'node_modules', '.bin', 'planted'));
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it('a linked-in dependency whose files are safe loads and runs', async () => {
    const d = configDir('dep-linked-ok');
    const pkg = pluginPackage(d, 'sigil-plugin-x', true);
    const elsewhere = join(base, 'dep-linked-ok-src', 'dep');
    depPackage(elsewhere);
    mkdirSync(join(pkg, 'node_modules'), { mode: 0o755 });
    symlinkSync(elsewhere, join(pkg, 'node_modules', 'dep'), 'dir');
    expect(await load(d, 'sigil-plugin-x')).toBe('x:index:dep');
  });
});
