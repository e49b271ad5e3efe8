/**
 * A verifier on PostgreSQL never serves an authorized set older than a bounded time after another
 * verifier's committed write, whatever happens to the notifications that carry it: verifier B's
 * LISTEN connection goes silent (a half-open connection, simulated by no longer reading its socket)
 * or a write's notification cannot be read, and A deletes an entry. B's revision check finds the
 * database ahead of its change feed, stops trusting the feed, serves the set without the entry
 * (with and without a long-poll held; a held one is answered with the new set) within
 * 2 × revision check + grace, logs it once, and opens the feed again, after which notifications
 * flow. While B cannot read the revision at all, it stops believing the feed after one check interval
 * and grace and waits for the store rather than answer from its cache. The last test runs it through two real verifiers with their default timing (≤ 4 s): the
 * long-poll is answered 200, a plain sync no longer lists the entry and no SVID is signed for it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { PostgresStore } from '../../src/store/postgres.js';
import type { AgentRecord, EntriesChange, EntriesWatch } from '../../src/store/types.js';
import { AuthorizedSetCache, LONG_POLL_DEFAULTS, type AuthorizedSet } from '../../src/verifier/authorized-cache.js';
import { newEntry } from '../support/entries.js';
import { attestJoinTokenAgent, type VerifierPair } from '../support/long-poll-agents.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { listenSocket } from '../support/postgres-listen.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const TD = 'example.org';
/** The revision check's timing in the cache-level tests: a silent feed is found within 2 × 100 + 300 ms (plus a read). */
const CHECK_MS = 100;
const GRACE_MS = 300;

async function until<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}


function agentRecord(name: string): AgentRecord {
  const id = `spiffe://${TD}/sigil/agent/join_token/${name}`;
  return { id, attestors: ['join_token'], selectors: [], serial: 'AA', svidExpiresAt: new Date(Date.now() + 3600e3).toISOString(), attestedAt: new Date().toISOString(), banned: false, factorIds: [id] };
}

const idsOf = (s: AuthorizedSet | undefined): string[] => (s?.entries ?? []).map((e) => e.id);

let pgh: PostgresHandle | null = null;
let sql: pg.Client | undefined;

beforeAll(async () => {
  pgh = await startPostgres();
  if (!pgh) return;
  sql = new pg.Client(pgh.url);
  await sql.connect();
}, 60_000);

afterAll(async () => {
  await sql?.end();
  await pgh?.stop();
});

interface Verifiers {
  /** Writes go through this store. */
  a: PostgresStore;
  /** The serving verifier's store (its LISTEN probe out of the way: only the revision check can notice). */
  b: PostgresStore;
  cache: AuthorizedSetCache;
  /** Lines B logged about its feed. */
  warned: { detail: string; times: number }[];
  /** What B's change feed reported (B writes nothing: all of it came by NOTIFY). */
  heard: EntriesChange[];
  feed: EntriesWatch;
  close(): Promise<void>;
}

async function verifiers(schema: string): Promise<Verifiers> {
  const url = (pgh as PostgresHandle).url;
  const a = await PostgresStore.open(url, { schema });
  const b = await PostgresStore.open(url, { schema, listenProbeMs: 60_000 });
  const warned: { detail: string; times: number }[] = [];
  const cache = new AuthorizedSetCache(b, TD, () => new Date(), LONG_POLL_DEFAULTS, undefined, {
    revisionCheckMs: CHECK_MS,
    feedGraceMs: GRACE_MS,
    feedBehind: (detail, times) => warned.push({ detail, times }),
  });
  const heard: EntriesChange[] = [];
  const feed = b.watchEntries((c) => heard.push(c));
  await until(() => feed.currentRevision() !== undefined);
  return {
    a,
    b,
    cache,
    warned,
    heard,
    feed,
    async close() {
      cache.close();
      feed.close();
      await a.close();
      await b.close();
    },
  };
}

/** A write through `v.a` that B serves (heard by NOTIFY). */
async function served(v: Verifiers, agent: AgentRecord, name: string): Promise<{ id: string; set: AuthorizedSet }> {
  const e = await v.a.createEntry(newEntry(`spiffe://${TD}/${name}`, agent.id));
  const set = await until(async () => {
    const s = await v.cache.get(agent);
    return idsOf(s).includes(e.id) ? s : undefined;
  }, 2000);
  return { id: e.id, set };
}

