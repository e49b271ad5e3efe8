/**
 * authorizedEntries walks the entry tree from the agent's ID and node aliases. It no longer keeps a
 * set of entry IDs per walk (each parent is looked up once, and an entry has one parent), so what a
 * source that returns an entry twice, or a parent's children under two lookups, would do is pinned
 * here: every entry is listed once, sorted by ID, and cycles and the depth bound still hold.
 */
import { describe, expect, it } from 'vitest';
import type { RegistrationEntry } from '../../src/store/types.js';
import { newEntry } from '../support/entries.js';
import { MAX_DEPTH, authorizedEntries, type EntrySource } from '../../src/verifier/authorization.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;
const AGENT = `spiffe://${TD}/sigil/agent/join_token/a`;
let seq = 0;
const entry = (spiffeId: string, parentId: string, selectors = ['unix:uid:1']): RegistrationEntry => ({
  ...newEntry(spiffeId, parentId, { selectors }),
  id: `e${String(seq++).padStart(4, '0')}`,
  revisionNumber: 1,
} as RegistrationEntry);

/** A source over `all`, returning each matching entry `copies` times. */
function source(all: RegistrationEntry[], copies = 1): EntrySource & { asked: string[][] } {
  const asked: string[][] = [];
  return {
    asked,
    async entriesByParents(ids: string[]) {
      asked.push([...ids]);
      const out: RegistrationEntry[] = [];
      for (let c = 0; c < copies; c++) for (const e of all) if (ids.includes(e.parentId)) out.push(e);
      return out;
    },
  };
}

describe('authorizedEntries', () => {
  it('lists an entry once when the source returns it twice', async () => {
    const alias = `spiffe://${TD}/node/g`;
    const all = [entry(alias, VID, [`sigil:agent_id:${AGENT}`]), entry(`spiffe://${TD}/w/1`, AGENT), entry(`spiffe://${TD}/w/2`, alias), entry(`spiffe://${TD}/w/3`, `spiffe://${TD}/w/2`)];
    const a = await authorizedEntries(source(all, 2), TD, AGENT, [], new Date());
    expect(a.entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/w/1`, `spiffe://${TD}/w/2`, `spiffe://${TD}/w/3`]);
    const ids = a.entries.map((e) => e.id);
    expect([...ids].sort()).toEqual(ids);
    expect(a.nodeSelectors.has(`sigil:agent_id:${AGENT}`)).toBe(true);
    expect([...a.parentIds].sort()).toEqual([AGENT, alias, `spiffe://${TD}/w/1`, `spiffe://${TD}/w/2`, `spiffe://${TD}/w/3`].sort());
  });

  it('looks each parent up once, through cycles, and stops at the depth bound', async () => {
    // A cycle: x under y, y under x, both reached from the agent.
    const x = `spiffe://${TD}/x`;
    const y = `spiffe://${TD}/y`;
    const chain: RegistrationEntry[] = [entry(x, AGENT), entry(y, x), entry(x, y)];
    // A chain deeper than MAX_DEPTH.
    let parent = AGENT;
    for (let d = 0; d < MAX_DEPTH + 3; d++) {
      const id = `spiffe://${TD}/deep/${d}`;
      chain.push(entry(id, parent));
      parent = id;
    }
    const src = source(chain);
    const a = await authorizedEntries(src, TD, AGENT, [], new Date());
    const asked = src.asked.slice(1).flat(); // after the node-entry lookup
    expect(new Set(asked).size).toBe(asked.length);
    expect(src.asked.length - 1).toBeLessThanOrEqual(MAX_DEPTH);
    const deep = a.entries.filter((e) => e.spiffeId.includes('/deep/'));
    expect(deep).toHaveLength(MAX_DEPTH);
    expect(a.entries.filter((e) => e.spiffeId === x)).toHaveLength(2);
  });
});
