/**
 * The node entries (children of the verifier's ID) filed by selector, so that finding those an
 * agent's node selectors satisfy reads a few short lists instead of every node entry of the trust
 * domain (issue 15: at 10,000 agents with one node entry each, every authorized-set computation
 * used to test all 10,000).
 *
 * A node entry matches an agent only if all of its selectors are the agent's, so any one of them
 * finds it: each entry is filed once, under the selector that the fewest entries carry (a selector
 * every node shares, such as a Secure Boot state, would otherwise make one long list). Entries
 * without selectors match every agent and are always candidates. The index only narrows the search:
 * authorizedEntries still checks every candidate's selectors and liveness.
 */
import type { RegistrationEntry } from '../store/types.js';

export class NodeEntryIndex {
  private readonly bySelector = new Map<string, number[]>();
  private readonly always: number[] = [];

  /** `entries` is kept (not copied): the index answers for exactly this list, in its order. */
  constructor(readonly entries: readonly RegistrationEntry[]) {
    const carriers = new Map<string, number>();
    for (const e of entries) for (const s of e.selectors) carriers.set(s, (carriers.get(s) ?? 0) + 1);
    for (let i = 0; i < entries.length; i++) {
      const sel = (entries[i] as RegistrationEntry).selectors;
      if (sel.length === 0) {
        this.always.push(i);
        continue;
      }
      let best = sel[0] as string;
      let fewest = carriers.get(best) as number;
      for (const s of sel) {
        const n = carriers.get(s) as number;
        if (n < fewest) {
          best = s;
          fewest = n;
        }
      }
      const list = this.bySelector.get(best);
      if (list) list.push(i);
      else this.bySelector.set(best, [i]);
    }
  }

  /** Every entry whose selectors could all be in `selectors` (a superset of the matches), in list order. */
  candidates(selectors: ReadonlySet<string>): RegistrationEntry[] {
    const at = this.always.slice();
    for (const s of selectors) {
      const list = this.bySelector.get(s);
      if (list) for (const i of list) at.push(i);
    }
    // Each entry is filed once, so no position repeats; sorted back into the list's order.
    if (at.length > 1) at.sort((a, b) => a - b);
    return at.map((i) => this.entries[i] as RegistrationEntry);
  }
}
