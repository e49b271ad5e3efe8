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
import { newEntry } from '../support/entries.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;

const agent = (id: string, selectors: string[]): AgentRecord => ({
  id,
  attestors: ['join_token'],
  selectors,
  serial: '01',
  svidExpiresAt: '2030-01-01T00:00:00.000Z',
  attestedAt: '2026-01-01T00:00:00.000Z',
  banned: false,
  factorIds: [id],
});

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
  });
});
