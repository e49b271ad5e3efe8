/**
 * Two real verifiers on one PostgreSQL schema. An agent holds a long-poll on B; every verifier's
 * feed connection (LISTEN) is ended by the server (pg_terminate_backend, as an idle-connection killer
 * does) and an entry for the agent is created through A while B's feed is away. B's held long-poll is
 * answered 200 with the new set within 3 s (the feed is back within 1 s and reads the revision again;
 * the revision check reads it every second meanwhile), and B's feed carries the next write at once.
 */
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { attestAndSync, type VerifierPair } from '../support/long-poll-agents.js';
import { startPostgresPair, type PostgresPair } from '../support/postgres-pair.js';
import { httpsJson } from '../support/verifier.js';

const TD = 'example.org';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(fn: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(20);
  }
}

let pair: PostgresPair | null = null;
let sql: pg.Client | undefined;
let p: VerifierPair | undefined;

beforeAll(async () => {
  pair = await startPostgresPair('feed_reconnect_http');
  if (!pair) return;
  ({ sql, p } = pair);
}, 60_000);

afterAll(async () => {
  await pair?.stop();
});

async function listenPids(): Promise<number[]> {
  const r = await (sql as pg.Client).query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen' ORDER BY pid`);
  return r.rows.map((x) => x.pid);
}

describe('a held long-poll when the verifier\'s feed connection is ended by the server', () => {
  it('an entry created through A while B\'s feed is away reaches the long-poll held on B within 3 s', async ({ skip }) => {
    if (!p || !sql) return skip();
    const pair = p;
    const a = await attestAndSync(pair);
    const ids = (body: unknown) => (body as { entries: { id: string }[] }).entries.map((e) => e.id);
    await until(async () => (await listenPids()).length === 2);
    const before = await listenPids();
    const t0 = Date.now();
    const held = httpsJson(pair.server.v.port, 'GET', '/v1/entries/authorized?wait=15', { caPem: pair.caPem, ...a.tls, headers: { 'if-none-match': a.etag } });
    await sleep(300);
    const killed = await sql.query<{ ok: boolean }>(`SELECT pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity WHERE application_name = 'sigil-verifier-listen'`);
    expect(killed.rows.map((x) => x.ok)).toEqual([true, true]);
    const entry = await adminCall<{ id: string }>(pair.writer.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${TD}/while-away`, parentId: a.agentId, selectors: ['unix:uid:1'] });
    const written = Date.now();
    const r = await held;
    expect(r.status).toBe(200);
    expect(ids(r.body)).toEqual([entry.id]);
    expect(Date.now() - written).toBeLessThan(3000);
    expect(Date.now() - t0).toBeLessThan(5000);
    // Both feeds are back on new connections, and B hears the next write through its own.
    await until(async () => {
      const now = await listenPids();
      return now.length === 2 && now.every((x) => !before.includes(x));
    });
    const etag = r.headers.etag as string;
    const next = httpsJson(pair.server.v.port, 'GET', '/v1/entries/authorized?wait=15', { caPem: pair.caPem, ...a.tls, headers: { 'if-none-match': etag } });
    await sleep(300);
    const second = await adminCall<{ id: string }>(pair.writer.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${TD}/after`, parentId: a.agentId, selectors: ['unix:uid:2'] });
    const w2 = Date.now();
    const r2 = await next;
    expect(r2.status).toBe(200);
    expect(ids(r2.body).sort()).toEqual([entry.id, second.id].sort());
    // By NOTIFY: well under the revision check's second.
    expect(Date.now() - w2).toBeLessThan(900);
  });
});
