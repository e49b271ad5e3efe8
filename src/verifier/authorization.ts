/**
 * Which entries an agent may issue SVIDs for (DESIGN §5).
 *
 * 1. The agent's node identities: its own agent ID, plus every node entry (parent = the verifier's
 *    ID) whose selectors are all among the agent's node selectors. Each agent also carries the
 *    implicit node selector `sigil:agent_id:<agent id>` so a node entry can name one agent (that is
 *    how join-token aliases work).
 * 2. Workload entries parented by any of those IDs, then — recursively — entries parented by the
 *    SPIFFE ID of an entry already authorized (bounded depth, cycles ignored).
 * Node entries themselves are never handed to workloads.
 */
import type { DataStore, RegistrationEntry } from '../store/types.js';
import { entryLive, verifierId } from './entries.js';

export const MAX_DEPTH = 8;

export function agentNodeSelectors(agentId: string, selectors: string[]): Set<string> {
  return new Set([...selectors, `sigil:agent_id:${agentId}`]);
}

export interface Authorization {
  /** Node entries that matched (their IDs are aliases of the agent). */
  nodeEntries: RegistrationEntry[];
  /** Workload entries the agent may serve. */
  entries: RegistrationEntry[];
  /**
   * Every ID whose children were looked up (the agent ID, its node aliases, the SPIFFE IDs of
   * authorized entries): an entry created or deleted under one of them may change this set.
   */
  parentIds: Set<string>;
  /** The agent's node selectors (agentNodeSelectors), as matched against the node entries. */
  nodeSelectors: Set<string>;
}

/**
 * Where the entries come from. `nodeEntryCandidates`, when given, returns a subset of the node
 * entries (children of the verifier's ID) that contains every one whose selectors are all in
 * `nodeSelectors`, in the order entriesByParents gives them (an index, so that an agent's set does not
 * scan every node entry of the trust domain); the match itself is still checked here.
 */
export interface EntrySource extends Pick<DataStore, 'entriesByParents'> {
  nodeEntryCandidates?: (nodeSelectors: ReadonlySet<string>) => Promise<readonly RegistrationEntry[]>;
}

export async function authorizedEntries(store: EntrySource, trustDomain: string, agentId: string, selectors: string[], now: Date): Promise<Authorization> {
  const vid = verifierId(trustDomain);
  const nodeSel = agentNodeSelectors(agentId, selectors);
  const candidates = store.nodeEntryCandidates ? await store.nodeEntryCandidates(nodeSel) : await store.entriesByParents([vid]);
  const nodeEntries = candidates.filter((e) => entryLive(e, now) && e.selectors.every((s) => nodeSel.has(s)));
  const seenIds = new Set<string>([agentId, vid]);
  let frontier = [agentId];
  for (const n of nodeEntries) {
    if (!seenIds.has(n.spiffeId)) {
      seenIds.add(n.spiffeId);
      frontier.push(n.spiffeId);
    }
  }
  const out: RegistrationEntry[] = [];
  // Each parent ID is looked up once (seenIds) and an entry has one parent, so an entry comes at
  // most once from a store that returns each once; duplicates are still dropped after the sort
  // (without a set of entry IDs per computation, which was a measurable part of the verifier's
  // allocation at 10,000 agents).
  for (let depth = 0; depth < MAX_DEPTH && frontier.length > 0; depth++) {
    const children = await store.entriesByParents(frontier);
    frontier = [];
    for (let i = 0; i < children.length; i++) {
      const e = children[i] as RegistrationEntry;
      if (!entryLive(e, now)) continue;
      out.push(e);
      if (!seenIds.has(e.spiffeId)) {
        seenIds.add(e.spiffeId);
        frontier.push(e.spiffeId);
      }
    }
  }
  out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  let n = 0;
  for (let i = 0; i < out.length; i++) {
    const e = out[i] as RegistrationEntry;
    if (n > 0 && (out[n - 1] as RegistrationEntry).id === e.id) continue;
    out[n++] = e;
  }
  seenIds.delete(vid);
  // A copy of the first n: `out` grew by push and has spare room, and cached sets keep this list (issue 15).
  return { nodeEntries, entries: out.slice(0, n), parentIds: seenIds, nodeSelectors: nodeSel };
}
