/**
 * Attacks on the third-party plugin error boundary (issue 11 item 10): a plugin must not get a
 * code outside `<its name>.*` to the host, however it throws. Each case passed a foreign code on
 * before this review:
 * - the synchronous members (`credentialKey`, run on every unauthenticated hello, and
 *   `stateKeysForAgent`) were not guarded at all, and the verifier keeps the code of any Sigil
 *   `SigilError` they throw;
 * - a `SigilError` whose `code` is a getter showed an in-namespace code to the boundary and a
 *   foreign one to the host (the boundary returned the same object);
 * - a `code` getter that throws made the boundary throw the getter's error instead;
 * - a function (not an object) with SigilError's prototype was passed on untouched;
 * - a plugin named after one of Sigil's own error areas (`agent`, `attest`, …) or a built-in's
 *   namespace that is not its name (`sev`, `nitro`) owned that namespace.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNodeAttestorVerifiers, loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { fakeAgentDeps, fakeSession, fakeVerifierDeps } from '../../src/plugin-kit/testing.js';
import type { NodeAttestorVerifier } from '../../src/plugins/types.js';

const errorsUrl = new URL('../../src/errors.ts', import.meta.url).href;
let dir: string;

/** The code a host would act on for what `run` threw: a SigilError's code, else none. */
function codeOf(run: () => unknown): string {
  try {
    run();
  } catch (e) {
    return e instanceof SigilError ? e.code : '(not a SigilError: the host wraps it)';
  }
  throw new Error('did not throw');
}

async function codeOfAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    // Read twice: a getter must not show the host something else the second time.
    if (!(e instanceof SigilError)) return '(not a SigilError: the host wraps it)';
    const first = e.code;
    expect(e.code).toBe(first);
    return first;
  }
  throw new Error('resolved');
}

async function load(name: string, body: string): Promise<NodeAttestorVerifier> {
  writeFileSync(
    join(dir, `${name}.mjs`),
    `import { SigilError } from ${JSON.stringify(errorsUrl)};
export default { nodeAttestorVerifier: { name: '${name}', configSchema: { type: 'object' }, create() { return {
${body}
}; } } };
`,
  );
  const m = await loadNodeAttestorVerifiers({ [name]: {} }, () => fakeVerifierDeps({ configDir: dir }), { [name]: `./${name}.mjs` }, dir);
  const v = m.get(name);
  if (!v) throw new Error('not loaded');
  return v;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-boundary-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('plugin error boundary, attacked', () => {
  it('credentialKey and stateKeysForAgent cannot throw a foreign code', async () => {
    const v = await load(
      'synckeys',
      `async begin() { return { challenge: {}, state: {} }; }, async finish() { throw new Error('unused'); },
credentialKey() { throw new SigilError('attest.agent_banned', 'this agent is banned'); },
stateKeysForAgent() { throw new SigilError('agent.unknown', 're-attest'); },`,
    );
    expect(codeOf(() => v.credentialKey?.({}))).toBe('plugin.code_outside_namespace');
    expect(codeOf(() => v.stateKeysForAgent?.('n'))).toBe('plugin.code_outside_namespace');
  });

  it('a code getter cannot show the boundary one code and the host another (the boundary read it twice)', async () => {
    const v = await load(
      'getter',
      `async begin() {
  const e = new SigilError('getter.fine', 'm');
  let reads = 0;
  Object.defineProperty(e, 'code', { get() { return reads++ < 2 ? 'getter.fine' : 'attest.agent_banned'; } });
  throw e;
}, async finish() { throw new Error('unused'); },`,
    );
    expect(await codeOfAsync(v.begin({}, fakeSession()))).toBe('getter.fine');
  });

  it('a code getter that throws a Sigil error does not throw that error past the boundary', async () => {
    const v = await load(
      'throwing',
      `async begin() {
  const e = new Error('m');
  Object.defineProperty(e, 'code', { get() { throw new SigilError('agent.unknown', 're-attest now'); } });
  throw e;
}, async finish() { throw new Error('unused'); },`,
    );
    const code = await codeOfAsync(v.begin({}, fakeSession()));
    expect(code.startsWith('agent.')).toBe(false);
  });

  it('a function dressed as a SigilError is not passed on', async () => {
    const v = await load(
      'fn',
      `async begin() {
  const f = function () {};
  Object.setPrototypeOf(f, SigilError.prototype);
  Object.defineProperty(f, 'code', { value: 'attest.agent_banned' });
  throw f;
}, async finish() { throw new Error('unused'); },`,
    );
    const code = await codeOfAsync(v.begin({}, fakeSession()));
    expect(code).not.toBe('attest.agent_banned');
  });

  it.each(['agent', 'attest', 'plugin', 'http', 'workload_api', 'nitro', 'sev'])('a third-party plugin cannot be named %s (a namespace Sigil or a built-in speaks in)', async (name) => {
    writeFileSync(
      join(dir, `${name}.mjs`),
      `export default { workloadAttestor: { name: '${name}', configSchema: { type: 'object' }, create() { return { async attest() { return []; } }; } } };\n`,
    );
    let code = 'loaded';
    try {
      await loadWorkloadAttestors({ [name]: {} }, fakeAgentDeps({ configDir: dir }), { [name]: `./${name}.mjs` });
    } catch (e) {
      code = e instanceof SigilError ? e.code : String(e);
    }
    expect(code).toBe('plugin.reserved_name');
  });

  it('a third-party plugin may still replace a built-in of the same name', async () => {
    writeFileSync(join(dir, 'unix.mjs'), `export default { workloadAttestor: { name: 'unix', configSchema: { type: 'object' }, create() { return { async attest() { return []; } }; } } };\n`);
    const m = await loadWorkloadAttestors({ unix: {} }, fakeAgentDeps({ configDir: dir }), { unix: './unix.mjs' });
    expect(m.has('unix')).toBe(true);
  });
});

describe('reserved plugin names follow the codes Sigil throws', () => {
  it('every area of a SigilError code written in src/ is reserved', async () => {
    const { readdirSync, readFileSync } = await import('node:fs');
    const { SIGIL_ERROR_AREAS } = await import('../../src/plugins/loader.js');
    const root = new URL('../../src/', import.meta.url).pathname;
    const areas = new Set<string>();
    for (const f of readdirSync(root, { recursive: true, encoding: 'utf8' })) {
      if (!f.endsWith('.ts')) continue;
      for (const m of readFileSync(join(root, f), 'utf8').matchAll(/SigilError\(\s*['`]([a-z_]+)\./g)) areas.add(m[1] as string);
    }
    expect(areas.size).toBeGreaterThan(20);
    expect([...areas].filter((a) => !SIGIL_ERROR_AREAS.has(a))).toEqual([]);
  });
});
