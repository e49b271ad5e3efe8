/**
 * Sets computed side by side share one read of each parent's children. When a change under an
 * alias re-evaluates every agent of the alias at once (long-polls are re-evaluated side by side),
 * each computation used to miss the children cache while the first read was still in flight and read
 * the same rows again: every set then held its own copies of the alias's entries (a fleet run's heap
 * tripled). A read in flight is now joined, but never across a write: a write reported while a read
 * is in flight makes the next computation read again, so no set misses it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord, RegistrationEntry } from '../../src/store/types.js';
import { AuthorizedSetCache } from '../../src/verifier/authorized-cache.js';
import { joinTokenAgent } from '../support/agents.js';
import { newEntry } from '../support/entries.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;
const ALIAS = `spiffe://${TD}/node/shared`;
const agent = (name: string): AgentRecord => joinTokenAgent(`spiffe://${TD}/sigil/agent/join_token/${name}`);

/** A SQLite store whose entriesByParents calls are counted by parent, and can be held until released. */
class CountingStore extends SqliteStore {
  reads = new Map<string, number>();
  hold: Promise<void> | undefined;
  override async entriesByParents(parentIds: string[]): Promise<RegistrationEntry[]> {
    for (const p of parentIds) this.reads.set(p, (this.reads.get(p) ?? 0) + 1);
    const h = this.hold;
    const rows = await super.entriesByParents(parentIds);
    if (h) await h;
    return rows;
  }
}

let store: CountingStore | undefined;
let cache: AuthorizedSetCache | undefined;
afterEach(() => {
  cache?.close();
  store?.close();
  cache = store = undefined;
});

async function fleet(n: number): Promise<AgentRecord[]> {
  const s = store as CountingStore;
  const agents = Array.from({ length: n }, (_, i) => agent(`a${i}`));
  for (const a of agents) await s.createEntry(newEntry(ALIAS, VID, { selectors: [`sigil:agent_id:${a.id}`] }));
  for (let k = 0; k < 5; k++) await s.createEntry(newEntry(`spiffe://${TD}/w/${k}`, ALIAS));
  return agents;
}

describe('authorized sets computed side by side', () => {
  it("read the alias's children once and share its entry objects", async () => {
    store = new CountingStore(':memory:');
    cache = new AuthorizedSetCache(store, TD, () => new Date());
    const agents = await fleet(8);
    const sets = await Promise.all(agents.map((a) => (cache as AuthorizedSetCache).get(a)));
    expect(store.reads.get(ALIAS)).toBe(1);
    const first = new Map((sets[0]?.entries ?? []).map((e) => [e.id, e]));
    expect(first.size).toBe(5);
    for (const s of sets) {
      expect(s.entries).toHaveLength(5);
      for (const e of s.entries) expect(e).toBe(first.get(e.id));
    }
  });

  it('do not join a read across a write reported while it was in flight', async () => {
    store = new CountingStore(':memory:');
    cache = new AuthorizedSetCache(store, TD, () => new Date());
    const [a0, a1] = await fleet(2);
    // a0's read of the alias's children is held in flight; an entry is written under the alias meanwhile.
    let release = (): void => undefined;
    store.hold = new Promise<void>((r) => (release = r));
    const first = cache.get(a0 as AgentRecord);
    await new Promise((r) => setTimeout(r, 20));
    store.hold = undefined;
    await store.createEntry(newEntry(`spiffe://${TD}/w/late`, ALIAS));
    await new Promise((r) => setTimeout(r, 20));
    // Joining the held read would wait for it (and miss the write): bounded, so that fails as an assertion.
    const got = await Promise.race([cache.get(a1 as AgentRecord), new Promise<'joined'>((r) => setTimeout(() => r('joined'), 2000))]);
    release();
    await first;
    expect(got).not.toBe('joined');
    const second = got as Exclude<typeof got, 'joined'>;
    expect(second.entries.map((e) => e.spiffeId)).toContain(`spiffe://${TD}/w/late`);
    expect(second.entries).toHaveLength(6);
  });
});
