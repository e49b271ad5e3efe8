/**
 * What the verifier keeps in its V8 heap per registration entry and per agent: the state of
 * GET /v1/entries/authorized (AuthorizedSetCache: each agent's set, the shared children cache, the
 * entries' JSON) built as the real verifier builds it, on a real SQLite store, with the fleet
 * layout of bench/fleet.ts (one node entry per agent making it a member of an alias of --group
 * agents; the other entries half under agents, half under aliases).
 *
 *   node --expose-gc --import tsx bench/verifier-heap.ts [--agents 10000] [--entries 100000] [--group 10]
 *        [--snapshot file.heapsnapshot]
 *
 * Phases, each measured after a full GC (heapUsed, not RSS; deterministic, no CPU timing):
 *   sets:    every agent's set computed (its first sync), as sets.get(agent) does on a route call;
 *   bodies:  every agent's 200 answer made once (sets.body: the entries' JSON, made once per entry);
 *   waiters: one held long-poll per agent (waitForChange), as in push mode.
 * The agents' connections and HTTP request objects are not part of it (Node's own, measured by
 * bench/fleet.ts as RSS, and their floor by bench/tls-floor.ts). At the end it prints how long one
 * full collection of the whole state takes (the median of seven forced ones).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeHeapSnapshot } from 'node:v8';
import { SqliteStore } from '../src/store/sqlite.js';
import type { AgentRecord, NewEntry } from '../src/store/types.js';
import { AuthorizedSetCache, type AuthorizedSet } from '../src/verifier/authorized-cache.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : dflt;
};
const snapshotAt = ((): string | undefined => {
  const i = args.indexOf('--snapshot');
  return i >= 0 ? args[i + 1] : undefined;
})();

const gcNow = (globalThis as { gc?: () => void }).gc;
if (!gcNow) {
  console.error('run with node --expose-gc --import tsx bench/verifier-heap.ts');
  process.exit(2);
}
const gc: () => void = gcNow;

const N = opt('--agents', 10_000);
const ENTRIES = opt('--entries', 100_000);
const GROUP = opt('--group', 10);
const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;

function heap(): number {
  for (let i = 0; i < 4; i++) gc();
  return process.memoryUsage().heapUsed;
}

const mb = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MB`;
const mk = (spiffeId: string, parentId: string, selectors: string[]): NewEntry => ({ spiffeId, parentId, selectors, x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });

const dir = mkdtempSync(join(tmpdir(), 'sigil-heap-'));
try {
  const file = join(dir, 'sigil.db');
  // 1. The store, written the way bench/fleet.ts writes it, then closed.
  {
    const w = new SqliteStore(file);
    const groups = Math.max(1, Math.ceil(N / GROUP));
    const now = new Date();
    const svidExpiresAt = new Date(now.getTime() + 3600_000).toISOString();
    let batch: NewEntry[] = [];
    const ids: string[] = [];
    for (let i = 0; i < N; i++) {
      const id = `spiffe://${TD}/sigil/agent/join_token/${randomUUID()}`;
      ids.push(id);
      await w.upsertAgent({ id, attestors: ['join_token'], selectors: [], serial: (i + 1).toString(16), svidExpiresAt, attestedAt: now.toISOString(), banned: false, factorIds: [id] });
      batch.push(mk(`spiffe://${TD}/node/g${i % groups}`, VID, [`sigil:agent_id:${id}`]));
    }
    for (let k = 0; k < ENTRIES - N; k++) {
      const parent = k % 2 === 0 ? (ids[(k >> 1) % N] as string) : `spiffe://${TD}/node/g${(k >> 1) % groups}`;
      batch.push(mk(`spiffe://${TD}/w/${k}`, parent, [`unix:uid:${1000 + (k % 50)}`]));
      if (batch.length >= 10_000) {
        await w.createEntries(batch);
        batch = [];
      }
    }
    if (batch.length) await w.createEntries(batch);
    await w.close();
  }

  // 2. The verifier's state, as the agent routes build it.
  const store = new SqliteStore(file);
  const agentIds = (await store.listAgents()).map((a) => a.id);
  const cache = new AuthorizedSetCache(store, TD, () => new Date());
  const h0 = heap();

  const sets: AuthorizedSet[] = [];
  let entriesServed = 0;
  for (const id of agentIds) {
    // The route reads the agent record on every call; only the set is kept.
    const s = await cache.get((await store.getAgent(id)) as AgentRecord);
    sets.push(s);
    entriesServed += s.entries.length;
  }
  const h1 = heap();

  let bytes = 0;
  for (const s of sets) bytes += cache.body(s).length;
  const h2 = heap();

  // One held long-poll per agent (push mode). The agent record a waiter keeps is the one its route read.
  const held: Promise<unknown>[] = [];
  for (const s of sets) {
    const agent = (await store.getAgent(s.agentId)) as AgentRecord;
    held.push(cache.waitForChange(agent, s, 600_000, async () => agent, () => undefined));
  }
  sets.length = 0;
  const h3 = heap();
  // How long one full collection of this state takes (gc() marks and compacts in one pause; the
  // verifier's own collections are incremental, but they do the same marking): the median of seven.
  const pauses: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = process.hrtime.bigint();
    gc();
    pauses.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  pauses.sort((a, b) => a - b);
  if (snapshotAt) console.log(`heap snapshot: ${writeHeapSnapshot(snapshotAt)}`);

  const stats = cache.counters();
  console.log(`${N} agents, ${ENTRIES} entries (groups of ${GROUP}); ${entriesServed} entries in all sets (${(entriesServed / N).toFixed(1)} per agent), bodies ${(bytes / N / 1024).toFixed(1)} KiB per agent; computed ${stats.computed}`);
  console.log(`heap after open (store, empty cache): ${mb(h0)}`);
  console.log(`sets (children cache + each agent's set): +${mb(h1 - h0)} = ${((h1 - h0) / ENTRIES).toFixed(0)} B per entry or ${((h1 - h0) / N).toFixed(0)} B per agent`);
  console.log(`bodies (each entry's JSON, once): +${mb(h2 - h1)} = ${((h2 - h1) / ENTRIES).toFixed(0)} B per entry`);
  console.log(`waiters (one held long-poll per agent): +${mb(h3 - h2)} = ${((h3 - h2) / N).toFixed(0)} B per agent`);
  console.log(`total over open: ${mb(h3 - h0)}`);
  console.log(`full collection of this heap: median ${(pauses[3] as number).toFixed(1)} ms (${(pauses[0] as number).toFixed(1)}–${(pauses[6] as number).toFixed(1)} ms over 7)`);
  cache.close();
  await Promise.allSettled(held);
  await store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
