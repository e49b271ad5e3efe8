/**
 * Review fixes around eviction, bans and the factors of a multi-factor attestation, end to end
 * through a running verifier:
 *  - evicting an agent (`POST /v1/admin/agents/evict`) resets the TPM counters of its EK, whether
 *    the TPM was the first factor or a secondary one, so a node whose TPM was cleared can enrol again;
 *  - the join token is used up after every other factor's commit, so a second factor whose commit
 *    loses a race (compare-and-set) leaves the token usable;
 *  - a ban of a secondary factor's agent ID stops the node that attested with it (agent calls,
 *    renewal, attestation);
 *  - a renewal that loses to an eviction, a ban or another renewal says which.
 * The TPM is synthetic (software EK/AK, quotes signed in software), as in test/tpm/plugin-input.test.ts.
 */
import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import type { AgentRecord } from '../../src/store/types.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, rsaKeyPair, syntheticQuote } from '../tpm/synthetic.js';

const TD = 'example.org';
const agentIdOf = (attestor: string, suffix: string): string => `spiffe://${TD}/sigil/agent/${attestor}/${suffix}`;

// A third-party factor: accepts any hello naming a suffix; its commit fails like a compare-and-set
// that lost a race when the hello asks for it, and records the order in which commits ran.
const FACTOR_PLUGIN = `
export const commits = [];
export default {
  nodeAttestorVerifier: {
    name: 'racy',
    configSchema: { type: 'object', additionalProperties: false, properties: {} },
    create() {
      return {
        async begin(hello) {
          return { challenge: {}, state: { suffix: String(hello.suffix), loseRace: hello.loseRace === true } };
        },
        async finish(_response, state) {
          return { selectors: ['racy:node:' + state.suffix], claims: {}, agentIdSuffix: state.suffix };
        },
        async commit(state) {
          if (state.loseRace) {
            const { SigilError } = await import(${JSON.stringify(new URL('../../src/errors.ts', import.meta.url).pathname)});
            throw new SigilError('racy.race_lost', 'another session stored first', { status: 409 });
          }
        },
      };
    },
  },
};
`;

let tv: TestVerifier;
let caPem: string;
let pluginDir = '';
let ekCaFile = '';
let inter: Awaited<ReturnType<typeof makeIntermediate>>;

/** A synthetic TPM: its EK, an AK, and the hello the agent half would send. */
interface FakeTpm {
  ek: { publicKey: KeyObject; privateKey: KeyObject };
  ak: { publicKey: KeyObject; privateKey: KeyObject };
  hello: { ekCert: string; ekPub: string; akPub: string };
}

async function fakeTpm(): Promise<FakeTpm> {
  const ek = rsaKeyPair();
  const ak = rsaKeyPair();
  return {
    ek,
    ak,
    hello: {
      ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
      ekPub: ekPublicFor(ek.publicKey).toString('base64'),
      akPub: akPublicFor(ak.publicKey).toString('base64'),
    },
  };
}

/** The TPM's clock as the next quote reports it. `resetCount` 0 after TPM2_Clear. */
interface Clock {
  clock: bigint;
  resetCount: number;
  restartCount?: number;
}

function tpmResponse(t: FakeTpm, challenge: unknown, binding: Buffer, c: Clock): Record<string, unknown> {
  const ch = challenge as { credentialBlob: string; encryptedSecret: string };
  const secret = activateCredentialSoftware(t.ek.privateKey, Buffer.from(t.hello.akPub, 'base64'), Buffer.from(ch.credentialBlob, 'base64'), Buffer.from(ch.encryptedSecret, 'base64'));
  const q = syntheticQuote({
    ak: t.ak.privateKey,
    extraData: binding,
    selection: [{ bank: 'sha256', pcrs: [7] }],
    values: new Map([['sha256:7', Buffer.alloc(32, 7)]]),
    clock: c.clock,
    resetCount: c.resetCount,
    restartCount: c.restartCount ?? 0,
    signer: { ekPub: Buffer.from(t.hello.ekPub, 'base64'), akPub: Buffer.from(t.hello.akPub, 'base64') },
  });
  return { secret: secret.toString('base64'), quote: q.attest.toString('base64'), signature: q.signature.toString('base64'), pcrValues: [{ bank: 'sha256', index: 7, value: '07'.repeat(32) }] };
}

interface Attested {
  status: number;
  body: { agentId?: string; svid?: string[]; error?: { code: string; message: string } };
  tls?: { cert: string; key: string };
}

