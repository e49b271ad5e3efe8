/**
 * A periodic fetch answered after the long-poll delivered a newer set must not put the older set
 * (and its revision) back: the cycle adopts what it fetched only if the revision it sent is still
 * the one held, i.e. nothing (a pushed set, a reset for a new agent ID) changed it while the fetch
 * and its bundle refresh were pending. The race is staged with a fake verifier client whose every
 * request is answered by the test, in the order the test chooses; no timers decide the outcome.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { EntrySync } from '../../src/agent/entry-sync.js';
import type { NodeIdentity, NodeSvid } from '../../src/agent/node-attestation.js';
import type { SvidCache } from '../../src/agent/svid-cache.js';
import type { TrustStore } from '../../src/agent/trust.js';
import type { AuthorizedEntry, EntriesSync, VerifierClient } from '../../src/agent/verifier-client.js';
import { SigilError } from '../../src/errors.js';

const logger = pino({ level: 'silent' });
const AGENT = 'spiffe://example.org/sigil/agent/join_token/a';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * Items in arrival order; `nth(n)` resolves once the n-th (1-based) has arrived (rejects after 2 s:
 * a bound for a failing run only, never what decides the outcome).
 */
class Arrivals<T> {
  readonly items: T[] = [];
  private readonly waiters: { n: number; resolve: (t: T) => void }[] = [];

  add(t: T): void {
    this.items.push(t);
    for (const w of this.waiters.filter((w) => w.n === this.items.length)) w.resolve(t);
  }

