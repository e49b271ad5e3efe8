/**
 * Two verifiers on one PostgreSQL schema, agent calls served by B with its agent records kept in
 * memory (src/verifier/agent-records.ts). What an attacker holding an agent's old or banned node SVID
 * would try against B after something changed through A:
 *   - the SVID the agent renewed from (through A) is refused by B within a second;
 *   - an agent banned through A is refused by B within a second;
 *   - an agent banned through A while B's LISTEN connection is down is refused by B at once (B reads
 *     the store while its feed is down, and keeps nothing from before);
 *   - a forged notification only makes B read the record again.
 * And the point of it: B answers an unchanged agent's syncs without reading the record from the
 * database.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import type { PostgresStore } from '../../src/store/postgres.js';
import { attestAndSync, evictThroughWriter, type SyncedAgent, type VerifierPair } from '../support/long-poll-agents.js';
import { listenSocket } from '../support/postgres-listen.js';
import { startPostgresPair, type PostgresPair } from '../support/postgres-pair.js';
import { httpsJson, type TestVerifier } from '../support/verifier.js';

const SCHEMA = 'agent_records';

let pair: PostgresPair | null = null;
let sql: pg.Client | undefined;
let pa: TestVerifier | undefined;
let pb: TestVerifier | undefined;
let p: VerifierPair | undefined;

async function until(fn: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function listenersUp(n: number): Promise<boolean> {
  const r = await (sql as pg.Client).query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen' AND state = 'idle' AND query = 'LISTEN sigil_agents'`,
  );
  return Number(r.rows[0]?.n) >= n;
}

/** B's agent-record reads so far, by source. */
async function readsOf(v: TestVerifier): Promise<{ memory: number; store: number }> {
  const m = await v.v.core.metrics.agentRecordReads.get();
  const of = (s: string) => m.values.find((x) => x.labels.source === s)?.value ?? 0;
  return { memory: of('memory'), store: of('store') };
}

/** An unchanged sync of `a` on `v` (or its refusal): status and error code. */
async function syncOn(v: TestVerifier, a: { tls: { cert: string; key: string }; etag: string }): Promise<[number, string | undefined]> {
  const r = await httpsJson(v.v.port, 'GET', '/v1/entries/authorized', { caPem: (p as VerifierPair).caPem, ...a.tls, headers: { 'if-none-match': a.etag } });
  return [r.status, (r.body as { error?: { code?: string } } | undefined)?.error?.code];
}

/** How long until a sync of `a` on B is refused with `want` (throws after 5 s). */
async function refusedWithin(a: SyncedAgent, want: [number, string]): Promise<number> {
  const t0 = Date.now();
  await until(async () => {
    const got = await syncOn(pb as TestVerifier, a);
    if (got[0] === 304) return false;
    expect(got).toEqual(want);
    return true;
  });
  return Date.now() - t0;
}

beforeAll(async () => {
  pair = await startPostgresPair(SCHEMA);
  if (!pair) return;
  ({ sql, pa, pb, p } = pair);
  await until(() => listenersUp(2));
}, 60_000);

afterAll(async () => {
  await pair?.stop();
});

