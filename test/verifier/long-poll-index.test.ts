/**
 * The authorized-set cache finds the held long-polls a change touches through an index (by the
 * parent IDs and node selectors of each held set) instead of testing every one. The attacker's
 * question is whether a change can slip past it: over random fleets and random writes on a real
 * SQLite store, every long-poll whose set changed is answered with the set a fresh computation gives,
 * and a long-poll is re-evaluated exactly when the written entry's parent is in its set or, for a
 * node entry, all its selectors are the agent's. Node entries are found through the node-entry index.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord, RegistrationEntry } from '../../src/store/types.js';
import { AuthorizedSetCache, type AuthorizedSet } from '../../src/verifier/authorized-cache.js';
import { joinTokenAgent } from '../support/agents.js';
import { newEntry } from '../support/entries.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;

const agent = joinTokenAgent;

const settle = () => new Promise((r) => setTimeout(r, 15));

interface Held {
  a: AgentRecord;
  set: AuthorizedSet;
  answer: AuthorizedSet | undefined | 'pending';
}

let store: SqliteStore | undefined;
const caches: AuthorizedSetCache[] = [];
afterEach(() => {
  for (const c of caches.splice(0)) c.close();
  store?.close();
  store = undefined;
});

describe('long-poll index', () => {
  it('re-evaluates exactly the long-polls a write touches and answers every changed set', async () => {
    let seed = 2026;
    const rnd = (m: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % m;
    const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)] as T;
    store = new SqliteStore(':memory:');
    const cache = new AuthorizedSetCache(store, TD, () => new Date());
    const fresh = new AuthorizedSetCache(store, TD, () => new Date());
    caches.push(cache, fresh);

    const pool = ['tpm:secureboot:enabled', 'k8s:ns:a', 'k8s:ns:b', 'region:eu', 'region:us'];
    const agents = Array.from({ length: 24 }, (_, i) => agent(`spiffe://${TD}/sigil/agent/join_token/a${i}`, pool.filter(() => rnd(2) === 0)));
    const aliases = Array.from({ length: 5 }, (_, i) => `spiffe://${TD}/node/g${i}`);
    // Node entries: some per agent, some by shared selectors.
    for (const a of agents) if (rnd(3) > 0) await store.createEntry(newEntry(pick(aliases), VID, { selectors: [`sigil:agent_id:${a.id}`] }));
    await store.createEntry(newEntry(aliases[0] as string, VID, { selectors: ['region:eu', 'k8s:ns:a'] }));
    const live: RegistrationEntry[] = [];
    const workloadParents = (): string[] => [...agents.map((a) => a.id), ...aliases, ...live.map((e) => e.spiffeId), `spiffe://${TD}/unrelated`];
    for (let i = 0; i < 40; i++) live.push(await store.createEntry(newEntry(`spiffe://${TD}/w/${i}`, pick(workloadParents()))));

    const rechecked = new Set<string>();
    const held = new Map<string, Held>();
    const hold = async (a: AgentRecord): Promise<void> => {
      const set = await cache.get(a);
      const h: Held = { a, set, answer: 'pending' };
      held.set(a.id, h);
      void cache
        .waitForChange(
          a,
          set,
          60_000,
          async () => {
            rechecked.add(a.id);
            return a;
          },
          () => undefined,
        )
        .then((s) => {
          h.answer = s;
        });
    };
    for (const a of agents) await hold(a);
    await settle();

    let writes = 0;
    let woken = 0;
    for (let round = 0; round < 120; round++) {
      // What an unindexed cache tests: the written entry's parent in the held set, or a node entry
      // all of whose selectors are the agent's.
      const before = new Map([...held].map(([id, h]) => [id, h.set]));
      const touches = (e: { parentId: string; selectors: string[] }, s: AuthorizedSet) => (e.parentId === VID ? e.selectors.every((x) => s.nodeSelectors.has(x)) : s.parentIds.has(e.parentId));
      let written: { parentId: string; selectors: string[] };
      const r = rnd(10);
      if (r < 4 && live.length > 0) {
        const gone = live.splice(rnd(live.length), 1)[0] as RegistrationEntry;
        await store.deleteEntry(gone.id);
        written = gone;
      } else if (r < 6) {
        const sel = pool.filter(() => rnd(3) === 0);
        written = await store.createEntry(newEntry(pick(aliases), VID, { selectors: sel.length > 0 ? sel : [pick(pool)] }));
      } else {
        const e = await store.createEntry(newEntry(`spiffe://${TD}/w/r${round}`, pick(workloadParents())));
        live.push(e);
        written = e;
      }
      writes++;
      rechecked.clear();
      await settle();
      await settle();
      const expected = [...before].filter(([, s]) => touches(written, s)).map(([id]) => id).sort();
      expect([...rechecked].sort()).toEqual(expected);
      for (const [id, h] of held) {
        const now = await fresh.get(h.a);
        if (now.etag !== h.set.etag) {
          // Changed: answered with the new set (same content as a fresh computation).
          expect(h.answer, `agent ${id} after write ${writes}`).not.toBe('pending');
          expect((h.answer as AuthorizedSet).etag).toBe(now.etag);
          woken++;
          await hold(h.a);
        } else {
          expect(h.answer).toBe('pending');
        }
      }
      await settle();
    }
    // The random writes did reach agents (the test is not vacuous).
    expect(woken).toBeGreaterThan(20);

    // A node entry without selectors matches every agent: every long-poll is re-evaluated and answered.
    rechecked.clear();
    await store.createEntry(newEntry(`spiffe://${TD}/node/everyone`, VID, { selectors: [] }));
    await settle();
    await settle();
    expect(rechecked.size).toBe(agents.length);
    for (const h of held.values()) expect(h.answer).not.toBe('pending');
    // Nothing holds any more: only each agent's cached set can still be filed (none leaks).
    expect(cache.counters().waiters).toBe(0);
    expect(cache.counters().filed).toBeLessThanOrEqual(agents.length);
    for (const a of agents) cache.forget(a.id);
    expect(cache.counters().filed).toBe(0);
  });

  it('a held set stays filed when its agent\'s cached set is replaced (new selectors): a change to it still answers the long-poll', async () => {
    store = new SqliteStore(':memory:');
    const cache = new AuthorizedSetCache(store, TD, () => new Date());
    caches.push(cache);
    const a = agent(`spiffe://${TD}/sigil/agent/join_token/re`, []);
    await store.createEntry(newEntry(`spiffe://${TD}/w/re`, a.id));
    const s1 = await cache.get(a);
    let answer: AuthorizedSet | undefined | 'pending' = 'pending';
    void cache.waitForChange(a, s1, 60_000, async () => a, () => undefined).then((x) => (answer = x));
    // The agent attests again with other selectors: its cached set is another object now.
    const s2 = await cache.get({ ...a, selectors: ['region:eu'] });
    expect(s2).not.toBe(s1);
    expect(cache.counters().filed).toBe(1);
    await store.createEntry(newEntry(`spiffe://${TD}/w/re2`, a.id));
    await settle();
    await settle();
    expect(answer).not.toBe('pending');
    expect((answer as unknown as AuthorizedSet).entries.map((e) => e.spiffeId)).toContain(`spiffe://${TD}/w/re2`);
    // Its holder gone and no longer the cached set: out of the index.
    expect(cache.counters().filed).toBe(0);
  });
});

/**
 * The change feed delivered by hand (the SQLite store's own reports are not subscribed), to play the
 * orders a shared PostgreSQL can produce: this verifier's own write reported at once, another
 * verifier's earlier write arriving by NOTIFY after it.
 */