/** One attestation session with the given factors, in this order. */
type Factor = { name: 'tpm'; tpm: FakeTpm; clock: Clock } | { name: 'join_token'; token: string } | { name: 'racy'; suffix: string; loseRace?: boolean };

async function attest(factors: Factor[]): Promise<Attested> {
  const key = generateKey('ec-p256');
  const hellos: Record<string, unknown> = {};
  for (const f of factors) {
    if (f.name === 'tpm') hellos.tpm = f.tpm.hello;
    else if (f.name === 'join_token') hellos.join_token = { token: f.token };
    else hellos.racy = { suffix: f.suffix, loseRace: f.loseRace === true };
  }
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: hellos, csr: createCsr(key).toString('base64') } });
  if (r1.status !== 200) return { status: r1.status, body: r1.body as Attested['body'] }; // refused at the hello
  const b1 = r1.body as { session: string; nonce: string; challenges: Record<string, unknown> };
  const binding = sessionBinding(Buffer.from(b1.nonce, 'base64'), spkiDer(key.publicKey));
  const responses: Record<string, unknown> = {};
  for (const f of factors) responses[f.name] = f.name === 'tpm' ? tpmResponse(f.tpm, b1.challenges.tpm, binding, f.clock) : {};
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses } });
  const body = r2.body as Attested['body'];
  const tls = body.svid ? { cert: certsToPem(body.svid.map((s) => Buffer.from(s, 'base64'))), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } : undefined;
  return { status: r2.status, body, ...(tls ? { tls } : {}) };
}

async function token(): Promise<{ token: string; tokenId: string; agentId: string }> {
  return adminCall(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
}

async function evict(id: string, ban = false): Promise<unknown> {
  return adminCall(tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id, ban });
}

async function agentCall(a: Attested, method: 'GET' | 'POST', path: string): Promise<{ status: number; code?: string; message?: string }> {
  const body = method === 'POST' ? { csr: createCsr(generateKey('ec-p256')).toString('base64') } : undefined;
  const r = await httpsJson(tv.v.port, method, path, { caPem, ...(a.tls as { cert: string; key: string }), ...(body ? { body } : {}) });
  const err = (r.body as { error?: { code: string; message: string } } | undefined)?.error;
  return { status: r.status, ...(err ? { code: err.code, message: err.message } : {}) };
}

const counters = (t: FakeTpm): Promise<unknown> => tv.v.core.store.getPluginState('tpm', `counters:${ekHash(t)}`);
const ekHash = (t: FakeTpm): string => {
  const id = tpmIds.get(t);
  if (!id) throw new Error('attest this TPM as first factor once to learn its EK hash');
  return id;
};
const tpmIds = new Map<FakeTpm, string>();

