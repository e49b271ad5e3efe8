/** The plugin kit (`sigil/plugin`, `sigil/plugin/testing`) and the error boundary third-party plugins cross. */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadNodeAttestorVerifiers, loadWorkloadAttestors } from '../../src/catalog.js';
import { SigilError } from '../../src/errors.js';
import { decodeBase64, definePlugin, pluginErrors, sessionBinding, type NodeAttestorAgentPlugin, type NodeAttestorVerifier, type NodeAttestorVerifierPlugin } from '../../src/plugin-kit/index.js';
import { MemoryPluginState, fakeAgentDeps, fakeSession, fakeVerifierDeps, runAttestation } from '../../src/plugin-kit/testing.js';
import { fromPlugin } from '../../src/plugins/error-boundary.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<SigilError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
  throw new Error('resolved');
}

describe('third-party error boundary', () => {
  it('a plugin using Sigil\'s own SigilError class still cannot pass on a code outside its namespace', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-kit-'));
    dirs.push(dir);
    const errorsUrl = new URL('../../src/errors.ts', import.meta.url).href;
    writeFileSync(
      join(dir, 'imp.mjs'),
      `import { SigilError } from ${JSON.stringify(errorsUrl)};
export default { nodeAttestorVerifier: { name: 'imp', configSchema: { type: 'object' }, create() { return {
  async begin(hello) { throw new SigilError(hello.code, 'as you wish', { status: hello.status }); },
  async finish() { throw new Error('unused'); },
}; } } };
`,
    );
    const m = await loadNodeAttestorVerifiers({ imp: {} }, () => fakeVerifierDeps({ configDir: dir }), { imp: './imp.mjs' }, dir);
    const imp = m.get('imp');
    if (!imp) throw new Error('not loaded');
    const s = fakeSession();
    for (const code of ['attest.agent_banned', 'agent.unknown', 'tpm.counter_race', 'imp', 'imposter.x', 'imp.BadCase', `imp.${'a'.repeat(100)}`]) {
      const e = await rejection(imp.begin({ code, status: 403 }, s));
      expect(e.code, code).toBe('plugin.code_outside_namespace');
      expect(e.status).toBe(500);
    }
    const ok = await rejection(imp.begin({ code: 'imp.quota.exceeded', status: 429 }, s));
    expect([ok.code, ok.status]).toEqual(['imp.quota.exceeded', 429]);
  });

  it('a guarded third-party verifier half keeps its optional members; workload attestors cross the same boundary', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-kit-'));
    dirs.push(dir);
    writeFileSync(
      join(dir, 'opt.mjs'),
      `export default {
  nodeAttestorVerifier: { name: 'opt', configSchema: { type: 'object' }, create() { return {
    count: 0,
    async begin() { this.count++; return { challenge: {}, state: {} }; },
    async finish() { return { selectors: [], claims: { count: this.count }, agentIdSuffix: 'n' }; },
    async commit() { this.count += 10; },
    consumesOnCommit: true,
    stateKeysForAgent(suffix) { return ['k:' + suffix + ':' + this.count]; },
    credentialKey(hello) { return 'c:' + hello.id; },
  }; } },
  workloadAttestor: { name: 'opt', configSchema: { type: 'object' }, create() { return {
    async attest(caller) { throw Object.assign(new Error('no'), { code: caller.uid === 0 ? 'workload.denied' : 'opt.denied' }); },
  }; } },
};
`,
    );
    const m = await loadNodeAttestorVerifiers({ opt: {} }, () => fakeVerifierDeps({ configDir: dir }), { opt: './opt.mjs' }, dir);
    const v = m.get('opt') as NodeAttestorVerifier & { credentialKey?: (h: unknown) => string | undefined };
    const s = fakeSession();
    await v.begin({}, s);
    expect((await v.finish({}, {}, s)).claims).toEqual({ count: 1 });
    await v.commit?.({}, s);
    expect(v.consumesOnCommit).toBe(true);
    expect(v.stateKeysForAgent?.('n')).toEqual(['k:n:11']);
    expect(v.credentialKey?.({ id: 7 })).toBe('c:7');
    const w = (await loadWorkloadAttestors({ opt: {} }, fakeAgentDeps({ configDir: dir }), { opt: './opt.mjs' })).get('opt');
    const signal = new AbortController().signal;
    expect((await rejection(w?.attest({ pid: 1, uid: 5, gid: 5 }, signal) ?? Promise.resolve())).code).toBe('opt.denied');
    expect((await rejection(w?.attest({ pid: 1, uid: 0, gid: 0 }, signal) ?? Promise.resolve())).code).toBe('plugin.code_outside_namespace');
  });

  it('keeps namespaced codes from any Error class, with a sane status; leaves codeless and system errors to the host', () => {
    const foreign = Object.assign(new Error('m'), { name: 'SigilError', code: 'x.bad', status: 42 });
    const e = fromPlugin(foreign, 'x') as SigilError;
    expect(e).toBeInstanceOf(SigilError);
    expect([e.code, e.status, e.message]).toEqual(['x.bad', 400, 'm']);
    const plain = Object.assign(new Error('n'), { code: 'x.other' });
    expect((fromPlugin(plain, 'x') as SigilError).code).toBe('x.other');
    const sys = Object.assign(new Error('no file'), { code: 'ENOENT' });
    expect(fromPlugin(sys, 'x')).toBe(sys);
    expect(fromPlugin('text', 'x')).toBe('text');
    expect((fromPlugin(new SigilError('y.z', 'q'), 'x') as SigilError).code).toBe('plugin.code_outside_namespace');
  });
});

