/**
 * Where third-party plugins are found (issue 11, item 11): paths relative to the config directory,
 * packages only in `<config dir>/node_modules` (ESM-only ones too), never Sigil's own install or a
 * parent directory's node_modules; nothing found fails closed naming every path tried.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNodeAttestorVerifiers } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { MemoryPluginState } from '../../src/plugin-kit/testing.js';

let root: string;
let conf: string;

/** An ES module plugin named `name` whose single selector says where it was loaded from. */
function pluginSource(name: string, origin: string): string {
  return `export default {
  nodeAttestorVerifier: {
    name: ${JSON.stringify(name)},
    configSchema: { type: 'object', additionalProperties: false, properties: {} },
    create() {
      return {
        async begin() { return { challenge: {}, state: {} }; },
        async finish() { return { selectors: [${JSON.stringify(`${name}:origin:${origin}`)}], claims: {}, agentIdSuffix: 'n1' }; },
      };
    },
  },
};
`;
}

function writePackage(dir: string, pkgJson: Record<string, unknown>, files: Record<string, string>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify(pkgJson));
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, '..'), { recursive: true });
    writeFileSync(join(dir, f), text);
  }
}

const deps = () => ({ trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => new Date(), configDir: conf, state: new MemoryPluginState() });

async function origin(name: string, spec: string, configDir = conf): Promise<string> {
  const m = await loadNodeAttestorVerifiers({ [name]: {} }, deps, { [name]: spec }, configDir);
  const v = m.get(name);
  if (!v) throw new Error('not loaded');
  const r = await v.finish({}, {}, { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(0), now: new Date() });
  return r.selectors[0] as string;
}

async function failure(name: string, spec: string, configDir = conf): Promise<SigilError> {
  try {
    await loadNodeAttestorVerifiers({ [name]: {} }, deps, { [name]: spec }, configDir);
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
  throw new Error(`plugin "${spec}" loaded`);
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'sigil-resolve-'));
  conf = join(root, 'conf');
  mkdirSync(conf);
  // The attacker's case: an ESM-only package (exports has only "import") next to the config, with
  // the name of a package in Sigil's own node_modules.
  writePackage(join(conf, 'node_modules', 'yaml'), { name: 'yaml', type: 'module', exports: { '.': { import: './esm/plugin.js' } } }, { 'esm/plugin.js': pluginSource('yaml', 'config-dir') });
  // A scoped ESM-only package with subpath exports and a pattern.
  writePackage(
    join(conf, 'node_modules', '@acme', 'sigil-x'),
    { name: '@acme/sigil-x', type: 'module', exports: { '.': './index.js', './verifier': { node: { import: './v.js' } }, './parts/*': './lib/*.js', './escape': './../../outside.js' } },
    { 'index.js': pluginSource('acme', 'root'), 'v.js': pluginSource('acme', 'verifier'), 'lib/p1.js': pluginSource('acme', 'pattern') },
  );
  // A CommonJS package with "main".
  writePackage(join(conf, 'node_modules', 'cjs-plugin'), { name: 'cjs-plugin', main: 'lib/main' }, { 'lib/main.js': `module.exports = ${pluginSource('cjs', 'cjs').replace('export default ', '')}` });
  // A package in a parent directory's node_modules: Node would find it from conf; Sigil must not.
  writePackage(join(root, 'node_modules', 'parentpkg'), { name: 'parentpkg', type: 'module', exports: './p.js' }, { 'p.js': pluginSource('parentpkg', 'parent') });
  writeFileSync(join(root, 'outside.js'), pluginSource('acme', 'outside'));
  mkdirSync(join(conf, 'plugins'));
  writeFileSync(join(conf, 'plugins', 'local.mjs'), pluginSource('local', 'path'));
  writePackage(join(conf, 'plugins', 'dirpkg'), { name: 'dirpkg', type: 'module', exports: { import: './main.js' } }, { 'main.js': pluginSource('dirpkg', 'dir') });
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('third-party plugin resolution', () => {
  it('loads an ESM-only package next to the config, not the package of that name in Sigil\'s install', async () => {
    expect(await origin('yaml', 'yaml')).toBe('yaml:origin:config-dir');
  });

  it('never falls back to Sigil\'s own node_modules, and names every path tried', async () => {
    const other = mkdtempSync(join(root, 'empty-'));
    const e = await failure('cbor2', 'cbor2', other);
    expect(e.code).toBe('plugin.not_found');
    expect(e.message).toContain(join(other, 'node_modules', 'cbor2', 'package.json'));
    expect((e.details as { tried: string[] }).tried).toEqual([join(other, 'node_modules', 'cbor2', 'package.json')]);
  });

  it('does not look in node_modules of parent directories', async () => {
    const e = await failure('parentpkg', 'parentpkg');
    expect(e.code).toBe('plugin.not_found');
    expect(e.message).toContain(join(conf, 'node_modules', 'parentpkg'));
    expect(e.message).not.toContain(join(root, 'node_modules', 'parentpkg', 'p.js'));
  });

  it('honours exports: conditions, subpaths, patterns; main for CommonJS packages', async () => {
    expect(await origin('acme', '@acme/sigil-x')).toBe('acme:origin:root');
    expect(await origin('acme', '@acme/sigil-x/verifier')).toBe('acme:origin:verifier');
    expect(await origin('acme', '@acme/sigil-x/parts/p1')).toBe('acme:origin:pattern');
    expect(await origin('cjs', 'cjs-plugin')).toBe('cjs:origin:cjs');
  });

  it('refuses exports targets that leave the package and subpaths the package does not export', async () => {
    expect((await failure('acme', '@acme/sigil-x/escape')).code).toBe('plugin.not_found');
    const e = await failure('acme', '@acme/sigil-x/v.js');
    expect(e.code).toBe('plugin.not_found');
    expect(e.message).toMatch(/has no "\.\/v\.js"/);
  });

  it('resolves paths against the config directory (files, and directories as packages)', async () => {
    expect(await origin('local', './plugins/local.mjs')).toBe('local:origin:path');
    expect(await origin('local', join(conf, 'plugins', 'local.mjs'))).toBe('local:origin:path');
    expect(await origin('dirpkg', './plugins/dirpkg')).toBe('dirpkg:origin:dir');
    const e = await failure('local', './plugins/nope.mjs');
    expect(e.code).toBe('plugin.not_found');
    expect((e.details as { tried: string[] }).tried).toEqual([join(conf, 'plugins', 'nope.mjs')]);
  });

  it('refuses specifiers that are neither a path nor a package name', async () => {
    for (const spec of ['node:fs', 'https://example.org/p.mjs', 'Yaml', '@acme', 'a//b', 'pkg/../../x']) {
      expect((await failure('p', spec)).code, spec).toBe('plugin.bad_specifier');
    }
  });
});