  nth(n: number, what: string): Promise<T> {
    const t = this.items[n - 1];
    if (t !== undefined) return Promise.resolve(t);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} (${this.items.length} so far: ${JSON.stringify(this.items)})`)), 2000);
      this.waiters.push({ n, resolve: (t) => (clearTimeout(timer), resolve(t)) });
    });
  }
}

/** Until every step that needs no answer from the test has run (none waits for I/O or a timer: all are microtasks, run before the next macrotask). */
const settled = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A request to the fake verifier, pending until the test answers it. */
interface Pending<A, R> {
  arg: A;
  answer: (r: R) => void;
}

function pending<A, R>(log: Arrivals<Pending<A, R>>, arg: A, signal?: AbortSignal): Promise<R> {
  return new Promise<R>((answer, fail) => {
    signal?.addEventListener('abort', () => fail(new SigilError('agent.request_cancelled', 'cancelled')), { once: true });
    log.add({ arg, answer });
  });
}

const entry = (name: string): AuthorizedEntry => ({ id: name, spiffeId: `spiffe://example.org/${name}`, parentId: AGENT, selectors: ['unix:uid:1'], x509SvidTtl: 3600, jwtSvidTtl: 300, dnsNames: [], hint: '', admin: false, expiresAt: null, revisionNumber: 1 });
const set = (name: string, bundleEtag = '"E"'): EntriesSync => ({ set: { entries: [entry(name)], revision: `"${name}"` }, bundleEtag });

/**
 * An EntrySync (periodic interval 60 s: cycles run only when the test wakes them) whose first
 * fetch has been answered with set `first` (bundle ETag "E", that bundle fetched), whose first
 * long-poll is held, and whose periodic loop sleeps.
 */
async function started() {
  const fetches = new Arrivals<Pending<string | undefined, EntriesSync>>();
  const polls = new Arrivals<Pending<string, EntriesSync>>();
  const bundles = new Arrivals<Pending<string | undefined, { jwks: unknown; etag: string | undefined } | undefined>>();
  const client = {
    syncEntries: (revision?: string) => pending(fetches, revision),
    waitEntries: (revision: string, _wait: number, signal?: AbortSignal) => pending(polls, revision, signal),
    bundleIfChanged: (held: string | undefined) => pending(bundles, held),
    setTrust: () => undefined,
    signX509: async () => [],
  } as unknown as VerifierClient;
  const bundle = { refreshHintSeconds: undefined, x509Authorities: [] };
  const trust = { bundle: () => bundle, update: () => false } as unknown as TrustStore;
  let identity: ((s: NodeSvid) => void) | undefined;
  const node = {
    current: () => ({ agentId: AGENT }),
    generation: () => 1,
    onIdentity: (l: (s: NodeSvid) => void) => ((identity = l), () => undefined),
    trustFailure: () => undefined,
    invalidate: () => undefined,
  } as unknown as NodeIdentity;
  // The sets the cache was given, by their entry's name (each one notifies Workload API streams).
  const adopted = new Arrivals<string>();
  let notified = 0;
  const cache = {
    setEntries: (l: AuthorizedEntry[]) => (adopted.add(l.map((e) => e.id).join()), true),
    dueForIssue: () => [],
    nextRotation: () => undefined,
    notify: () => void notified++,
  } as unknown as SvidCache;
  const sync = new EntrySync({ trustDomain: 'example.org', client, cache, node, trust, logger, now: () => new Date(), intervalMs: 60_000 });
  sync.start();
  cleanups.push(() => {
    const closing = sync.close();
    // Requests a failed run left pending are answered "unchanged", so that the cycle ends.
    for (const f of fetches.items) f.answer({ set: undefined, bundleEtag: '"E"' });
    for (const b of bundles.items) b.answer(undefined);
    return closing;
  });

  const f1 = await fetches.nth(1, 'fetch 1');
  expect(f1.arg).toBeUndefined();
  f1.answer(set('first'));
  (await bundles.nth(1, 'bundle fetch 1')).answer({ jwks: {}, etag: '"E"' });
  const p1 = await polls.nth(1, 'long-poll 1');
  expect(p1.arg).toBe('"first"');
  expect(adopted.items).toEqual(['first']);
  // Let the cycle end and the loop go to sleep, so that a wake() starts the next cycle.
  await settled();
  expect(sync.lastSuccess()).toBeDefined();
  return { sync, fetches, polls, bundles, adopted, notified: () => notified, newIdentity: (agentId: string) => identity?.({ agentId } as NodeSvid), p1 };
}

describe('entries answers of the periodic fetch and the long-poll racing each other', () => {
  it('answered after the long-poll delivered a newer set: the newer set and its revision stay', async () => {
    const s = await started();
    // The periodic cycle (the long-poll has not answered yet, so it is not healthy) fetches with
    // the revision held, and its answer is delayed.
    s.sync.wake();
    const f2 = await s.fetches.nth(2, 'fetch 2');
    expect(f2.arg).toBe('"first"');
    // Meanwhile the verifier's set changed twice; the long-poll carries the newest one, and it is adopted.
    s.p1.answer(set('newer'));
    expect(await s.adopted.nth(2, 'adopted set 2')).toBe('newer');
    const notifiedByPush = s.notified();
    // Now the fetch's answer arrives: the set as it was between the two changes.
    f2.answer(set('older'));
    // The next long-poll (sent once the pushed set's SVIDs were issued, after the cycle ended)
    // names the revision the agent holds.
    const p2 = await s.polls.nth(2, 'long-poll 2');
    // Sets adopted, the revision the next long-poll sends, Workload API notifications since the push.
    expect({ adopted: s.adopted.items, revision: p2.arg, notifications: s.notified() - notifiedByPush }).toEqual({ adopted: ['first', 'newer'], revision: '"newer"', notifications: 0 });
    expect(s.sync.pushedChanges()).toBe(1);
  });

  it('answered before the long-poll, but adopted only after its bundle refresh, which the long-poll overtook: the newer set stays', async () => {
    const s = await started();
    s.sync.wake();
    // The fetch's answer names another bundle ETag; the cycle refreshes the bundle before adopting the set.
    (await s.fetches.nth(2, 'fetch 2')).answer(set('older', '"F"'));
    const b2 = await s.bundles.nth(2, 'bundle fetch 2');
    expect(b2.arg).toBe('"E"');
    // The long-poll answers the newer set (same new bundle): its bundle refresh completes first.
    s.p1.answer(set('newer', '"F"'));
    (await s.bundles.nth(3, 'bundle fetch 3')).answer({ jwks: {}, etag: '"F"' });
    expect(await s.adopted.nth(2, 'adopted set 2')).toBe('newer');
    b2.answer(undefined);
    const p2 = await s.polls.nth(2, 'long-poll 2');
    expect({ adopted: s.adopted.items, revision: p2.arg }).toEqual({ adopted: ['first', 'newer'], revision: '"newer"' });
  });

  it('the other way round, a long-poll answered after the periodic fetch adopted a newer set: the fetched set stays', async () => {
    const s = await started();
    s.sync.wake();
    (await s.fetches.nth(2, 'fetch 2')).answer(set('newer'));
    expect(await s.adopted.nth(2, 'adopted set 2')).toBe('newer');
    s.p1.answer(set('older'));
    // Dropped; the next long-poll asks from the fetched set's revision.
    const p2 = await s.polls.nth(2, 'long-poll 2');
    expect({ adopted: s.adopted.items, revision: p2.arg, pushed: s.sync.pushedChanges() }).toEqual({ adopted: ['first', 'newer'], revision: '"newer"', pushed: 0 });
  });

  it('a fetch sent with no revision, for an agent ID replaced while it was pending, is fetched again for the new one', async () => {
    const s = await started();
    // A new agent ID: the revision is reset, and the cycle fetches the full set.
    s.newIdentity('spiffe://example.org/sigil/agent/join_token/b');
    const f2 = await s.fetches.nth(2, 'fetch 2');
    expect(f2.arg).toBeUndefined();
    // Replaced again (another re-attestation) while that fetch is pending: the revision is reset
    // again, to the same `undefined` the fetch was sent with.
    s.newIdentity('spiffe://example.org/sigil/agent/join_token/c');
    // The answer (for the previous agent ID) is not adopted; the full set is fetched again at once.
    f2.answer(set('for-b'));
    await settled();
    expect(s.adopted.items, 'sets adopted').toEqual(['first']);
    const f3 = await s.fetches.nth(3, 'fetch 3');
    expect(f3.arg).toBeUndefined();
    f3.answer(set('for-c'));
    // The long-poll held for the first agent ID is answered too late to count.
    s.p1.answer(set('stale-push'));
    const p2 = await s.polls.nth(2, 'long-poll 2');
    expect({ adopted: s.adopted.items, revision: p2.arg }).toEqual({ adopted: ['first', 'for-c'], revision: '"for-c"' });
  });
});
