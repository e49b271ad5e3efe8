/**
 * The per-agent authorized-set cache behind GET /v1/entries/authorized (src/verifier/authorized-cache.ts)
 * and its long-poll (?wait=N): a sync that changed nothing is answered without reading entries, and
 * every change that alters an agent's set — entry created or deleted under its IDs, nested entries,
 * expiry, node entries that add or remove an alias, eviction and ban — is served at once. Run on
 * SQLite (one verifier) and on PostgreSQL with two verifiers (written through A, served by B, so B
 * learns of A's writes only through the store's change feed).
 */
import { mkdtempSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import type { DataStore } from '../../src/store/types.js';
import { attestJoinTokenAgent } from '../support/long-poll-agents.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { httpsJson, startTestVerifier, type HttpsResult, type TestVerifier } from '../support/verifier.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;
let clock = Date.now();
const now = () => new Date(clock);

interface Pair {
  /** Admin writes go here. */
  writer: TestVerifier;
  /** Agents talk to this one. */
  server: TestVerifier;
  caPem: string;
}

function attest(p: Pair, alias?: string): Promise<{ agentId: string; tls: { cert: string; key: string } }> {
  return attestJoinTokenAgent(p, alias);
}

function entry(p: Pair, spiffeId: string, parentId: string, extra: Record<string, unknown> = {}): Promise<{ id: string }> {
  return adminCall<{ id: string }>(p.writer.adminSocket, 'POST', '/v1/admin/entries', { spiffeId, parentId, selectors: ['unix:uid:1'], ...extra });
}

function del(p: Pair, id: string): Promise<unknown> {
  return adminCall(p.writer.adminSocket, 'DELETE', `/v1/admin/entries/${id}`);
}

/** Count the entry reads the serving verifier makes (each authorized-set computation makes some). */
function countReads(store: DataStore): { reads: () => number } {
  let n = 0;
  const orig = store.entriesByParents.bind(store);
  store.entriesByParents = async (ids) => {
    n++;
    return orig(ids);
  };
  return { reads: () => n };
}

async function sync(p: Pair, tls: { cert: string; key: string }, etag?: string, wait?: number): Promise<HttpsResult> {
  return httpsJson(p.server.v.port, 'GET', `/v1/entries/authorized${wait ? `?wait=${wait}` : ''}`, { caPem: p.caPem, ...tls, ...(etag ? { headers: { 'if-none-match': etag } } : {}) });
}

const ids = (r: HttpsResult) => (r.body as { entries: { id: string }[] }).entries.map((e) => e.id).sort();
const etagOf = (r: HttpsResult) => (r.body as { revision: string }).revision;
const code = (r: HttpsResult) => (r.body as { error?: { code?: string } }).error?.code;

/** Sync until the answer differs from `etag` (B hears of A's writes through NOTIFY); fails after 2 s. */
async function changed(p: Pair, tls: { cert: string; key: string }, etag: string): Promise<HttpsResult> {
  const end = Date.now() + 2000;
  for (;;) {
    const r = await sync(p, tls, etag);
    if (r.status !== 304 || Date.now() > end) return r;
    await new Promise((res) => setTimeout(res, 20));
  }
}

function scenarios(name: string, setup: () => Promise<Pair | undefined>): void {
  describe(name, () => {
    let p: Pair | undefined;
    let reads: () => number;
    beforeAll(async () => {
      p = await setup();
      if (p) reads = countReads(p.server.v.core.store).reads;
    }, 60_000);

    it('answers an unchanged sync from the cache, also after writes that do not touch the agent', async ({ skip }) => {
      if (!p) return skip();
      const a = await attest(p);
      const other = await attest(p);
      const w1 = await entry(p, `spiffe://${TD}/c/w1`, a.agentId);
      const r1 = await changed(p, a.tls, 'none');
      expect(r1.status).toBe(200);
      expect(ids(r1)).toEqual([w1.id]);
      const e1 = etagOf(r1);
      expect(r1.headers.etag).toBe(e1);
      const before = reads();
      expect((await sync(p, a.tls, e1)).status).toBe(304);
      // Another agent's entry and a node entry for another agent's selector: still no entry read.
      await entry(p, `spiffe://${TD}/c/other`, other.agentId);
      await entry(p, `spiffe://${TD}/node/not-a`, VID, { selectors: [`sigil:agent_id:${other.agentId}`] });
      await new Promise((res) => setTimeout(res, 200));
      expect((await sync(p, a.tls, e1)).status).toBe(304);
      expect((await sync(p, a.tls, e1)).status).toBe(304);
      expect(reads()).toBe(before);
    });

    it('serves created, nested and deleted entries and node-alias changes at once', async ({ skip }) => {
      if (!p) return skip();
      const a = await attest(p, `spiffe://${TD}/node/a1`);
      const w1 = await entry(p, `spiffe://${TD}/d/w1`, a.agentId);
      let r = await changed(p, a.tls, 'none');
      expect(ids(r)).toEqual([w1.id]);
      // Under the token's node alias.
      const w2 = await entry(p, `spiffe://${TD}/d/w2`, `spiffe://${TD}/node/a1`);
      r = await changed(p, a.tls, etagOf(r));
      expect(ids(r)).toEqual([w1.id, w2.id].sort());
      // Nested under an authorized entry.
      const w3 = await entry(p, `spiffe://${TD}/d/w3`, `spiffe://${TD}/d/w2`);
      r = await changed(p, a.tls, etagOf(r));
      expect(ids(r)).toEqual([w1.id, w2.id, w3.id].sort());
      // Deleted.
      await del(p, w1.id);
      r = await changed(p, a.tls, etagOf(r));
      expect(ids(r)).toEqual([w2.id, w3.id].sort());
      // A workload entry under an alias the agent does not have yet, then the node entry that gives it.
      const w4 = await entry(p, `spiffe://${TD}/d/w4`, `spiffe://${TD}/node/group`);
      const e = etagOf(r);
      expect((await sync(p, a.tls, e)).status).toBe(304);
      const node = await entry(p, `spiffe://${TD}/node/group`, VID, { selectors: [`sigil:agent_id:${a.agentId}`] });
      r = await changed(p, a.tls, e);
      expect(ids(r)).toEqual([w2.id, w3.id, w4.id].sort());
      await del(p, node.id);
      r = await changed(p, a.tls, etagOf(r));
      expect(ids(r)).toEqual([w2.id, w3.id].sort());
      // The SVID route uses the same set: a deleted entry cannot be signed.
      const sv = await httpsJson(p.server.v.port, 'POST', '/v1/svid/x509', { caPem: p.caPem, ...a.tls, body: { csrs: [{ entryId: w1.id, csr: createCsr(generateKey('ec-p256')).toString('base64') }] } });
      expect(sv.status).toBe(403);
    });

    it('drops an expired entry and an expired node alias without any write', async ({ skip }) => {
      if (!p) return skip();
      const a = await attest(p);
      const base = clock;
      try {
        await expiry(p, a);
      } finally {
        // Certificates issued later must be valid by the wall clock the TLS stacks use.
        clock = base;
      }
    });

    async function expiry(p: Pair, a: { agentId: string; tls: { cert: string; key: string } }): Promise<void> {
      const soon = new Date(clock + 60_000).toISOString();
      const later = new Date(clock + 120_000).toISOString();
      const w1 = await entry(p, `spiffe://${TD}/x/w1`, a.agentId, { expiresAt: soon });
      await entry(p, `spiffe://${TD}/node/x-alias`, VID, { selectors: [`sigil:agent_id:${a.agentId}`], expiresAt: later });
      const w2 = await entry(p, `spiffe://${TD}/x/w2`, `spiffe://${TD}/node/x-alias`);
      const w3 = await entry(p, `spiffe://${TD}/x/w3`, a.agentId);
      let r = await changed(p, a.tls, 'none');
      for (let i = 0; i < 50 && ids(r).length < 3; i++) r = await changed(p, a.tls, etagOf(r));
      expect(ids(r)).toEqual([w1.id, w2.id, w3.id].sort());
      expect((await sync(p, a.tls, etagOf(r))).status).toBe(304);
      clock += 61_000;
      r = await sync(p, a.tls, etagOf(r));
      expect(r.status).toBe(200);
      expect(ids(r)).toEqual([w2.id, w3.id].sort());
      clock += 60_000;
      r = await sync(p, a.tls, etagOf(r));
      expect(r.status).toBe(200);
      expect(ids(r)).toEqual([w3.id]);
    }

    it('refuses an evicted and a banned agent whatever its cached set', async ({ skip }) => {
      if (!p) return skip();
      const a = await attest(p);
      const b = await attest(p);
      await entry(p, `spiffe://${TD}/e/a`, a.agentId);
      await entry(p, `spiffe://${TD}/e/b`, b.agentId);
      const ra = await changed(p, a.tls, 'none');
      const rb = await changed(p, b.tls, 'none');
      expect((await sync(p, a.tls, etagOf(ra))).status).toBe(304);
      await adminCall(p.writer.adminSocket, 'POST', '/v1/admin/agents/evict', { id: a.agentId });
      await adminCall(p.writer.adminSocket, 'POST', '/v1/admin/agents/evict', { id: b.agentId, ban: true });
      const after = await sync(p, a.tls, etagOf(ra));
      expect([after.status, code(after)]).toEqual([401, 'agent.unknown']);
      const banned = await sync(p, b.tls, etagOf(rb));
      expect([banned.status, code(banned)]).toEqual([403, 'agent.banned']);
    });

    it('long-poll: a change reaches the waiting agent in well under a second; eviction ends the wait with the refusal', async ({ skip }) => {
      if (!p) return skip();
      const a = await attest(p);
      await entry(p, `spiffe://${TD}/l/w0`, a.agentId);
      const r0 = await changed(p, a.tls, 'none');
      const held = sync(p, a.tls, etagOf(r0), 20);
      await new Promise((res) => setTimeout(res, 300));
      const t0 = Date.now();
      const w1 = await entry(p, `spiffe://${TD}/l/w1`, a.agentId);
      const r1 = await held;
      const took = Date.now() - t0;
      expect(r1.status).toBe(200);
      expect(ids(r1)).toContain(w1.id);
      expect(took).toBeLessThan(1000);
      // Unrelated writes do not end the wait; the deadline answers 304.
      const other = await attest(p);
      const t1 = Date.now();
      const held2 = sync(p, a.tls, etagOf(r1), 2);
      await entry(p, `spiffe://${TD}/l/other`, other.agentId);
      const r2 = await held2;
      expect(r2.status).toBe(304);
      expect(Date.now() - t1).toBeGreaterThanOrEqual(1900);
      // Evicted while waiting: the next change is not handed out; the wait ends with agent.unknown.
      const held3 = sync(p, a.tls, etagOf(r1), 20);
      await new Promise((res) => setTimeout(res, 300));
      await adminCall(p.writer.adminSocket, 'POST', '/v1/admin/agents/evict', { id: a.agentId });
      await entry(p, `spiffe://${TD}/l/w2`, a.agentId);
      const r3 = await held3;
      expect([r3.status, code(r3)]).toEqual([401, 'agent.unknown']);
    });
  });
}

let sqlite: TestVerifier | undefined;
let pg: PostgresHandle | null = null;
let pa: TestVerifier | undefined;
let pb: TestVerifier | undefined;

afterAll(async () => {
  await sqlite?.stop();
  await pa?.stop();
  await pb?.stop();
  await pg?.stop();
});

scenarios('authorized-set cache on SQLite', async () => {
  sqlite = await startTestVerifier({}, { now });
  const caPem = await adminCall<string>(sqlite.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  return { writer: sqlite, server: sqlite, caPem };
});

scenarios('authorized-set cache on PostgreSQL, written through A, served by B', async () => {
  pg = await startPostgres();
  if (!pg) return undefined;
  const ds = { kind: 'postgres', url: pg.url, schema: 'authz_cache' };
  pa = await startTestVerifier({ datastore: ds }, { now, dir: mkdtempSync(join(tmpdir(), 'sigil-ac-a-')) });
  pb = await startTestVerifier({ datastore: ds }, { now, dir: mkdtempSync(join(tmpdir(), 'sigil-ac-b-')) });
  await pa.v.tick();
  await pb.v.tick();
  const caPem = SpiffeBundle.fromJwks(TD, pb.v.core.ca.bundle().toJwks()).toPem();
  return { writer: pa, server: pb, caPem };
});

describe('long-poll limits', () => {
  let tv: TestVerifier;
  let caPem: string;
  beforeAll(async () => {
    tv = await startTestVerifier({ longPoll: { maxWaiters: 2, maxWaitersPerAgent: 1, maxWait: '2s' } });
    caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  });
  afterAll(async () => tv?.stop());

  it('refuses a second long-poll of one agent (429) and any beyond the total (503); the plain sync still answers', async () => {
    const p: Pair = { writer: tv, server: tv, caPem };
    const [a, b, c] = [await attest(p), await attest(p), await attest(p)];
    const e = async (x: typeof a) => etagOf(await sync(p, x.tls));
    const [ea, eb, ec] = [await e(a), await e(b), await e(c)];
    const heldA = sync(p, a.tls, ea, 60);
    await new Promise((res) => setTimeout(res, 200));
    const again = await sync(p, a.tls, ea, 60);
    expect([again.status, code(again)]).toEqual([429, 'entries.agent_wait_limit']);
    const heldB = sync(p, b.tls, eb, 60);
    await new Promise((res) => setTimeout(res, 200));
    const full = await sync(p, c.tls, ec, 60);
    expect([full.status, code(full)]).toEqual([503, 'entries.wait_limit']);
    expect((await sync(p, c.tls, ec)).status).toBe(304);
    // maxWait (2 s) caps the 60 s asked for.
    const t0 = Date.now();
    expect((await heldA).status).toBe(304);
    expect((await heldB).status).toBe(304);
    expect(Date.now() - t0).toBeLessThan(2500);
  });

  it('a long-poll whose client goes away frees its slot at once (the next one of that agent is held, not refused)', async () => {
    const p: Pair = { writer: tv, server: tv, caPem };
    const a = await attest(p);
    const ea = etagOf(await sync(p, a.tls));
    const req = httpsRequest({ host: '127.0.0.1', port: tv.v.port, path: '/v1/entries/authorized?wait=60', ca: caPem, ...a.tls, headers: { 'if-none-match': ea }, checkServerIdentity: () => undefined });
    req.on('error', () => undefined);
    req.end();
    await new Promise((res) => setTimeout(res, 300));
    // Held: this agent's one slot (maxWaitersPerAgent 1) is taken.
    const refused = await sync(p, a.tls, ea, 1);
    expect([refused.status, code(refused)]).toEqual([429, 'entries.agent_wait_limit']);
    req.destroy();
    await new Promise((res) => setTimeout(res, 300));
    const t0 = Date.now();
    const again = await sync(p, a.tls, ea, 1);
    expect(again.status).toBe(304);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
  });

  it('maxWaiters 0 turns long-poll off with its own code', async () => {
    const off = await startTestVerifier({ longPoll: { maxWaiters: 0 } });
    try {
      const pem = await adminCall<string>(off.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
      const p: Pair = { writer: off, server: off, caPem: pem };
      const a = await attest(p);
      const r = await sync(p, a.tls);
      const w = await sync(p, a.tls, etagOf(r), 5);
      expect([w.status, code(w)]).toEqual([503, 'entries.long_poll_disabled']);
    } finally {
      await off.stop();
    }
  });
});