/** After the feed was found behind: it is opened again, and a new write reaches B by NOTIFY. */
async function feedFlowsAgain(v: Verifiers, agent: AgentRecord): Promise<void> {
  await until(() => v.feed.currentRevision() !== undefined, 5000);
  const e = await v.a.createEntry(newEntry(`spiffe://${TD}/after-${agent.id.split('/').pop()}`, agent.id));
  await until(() => v.heard.some((c) => c.toRevision === e.revisionNumber), 1000);
  expect(idsOf(await v.cache.get(agent))).toContain(e.id);
}

describe('authorized sets when the PostgreSQL change feed loses writes', () => {
  it('B stops serving an entry deleted through A within the bound while its LISTEN connection is silent, no long-poll held', async ({ skip }) => {
    if (!pgh) return skip();
    const v = await verifiers('stale_get');
    try {
      const agent = agentRecord('x');
      const e = await served(v, agent, 'web');
      listenSocket(v.b).pause();
      const t0 = Date.now();
      expect(await v.a.deleteEntry(e.id)).toBe(true);
      await until(async () => !idsOf(await v.cache.get(agent)).includes(e.id), 3000);
      expect(Date.now() - t0).toBeLessThan(2 * CHECK_MS + GRACE_MS + 1000);
      expect(v.warned).toHaveLength(1);
      expect(v.warned[0]?.times).toBe(1);
      expect(v.warned[0]?.detail).toMatch(/^the store is at entries revision \d+ but its change feed reported writes only up to \d+ for \d+ ms/);
      await feedFlowsAgain(v, agent);
    } finally {
      await v.close();
    }
  });

  it('a long-poll held on B while its LISTEN connection is silent is answered with the changed set within the bound', async ({ skip }) => {
    if (!pgh) return skip();
    const v = await verifiers('stale_held');
    try {
      const agent = agentRecord('y');
      const keep = await served(v, agent, 'keep');
      const e = await served(v, agent, 'gone');
      listenSocket(v.b).pause();
      const held = v.cache.waitForChange(agent, e.set, 10_000, async () => agent, () => undefined);
      const t0 = Date.now();
      expect(await v.a.deleteEntry(e.id)).toBe(true);
      const answer = await held;
      expect(Date.now() - t0).toBeLessThan(2 * CHECK_MS + GRACE_MS + 1000);
      expect(idsOf(answer)).toEqual([keep.id]);
      expect(v.warned).toHaveLength(1);
      await feedFlowsAgain(v, agent);
    } finally {
      await v.close();
    }
  });

  it('a write whose notification B cannot read, followed by one it can: B\'s held long-poll is answered and its set is current within the bound', async ({ skip }) => {
    if (!pgh || !sql) return skip();
    const v = await verifiers('stale_unreadable');
    try {
      const agent = agentRecord('z');
      const keep = await served(v, agent, 'keep');
      const e = await served(v, agent, 'gone');
      const held = v.cache.waitForChange(agent, e.set, 10_000, async () => agent, () => undefined);
      const t0 = Date.now();
      // The delete is announced with a payload B ignores (as if written by a Sigil of another format) ...
      await sql.query('BEGIN');
      await sql.query(`DELETE FROM stale_unreadable.entries WHERE id = $1`, [e.id]);
      await sql.query(`UPDATE stale_unreadable.meta SET value = (value::bigint + 1)::text WHERE key = 'entries_revision'`);
      await sql.query(`SELECT pg_notify('sigil_entries', 'not the payload')`);
      await sql.query('COMMIT');
      // ... and a later write that touches no set of this agent is heard as usual.
      const other = await v.a.createEntry(newEntry(`spiffe://${TD}/elsewhere`, `spiffe://${TD}/someone-else`));
      await until(() => v.heard.some((c) => c.toRevision === other.revisionNumber), 1000);
      const answer = await held;
      expect(Date.now() - t0).toBeLessThan(2 * CHECK_MS + GRACE_MS + 1000);
      expect(idsOf(answer)).toEqual([keep.id]);
      expect(idsOf(await v.cache.get(agent))).toEqual([keep.id]);
      expect(v.warned).toHaveLength(1);
      await feedFlowsAgain(v, agent);
    } finally {
      await v.close();
    }
  });

  it('while B cannot read the store revision, it does not answer from a feed it cannot check: past the bound a sync waits for the store', async ({ skip }) => {
    if (!pgh) return skip();
    const v = await verifiers('stale_unchecked');
    try {
      const agent = agentRecord('w');
      const keep = await served(v, agent, 'keep');
      const e = await served(v, agent, 'gone');
      // The store revision reads hang (the database slow or out of B's reach) until released.
      let release = (): void => undefined;
      const gate = new Promise<void>((r) => (release = r));
      const read = v.b.entriesRevision.bind(v.b);
      v.b.entriesRevision = async () => {
        await gate;
        return read();
      };
      listenSocket(v.b).pause();
      expect(await v.a.deleteEntry(e.id)).toBe(true);
      await new Promise((r) => setTimeout(r, 2 * CHECK_MS + GRACE_MS + 100));
      let answer: AuthorizedSet | undefined;
      const pending = v.cache.get(agent).then((s) => (answer = s));
      await new Promise((r) => setTimeout(r, 200));
      expect(answer).toBeUndefined();
      release();
      await pending;
      expect(idsOf(answer)).toEqual([keep.id]);
    } finally {
      await v.close();
    }
  });
});

