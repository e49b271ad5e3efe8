/**
 * A third-party plugin is code the verifier (or agent) runs with its own rights, often root. Before
 * this review the loader imported a plugin module wherever `plugins` pointed, however it could be
 * changed: a module file another user owns or can write, one in a directory another user can write
 * (they replace the file), or one reached through another user's symlink. Any local user who could
 * write there got their code run inside the verifier at the next start (its CA keys, its
 * datastore). Such a module is now refused before it is imported (`plugin.insecure_path`), by the
 * rule the socket directories and dataDir follow (owned by this user or root, not group/world-
 * writable, an ancestor only with the sticky bit).
 */
import { chmodSync, chownSync, lchownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { fakeAgentDeps } from '../../src/plugin-kit/testing.js';
import { resolvePluginModule } from '../../src/plugins/resolve.js';

const OTHER_UID = 65534;
const isRoot = process.geteuid?.() === 0;
let base: string;

const MODULE = `export default { workloadAttestor: { name: 'x', configSchema: { type: 'object' }, create: () => { globalThis.__sigilPwned = (globalThis.__sigilPwned ?? 0) + 1; return { attest: async () => [] }; } } };\n`;

function codeOf(run: () => unknown): string {
  try {
    run();
    return 'resolved';
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

/** A config directory `name` (0700) under base, with `./p/x.mjs` written. */
function configDir(name: string): string {
  const d = join(base, name);
  mkdirSync(join(d, 'p'), { recursive: true, mode: 0o700 });
  chmodSync(join(d, 'p'), 0o755);
  writeFileSync(join(d, 'p', 'x.mjs'), MODULE, { mode: 0o644 });
  return d;
}

beforeAll(() => {
  base = mkdtempSync(join(tmpdir(), 'sigil-plugin-perm-'));
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('a plugin module another user could change is not imported', () => {
  it('loads a module only this user (or root) can change', () => {
    const d = configDir('ok');
    expect(resolvePluginModule('x', './p/x.mjs', d).file).toBe(join(d, 'p', 'x.mjs'));
  });

  it('refuses a world-writable module file', () => {
    const d = configDir('file-0666');
    chmodSync(join(d, 'p', 'x.mjs'), 0o666);
    expect(codeOf(() => resolvePluginModule('x', './p/x.mjs', d))).toBe('plugin.insecure_path');
  });

  it('refuses a group-writable module file', () => {
    const d = configDir('file-0664');
    chmodSync(join(d, 'p', 'x.mjs'), 0o664);
    expect(codeOf(() => resolvePluginModule('x', './p/x.mjs', d))).toBe('plugin.insecure_path');
  });

  it.runIf(isRoot)('refuses a module file another user owns', () => {
    const d = configDir('file-owner');
    chownSync(join(d, 'p', 'x.mjs'), OTHER_UID, OTHER_UID);
    expect(codeOf(() => resolvePluginModule('x', './p/x.mjs', d))).toBe('plugin.insecure_path');
  });

  it('refuses a module in a world-writable directory (its file can be replaced)', () => {
    const d = configDir('dir-0777');
    chmodSync(join(d, 'p'), 0o777);
    expect(codeOf(() => resolvePluginModule('x', './p/x.mjs', d))).toBe('plugin.insecure_path');
  });

  it('refuses a package under a node_modules another user can write', () => {
    const d = join(base, 'pkg');
    const pkg = join(d, 'node_modules', 'sigil-plugin-x');
    mkdirSync(pkg, { recursive: true });
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'sigil-plugin-x', type: 'module', exports: './index.js' }));
    writeFileSync(join(pkg, 'index.js'), MODULE);
    chmodSync(join(d, 'node_modules'), 0o777);
    expect(codeOf(() => resolvePluginModule('x', 'sigil-plugin-x', d))).toBe('plugin.insecure_path');
  });

  it.runIf(isRoot)('refuses a module reached through a symlink another user owns', () => {
    const d = configDir('link');
    symlinkSync(join(d, 'p', 'x.mjs'), join(d, 'p', 'y.mjs'));
    lchownSync(join(d, 'p', 'y.mjs'), OTHER_UID, OTHER_UID);
    expect(codeOf(() => resolvePluginModule('x', './p/y.mjs', d))).toBe('plugin.insecure_path');
  });

  it('the loader never runs such a module', async () => {
    const d = configDir('loader');
    chmodSync(join(d, 'p'), 0o777);
    const g = globalThis as { __sigilPwned?: number };
    const before = g.__sigilPwned ?? 0;
    const code = await loadWorkloadAttestors({ x: {} }, fakeAgentDeps({ configDir: d }), { x: './p/x.mjs' }).then(
      () => 'loaded',
      (e: unknown) => (e instanceof SigilError ? e.code : String(e)),
    );
    expect(code).toBe('plugin.insecure_path');
    expect(g.__sigilPwned ?? 0).toBe(before);
  });
});
