/**
 * Package `exports` as Node reads them for import(): in a conditions object, a condition whose
 * nested value matches none of the active conditions is skipped and the next key is tried
 * (`{ "node": { "require": "./x.cjs" }, "default": "./y.mjs" }` is ./y.mjs for import()). The
 * resolver stopped at the first matching key and reported plugin.not_found for such packages.
 * Escapes stay refused, whichever branch they are in.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { resolvePluginModule } from '../../src/plugins/resolve.js';

let dir: string;

function pkg(name: string, exportsField: unknown, files: string[]): void {
  const d = join(dir, 'node_modules', name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'package.json'), JSON.stringify({ name, type: 'module', exports: exportsField }));
  for (const f of files) writeFileSync(join(d, f), 'export default {};\n');
}

function codeOf(run: () => unknown): string {
  try {
    run();
    return 'resolved';
  } catch (e) {
    return (e as SigilError).code;
  }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-exports-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('exports conditions', () => {
  it('a nested conditions object with no active condition falls through to the next key', () => {
    pkg('nested', { node: { require: './x.cjs' }, default: './y.mjs' }, ['x.cjs', 'y.mjs']);
    expect(resolvePluginModule('p', 'nested', dir).file).toBe(join(dir, 'node_modules', 'nested', 'y.mjs'));
  });

  it('an explicit null still blocks (no fall-through)', () => {
    pkg('blocked', { node: null, default: './y.mjs' }, ['y.mjs']);
    expect(codeOf(() => resolvePluginModule('p', 'blocked', dir))).toBe('plugin.not_found');
  });

  it('an escaping target in a later branch is still refused', () => {
    pkg('escape', { node: { require: './x.cjs' }, default: '../../../etc/passwd' }, ['x.cjs']);
    expect(codeOf(() => resolvePluginModule('p', 'escape', dir))).toBe('plugin.not_found');
  });
});