// A small plugin written with the kit: the agent MACs the session binding with a shared key.
const schema = { type: 'object', additionalProperties: false, required: ['key'], properties: { key: { type: 'string', minLength: 8 }, suffix: { type: 'string', default: 'n1' } } };
const fail = pluginErrors('mac');
const macVerifier: NodeAttestorVerifierPlugin = {
  name: 'mac',
  configSchema: schema,
  create(config) {
    const c = config as { key: string; suffix: string };
    return {
      async begin() {
        return { challenge: { v: 1 }, state: { started: true } };
      },
      async finish(response, state, session) {
        if ((state as { started?: unknown }).started !== true) throw fail('bad_state', 'state lost');
        const mac = decodeBase64((response as { mac?: unknown }).mac, 'mac', { code: 'mac.bad_response', maxBytes: 32 });
        if (!timingSafeEqual(mac, createHmac('sha256', c.key).update(session.binding).digest())) throw fail('bad_mac', 'MAC does not verify');
        return { selectors: [`mac:suffix:${c.suffix}`], claims: {}, agentIdSuffix: c.suffix };
      },
    };
  },
};
const macAgent: NodeAttestorAgentPlugin = {
  name: 'mac',
  configSchema: schema,
  create(config) {
    const c = config as { key: string };
    return {
      async hello() {
        return {};
      },
      async respond(_ch, s) {
        return { mac: createHmac('sha256', c.key).update(s.binding).digest('base64') };
      },
    };
  },
};

describe('sigil/plugin/testing', () => {
  it('runs one session through both halves as the agent and the verifier do', async () => {
    const r = await runAttestation({ verifier: macVerifier, agent: macAgent, verifierConfig: { key: 'k'.repeat(8) }, agentConfig: { key: 'k'.repeat(8) } });
    expect(r.agentId).toBe('spiffe://example.org/sigil/agent/mac/n1');
    expect(r.result.selectors).toEqual(['mac:suffix:n1']);
    expect(r.session.binding.equals(sessionBinding(r.session.nonce, r.session.csrSpki))).toBe(true);
  });

  it('reports what the agent would see: tampering, bad config, bad results', async () => {
    const base = { verifier: macVerifier, agent: macAgent, verifierConfig: { key: 'k'.repeat(8) }, agentConfig: { key: 'k'.repeat(8) } };
    expect((await rejection(runAttestation({ ...base, agentConfig: { key: 'w'.repeat(8) } }))).code).toBe('mac.bad_mac');
    expect((await rejection(runAttestation({ ...base, editResponse: () => ({ mac: 'not base64!' }) }))).code).toBe('mac.bad_response');
    const cfg = await rejection(runAttestation({ ...base, verifierConfig: { key: 'short' } }));
    expect(cfg.code).toBe('mac.config_invalid');
    expect(cfg.message).toMatch(/plugin "mac" config \(nodeAttestors\.mac\): \/key must NOT have fewer than 8 characters/);
    expect((await rejection(runAttestation({ ...base, verifierConfig: { key: 'k'.repeat(8), suffix: '../x' } }))).code).toBe('attest.bad_agent_id');
    const noisy: NodeAttestorVerifierPlugin = { ...macVerifier, create: (c, d) => ({ ...(macVerifier.create(c, d) as object), finish: async () => ({ selectors: ['tpm:ek_pubhash:00'], claims: {}, agentIdSuffix: 'n1' }) }) as never };
    expect((await rejection(runAttestation({ ...base, verifier: noisy }))).code).toBe('attest.bad_selector');
    const crashing: NodeAttestorAgentPlugin = { ...macAgent, create: () => ({ hello: async () => ({}), respond: async () => { throw new TypeError('boom'); } }) };
    expect((await rejection(runAttestation({ ...base, agent: crashing }))).code).toBe('agent.attestor_failed');
  });

  it('MemoryPluginState compares JSON text as the datastores do', async () => {
    const s = new MemoryPluginState();
    expect(await s.compareAndSet('k', { a: 1 }, { a: 2 })).toBe(false);
    expect(await s.compareAndSet('k', undefined, { a: 1, b: undefined })).toBe(true);
    expect(await s.get('k')).toEqual({ a: 1 });
    expect(await s.compareAndSet('k', undefined, { a: 3 })).toBe(false);
    expect(await s.compareAndSet('k', { a: 1 }, { a: 2 })).toBe(true);
    expect(s.values.get('k')).toBe('{"a":2}');
  });

  it('pluginErrors and definePlugin refuse what the loader would refuse', () => {
    expect(fail('bad_mac', 'm')).toMatchObject({ code: 'mac.bad_mac', status: 400 });
    expect(() => fail('Bad Mac', 'm')).toThrow(TypeError);
    expect(() => definePlugin({ nodeAttestorVerifier: macVerifier, nodeAttestorAgent: { ...macAgent, name: 'other' } })).toThrow(/share a name/);
    expect(() => definePlugin({})).toThrow(TypeError);
  });

  it('decodeBase64 is strict and bounded', () => {
    const o = { code: 'x.bad', maxBytes: 4 };
    expect(decodeBase64('AAECAw==', 'f', o)).toEqual(Buffer.from([0, 1, 2, 3]));
    for (const bad of ['', 'AAECAw', 'AAE CAw==', 'AAECAw=', 'AAECAwQ=', 'AA-_', 7]) {
      expect(() => decodeBase64(bad, 'f', o), String(bad)).toThrow(expect.objectContaining({ code: 'x.bad' }));
    }
  });
});
