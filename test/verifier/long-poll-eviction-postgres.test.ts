/**
 * Two verifiers on one PostgreSQL schema: an eviction or ban through verifier A's admin API answers
 * the agent's long-poll held on verifier B with the refusal within well under a second (NOTIFY on
 * `sigil_agents` in the evicting transaction, heard on B's LISTEN connection); other agents' long-polls
 * stay held; a store on a second schema of the same database hears nothing. Notifications are input
 * from the database: malformed ones are logged and ignored, a forged one for a valid agent refuses
 * nothing, and B keeps serving. An eviction committed while B's LISTEN connection is down still
 * reaches B's held long-poll when the connection comes back (every held long-poll is re-checked).
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import { attestAndSync, evictThroughWriter, holdLongPoll, refusalOf, type VerifierPair } from '../support/long-poll-agents.js';
import { startPostgresPair, type PostgresPair } from '../support/postgres-pair.js';
import { httpsJson, type TestVerifier } from '../support/verifier.js';

const SCHEMA = 'lp_evict';
const OTHER_SCHEMA = 'lp_evict_other';

interface Heard {
  changed: string[];
  missed: number;
  invalid: string[];
}

function watchAgentsOf(s: PostgresStore): Heard {
  const h: Heard = { changed: [], missed: 0, invalid: [] };
  s.watchAgents({ changed: (id) => h.changed.push(id), missed: () => h.missed++, invalid: (d) => h.invalid.push(d) });
  return h;
}

async function until(fn: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether `p` has settled (without waiting for it). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  return Promise.race([p.then(() => true), sleep(0).then(() => false)]);
}

let pair: PostgresPair | null = null;
let sql: pg.Client | undefined;
let pb: TestVerifier | undefined;
let sameSchema: PostgresStore | undefined;
let otherSchema: PostgresStore | undefined;
let heardSame: Heard;
let heardOther: Heard;
let p: VerifierPair | undefined;

/** LISTEN connections open: A, B and the two watching stores. */
const LISTENERS = 4;

async function listenersUp(): Promise<boolean> {
  const r = await (sql as pg.Client).query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen' AND state = 'idle' AND query = 'LISTEN sigil_agents'`,
  );
  return Number(r.rows[0]?.n) >= LISTENERS;
}

beforeAll(async () => {
  pair = await startPostgresPair(SCHEMA);
  if (!pair) return;
  ({ sql, pb } = pair);
  sameSchema = await PostgresStore.open(pair.pgh.url, { schema: SCHEMA });
  otherSchema = await PostgresStore.open(pair.pgh.url, { schema: OTHER_SCHEMA });
  heardSame = watchAgentsOf(sameSchema);
  heardOther = watchAgentsOf(otherSchema);
  await until(() => heardSame.missed > 0 && heardOther.missed > 0);
  await until(listenersUp);
  p = pair.p;
}, 60_000);

afterAll(async () => {
  await sameSchema?.close();
  await otherSchema?.close();
  await pair?.stop();
});

