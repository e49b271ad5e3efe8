/**
 * The example configs in examples/ go through the real loaders, so they cannot rot: every
 * `verifier-*.yaml` through loadVerifierConfig, every `agent-*.yaml` through loadAgentConfig, and
 * every plugin block through its plugin's own schema (resolved by the catalog, validated as the
 * loader validates it). examples/entries.sh is run for real, with the CLI from source, against a
 * running verifier.
 */
import { execFile } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../src/agent/config.js';
import { builtinPlugins, resolvePlugin } from '../src/catalog.js';
import { adminCall } from '../src/cli/admin-client.js';
import type { PluginKind } from '../src/plugins/loader.js';
import { validatePluginConfig } from '../src/plugins/validate.js';
import { loadVerifierConfig } from '../src/verifier/config.js';
import { codeOf } from './support/codes.js';
import { startTestVerifier, type TestVerifier } from './support/verifier.js';

const root = resolve(__dirname, '..');
const examples = join(root, 'examples');
const yamlFiles = readdirSync(examples).filter((f) => f.endsWith('.yaml') || f.endsWith('.yml') || f.endsWith('.json'));

/** Validate each block against its plugin's schema, with the namespace the loader would use. */
async function validateBlocks(kind: PluginKind, blocks: Record<string, unknown>, plugins: Record<string, string>, configDir: string, where: string): Promise<string[]> {
  const names: string[] = [];
  for (const [name, block] of Object.entries(blocks)) {
    const builtin = (builtinPlugins[kind] as Record<string, { errorNamespace: string } | undefined>)[name];
    expect(builtin, `${where}: "${name}" is not a built-in ${kind} (examples use built-ins only)`).toBeDefined();
    const plugin = await resolvePlugin(kind, name, plugins, configDir);
    validatePluginConfig(plugin.configSchema, block ?? {}, { namespace: builtin!.errorNamespace, what: `${where}: plugin "${name}"` });
    names.push(name);
  }
  return names;
}

/** Load an example with the loader its name calls for, then validate every plugin block in it. */
async function checkExample(path: string): Promise<{ kind: 'verifier' | 'agent'; nodeAttestors: string[] }> {
  const file = path.split('/').pop()!;
  if (file.startsWith('verifier')) {
    const c = loadVerifierConfig(path);
    return { kind: 'verifier', nodeAttestors: await validateBlocks('nodeAttestorVerifier', c.nodeAttestors, c.plugins, c.configDir, file) };
  }
  if (file.startsWith('agent')) {
    const c = loadAgentConfig(path);
    const nodeAttestors = await validateBlocks('nodeAttestorAgent', c.nodeAttestors, c.plugins, c.configDir, file);
    await validateBlocks('workloadAttestor', c.workloadAttestors, c.plugins, c.configDir, file);
    return { kind: 'agent', nodeAttestors };
  }
  throw new Error(`examples/${file}: name it verifier-*.yaml or agent-*.yaml so this test knows its loader`);
}

describe('example configs', () => {
  it('ships the documented set', () => {
    for (const f of ['verifier-sqlite.yaml', 'verifier-postgres.yaml', 'agent-join-token.yaml', 'agent-tpm.yaml', 'agent-containers.yaml', 'entries.sh']) {
      expect(readdirSync(examples)).toContain(f);
    }
  });

  it.each(yamlFiles)('%s loads with the real config loader and each plugin block passes its plugin schema', async (file) => {
    await checkExample(join(examples, file));
  });

  it('every node attestor an agent example uses is enabled by a verifier example', async () => {
    const loaded = await Promise.all(yamlFiles.map((f) => checkExample(join(examples, f))));
    const enabled = new Set(loaded.filter((l) => l.kind === 'verifier').flatMap((l) => l.nodeAttestors));
    for (const l of loaded.filter((x) => x.kind === 'agent')) for (const n of l.nodeAttestors) expect(enabled).toContain(n);
  });

  it('the checks bite: a misspelt key in an example, or in one of its plugin blocks, is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-examples-'));
    try {
      const topLevel = join(dir, 'verifier-typo.yaml');
      writeFileSync(topLevel, readFileSync(join(examples, 'verifier-sqlite.yaml'), 'utf8').replace('dataDir:', 'dataDirectory:'));
      expect(codeOf(() => loadVerifierConfig(topLevel))).toBe('config.invalid');
      const inPlugin = join(dir, 'agent-typo.yaml');
      writeFileSync(inPlugin, readFileSync(join(examples, 'agent-tpm.yaml'), 'utf8').replace('akAlg: ecc', 'akAlgorithm: ecc'));
      await expect(checkExample(inPlugin)).rejects.toMatchObject({ code: 'tpm.config_invalid' });
      const inContainer = join(dir, 'agent-typo2.yaml');
      writeFileSync(inContainer, readFileSync(join(examples, 'agent-containers.yaml'), 'utf8').replace('lookupTimeout:', 'lookupTimout:'));
      await expect(checkExample(inContainer)).rejects.toMatchObject({ code: 'container.config_invalid' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('examples/entries.sh', () => {
  let tv: TestVerifier;
  let bin: string;

  beforeAll(async () => {
    tv = await startTestVerifier();
    // `sigil` on PATH = the CLI from source, as the test suite runs it everywhere else.
    bin = mkdtempSync(join(tmpdir(), 'sigil-bin-'));
    writeFileSync(join(bin, 'sigil'), `#!/bin/sh\nexec "${process.execPath}" --import tsx "${join(root, 'test/support/run-cli.ts')}" "$@"\n`);
    chmodSync(join(bin, 'sigil'), 0o755);
  });
  afterAll(async () => {
    await tv?.stop();
    if (bin) rmSync(bin, { recursive: true, force: true });
  });

  function run(env: Record<string, string>): Promise<{ code: number; out: string; err: string }> {
    const script = join(bin, 'entries.sh');
    copyFileSync(join(examples, 'entries.sh'), script);
    return new Promise((res) => {
      execFile('sh', [script], { cwd: root, env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, SIGIL_ADMIN_SOCKET: tv.adminSocket, ...env }, timeout: 120_000 }, (error, out, err) =>
        res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out, err }),
      );
    });
  }

  it('refuses to run without the values it needs', async () => {
    const r = await run({});
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('EK_PUBHASH');
  });

  it('creates the node entry and the three workload entries under it on a running verifier', async () => {
    const hex = (c: string, n: number): string => c.repeat(n);
    const r = await run({ EK_PUBHASH: hex('ab', 32), PCR7: hex('cd', 32), APP_SHA256: hex('ef', 32) });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const { entries } = await adminCall<{ entries: { spiffeId: string; parentId: string; selectors: string[] }[] }>(tv.adminSocket, 'GET', '/v1/admin/entries');
    const byId = new Map(entries.map((e) => [e.spiffeId, e]));
    expect(byId.get('spiffe://example.org/nodes/web-1')?.parentId).toBe('spiffe://example.org/sigil/verifier');
    expect(byId.get('spiffe://example.org/nodes/web-1')?.selectors).toContain(`tpm:ek_pubhash:${hex('ab', 32)}`);
    for (const id of ['web', 'billing', 'ns/payments/sa/api']) expect(byId.get(`spiffe://example.org/${id}`)?.parentId).toBe('spiffe://example.org/nodes/web-1');
    expect(byId.get('spiffe://example.org/billing')?.selectors).toContain(`unix:sha256:${hex('ef', 32)}`);
    expect(r.out).toContain('spiffe://example.org/ns/payments/sa/api');
  });
});
