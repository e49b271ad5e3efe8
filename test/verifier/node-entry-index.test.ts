/**
 * The node-entry index (src/verifier/node-entry-index.ts) only narrows the search: whatever the
 * selectors, its candidates filtered by "all selectors are the agent's" are exactly the entries a
 * scan of the whole list finds, in the same order.
 */
import { describe, expect, it } from 'vitest';
import type { RegistrationEntry } from '../../src/store/types.js';
import { NodeEntryIndex } from '../../src/verifier/node-entry-index.js';

const node = (id: string, selectors: string[]): RegistrationEntry =>
  ({ id, spiffeId: `spiffe://example.org/node/${id}`, parentId: 'spiffe://example.org/sigil/verifier', selectors }) as unknown as RegistrationEntry;

const matches = (list: readonly RegistrationEntry[], sel: ReadonlySet<string>) => list.filter((e) => e.selectors.every((s) => sel.has(s))).map((e) => e.id);

describe('NodeEntryIndex', () => {
  it('finds an entry through any of its selectors, always offers entries without selectors, and keeps list order', () => {
    const list = [node('a', ['tpm:secureboot:enabled', 'sigil:agent_id:1']), node('b', []), node('c', ['tpm:secureboot:enabled']), node('d', ['x', 'y'])];
    const idx = new NodeEntryIndex(list);
    expect(idx.candidates(new Set(['sigil:agent_id:1', 'tpm:secureboot:enabled'])).map((e) => e.id)).toEqual(['a', 'b', 'c']);
    expect(idx.candidates(new Set(['tpm:secureboot:enabled'])).map((e) => e.id)).toEqual(['b', 'c']);
    // 'd' is filed under one of x, y; an agent with only the other gets it as a candidate or not,
    // but never as a match.
    expect(matches(idx.candidates(new Set(['x'])), new Set(['x']))).toEqual(['b']);
    expect(matches(idx.candidates(new Set(['x', 'y'])), new Set(['x', 'y']))).toEqual(['b', 'd']);
    expect(idx.candidates(new Set())).toEqual([list[1]]);
  });

  it('files each entry under its rarest selector, so a selector every node shares does not make one long list', () => {
    const list = Array.from({ length: 1000 }, (_, i) => node(`n${i}`, ['tpm:secureboot:enabled', `sigil:agent_id:${i}`]));
    const idx = new NodeEntryIndex(list);
    expect(idx.candidates(new Set(['tpm:secureboot:enabled', 'sigil:agent_id:7'])).map((e) => e.id)).toEqual(['n7']);
  });

  it('agrees with a scan of the whole list on random entries and agents', () => {
    let seed = 99;
    const rnd = (m: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % m;
    const pool = Array.from({ length: 12 }, (_, i) => `s:${i}`);
    for (let round = 0; round < 200; round++) {
      const list = Array.from({ length: rnd(40) }, (_, i) => node(`e${i}`, Array.from({ length: rnd(4) }, () => pool[rnd(pool.length)] as string)));
      const idx = new NodeEntryIndex(list);
      for (let q = 0; q < 20; q++) {
        const sel = new Set(Array.from({ length: rnd(8) }, () => pool[rnd(pool.length)] as string));
        const cand = idx.candidates(sel);
        // A subset of the list in list order, with every match in it.
        const pos = cand.map((e) => list.indexOf(e));
        expect(pos.every((p, i) => p >= 0 && (i === 0 || p > (pos[i - 1] as number)))).toBe(true);
        expect(matches(cand, sel)).toEqual(matches(list, sel));
      }
    }
  });
});