beforeAll(async () => {
  pluginDir = mkdtempSync(join(tmpdir(), 'sigil-evict-'));
  writeFileSync(join(pluginDir, 'racy.mjs'), FACTOR_PLUGIN);
  const root = await makeRoot('Evict Test Root');
  inter = await makeIntermediate('Evict Test CA', root);
  ekCaFile = join(pluginDir, 'ek-roots.pem');
  writeFileSync(ekCaFile, root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
  tv = await startTestVerifier({
    plugins: { racy: join(pluginDir, 'racy.mjs') },
    nodeAttestors: { join_token: {}, racy: {}, tpm: { ekCa: [ekCaFile], pcrs: { sha256: [7] } } },
  });
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});

afterAll(async () => {
  await tv?.stop();
  if (pluginDir) rmSync(pluginDir, { recursive: true, force: true });
});

/** Attest `t` alone once, to learn its agent ID (and so its EK hash); counters at `c`. */
async function enrolTpm(t: FakeTpm, c: Clock): Promise<Attested> {
  const r = await attest([{ name: 'tpm', tpm: t, clock: c }]);
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  const suffix = (r.body.agentId as string).split('/').pop() as string;
  expect(suffix).toMatch(/^[0-9a-f]{64}$/);
  tpmIds.set(t, suffix);
  return r;
}

describe('eviction resets the TPM counters of the evicted node', () => {
  it('TPM as the only factor: a cleared TPM is refused until the agent is evicted, then enrols again', async () => {
    const t = await fakeTpm();
    const first = await enrolTpm(t, { clock: 5000n, resetCount: 7 });
    expect(await counters(t)).toEqual({ resetCount: 7, restartCount: 0, clock: '5000' });
    // TPM2_Clear: resetCount back to 0.
    const cleared = await attest([{ name: 'tpm', tpm: t, clock: { clock: 10n, resetCount: 0 } }]);
    expect(cleared.body.error?.code).toBe('tpm.counter_rollback');
    expect(await evict(first.body.agentId as string)).toEqual({ evicted: first.body.agentId, banned: false });
    expect(await counters(t)).toBeUndefined();
    const again = await attest([{ name: 'tpm', tpm: t, clock: { clock: 10n, resetCount: 0 } }]);
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(again.body.agentId).toBe(first.body.agentId);
    expect(await counters(t)).toEqual({ resetCount: 0, restartCount: 0, clock: '10' });
    // Rollback protection is back for the new epoch.
    expect((await attest([{ name: 'tpm', tpm: t, clock: { clock: 5n, resetCount: 0 } }])).body.error?.code).toBe('tpm.counter_rollback');
  });

  it('TPM as a secondary factor: evicting the agent (its ID is the join token\'s) resets the counters of its EK', async () => {
    const t = await fakeTpm();
    const solo = await enrolTpm(t, { clock: 100n, resetCount: 3 });
    await evict(solo.body.agentId as string);
    const t1 = await token();
    const node = await attest([
      { name: 'join_token', token: t1.token },
      { name: 'tpm', tpm: t, clock: { clock: 200n, resetCount: 3 } },
    ]);
    expect(node.status, JSON.stringify(node.body)).toBe(200);
    expect(node.body.agentId).toBe(t1.agentId);
    const rec = (await tv.v.core.store.getAgent(t1.agentId)) as AgentRecord;
    expect(rec.factorIds).toEqual([t1.agentId, agentIdOf('tpm', ekHash(t))]);
    expect(await counters(t)).toEqual({ resetCount: 3, restartCount: 0, clock: '200' });

    const t2 = await token();
    const cleared = await attest([
      { name: 'join_token', token: t2.token },
      { name: 'tpm', tpm: t, clock: { clock: 1n, resetCount: 0 } },
    ]);
    expect(cleared.body.error?.code).toBe('tpm.counter_rollback');
    await evict(t1.agentId);
    expect(await counters(t)).toBeUndefined();
    // t2 was not used up by the refused session.
    const again = await attest([
      { name: 'join_token', token: t2.token },
      { name: 'tpm', tpm: t, clock: { clock: 1n, resetCount: 0 } },
    ]);
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(await counters(t)).toEqual({ resetCount: 0, restartCount: 0, clock: '1' });
  });

  it('evicting by the TPM\'s own agent ID evicts the node that presented it as a secondary factor, and resets the counters', async () => {
    const t = await fakeTpm();
    const solo = await enrolTpm(t, { clock: 100n, resetCount: 2 });
    await evict(solo.body.agentId as string);
    const t1 = await token();
    const node = await attest([
      { name: 'join_token', token: t1.token },
      { name: 'tpm', tpm: t, clock: { clock: 300n, resetCount: 2 } },
    ]);
    expect(node.status).toBe(200);
    const tpmId = agentIdOf('tpm', ekHash(t));
    expect(await tv.v.core.store.getAgent(tpmId)).toBeUndefined(); // no record of its own
    expect(await evict(tpmId)).toEqual({ evicted: tpmId, banned: false });
    expect(await tv.v.core.store.getAgent(t1.agentId)).toBeUndefined();
    expect(await counters(t)).toBeUndefined();
    expect((await agentCall(node, 'GET', '/v1/entries/authorized')).code).toBe('agent.unknown');
  });

  it('evicting the TPM\'s agent ID deletes its counters even when no agent record is or names it', async () => {
    const t = await fakeTpm();
    const first = await enrolTpm(t, { clock: 100n, resetCount: 6 });
    // As after a session that stored the counters and then failed, or a record from before factorIds.
    await tv.v.core.store.evictAgent(first.body.agentId as string, false);
    expect(await counters(t)).toEqual({ resetCount: 6, restartCount: 0, clock: '100' });
    expect((await attest([{ name: 'tpm', tpm: t, clock: { clock: 1n, resetCount: 0 } }])).body.error?.code).toBe('tpm.counter_rollback');
    const banOnly = await evict(first.body.agentId as string, true).catch((x: unknown) => x);
    expect((banOnly as { code?: string }).code).toBe('agent.not_found'); // nothing to ban, nothing changed
    expect(await counters(t)).toEqual({ resetCount: 6, restartCount: 0, clock: '100' });
    expect(await evict(first.body.agentId as string)).toEqual({ evicted: first.body.agentId, banned: false });
    expect(await counters(t)).toBeUndefined();
    expect((await attest([{ name: 'tpm', tpm: t, clock: { clock: 1n, resetCount: 0 } }])).status).toBe(200);
  });

  it('only enabled attestors that name their state are asked, and only for IDs in this trust domain', () => {
    const a = tv.v.core.attestation;
    const hash = 'ab'.repeat(32);
    expect(a.pluginStateOf(agentIdOf('tpm', hash))).toEqual([
      { plugin: 'tpm', key: `counters:${hash}` },
      { plugin: 'tpm', key: `ima:${hash}` },
    ]);
    expect(a.pluginStateOf(`spiffe://other.org/sigil/agent/tpm/${hash}`)).toEqual([]);
    expect(a.pluginStateOf(agentIdOf('tpm', 'not-a-hash'))).toEqual([]);
    expect(a.pluginStateOf(agentIdOf('join_token', hash))).toEqual([]);
    expect(a.pluginStateOf(agentIdOf('sev_snp', hash))).toEqual([]);
    expect(a.pluginStateOf(`spiffe://${TD}/sigil/agent/tpm`)).toEqual([]);
  });

  it('stored counters that are not counter state fail closed (tpm.state_unavailable, 503) until an eviction removes them', async () => {
    const t = await fakeTpm();
    const first = await enrolTpm(t, { clock: 100n, resetCount: 1 });
    await tv.v.core.store.putPluginState('tpm', `counters:${ekHash(t)}`, { resetCount: 'one' });
    const r = await attest([{ name: 'tpm', tpm: t, clock: { clock: 200n, resetCount: 1 } }]);
    expect(r.status).toBe(503);
    expect(r.body.error?.code).toBe('tpm.state_unavailable');
    expect(r.body.error?.message).toContain(`counters:${ekHash(t)}`);
    await evict(first.body.agentId as string);
    expect((await attest([{ name: 'tpm', tpm: t, clock: { clock: 200n, resetCount: 1 } }])).status).toBe(200);
  });
});

describe('the join token is used up last', () => {
  it('a second factor whose commit loses a race fails the session and leaves the join token usable', async () => {
    const t = await token();
    // join_token first in the agent's order: its commit must still run after racy's.
    const lost = await attest([
      { name: 'join_token', token: t.token },
      { name: 'racy', suffix: 'r1', loseRace: true },
    ]);
    expect(lost.status).toBe(409);
    expect(lost.body.error?.code).toBe('racy.race_lost');
    expect(lost.body.error?.message).toMatch(/^racy: /);
    const ok = await attest([
      { name: 'join_token', token: t.token },
      { name: 'racy', suffix: 'r1' },
    ]);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.agentId).toBe(t.agentId);
    // Now it is used up.
    const reuse = await attest([{ name: 'join_token', token: t.token }]);
    expect(reuse.body.error?.code).toBe('join_token.used');
  });

  it('a TPM counter race as second factor leaves the join token usable', async () => {
    const t = await fakeTpm();
    const solo = await enrolTpm(t, { clock: 100n, resetCount: 4 });
    await evict(solo.body.agentId as string);
    const tok = await token();
    // Make the TPM's compare-and-set lose: another session stores counters between check and commit.
    const store = tv.v.core.store;
    const orig = store.compareAndSetPluginState.bind(store);
    store.compareAndSetPluginState = async (plugin, key, expected, next) => {
      await store.putPluginState(plugin, key, { resetCount: 4, restartCount: 0, clock: '150' });
      return orig(plugin, key, expected, next);
    };
    let lost: Attested;
    try {
      lost = await attest([
        { name: 'join_token', token: tok.token },
        { name: 'tpm', tpm: t, clock: { clock: 200n, resetCount: 4 } },
      ]);
    } finally {
      delete (store as unknown as Record<string, unknown>).compareAndSetPluginState;
    }
    expect(lost.status).toBe(409);
    expect(lost.body.error?.code).toBe('tpm.counter_race');
    const ok = await attest([
      { name: 'join_token', token: tok.token },
      { name: 'tpm', tpm: t, clock: { clock: 300n, resetCount: 4 } },
    ]);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
  });
});

