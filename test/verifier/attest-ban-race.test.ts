/**
 * A ban (`agent evict --ban`) that lands while an attestation session is finishing — after its ban
 * check, while the factors commit — must stand: the session fails with attest.agent_banned (403)
 * and the banned record is not overwritten. Driven twice: on AttestationService with attestors whose
 * commit() bans through the datastore, and end to end through a running verifier whose third-party
 * plugin's commit() bans through the admin socket, as an operator would.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord } from '../../src/store/types.js';
import { AttestationService } from '../../src/verifier/attestation.js';
import { CertificateAuthority } from '../../src/verifier/ca.js';
import { createMetrics } from '../../src/verifier/metrics.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const TD = 'example.org';
const idOf = (attestor: string, suffix: string): string => `spiffe://${TD}/sigil/agent/${attestor}/${suffix}`;

async function sigilError(p: Promise<unknown>): Promise<SigilError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, 'expected the session to fail').toBeInstanceOf(SigilError);
  return e as SigilError;
}

describe('AttestationService: a ban committed between the ban check and the agent write', () => {
  let dir = '';
  let store: SqliteStore;
  let service: AttestationService;
  /** Run by a factor's commit(), i.e. after finish()'s ban check and before the agent record is written. */
  let onCommit: ((attestor: string) => Promise<void>) | undefined;

  /** A factor that accepts any hello naming a suffix; its commit runs the test's hook. */
  const factor = (name: string): NodeAttestorVerifier => ({
    async begin(hello) {
      return { challenge: {}, state: { suffix: (hello as { suffix: string }).suffix } };
    },
    async finish(_response, state) {
      return { selectors: [`${name}:node:${(state as { suffix: string }).suffix}`], claims: {}, agentIdSuffix: (state as { suffix: string }).suffix };
    },
    async commit(_state: unknown, _session: SessionInput) {
      await onCommit?.(name);
    },
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-ban-race-'));
    store = new SqliteStore(join(dir, 'sigil.db'));
    const logger = pino({ level: 'silent' });
    const now = () => new Date();
    const ca = new CertificateAuthority(store, { instance: 'v1', trustDomain: TD, dataDir: dir, keyType: 'ec-p256', jwtKeyType: 'ec-p256', ttlSeconds: 86_400, now, logger });
    await ca.init();
    service = new AttestationService({
      store,
      ca,
      trustDomain: TD,
      attestors: new Map([
        ['first', factor('first')],
        ['second', factor('second')],
      ]),
      requireAttestors: [],
      agentSvidTtlSeconds: 3600,
      now,
      logger,
      metrics: createMetrics(),
    });
  });
  afterAll(async () => {
    await store?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  afterEach(() => {
    onCommit = undefined;
  });

  const attest = async (hellos: Record<string, string>) => {
    const csr = createCsr(generateKey('ec-p256')).toString('base64');
    const attestors = Object.fromEntries(Object.entries(hellos).map(([n, suffix]) => [n, { suffix }]));
    const { session } = await service.begin({ attestors, csr });
    return service.finish(session, { responses: Object.fromEntries(Object.keys(hellos).map((n) => [n, {}])) });
  };

  it('a ban of the agent itself stands, and the session fails like the early ban check', async () => {
    const id = idOf('first', 'n1');
    const first = await attest({ first: 'n1' });
    expect(first.agentId).toBe(id);
    const before = (await store.getAgent(id)) as AgentRecord;
    expect(before.banned).toBe(false);

    let commits = 0;
    onCommit = async () => {
      commits++;
      expect(await store.evictAgent(id, true)).toBe(true);
    };
    const e = await sigilError(attest({ first: 'n1' }));
    expect(commits).toBe(1); // the ban came after finish()'s check, during the commits
    expect(e.code).toBe('attest.agent_banned');
    expect(e.status).toBe(403);
    expect(e.message).toContain(id);
    // The record is still banned (not overwritten with the new SVID's serial).
    expect(await store.getAgent(id)).toEqual({ ...before, banned: true, serial: '' });

    // The next session is refused by the early check, with the same code and status.
    onCommit = async () => {
      throw new Error('commit must not run for a banned agent');
    };
    const again = await sigilError(attest({ first: 'n1' }));
    expect([again.code, again.status]).toEqual([e.code, e.status]);
    expect(await store.getAgent(id)).toEqual({ ...before, banned: true, serial: '' });
  });

  it('a ban of another presented factor\'s agent ID that lands during the commits fails the session too', async () => {
    const secondId = idOf('second', 'n2');
    await attest({ second: 'n2' });
    expect((await store.getAgent(secondId))?.banned).toBe(false);
    onCommit = async (name) => {
      if (name === 'first') expect(await store.evictAgent(secondId, true)).toBe(true);
    };
    const e = await sigilError(attest({ first: 'n3', second: 'n2' }));
    expect(e.code).toBe('attest.agent_banned');
    expect(e.status).toBe(403);
    expect(e.message).toContain(secondId);
    expect((await store.getAgent(secondId))?.banned).toBe(true);
    // Without a ban in between, the same two factors attest (the ban check passes for a fresh pair).
    onCommit = undefined;
    const ok = await attest({ first: 'n4', second: 'n5' });
    expect(ok.agentId).toBe(idOf('first', 'n4'));
  });
});

