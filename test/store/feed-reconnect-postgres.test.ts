/**
 * The PostgreSQL store's change feed (its LISTEN connection) when that connection dies:
 *   - its server process is ended (pg_terminate_backend, as an idle-connection killer does) and
 *     another store writes an entry before the feed is back: the feed reconnects, reads the revision
 *     again and reports through it the write made while it was away;
 *   - the server cannot be reached (a proxy in front of it ends every connection and turns new ones
 *     away): the feed tries again with growing pauses (0.5–1 s, 1–2 s, 2–4 s, …), not once a second,
 *     and once the server is reachable it is back within the pause then due; a connection that came up
 *     starts the pauses afresh;
 *   - TCP keepalive is armed on the feed's socket with a 10 s idle time (the kernel's timer on it),
 *     so a peer that vanished without a word is noticed without the OS default of 2 h.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import type { EntriesChange, EntriesWatch } from '../../src/store/types.js';
import { newEntry } from '../support/entries.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { listenSocket } from '../support/postgres-listen.js';
import { startProxy, tcpTimer, type PgProxy } from './feed-postgres-control.js';

const TD = 'spiffe://example.org';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(fn: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(10);
  }
}

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

/** Server process IDs of the feeds' LISTEN connections. */
async function listenPids(): Promise<number[]> {
  const r = await (sql as pg.Client).query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen' ORDER BY pid`);
  return r.rows.map((x) => x.pid);
}

describe('the PostgreSQL change feed when its connection dies', () => {
  it('its server process ended: the feed reconnects, reads the revision again and reports a write made while it was away', async ({ skip }) => {
    if (!pgh || !sql) return skip();
    const a = await PostgresStore.open(pgh.url, { schema: 'feed_terminated' });
    const b = await PostgresStore.open(pgh.url, { schema: 'feed_terminated' });
    const seen: EntriesChange[] = [];
    const w = b.watchEntries((c) => seen.push(c));
    try {
      await until(() => w.currentRevision() !== undefined);
      await until(async () => (await listenPids()).length === 1);
      const [pid] = await listenPids();
      const killed = await sql.query<{ ok: boolean }>('SELECT pg_terminate_backend($1, 5000) AS ok', [pid]);
      expect(killed.rows[0]?.ok).toBe(true);
      await until(() => w.currentRevision() === undefined, 2000);
      const e = await a.createEntry(newEntry(`${TD}/while-away`, `${TD}/p`));
      // Made while the feed was away: no notification of it reached b.
      expect(w.currentRevision()).toBeUndefined();
      const t0 = Date.now();
      await until(() => w.currentRevision() === e.revisionNumber, 3000);
      // The first pause after a loss is 0.5–1 s.
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(seen.some((c) => c.toRevision === e.revisionNumber)).toBe(false);
      const after = await listenPids();
      expect(after).toHaveLength(1);
      expect(after[0]).not.toBe(pid);
      // Notifications flow on the new connection.
      const e2 = await a.createEntry(newEntry(`${TD}/after`, `${TD}/p`));
      await until(() => seen.some((c) => c.toRevision === e2.revisionNumber), 1000);
      expect(w.currentRevision()).toBe(e2.revisionNumber);
    } finally {
      w.close();
      await a.close();
      await b.close();
    }
  });

  describe('through a proxy', () => {
    let proxy: PgProxy | undefined;

    beforeAll(async () => {
      if (pgh) proxy = await startProxy(pgh);
    });

    afterAll(async () => {
      await proxy?.close();
    });

    it('the server out of reach: reconnection attempts back off; back within the pause then due; a connection that came up starts afresh', async ({ skip }) => {
      if (!pgh || !proxy) return skip();
      const px = proxy;
      const a = await PostgresStore.open(pgh.url, { schema: 'feed_backoff' });
      const b = await PostgresStore.open(px.url, { schema: 'feed_backoff', connectTimeoutMs: 1000 });
      const seen: EntriesChange[] = [];
      const w: EntriesWatch = b.watchEntries((c) => seen.push(c));
      try {
        await until(() => w.currentRevision() !== undefined);
        px.cut();
        const cutAt = Date.now();
        const from = px.accepted.length;
        await until(() => w.currentRevision() === undefined, 2000);
        await sleep(10_500);
        const tries = px.accepted.slice(from).map((t) => t - cutAt);
        // Old behaviour: one try a second (10 or 11 here). Pauses of 0.5–1, 1–2, 2–4 and 4–8 s: 3 or 4.
        expect(tries.length, `tries at ${tries.join(', ')} ms`).toBeGreaterThanOrEqual(3);
        expect(tries.length, `tries at ${tries.join(', ')} ms`).toBeLessThanOrEqual(4);
        for (let i = 1; i < tries.length; i++) {
          const pause = (tries[i] as number) - (tries[i - 1] as number);
          expect(pause, `pause ${i} of tries at ${tries.join(', ')} ms`).toBeGreaterThanOrEqual(500 * 2 ** i - 100);
        }
        // Reachable again: the feed is back within the pause then due (at most 10 s), primed.
        px.restore();
        const e = await a.createEntry(newEntry(`${TD}/while-cut`, `${TD}/p`));
        await until(() => w.currentRevision() === e.revisionNumber, 11_000);
        // A connection that came up starts the pauses afresh: lost again, it is back within 1 s (and a bit).
        px.cut();
        await until(() => w.currentRevision() === undefined, 2000);
        const lostAt = Date.now();
        px.restore();
        await until(() => w.currentRevision() !== undefined, 3000);
        expect(Date.now() - lostAt).toBeLessThan(1500);
      } finally {
        px.restore();
        w.close();
        await a.close();
        await b.close();
      }
    }, 60_000);

    it('TCP keepalive is armed on the feed socket with a 10 s idle time', async ({ skip }) => {
      if (!pgh || !proxy) return skip();
      const b = await PostgresStore.open(proxy.url, { schema: 'feed_keepalive', listenProbeMs: 60_000 });
      const w = b.watchEntries(() => undefined);
      try {
        await until(() => w.currentRevision() !== undefined);
        const local = (listenSocket(b) as unknown as { localPort: number }).localPort;
        const t = await tcpTimer(local, proxy.port);
        expect(t, 'the feed socket in /proc/net/tcp').toBeDefined();
        // 2: the keepalive timer is armed; it fires after at most 10 s idle.
        expect(t?.timer).toBe(2);
        expect(t?.seconds).toBeGreaterThan(0);
        expect(t?.seconds).toBeLessThanOrEqual(10);
      } finally {
        w.close();
        await b.close();
      }
    });
  });
});
