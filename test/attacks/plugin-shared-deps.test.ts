/**
 * The hosts hand plugins objects they share: the agent passes one `deps` object to every node and
 * workload attestor, and the verifier gives every node attestor the same `services` object (the
 * join-token lookups the built-in join_token attestor calls). Before this review a third-party
 * plugin got those very objects, so one that assigns to them — a bug such as
 * `deps.dataDir = join(deps.dataDir, 'mine')`, or a deliberate swap of
 * `services.consumeJoinToken` — changed what every other plugin, the built-ins included, saw: the
 * join_token attestor would call the swapped function to use up tokens. Each third-party plugin now
 * gets its own copies (and its own child logger); what it changes stays its own.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNodeAttestorVerifiers, loadWorkloadAttestors } from '../../src/catalog.js';
import { fakeAgentDeps, fakeVerifierDeps } from '../../src/plugin-kit/testing.js';
import type { VerifierServices } from '../../src/plugins/types.js';

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-plugin-deps-'));
  // Assigns to what it was given, as a careless (or hostile) plugin does.
  writeFileSync(
    join(dir, 'mutator.mjs'),
    `export default {
      workloadAttestor: { name: 'mutator', configSchema: { type: 'object' }, create: (c, deps) => { deps.dataDir = '/tmp/elsewhere'; deps.now = () => new Date(0); deps.logger.level = 'silent'; return { attest: async () => [] }; } },
      nodeAttestorVerifier: { name: 'mutator', configSchema: { type: 'object' }, create: (c, deps) => { if (deps.services) deps.services.consumeJoinToken = async () => ({ tokenId: 'forged' }); deps.trustDomain = 'evil.example'; return { begin: async () => ({ challenge: null, state: null }), finish: async () => { throw new Error('no'); } }; } },
    };\n`,
  );
  // Records what it sees when it is created and when it runs.
  writeFileSync(
    join(dir, 'observer.mjs'),
    `export default {
      workloadAttestor: { name: 'observer', configSchema: { type: 'object' }, create: (c, deps) => ({ attest: async () => ['observer:' + deps.dataDir, 'observer:' + deps.now().getTime()] }) },
    };\n`,
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('a third-party plugin cannot change what the host shares with other plugins', () => {
  it('agent: the deps another attestor (and the host) sees are unchanged', async () => {
    const deps = fakeAgentDeps({ configDir: dir, dataDir: join(dir, 'data'), now: () => new Date(1_000) });
    const loaded = await loadWorkloadAttestors({ mutator: {}, observer: {} }, deps, { mutator: './mutator.mjs', observer: './observer.mjs' });
    const seen = await loaded.get('observer')!.attest({ pid: 1, uid: 0, gid: 0 }, new AbortController().signal);
    expect(seen).toEqual([`observer:${join(dir, 'data')}`, 'observer:1000']);
    expect(deps.dataDir).toBe(join(dir, 'data'));
    expect(deps.logger.level).toBe('silent'); // fakeAgentDeps' logger is silent anyway; unchanged
  });

  it('agent: the host logger level is not changed by a plugin', async () => {
    const deps = { ...fakeAgentDeps({ configDir: dir }), logger: (await import('pino')).pino({ level: 'info' }) };
    await loadWorkloadAttestors({ mutator: {} }, deps, { mutator: './mutator.mjs' });
    expect(deps.logger.level).toBe('info');
  });

  it('verifier: the shared join-token services stay the host\'s', async () => {
    const consume: VerifierServices['consumeJoinToken'] = async () => ({ tokenId: 'real' });
    const services = { consumeJoinToken: consume } as unknown as VerifierServices;
    const base = fakeVerifierDeps({ configDir: dir });
    await loadNodeAttestorVerifiers({ mutator: {} }, () => ({ ...base, services }), { mutator: './mutator.mjs' }, dir);
    expect(services.consumeJoinToken).toBe(consume);
  });
});
