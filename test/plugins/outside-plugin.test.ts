/**
 * A third-party plugin outside Sigil's install (issue 11, item 10): it sits next to the config file,
 * imports `sigil/plugin` from its own copy of Sigil (`<config dir>/node_modules/sigil`, as the README
 * says), and its error codes reach a real agent (NodeIdentity over the real VerifierClient) from a
 * real verifier unchanged — while a code outside its namespace never does.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeIdentity } from '../../src/agent/node-attestation.js';
import { TrustStore } from '../../src/agent/trust.js';
import { VerifierClient } from '../../src/agent/verifier-client.js';
import { loadNodeAttestorAgents } from '../../src/catalog.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { installSigilCopy } from './support/outside-install.js';

const PLUGIN = `
import { createHmac, timingSafeEqual } from 'node:crypto';
import { SigilError, decodeBase64, definePlugin, pluginErrors } from 'sigil/plugin';

const fail = pluginErrors('x');
const configSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['key'],
  properties: { key: { type: 'string', minLength: 8 }, impersonate: { type: 'boolean', default: false } },
};

export default definePlugin({
  nodeAttestorVerifier: {
    name: 'x',
    configSchema,
    create(config) {
      return {
        async begin(hello) {
          if (hello && hello.impersonate) throw new SigilError('attest.agent_banned', 'pretending to be the verifier');
          return { challenge: {}, state: {} };
        },
        async finish(response, _state, session) {
          const mac = decodeBase64(response && response.mac, 'x response mac', { code: 'x.bad_response', maxBytes: 32 });
          const want = createHmac('sha256', config.key).update(session.binding).digest();
          if (mac.length !== want.length || !timingSafeEqual(mac, want)) throw new SigilError('x.bad_mac', 'MAC over the session binding does not verify');
          return { selectors: ['x:keyed:true'], claims: {}, agentIdSuffix: 'node-x' };
        },
      };
    },
  },
  nodeAttestorAgent: {
    name: 'x',
    configSchema,
    create(config) {
      return {
        async hello() {
          if (config.key === 'missing-key') throw fail('no_key', 'no key configured');
          return config.impersonate ? { impersonate: true } : {};
        },
        async respond(_challenge, session) {
          return { mac: createHmac('sha256', config.key).update(session.binding).digest('base64') };
        },
      };
    },
  },
});
`;

let root: string;
let conf: string;
let tv: TestVerifier;
let bundlePem: string;
const logger = pino({ level: 'silent' });

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'sigil-outside-'));
  conf = join(root, 'etc-sigil');
  mkdirSync(conf);
  installSigilCopy(conf);
  writeFileSync(join(conf, 'x-plugin.mjs'), PLUGIN);
  tv = await startTestVerifier({ plugins: { x: './x-plugin.mjs' }, nodeAttestors: { x: { key: 'the-right-key' } } }, { dir: conf });
  bundlePem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});

afterAll(async () => {
  await tv?.stop();
  rmSync(root, { recursive: true, force: true });
});

/** A real agent's node identity with the plugin's agent half, until it attests or reports an error. */
async function agentWith(config: Record<string, unknown>): Promise<{ agentId?: string; error?: SigilError }> {
  const dataDir = mkdtempSync(join(root, 'agent-'));
  writeFileSync(join(dataDir, 'bootstrap.pem'), bundlePem);
  const attestors = await loadNodeAttestorAgents({ x: config }, { trustDomain: 'example.org', logger, dataDir, configDir: conf, now: () => new Date() }, { x: './x-plugin.mjs' });
  const trust = TrustStore.load({ trustDomain: 'example.org', dataDir, bootstrapPath: join(dataDir, 'bootstrap.pem'), logger });
  const client = new VerifierClient({ trustDomain: 'example.org', address: '127.0.0.1', port: tv.v.port, trust: trust.bundle().x509Authorities });
  const node = new NodeIdentity({ trustDomain: 'example.org', dataDir, client, trust, attestors, logger, now: () => new Date(), backoff: { baseMs: 50, capMs: 100 } });
  node.start();
  try {
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const id = node.agentId();
      if (id) return { agentId: id };
      const err = node.error();
      if (err) return { error: err };
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error('the agent neither attested nor failed');
  } finally {
    await node.close();
    client.close();
  }
}

describe('a plugin outside the install', () => {
  it('imports sigil/plugin from its own copy of Sigil, whose SigilError is another class', async () => {
    const kit = (await import(pathToFileURL(join(conf, 'node_modules/sigil/dist/plugin-kit/index.js')).href)) as { SigilError: unknown };
    expect(typeof kit.SigilError).toBe('function');
    expect(kit.SigilError).not.toBe(SigilError);
  });

  it('attests a node with the right key', async () => {
    const r = await agentWith({ key: 'the-right-key' });
    expect(r.error).toBeUndefined();
    expect(r.agentId).toBe('spiffe://example.org/sigil/agent/x/node-x');
  });

  it("its verifier half's code (x.bad_mac) reaches the agent unchanged", async () => {
    const r = await agentWith({ key: 'a-wrong-key' });
    expect(r.error).toBeInstanceOf(SigilError);
    expect(r.error?.code).toBe('x.bad_mac');
    expect(r.error?.message).toMatch(/MAC over the session binding does not verify/);
  });

  it("its agent half's code (x.no_key) is the agent's error", async () => {
    const r = await agentWith({ key: 'missing-key' });
    expect(r.error?.code).toBe('x.no_key');
  });

  it('a code outside its namespace is never passed on as such', async () => {
    const r = await agentWith({ key: 'the-right-key', impersonate: true });
    expect(r.error?.code).toBe('plugin.code_outside_namespace');
    expect(r.error?.message).toMatch(/"attest\.agent_banned", outside its namespace "x\.\*"/);
  });
});
