/**
 * A held long-poll is answered 304 ("nothing changed") only when the verifier could tell: when its
 * PostgreSQL datastore could not be read for any part of the wait, or cannot be at its end, the
 * long-poll is answered 503 `store.unavailable` at its deadline, so the agent falls back to its
 * periodic sync (which meets and reports the failure). Through a real verifier and a real server
 * stopped during the wait: stopped until the deadline, and stopped and started again before it; then
 * a long-poll with the server up is answered 304 again. At the cache: revision reads that hang past
 * the deadline (the database out of reach without an error yet) answer the long-poll the same way.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { PostgresStore } from '../../src/store/postgres.js';
import type { AgentRecord } from '../../src/store/types.js';
import { AuthorizedSetCache, LONG_POLL_DEFAULTS } from '../../src/verifier/authorized-cache.js';
import { newEntry } from '../support/entries.js';
import { attestAndSync, holdLongPoll, type VerifierPair } from '../support/long-poll-agents.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { startServer, stopServer } from '../store/feed-postgres-control.js';

const TD = 'example.org';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(fn: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await fn()) return;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error('timed out');
    await sleep(50);
  }
}

let pgh: PostgresHandle | null = null;

beforeAll(async () => {
  pgh = await startPostgres();
}, 60_000);

afterAll(async () => {
  await pgh?.stop();
});

describe('a long-poll held while PostgreSQL cannot be read (real verifier, real server stopped)', () => {
  let dir: string | undefined;
  let tv: TestVerifier | undefined;
  let p: VerifierPair | undefined;

  beforeAll(async () => {
    if (!pgh) return;
    dir = mkdtempSync(join(tmpdir(), 'sigil-feed-'));
    tv = await startTestVerifier({ datastore: { kind: 'postgres', url: pgh.url, schema: 'feed_unreadable' } }, { dir });
    await tv.v.tick();
    p = { writer: tv, server: tv, caPem: SpiffeBundle.fromJwks(tv.trustDomain, tv.v.core.ca.bundle().toJwks()).toPem() };
  }, 60_000);

  afterAll(async () => {
    await tv?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The server is up again and the verifier reads it: a plain sync of `a` works. */
  async function serving(a: Awaited<ReturnType<typeof attestAndSync>>): Promise<void> {
    const pair = p as VerifierPair;
    await until(async () => (await httpsJson(pair.server.v.port, 'GET', '/v1/entries/authorized', { caPem: pair.caPem, ...a.tls })).status === 200, 30_000);
    // Past the revision checks that may still have met the server down.
    await sleep(1500);
  }

  it('stopped until the deadline: 503 store.unavailable at the deadline, not 304', async ({ skip }) => {
    if (!p || !pgh) return skip();
    const a = await attestAndSync(p);
    const held = holdLongPoll(p, a, 4);
    await sleep(300);
    await stopServer(pgh);
    try {
      const r = await held;
      expect([r.status, r.code]).toEqual([503, 'store.unavailable']);
      // Held to its deadline (an unreadable store does not end every held long-poll at once).
      expect(r.tookMs).toBeGreaterThanOrEqual(3900);
    } finally {
      await startServer(pgh);
    }
    await serving(a);
    // With the server up for the whole wait, nothing changed is answered as before.
    const again = await holdLongPoll(p, a, 2);
    expect(again.status).toBe(304);
    expect(again.tookMs).toBeGreaterThanOrEqual(1900);
  });

  it('stopped for part of the wait and started again before the deadline: still 503 store.unavailable', async ({ skip }) => {
    if (!p || !pgh) return skip();
    const a = await attestAndSync(p);
    await serving(a);
    const held = holdLongPoll(p, a, 7);
    await sleep(300);
    await stopServer(pgh);
    // At least one revision check (every second) meets the server down.
    await sleep(1500);
    await startServer(pgh);
    const r = await held;
    expect([r.status, r.code]).toEqual([503, 'store.unavailable']);
    expect(r.tookMs).toBeGreaterThanOrEqual(6900);
    await serving(a);
  });
});

describe('a long-poll whose revision reads hang past its deadline (cache, real PostgreSQL store)', () => {
  function agentRecord(name: string): AgentRecord {
    const id = `spiffe://${TD}/sigil/agent/join_token/${name}`;
    return { id, attestors: ['join_token'], selectors: [], serial: 'AA', svidExpiresAt: new Date(Date.now() + 3600e3).toISOString(), attestedAt: new Date().toISOString(), banned: false, factorIds: [id] };
  }

  it('is refused with store.unavailable at its deadline; with reads answered it resolves unchanged', async ({ skip }) => {
    if (!pgh) return skip();
    const store = await PostgresStore.open(pgh.url, { schema: 'feed_unreadable_hang' });
    const cache = new AuthorizedSetCache(store, TD, () => new Date(), LONG_POLL_DEFAULTS, undefined, { revisionCheckMs: 100, feedGraceMs: 300 });
    // Released in `finally` too, so that a failed expectation is reported as itself, not as a hang.
    let release = (): void => undefined;
    try {
      const agent = agentRecord('hang');
      await store.createEntry(newEntry(`spiffe://${TD}/web`, agent.id));
      const set = await cache.get(agent);
      // Control: the store answers, nothing changes: unchanged at the deadline.
      expect(await cache.waitForChange(agent, set, 800, async () => agent, () => undefined)).toBeUndefined();
      // The revision reads now hang (no error yet: the server out of reach, a TCP timeout to come).
      const gate = new Promise<void>((r) => (release = r));
      const read = store.entriesRevision.bind(store);
      store.entriesRevision = async () => {
        await gate;
        return read();
      };
      const t0 = Date.now();
      const err = await cache.waitForChange(agent, set, 1500, async () => agent, () => undefined).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
      expect(err).toBeInstanceOf(SigilError);
      expect([(err as SigilError).code, (err as SigilError).status]).toEqual(['store.unavailable', 503]);
      expect((err as SigilError).message).toMatch(/^no read of the datastore has completed for \d+ ms, so whether the authorized set changed is not known; sync without wait$/);
      release();
    } finally {
      release();
      cache.close();
      await store.close();
    }
  });
});