describe('a ban of a secondary factor\'s agent ID stops the node', () => {
  it('agent calls and renewal answer agent.banned, attestation with that factor is refused, and lifting the ban evicts the node', async () => {
    const t = await token();
    const node = await attest([
      { name: 'join_token', token: t.token },
      { name: 'racy', suffix: 'b1' },
    ]);
    expect(node.status).toBe(200);
    expect(node.body.agentId).toBe(t.agentId);
    expect((await agentCall(node, 'GET', '/v1/entries/authorized')).status).toBe(200);
    const racyId = agentIdOf('racy', 'b1');
    // The secondary factor's ID has no record of its own; banning it keeps a banned record for it.
    expect(await evict(racyId, true)).toEqual({ evicted: racyId, banned: true });
    for (const [method, path] of [
      ['GET', '/v1/entries/authorized'],
      ['POST', '/v1/agent/renew'],
    ] as const) {
      const r = await agentCall(node, method, path);
      expect([r.status, r.code]).toEqual([403, 'agent.banned']);
      expect(r.message).toContain(racyId);
    }
    // In any order, with a new token: refused.
    for (const order of [0, 1]) {
      const tn = await token();
      const jt = { name: 'join_token' as const, token: tn.token };
      const rc = { name: 'racy' as const, suffix: 'b1' };
      const r = await attest(order === 0 ? [jt, rc] : [rc, jt]);
      expect([r.status, r.body.error?.code]).toEqual([403, 'attest.agent_banned']);
    }
    // Lifting the ban (evict without --ban) also evicts the node that presented the factor.
    await evict(racyId);
    expect(await tv.v.core.store.getAgent(racyId)).toBeUndefined();
    expect((await agentCall(node, 'GET', '/v1/entries/authorized')).code).toBe('agent.unknown');
  });

  it('an ID that is neither an agent nor a factor of one cannot be evicted or banned (agent.not_found)', async () => {
    for (const ban of [false, true]) {
      const e = await evict(agentIdOf('racy', 'nobody'), ban).catch((x: unknown) => x);
      expect((e as { code?: string }).code).toBe('agent.not_found');
    }
  });
});