describe('eviction through another verifier sharing PostgreSQL', () => {
  for (const ban of [false, true]) {
    it(`${ban ? 'a ban' : 'an eviction'} through A answers the agent's long-poll held on B at once; another agent's stays held; another schema hears nothing`, async ({ skip }) => {
      if (!p) return skip();
      const a = await attestAndSync(p);
      const other = await attestAndSync(p);
      const held = holdLongPoll(p, a, 20);
      const otherHeld = holdLongPoll(p, other, 3);
      await sleep(300);
      const before = { same: heardSame.changed.length, other: heardOther.changed.length };
      const t0 = Date.now();
      await evictThroughWriter(p, a.agentId, ban);
      const r = await held;
      expect(Date.now() - t0).toBeLessThan(1500);
      expect([r.status, r.code]).toEqual(refusalOf(ban));
      const o = await otherHeld;
      expect(o.status).toBe(304);
      expect(o.tookMs).toBeGreaterThanOrEqual(2900);
      // The notification was sent (a store on the schema heard it); the other schema's store did not.
      expect(heardSame.changed.slice(before.same)).toEqual([a.agentId]);
      expect(heardOther.changed.length).toBe(before.other);
      expect(heardOther.invalid).toEqual([]);
    });
  }

  it('malformed and forged notifications are logged or ignored; B keeps serving and still hears the next eviction', async ({ skip }) => {
    if (!p || !pb || !sql) return skip();
    const warn = vi.spyOn(pb.v.core.logger, 'warn');
    try {
      const a = await attestAndSync(p);
      const held = holdLongPoll(p, a, 20);
      await sleep(300);
      const invalidBefore = heardSame.invalid.length;
      const malformed = ['not json', '', '[1,2]', 'null', '{"o":"x","a":"y"}', `{"s":"${SCHEMA}"}`, `{"s":"${SCHEMA}","o":"x","a":7}`, `{"s":"${SCHEMA}","o":"x","a":""}`, `{"s":"${SCHEMA}","o":"","a":"x"}`];
      for (const m of malformed) await sql.query('SELECT pg_notify($1, $2)', ['sigil_agents', m]);
      // Well formed: another schema's (ignored), and a forged one naming this agent (it is re-checked, and stays).
      await sql.query('SELECT pg_notify($1, $2)', ['sigil_agents', JSON.stringify({ s: OTHER_SCHEMA, o: 'forged', a: a.agentId })]);
      await sql.query('SELECT pg_notify($1, $2)', ['sigil_agents', JSON.stringify({ s: SCHEMA, o: 'forged', a: a.agentId })]);
      await until(() => heardSame.invalid.length - invalidBefore >= malformed.length);
      expect(heardSame.invalid.length - invalidBefore).toBe(malformed.length);
      expect(heardSame.invalid.at(-1)).toMatch(/^sigil_agents notification ignored, no origin \(o\): /);
      await sleep(300);
      expect(await settled(held)).toBe(false);
      // Logged on B (at most one line per 10 s, with the count).
      const lines = warn.mock.calls.filter((c) => c[1] === 'datastore: ignored unreadable agent notifications');
      expect(lines.length).toBe(1);
      expect((lines[0]?.[0] as { detail: string }).detail).toMatch(/^sigil_agents notification ignored, not JSON: "not json"$/);
      // B still serves, and its LISTEN connection still works.
      const b = await attestAndSync(p);
      const sync = await httpsJson(p.server.v.port, 'GET', '/v1/entries/authorized', { caPem: p.caPem, ...b.tls, headers: { 'if-none-match': b.etag } });
      expect(sync.status).toBe(304);
      const t0 = Date.now();
      await evictThroughWriter(p, a.agentId, false);
      const r = await held;
      expect(Date.now() - t0).toBeLessThan(1500);
      expect([r.status, r.code]).toEqual(refusalOf(false));
    } finally {
      warn.mockRestore();
    }
  });

  it('an eviction committed while B\'s LISTEN connection is down reaches B\'s held long-poll when it is back', async ({ skip }) => {
    if (!p || !sql) return skip();
    const a = await attestAndSync(p);
    const other = await attestAndSync(p);
    const held = holdLongPoll(p, a, 20);
    const otherHeld = holdLongPoll(p, other, 5);
    await sleep(300);
    // Ends every LISTEN connection and waits until their server processes have exited.
    const killed = await sql.query<{ ok: boolean }>(`SELECT pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen'`);
    expect(killed.rows.length).toBe(LISTENERS);
    expect(killed.rows.every((x) => x.ok)).toBe(true);
    const t0 = Date.now();
    await evictThroughWriter(p, a.agentId, true);
    const r = await held;
    // The LISTEN connection is opened again after 1 s; then every held long-poll is re-checked.
    expect(Date.now() - t0).toBeLessThan(5000);
    expect([r.status, r.code]).toEqual(refusalOf(true));
    const o = await otherHeld;
    expect(o.status).toBe(304);
    expect(o.tookMs).toBeGreaterThanOrEqual(4900);
    await until(listenersUp);
  });
});
