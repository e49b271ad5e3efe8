/**
 * A third-party plugin's `configSchema` is compiled by the one ajv instance every plugin and both
 * daemon configs share. Before this review:
 * - a schema ajv refuses (`{ type: 'nonsense' }`) made the loader throw ajv's own Error: not a
 *   SigilError, so `sigil verifier run` ended with "internal error" and no plugin named;
 * - a schema with an `$id` was registered in the shared instance, so a second plugin (or a second
 *   load of the same plugin whose schema is built afresh) with that `$id` failed with ajv's
 *   "schema with key or id already exists", and a plugin could register ids other schemas resolve.
 * - a module whose plugin object throws when read (a getter for `create` or `configSchema`) made
 *   the loader throw the getter's error, again not a SigilError.
 * Schemas are now compiled without registering their `$id`, and a schema that does not compile,
 * like a plugin object that cannot be read, is `plugin.bad_module` naming the plugin.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { fakeAgentDeps } from '../../src/plugin-kit/testing.js';

let dir: string;

function plugin(name: string, schema: string): string {
  const f = join(dir, `${name}.mjs`);
  writeFileSync(f, `export default { workloadAttestor: { name: '${name}', get configSchema() { return ${schema}; }, create: () => ({ attest: async () => [] }) } };\n`);
  return `./${name}.mjs`;
}

async function outcome(blocks: Record<string, unknown>, sources: Record<string, string>): Promise<string> {
  try {
    await loadWorkloadAttestors(blocks, fakeAgentDeps({ configDir: dir }), sources);
    return 'loaded';
  } catch (e) {
    return e instanceof SigilError ? `${e.code}: ${e.message}` : `(not a SigilError) ${String(e)}`;
  }
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-plugin-schema-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('a plugin schema ajv cannot or should not compile', () => {
  it('an invalid schema is plugin.bad_module naming the plugin', async () => {
    const r = await outcome({ bad_schema: {} }, { bad_schema: plugin('bad_schema', `{ type: 'nonsense' }`) });
    expect(r).toMatch(/^plugin\.bad_module: plugin "bad_schema"/);
  });

  it('a plugin object whose members throw when read is plugin.bad_module', async () => {
    writeFileSync(join(dir, 'getter.mjs'), `export default { workloadAttestor: { name: 'getter', configSchema: { type: 'object' }, get create() { throw new TypeError('boom'); } } };\n`);
    expect(await outcome({ getter: {} }, { getter: './getter.mjs' })).toMatch(/^plugin\.bad_module: plugin "getter"/);
    // Posing as Sigil with a foreign code does not get that code out either.
    writeFileSync(
      join(dir, 'poser.mjs'),
      `export default { workloadAttestor: { name: 'poser', get configSchema() { const e = new Error('banned'); e.name = 'SigilError'; e.code = 'attest.agent_banned'; throw e; }, create: () => ({}) } };\n`,
    );
    expect(await outcome({ poser: {} }, { poser: './poser.mjs' })).toMatch(/^plugin\.bad_module: plugin "poser"/);
  });

  it('two plugins whose schemas share an $id both load', async () => {
    const sources = { ida: plugin('ida', `{ $id: 'https://example.org/cfg', type: 'object' }`), idb: plugin('idb', `{ $id: 'https://example.org/cfg', type: 'object' }`) };
    expect(await outcome({ ida: {}, idb: {} }, sources)).toBe('loaded');
  });

  it('a plugin whose schema is built afresh (with an $id) loads twice', async () => {
    const sources = { again: plugin('again', `{ $id: 'https://example.org/again', type: 'object', properties: { n: { type: 'integer' } } }`) };
    expect(await outcome({ again: {} }, sources)).toBe('loaded');
    expect(await outcome({ again: { n: 1 } }, sources)).toBe('loaded');
    expect(await outcome({ again: { n: 'x' } }, sources)).toMatch(/^again\.config_invalid/);
  });
});
