/**
 * A third-party plugin's error codes are `<its name>.*`, so a plugin named after one of Sigil's own
 * error areas would speak as Sigil; the loader refuses such names (`plugin.reserved_name`) from the
 * list SIGIL_ERROR_AREAS. The list had fallen behind the codes Sigil uses: `x509` (x509.expired,
 * x509.signature_invalid, … in docs/errors.md) was missing, so a plugin named `x509` loaded and its
 * `x509.*` codes crossed the boundary as if Sigil's certificate checks had failed. The test derives
 * the areas from docs/errors.md and from the codes in src/, so the next new area is caught too.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinPlugins, loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { fakeAgentDeps } from '../../src/plugin-kit/testing.js';
import { SIGIL_ERROR_AREAS } from '../../src/plugins/loader.js';

const root = resolve(import.meta.dirname, '../..');
let dir: string;

function sourceFiles(d: string): string[] {
  return readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sourceFiles(join(d, e.name)) : e.name.endsWith('.ts') ? [join(d, e.name)] : []));
}

/** First segments of the codes docs/errors.md lists (first column) and of `new SigilError('<area>.…'` in src/. */
function sigilAreas(): Set<string> {
  const areas = new Set<string>();
  for (const line of readFileSync(join(root, 'docs/errors.md'), 'utf8').split('\n')) {
    if (!line.startsWith('| `')) continue;
    for (const m of (line.split('|')[1] ?? '').matchAll(/`([a-z][a-z0-9_]*)\.[a-z0-9_.]+`/g)) areas.add(m[1]!);
  }
  for (const f of sourceFiles(join(root, 'src'))) {
    for (const m of readFileSync(f, 'utf8').matchAll(/SigilError\(\s*'([a-z][a-z0-9_]*)\.[a-z0-9_.]+'/g)) areas.add(m[1]!);
  }
  return areas;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-plugin-areas-'));
  writeFileSync(join(dir, 'x509.mjs'), `export default { workloadAttestor: { name: 'x509', configSchema: { type: 'object' }, create: () => ({ attest: async () => [] }) } };\n`);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("Sigil's error areas are reserved", () => {
  it('every area of a code Sigil uses is a reserved plugin name', () => {
    const builtinNamespaces = new Set(Object.values(builtinPlugins).flatMap((k) => Object.values(k as Record<string, { errorNamespace: string }>).map((b) => b.errorNamespace)));
    const open = [...sigilAreas()].filter((a) => !SIGIL_ERROR_AREAS.has(a) && !builtinNamespaces.has(a)).sort();
    expect(open).toEqual([]);
  });

  it('a third-party plugin named x509 is refused', async () => {
    const code = await loadWorkloadAttestors({ x509: {} }, fakeAgentDeps({ configDir: dir }), { x509: './x509.mjs' }).then(
      () => 'loaded',
      (e: unknown) => (e instanceof SigilError ? e.code : String(e)),
    );
    expect(code).toBe('plugin.reserved_name');
  });
});
