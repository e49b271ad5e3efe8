/** The README's plugin example, run as a plugin outside the install with the kit's harness and the real loader. */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNodeAttestorAgents, loadNodeAttestorVerifiers } from '../../src/catalog.js';
import type { PluginModule } from '../../src/plugin-kit/index.js';
import { fakeAgentDeps, fakeSession, fakeVerifierDeps, runAttestation } from '../../src/plugin-kit/testing.js';
import { installSigilCopy } from './support/outside-install.js';

let root: string;
let conf: string;
let psk: Required<Pick<PluginModule, 'nodeAttestorVerifier' | 'nodeAttestorAgent'>>;
const KEY = 'k'.repeat(40);

beforeAll(async () => {
  const readme = readFileSync(resolve(__dirname, '../../README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### Plugins'));
  const code = /```js\n(\/\/ psk\.mjs[\s\S]*?)```/.exec(section)?.[1];
  if (!code) throw new Error('README has no psk.mjs example under "### Plugins"');
  root = mkdtempSync(join(tmpdir(), 'sigil-readme-'));
  conf = join(root, 'conf');
  mkdirSync(conf);
  installSigilCopy(conf);
  writeFileSync(join(conf, 'psk.mjs'), code);
  writeFileSync(join(conf, 'key.txt'), `${KEY}\n`);
  psk = ((await import(pathToFileURL(join(conf, 'psk.mjs')).href)) as { default: typeof psk }).default;
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('README plugin example', () => {
  const base = () => ({
    verifier: psk.nodeAttestorVerifier,
    agent: psk.nodeAttestorAgent,
    verifierConfig: { keys: { 'web-1': KEY } },
    agentConfig: { node: 'web-1', keyFile: 'key.txt' },
    agentDeps: fakeAgentDeps({ configDir: conf }),
  });

  it('attests with the right key and is refused with its own codes otherwise', async () => {
    expect((await runAttestation(base())).agentId).toBe('spiffe://example.org/sigil/agent/psk/web-1');
    await expect(runAttestation({ ...base(), verifierConfig: { keys: { 'web-1': 'x'.repeat(40) } } })).rejects.toMatchObject({ code: 'psk.bad_mac' });
    await expect(runAttestation({ ...base(), agentConfig: { node: 'constructor', keyFile: 'key.txt' } })).rejects.toMatchObject({ code: 'psk.unknown_node' });
    await expect(runAttestation({ ...base(), verifierConfig: { keys: { 'web-1': 'short' } } })).rejects.toMatchObject({ code: 'psk.config_invalid' });
  });

  it('loads through the real loader from the config directory', async () => {
    const v = await loadNodeAttestorVerifiers({ psk: { keys: { 'web-1': KEY } } }, () => fakeVerifierDeps({ configDir: conf }), { psk: './psk.mjs' }, conf);
    const a = await loadNodeAttestorAgents({ psk: { node: 'web-1', keyFile: 'key.txt' } }, fakeAgentDeps({ configDir: conf }), { psk: './psk.mjs' });
    const s = fakeSession();
    const begun = await v.get('psk')?.begin(await a.get('psk')?.hello(), s);
    const response = await a.get('psk')?.respond(begun?.challenge, s);
    const r = await v.get('psk')?.finish(response, begun?.state, s);
    expect(r?.selectors).toEqual(['psk:node:web-1']);
  });
});