describe('two verifiers on PostgreSQL, B\'s LISTEN connection silent (default timing)', () => {
  const dirs: string[] = [];
  let pa: TestVerifier | undefined;
  let pb: TestVerifier | undefined;
  let p: VerifierPair | undefined;

  beforeAll(async () => {
    if (!pgh) return;
    const ds = { kind: 'postgres', url: pgh.url, schema: 'stale_http' };
    for (let i = 0; i < 2; i++) dirs.push(mkdtempSync(join(tmpdir(), 'sigil-stale-')));
    pa = await startTestVerifier({ datastore: ds }, { dir: dirs[0] as string });
    pb = await startTestVerifier({ datastore: ds }, { dir: dirs[1] as string });
    await pa.v.tick();
    await pb.v.tick();
    p = { writer: pa, server: pb, caPem: SpiffeBundle.fromJwks(pb.trustDomain, pb.v.core.ca.bundle().toJwks()).toPem() };
  }, 60_000);

  afterAll(async () => {
    await pa?.stop();
    await pb?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('entries deleted through A: B answers the held long-poll 200 with the new set, a plain sync without the entry, and signs no SVID for it, within 4 s', async ({ skip }) => {
    if (!p) return skip();
    const pair = p;
    const x = await attestJoinTokenAgent(pair);
    const y = await attestJoinTokenAgent(pair);
    const entry = (spiffeId: string, parentId: string) => adminCall<{ id: string }>(pair.writer.adminSocket, 'POST', '/v1/admin/entries', { spiffeId, parentId, selectors: ['unix:uid:1'] });
    const sync = (tls: { cert: string; key: string }, headers: Record<string, string> = {}, wait = '') =>
      httpsJson(pair.server.v.port, 'GET', `/v1/entries/authorized${wait}`, { caPem: pair.caPem, ...tls, headers });
    const ids = (body: unknown) => (body as { entries: { id: string }[] }).entries.map((e) => e.id).sort();
    const xKeep = await entry(`spiffe://${TD}/http/x-keep`, x.agentId);
    const xGone = await entry(`spiffe://${TD}/http/x-gone`, x.agentId);
    const yGone = await entry(`spiffe://${TD}/http/y-gone`, y.agentId);
    const xSet = await until(async () => {
      const r = await sync(x.tls);
      return ids(r.body).length === 2 ? r : undefined;
    });
    await until(async () => ids((await sync(y.tls)).body).length === 1);
    const store = pb?.v.core.store as PostgresStore;
    listenSocket(store).pause();
    const t0 = Date.now();
    const held = sync(x.tls, { 'if-none-match': xSet.headers.etag as string }, '?wait=15');
    await new Promise((r) => setTimeout(r, 200));
    await adminCall(pair.writer.adminSocket, 'DELETE', `/v1/admin/entries/${xGone.id}`);
    await adminCall(pair.writer.adminSocket, 'DELETE', `/v1/admin/entries/${yGone.id}`);
    const deleted = Date.now();
    await until(async () => ids((await sync(y.tls)).body).length === 0, 8000);
    const r = await held;
    expect(r.status).toBe(200);
    expect(ids(r.body)).toEqual([xKeep.id]);
    // 2 × 1 s revision check + 2 s grace, plus a read and the request.
    expect(Date.now() - deleted).toBeLessThan(5500);
    expect(Date.now() - t0).toBeLessThan(6000);
    const sv = await httpsJson(pair.server.v.port, 'POST', '/v1/svid/x509', { caPem: pair.caPem, ...x.tls, body: { csrs: [{ entryId: xGone.id, csr: createCsr(generateKey('ec-p256')).toString('base64') }] } });
    expect(sv.status).toBe(403);
  });
});