function handFed(s: SqliteStore): { store: SqliteStore; feed: (c: { fromRevision: number; toRevision: number; entries: { parentId: string; selectors: string[] }[] | null }) => void } {
  let listener: ((c: Parameters<Parameters<SqliteStore['watchEntries']>[0]>[0]) => void) | undefined;
  const fake = Object.create(s) as SqliteStore;
  fake.watchEntries = (l) => {
    listener = l;
    return { currentRevision: () => undefined, close: () => undefined };
  };
  return { store: fake, feed: (c) => listener?.(c) };
}

describe('long-poll and the order of change reports', () => {
  const A = agent(`spiffe://${TD}/sigil/agent/join_token/x`, []);
  const B = agent(`spiffe://${TD}/sigil/agent/join_token/y`, []);

  async function setup(): Promise<{ cache: AuthorizedSetCache; feed: ReturnType<typeof handFed>['feed']; s: SqliteStore }> {
    store = new SqliteStore(':memory:');
    await store.createEntry(newEntry(`spiffe://${TD}/w/first`, A.id));
    const h = handFed(store);
    const cache = new AuthorizedSetCache(h.store, TD, () => new Date());
    caches.push(cache);
    return { cache, feed: h.feed, s: store };
  }

  const hold = (cache: AuthorizedSetCache, a: AgentRecord, set: AuthorizedSet, ms = 60_000) => {
    let answer: AuthorizedSet | undefined | 'pending' = 'pending';
    void cache.waitForChange(a, set, ms, async () => a, () => undefined).then((s) => (answer = s));
    return () => answer;
  };

  it('a write reported after a later one (another verifier\'s NOTIFY) still answers the long-poll it touches', async () => {
    const { cache, feed, s } = await setup();
    const set = await cache.get(A);
    const answer = hold(cache, A, set);
    const mine = await s.createEntry(newEntry(`spiffe://${TD}/w/touches-A`, A.id)); // revision n
    const other = await s.createEntry(newEntry(`spiffe://${TD}/w/elsewhere`, B.id)); // revision n + 1
    feed({ fromRevision: other.revisionNumber - 1, toRevision: other.revisionNumber, entries: [{ parentId: B.id, selectors: other.selectors }] });
    await settle();
    expect(answer()).toBe('pending');
    feed({ fromRevision: mine.revisionNumber - 1, toRevision: mine.revisionNumber, entries: [{ parentId: A.id, selectors: mine.selectors }] });
    await settle();
    await settle();
    const got = answer();
    expect(got).not.toBe('pending');
    expect((got as AuthorizedSet).entries.map((e) => e.spiffeId)).toContain(`spiffe://${TD}/w/touches-A`);
    // Reported again (the NOTIFY of a write this process reported): not a change, nothing re-evaluated.
    const again = hold(cache, A, got as AuthorizedSet);
    feed({ fromRevision: mine.revisionNumber - 1, toRevision: mine.revisionNumber, entries: [{ parentId: A.id, selectors: mine.selectors }] });
    await settle();
    expect(again()).toBe('pending');
  });

  it('a change reported between computing a set and holding it answers the long-poll at once', async () => {
    const { cache, feed, s } = await setup();
    const set = await cache.get(A);
    const e = await s.createEntry(newEntry(`spiffe://${TD}/w/raced`, A.id));
    feed({ fromRevision: e.revisionNumber - 1, toRevision: e.revisionNumber, entries: [{ parentId: A.id, selectors: e.selectors }] });
    const answer = hold(cache, A, set);
    await settle();
    await settle();
    const got = answer();
    expect(got).not.toBe('pending');
    expect((got as AuthorizedSet).entries.map((x) => x.spiffeId)).toContain(`spiffe://${TD}/w/raced`);
  });

  it('a long-poll whose wait ends while a change that touched it is being evaluated does not leave its stale set as current', async () => {
    const { cache, feed, s } = await setup();
    const set = await cache.get(A);
    let answer: AuthorizedSet | undefined | 'pending' = 'pending';
    // The agent-record read before a changed set is handed out takes longer than the wait has left.
    void cache
      .waitForChange(A, set, 150, () => new Promise((r) => setTimeout(() => r(A), 300)), () => undefined)
      .then((x) => (answer = x));
    await new Promise((r) => setTimeout(r, 50));
    const e = await s.createEntry(newEntry(`spiffe://${TD}/w/during-recheck`, A.id));
    feed({ fromRevision: e.revisionNumber - 1, toRevision: e.revisionNumber, entries: [{ parentId: A.id, selectors: e.selectors }] });
    await new Promise((r) => setTimeout(r, 450));
    // Normally the wait ends first (undefined); on a starved machine the re-evaluation may win.
    expect(answer).not.toBe('pending');
    if (answer !== undefined) expect((answer as unknown as AuthorizedSet).entries.map((x) => x.spiffeId)).toContain(`spiffe://${TD}/w/during-recheck`);
    const now = await cache.get(A);
    expect(now.entries.map((x) => x.spiffeId)).toContain(`spiffe://${TD}/w/during-recheck`);
  });

  it('a long-poll that ends untouched leaves its set current through the changes examined meanwhile; not across a gap in the feed', async () => {
    const { cache, feed, s } = await setup();
    const set = await cache.get(A);
    const answer = hold(cache, A, set, 300);
    for (let i = 0; i < 20; i++) {
      const e = await s.createEntry(newEntry(`spiffe://${TD}/w/b${i}`, B.id));
      feed({ fromRevision: e.revisionNumber - 1, toRevision: e.revisionNumber, entries: [{ parentId: B.id, selectors: e.selectors }] });
    }
    await new Promise((r) => setTimeout(r, 400));
    expect(answer()).toBeUndefined();
    const before = cache.counters();
    expect(await cache.get(A)).toBe(set);
    expect(cache.counters().hits).toBe(before.hits + 1);
    expect(cache.counters().revalidated).toBe(before.revalidated);

    // A gap: revisions nobody described went by while the long-poll was held. The set may not be
    // taken as current through them: it is computed again (when the waiter is re-evaluated, or at
    // the next call at the latest).
    const answer2 = hold(cache, A, set, 300);
    const c0 = cache.counters();
    await s.createEntry(newEntry(`spiffe://${TD}/w/undescribed`, B.id));
    const e = await s.createEntry(newEntry(`spiffe://${TD}/w/after-gap`, B.id));
    feed({ fromRevision: e.revisionNumber - 1, toRevision: e.revisionNumber, entries: [{ parentId: B.id, selectors: e.selectors }] });
    await new Promise((r) => setTimeout(r, 400));
    expect(answer2()).toBeUndefined();
    await cache.get(A);
    expect(cache.counters().computed).toBeGreaterThanOrEqual(c0.computed + 1);
  });
});