describe('a renewal that loses to a concurrent change says which', () => {
  /** Attest [join_token, racy], then renew with `meanwhile` run just before the conditional write. */
  async function renewRacing(meanwhile: (agentId: string, racyId: string, node: Attested) => Promise<void>): Promise<{ status: number; code?: string; message?: string }> {
    const t = await token();
    const suffix = `n-${Math.random().toString(36).slice(2)}`;
    const node = await attest([
      { name: 'join_token', token: t.token },
      { name: 'racy', suffix },
    ]);
    expect(node.status).toBe(200);
    const store = tv.v.core.store;
    const orig = store.renewAgentSvid.bind(store);
    let ran = false;
    store.renewAgentSvid = async (...args) => {
      if (!ran) {
        ran = true; // once: `meanwhile` may renew through the store itself
        await meanwhile(t.agentId, agentIdOf('racy', suffix), node);
      }
      return orig(...args);
    };
    try {
      return await agentCall(node, 'POST', '/v1/agent/renew');
    } finally {
      delete (store as unknown as Record<string, unknown>).renewAgentSvid;
    }
  }

  it('evicted: 401 agent.unknown', async () => {
    const r = await renewRacing(async (id) => void (await evict(id)));
    expect([r.status, r.code]).toEqual([401, 'agent.unknown']);
    expect(r.message).toMatch(/evicted while this renewal ran/);
  });

  it('banned: 403 agent.banned (so attesting again is not worth a retry)', async () => {
    const r = await renewRacing(async (id) => void (await evict(id, true)));
    expect([r.status, r.code]).toEqual([403, 'agent.banned']);
  });

  it('a secondary factor banned: 403 agent.banned naming the factor', async () => {
    let racy = '';
    const r = await renewRacing(async (_id, racyId) => {
      racy = racyId;
      await evict(racyId, true);
    });
    expect([r.status, r.code]).toEqual([403, 'agent.banned']);
    expect(r.message).toContain(racy);
  });

  it('renewed by another request: 401 agent.stale_svid', async () => {
    const r = await renewRacing(async (id) => {
      const rec = (await tv.v.core.store.getAgent(id)) as AgentRecord;
      expect(await tv.v.core.store.renewAgentSvid(id, rec.serial, 'feedface', rec.svidExpiresAt)).toBe(true);
    });
    expect([r.status, r.code]).toEqual([401, 'agent.stale_svid']);
  });
});