// A third-party plugin whose commit() bans the agent through the verifier's admin socket, the way
// `sigil agent evict --ban` does, when its hello asks for it. Plain Node, so it loads as any plugin.
const BAN_PLUGIN = `
import { request } from 'node:http';

function evict(socketPath, id) {
  return new Promise((resolve, reject) => {
    const body = Buffer.from(JSON.stringify({ id, ban: true }));
    const req = request({ socketPath, method: 'POST', path: '/v1/admin/agents/evict', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error('evict answered HTTP ' + res.statusCode))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

export default {
  nodeAttestorVerifier: {
    name: 'ban_in_commit',
    configSchema: { type: 'object', additionalProperties: false, required: ['adminSocket', 'trustDomain'],
      properties: { adminSocket: { type: 'string' }, trustDomain: { type: 'string' } } },
    create(config) {
      return {
        async begin(hello) {
          return { challenge: {}, state: { suffix: String(hello.suffix), ban: hello.ban === true } };
        },
        async finish(_response, state) {
          return { selectors: ['ban_in_commit:node:' + state.suffix], claims: {}, agentIdSuffix: state.suffix };
        },
        async commit(state) {
          if (state.ban) await evict(config.adminSocket, 'spiffe://' + config.trustDomain + '/sigil/agent/ban_in_commit/' + state.suffix);
        },
      };
    },
  },
};
`;

describe('verifier: `agent evict --ban` while the session commits', () => {
  let tv: TestVerifier;
  let caPem: string;
  let pluginDir = '';

  beforeAll(async () => {
    pluginDir = mkdtempSync(join(tmpdir(), 'sigil-ban-plugin-'));
    writeFileSync(join(pluginDir, 'ban-in-commit.mjs'), BAN_PLUGIN);
    const dir = mkdtempSync(join(tmpdir(), 'sigil-v-'));
    const adminSocket = join(dir, 'admin.sock');
    tv = await startTestVerifier(
      {
        adminSocket,
        plugins: { ban_in_commit: join(pluginDir, 'ban-in-commit.mjs') },
        nodeAttestors: { ban_in_commit: { adminSocket, trustDomain: TD } },
      },
      { dir },
    );
    caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  });
  afterAll(async () => {
    await tv?.stop();
    if (tv) rmSync(tv.dir, { recursive: true, force: true });
    if (pluginDir) rmSync(pluginDir, { recursive: true, force: true });
  });

  async function attest(hello: Record<string, unknown>) {
    const key = generateKey('ec-p256');
    const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { ban_in_commit: hello }, csr: createCsr(key).toString('base64') } });
    expect(r1.status).toBe(200);
    const b1 = r1.body as { session: string };
    const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses: { ban_in_commit: {} } } });
    return { r2, key };
  }
  const agents = async () => (await adminCall<{ agents: AgentRecord[] }>(tv.adminSocket, 'GET', '/v1/admin/agents')).agents;

  it('the ban stands: the session gets 403 attest.agent_banned and the old SVID stays refused', async () => {
    const id = idOf('ban_in_commit', 'node-7');
    const ok = await attest({ suffix: 'node-7' });
    expect(ok.r2.status).toBe(200);
    const first = ok.r2.body as { agentId: string; svid: string[] };
    expect(first.agentId).toBe(id);

    const raced = await attest({ suffix: 'node-7', ban: true });
    expect(raced.r2.status).toBe(403);
    expect((raced.r2.body as { error: { code: string } }).error.code).toBe('attest.agent_banned');
    const rec = (await agents()).find((a) => a.id === id);
    expect(rec?.banned).toBe(true);
    expect(rec?.serial).toBe('');

    // The SVID from the first attestation is not revived by the failed session.
    const tls = { cert: certsToPem(first.svid.map((s) => Buffer.from(s, 'base64'))), key: ok.key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
    const ae = await httpsJson(tv.v.port, 'GET', '/v1/entries/authorized', { caPem, ...tls });
    expect(ae.status).toBe(403);
    expect((ae.body as { error: { code: string } }).error.code).toBe('agent.banned');

    // And a new session is refused by the early ban check with the same answer.
    const again = await attest({ suffix: 'node-7' });
    expect(again.r2.status).toBe(403);
    expect((again.r2.body as { error: { code: string } }).error.code).toBe('attest.agent_banned');
  });
});