describe('agent records kept in memory on PostgreSQL', () => {
  it('an unchanged agent\'s syncs are answered without reading its record from the database', async ({ skip }) => {
    if (!p || !pb) return skip();
    const a = await attestAndSync(p);
    await syncOn(pb, a); // the first read after attestation (the attestation's own write dropped it)
    const before = await readsOf(pb);
    for (let i = 0; i < 5; i++) expect(await syncOn(pb, a)).toEqual([304, undefined]);
    const after = await readsOf(pb);
    expect(after.memory - before.memory).toBe(5);
    expect(after.store - before.store).toBe(0);
  });

  /** Renew `a`'s node SVID through A: the new SVID and key, ready for `syncOn`. */
  async function renewThroughA(a: SyncedAgent): Promise<SyncedAgent> {
    const key = generateKey('ec-p256');
    const r = await httpsJson((pa as TestVerifier).v.port, 'POST', '/v1/agent/renew', { caPem: (p as VerifierPair).caPem, ...a.tls, body: { csr: createCsr(key).toString('base64') } });
    expect(r.status).toBe(200);
    const svid = (r.body as { svid: string[] }).svid.map((x) => Buffer.from(x, 'base64'));
    return { ...a, tls: { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } };
  }

  it('the SVID an agent renewed from through A is refused by B within a second', async ({ skip }) => {
    if (!p || !pa || !pb) return skip();
    const a = await attestAndSync(p);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    expect(await syncOn(pb, a)).toEqual([304, undefined]); // from memory now
    const renewed = await renewThroughA(a);
    expect(await refusedWithin(a, [401, 'agent.stale_svid'])).toBeLessThan(1000);
    expect(await syncOn(pb, renewed)).toEqual([304, undefined]);
  });

  it('the new SVID is accepted by B before the renewal\'s notification arrives: a refusal is never made on a kept record alone', async ({ skip }) => {
    if (!p || !pb) return skip();
    const a = await attestAndSync(p);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    expect(await syncOn(pb, a)).toEqual([304, undefined]); // kept, with the old serial
    // B's LISTEN connection stops delivering (B does not know yet: its probe has not run).
    const sock = listenSocket(pb.v.core.store as PostgresStore);
    sock.pause();
    try {
      const renewed = await renewThroughA(a);
      const before = await readsOf(pb);
      expect(await syncOn(pb, renewed)).toEqual([304, undefined]);
      // The kept copy said "another serial"; the store said otherwise.
      expect((await readsOf(pb)).store - before.store).toBe(1);
    } finally {
      sock.resume();
    }
  });

  for (const ban of [true, false]) {
    it(`an agent ${ban ? 'banned' : 'evicted'} through A is refused by B within a second`, async ({ skip }) => {
      if (!p || !pb) return skip();
      const a = await attestAndSync(p);
      expect(await syncOn(pb, a)).toEqual([304, undefined]);
      expect(await syncOn(pb, a)).toEqual([304, undefined]);
      await evictThroughWriter(p, a.agentId, ban);
      expect(await refusedWithin(a, ban ? [403, 'agent.banned'] : [401, 'agent.unknown'])).toBeLessThan(1000);
    });
  }

  it('an agent banned through A while B\'s LISTEN connection is down is refused by B at once', async ({ skip }) => {
    if (!p || !pb || !sql) return skip();
    const a = await attestAndSync(p);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    const killed = await sql.query<{ ok: boolean }>(`SELECT pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen'`);
    expect(killed.rows.length).toBe(2);
    // B has seen its connection end before the ban below commits (the server said so before it exited).
    const watch = pb.v.core.store.watchAgents({ changed: () => undefined, missed: () => undefined, invalid: () => undefined });
    await until(() => watch.live?.() === false, 2000);
    watch.close();
    await evictThroughWriter(p, a.agentId, true);
    // No NOTIFY reached B, and it does not wait for one: the record is read.
    expect(await syncOn(pb, a)).toEqual([403, 'agent.banned']);
    await until(() => listenersUp(2));
  });

  it('a forged notification makes B read the record again, and nothing more', async ({ skip }) => {
    if (!p || !pb || !sql) return skip();
    const a = await attestAndSync(p);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
    const before = await readsOf(pb);
    await sql.query('SELECT pg_notify($1, $2)', ['sigil_agents', JSON.stringify({ s: SCHEMA, o: 'forged', a: a.agentId, k: 'w' })]);
    await until(async () => {
      expect(await syncOn(pb as TestVerifier, a)).toEqual([304, undefined]);
      return (await readsOf(pb as TestVerifier)).store > before.store;
    });
    expect(await syncOn(pb, a)).toEqual([304, undefined]);
  });
});
