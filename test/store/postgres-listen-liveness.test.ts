/**
 * The PostgreSQL store's LISTEN connection is checked, not trusted: a `SELECT 1` probe that goes
 * unanswered (a half-open connection, simulated by no longer reading its socket) gives the connection
 * up and opens a new one, after which notifications flow again; a healthy connection is kept. The
 * feed's revision (EntriesWatch.currentRevision) counts only writes heard without a missing one
 * before them, so a notification dropped as unreadable keeps it below the database's, and `behind()`
 * gives the connection up and primes a new one.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import type { EntriesChange, EntriesWatch } from '../../src/store/types.js';
import { newEntry } from '../support/entries.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { listenSocket } from '../support/postgres-listen.js';

const TD = 'spiffe://example.org';

async function until(fn: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


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

/** Server process IDs of the stores' LISTEN connections on the database. */
async function listenPids(): Promise<number[]> {
  const r = await (sql as pg.Client).query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen' ORDER BY pid`);
  return r.rows.map((x) => x.pid);
}

async function pair(schema: string, listenOpts: { listenProbeMs?: number; listenProbeTimeoutMs?: number } = {}): Promise<{ a: PostgresStore; b: PostgresStore; seen: EntriesChange[]; w: EntriesWatch }> {
  const url = (pgh as PostgresHandle).url;
  const a = await PostgresStore.open(url, { schema });
  const b = await PostgresStore.open(url, { schema, ...listenOpts });
  const seen: EntriesChange[] = [];
  const w = b.watchEntries((c) => seen.push(c));
  await until(() => w.currentRevision() !== undefined);
  // Only b listens (a watches nothing); a previous test's connection may take a moment to go.
  await until(async () => (await listenPids()).length === 1);
  return { a, b, seen, w };
}

describe('the LISTEN connection of the PostgreSQL store', () => {
  it('a probe that goes unanswered gives the connection up and opens a new one; notifications flow again', async ({ skip }) => {
    if (!pgh) return skip();
    const { a, b, seen, w } = await pair('liveness_dead', { listenProbeMs: 200, listenProbeTimeoutMs: 300 });
    try {
      const before = await listenPids();
      expect(before).toHaveLength(1);
      // The connection goes silent (its peer is gone): nothing sent on it is read any more.
      listenSocket(b).pause();
      const t0 = Date.now();
      await until(() => w.currentRevision() === undefined, 3000);
      // Found within one probe interval and one probe timeout.
      expect(Date.now() - t0).toBeLessThan(1500);
      // Opened again after 1 s, primed, and the old connection's server process is gone.
      await until(() => w.currentRevision() !== undefined, 5000);
      await until(async () => {
        const now = await listenPids();
        return now.length === 1 && now[0] !== before[0];
      });
      const e = await a.createEntry(newEntry(`${TD}/after`, `${TD}/p`));
      await until(() => seen.some((c) => c.toRevision === e.revisionNumber), 1000);
      expect(w.currentRevision()).toBe(e.revisionNumber);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a healthy connection answers its probes and is kept', async ({ skip }) => {
    if (!pgh) return skip();
    const { a, b, seen, w } = await pair('liveness_ok', { listenProbeMs: 100, listenProbeTimeoutMs: 1000 });
    try {
      const before = await listenPids();
      expect(before).toHaveLength(1);
      await sleep(1000);
      expect(await listenPids()).toEqual(before);
      expect(w.currentRevision()).toBe(0);
      const e = await a.createEntry(newEntry(`${TD}/ok`, `${TD}/p`));
      await until(() => seen.some((c) => c.toRevision === e.revisionNumber), 1000);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a write whose notification was unreadable holds the feed revision below the database; behind() opens the feed again, primed', async ({ skip }) => {
    if (!pgh || !sql) return skip();
    const { a, b, seen, w } = await pair('liveness_hole', { listenProbeMs: 60_000 });
    try {
      const e1 = await a.createEntry(newEntry(`${TD}/one`, `${TD}/p`));
      await until(() => w.currentRevision() === e1.revisionNumber, 1000);
      // A write announced with a payload the store cannot read (as if from a Sigil of another format).
      await sql.query('BEGIN');
      await sql.query(`DELETE FROM liveness_hole.entries WHERE id = $1`, [e1.id]);
      await sql.query(`UPDATE liveness_hole.meta SET value = (value::bigint + 1)::text WHERE key = 'entries_revision'`);
      await sql.query(`SELECT pg_notify('sigil_entries', 'not the payload')`);
      await sql.query('COMMIT');
      // A later write is heard, but the one before it was not: the feed stays at the last revision without a gap.
      const e2 = await a.createEntry(newEntry(`${TD}/two`, `${TD}/q`));
      await until(() => seen.some((c) => c.toRevision === e2.revisionNumber), 1000);
      expect(await b.entriesRevision()).toBe(e2.revisionNumber);
      expect(w.currentRevision()).toBe(e1.revisionNumber);
      // The caller found it behind: not live until a new connection is primed (at the database's revision).
      const before = await listenPids();
      w.behind?.();
      expect(w.currentRevision()).toBeUndefined();
      await until(() => w.currentRevision() !== undefined, 5000);
      expect(w.currentRevision()).toBe(e2.revisionNumber);
      const after = await listenPids();
      expect(after).toHaveLength(1);
      expect(after).not.toEqual(before);
      const e3 = await a.createEntry(newEntry(`${TD}/three`, `${TD}/q`));
      await until(() => w.currentRevision() === e3.revisionNumber, 1000);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
