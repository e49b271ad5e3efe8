/**
 * Held long-polls that a change touches are re-evaluated side by side, so a store read that hangs
 * (PostgreSQL out of reach without an error yet, a row lock) holds up only its own long-poll. The
 * attacker's version: an agent whose record read never returns, and a change to another agent's set
 * made after it. Before, the re-evaluations ran one after the other, so the second agent got its new
 * set only at its deadline (or when the first read failed, up to the statement timeout later) — one
 * stuck read delayed every agent's changes. Re-evaluations in flight stay bounded (EVAL_SLICE), and
 * one long-poll is never re-evaluated twice at once.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord } from '../../src/store/types.js';
import { AuthorizedSetCache, EVAL_SLICE, LONG_POLL_DEFAULTS, type AuthorizedSet } from '../../src/verifier/authorized-cache.js';
import { joinTokenAgent } from '../support/agents.js';
import { newEntry } from '../support/entries.js';

const TD = 'example.org';
const agent = (name: string): AgentRecord => joinTokenAgent(`spiffe://${TD}/sigil/agent/join_token/${name}`);

let store: SqliteStore | undefined;
let cache: AuthorizedSetCache | undefined;
const releases: (() => void)[] = [];
afterEach(() => {
  for (const r of releases.splice(0)) r();
  cache?.close();
  store?.close();
  cache = store = undefined;
});

type Answer = { set?: AuthorizedSet; error?: unknown; ms: number };

/** Hold a long-poll of `a` for `waitMs`; `recheck` stands for the agent record read. */
async function hold(a: AgentRecord, waitMs: number, recheck: () => Promise<AgentRecord>): Promise<{ answer: Promise<Answer> }> {
  const c = cache as AuthorizedSetCache;
  const set = await c.get(a);
  const t0 = Date.now();
  const answer = c.waitForChange(a, set, waitMs, recheck, () => undefined).then(
    (s) => ({ set: s, ms: Date.now() - t0 }),
    (e: unknown) => ({ error: e, ms: Date.now() - t0 }),
  );
  return { answer };
}

/** A read that returns only when released (or at the test's end). */
function hungRead(a: AgentRecord, onCall: () => void): () => Promise<AgentRecord> {
  return async () => {
    onCall();
    await new Promise<void>((r) => releases.push(r));
    return a;
  };
}

describe('long-poll re-evaluation with a store read that hangs', () => {
  it("does not hold up another agent's change", async () => {
    store = new SqliteStore(':memory:');
    cache = new AuthorizedSetCache(store, TD, () => new Date(), LONG_POLL_DEFAULTS);
    const stuck = agent('stuck');
    const other = agent('other');
    await store.createEntry(newEntry(`spiffe://${TD}/w/stuck-0`, stuck.id));
    await store.createEntry(newEntry(`spiffe://${TD}/w/other-0`, other.id));
    let stuckReads = 0;
    const s = await hold(stuck, 6000, hungRead(stuck, () => stuckReads++));
    const o = await hold(other, 6000, async () => other);

    // A change to the stuck agent's set: its re-evaluation starts and its record read hangs.
    await store.createEntry(newEntry(`spiffe://${TD}/w/stuck-1`, stuck.id));
    await new Promise((r) => setTimeout(r, 100));
    expect(stuckReads).toBe(1);

    // A change to the other agent's set, after it: answered now, with the new set.
    await store.createEntry(newEntry(`spiffe://${TD}/w/other-1`, other.id));
    const got = await Promise.race([o.answer, new Promise<'late'>((r) => setTimeout(() => r('late'), 3000))]);
    expect(got).not.toBe('late');
    const answer = got as Answer;
    expect(answer.error).toBeUndefined();
    expect(answer.set?.entries.map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/other-0`, `spiffe://${TD}/w/other-1`]);
    expect(answer.ms).toBeLessThan(2000);

    // The stuck one is still held (its read never returned); released, it gets its new set.
    const pending = await Promise.race([s.answer, new Promise<'pending'>((r) => setTimeout(() => r('pending'), 50))]);
    expect(pending).toBe('pending');
    for (const r of releases.splice(0)) r();
    const stuckAnswer = await s.answer;
    expect(stuckAnswer.error).toBeUndefined();
    expect(stuckAnswer.set?.entries.map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/stuck-0`, `spiffe://${TD}/w/stuck-1`]);
  });

  it('keeps at most EVAL_SLICE re-evaluations in flight and never two of one long-poll', async () => {
    store = new SqliteStore(':memory:');
    cache = new AuthorizedSetCache(store, TD, () => new Date(), LONG_POLL_DEFAULTS);
    // An alias every agent belongs to (one node entry per agent), so one write under the alias touches all.
    const VID = `spiffe://${TD}/sigil/verifier`;
    const alias = `spiffe://${TD}/node/all`;
    const n = EVAL_SLICE + 8;
    const agents = Array.from({ length: n }, (_, i) => agent(`a${i}`));
    for (const a of agents) await store.createEntry(newEntry(alias, VID, { selectors: [`sigil:agent_id:${a.id}`] }));
    await store.createEntry(newEntry(`spiffe://${TD}/w/0`, alias));
    let inFlight = 0;
    let most = 0;
    const perAgent = new Map<string, number>();
    let twice = false;
    const held = await Promise.all(
      agents.map((a) =>
        hold(a, 8000, async () => {
          inFlight++;
          most = Math.max(most, inFlight);
          const k = (perAgent.get(a.id) ?? 0) + 1;
          perAgent.set(a.id, k);
          if (k > 1) twice = true;
          await new Promise<void>((r) => releases.push(r));
          perAgent.set(a.id, (perAgent.get(a.id) ?? 1) - 1);
          inFlight--;
          return a;
        }),
      ),
    );
    // Two writes under the alias: every long-poll is touched twice while its first read hangs.
    await store.createEntry(newEntry(`spiffe://${TD}/w/1`, alias));
    await new Promise((r) => setTimeout(r, 100));
    await store.createEntry(newEntry(`spiffe://${TD}/w/2`, alias));
    await new Promise((r) => setTimeout(r, 100));
    expect(inFlight).toBe(EVAL_SLICE);
    // Release the reads as they come until every long-poll is answered.
    const all = Promise.all(held.map((h) => h.answer));
    let done = false;
    void all.then(() => (done = true));
    for (let i = 0; i < 100 && !done; i++) {
      for (const r of releases.splice(0)) r();
      await new Promise((r) => setTimeout(r, 20));
    }
    const answers = await all;
    expect(most).toBe(EVAL_SLICE);
    expect(twice).toBe(false);
    for (const a of answers) {
      expect(a.error).toBeUndefined();
      const ids = a.set?.entries.map((e) => e.spiffeId) ?? [];
      for (const w of ['w/0', 'w/1', 'w/2']) expect(ids).toContain(`spiffe://${TD}/${w}`);
    }
  });
});
