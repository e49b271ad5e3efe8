/**
 * Each agent's authorized set (authorization.ts), kept in memory so that a sync that changed nothing
 * is a map lookup and an ETag comparison, and the long-poll of `GET /v1/entries/authorized?wait=N`
 * (docs/api.md) that hands an agent its new set as soon as it changes.
 *
 * A cached set is the answer for (agent ID, agent selectors) at an entries revision. It stays valid
 * while:
 *   - the agent's selectors are the same (a new attestation with other selectors recomputes it);
 *   - no entry it could depend on was created or deleted: the store's change feed
 *     (DataStore.watchEntries; on PostgreSQL the NOTIFY of every verifier's writes) says which
 *     parents and node-entry selectors each revision touched. A write under one of the set's parent
 *     IDs, or a node entry whose selectors are all among the agent's node selectors, makes it stale;
 *     so does any revision the feed did not describe (a gap: lost LISTEN connection, trimmed log,
 *     a write by another process) — correctness never depends on a notification arriving;
 *   - none of its entries (or matched node entries) has expired (`validUntil`).
 * The ETag is a hash of the set's content (entry IDs and their revisions, the node aliases), so it
 * is the same on every verifier and does not change when unrelated entries do.
 *
 * The agent record is not kept here: the route reads it (and its factors' bans) on every call,
 * through agent-records.ts, which keeps records only while the store reports every write of them.
 *
 * An eviction or ban answers the evicted agents' held long-polls with the refusal: the store's agent
 * feed (DataStore.watchAgents) reports this verifier's evictions at once and, on PostgreSQL, every
 * other verifier's by NOTIFY (agentChanged). When the feed may have missed some (the LISTEN
 * connection came back), every held long-poll is re-checked. If the feed is down, a held long-poll
 * still ends when its wait does (≤ `longPoll.maxWait`), and the next call is refused.
 *
 * A held long-poll that ends without a change is answered "unchanged" (304) only when the verifier
 * could tell: when a revision check failed to read the store during its wait, or at its end the last
 * check failed or none has completed for revisionCheckMs + feedGraceMs (the checks hang), it is
 * refused with `store.unavailable` (503) instead, and the agent's periodic sync takes over (and meets
 * the failure itself). A changed set is still handed out: it was read from the store.
 *
 * Long-poll waiters are bounded (`longPoll.maxWaiters` in total, `maxWaitersPerAgent` each) and are
 * re-evaluated first in, first out, at most EVAL_SLICE at once (started in one event-loop turn, side
 * by side), so a change that touches every agent does not starve the other routes, and a store read
 * that hangs holds up only its own waiter.
 */
import { createHash } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import type { AgentRecord, AgentsWatch, DataStore, EntriesChange, EntriesWatch, RegistrationEntry } from '../store/types.js';
import { KeySets } from '../util/key-sets.js';
import { authorizedEntries } from './authorization.js';
import { verifierId } from './entries.js';
import { NodeEntryIndex } from './node-entry-index.js';

export interface LongPollLimits {
  /** Longest wait granted, seconds (a request asking more gets this). */
  maxWaitSeconds: number;
  /** Long-polls held at once by this verifier; 0 turns long-poll off. */
  maxWaiters: number;
  /** Long-polls held at once per agent ID. */
  maxWaitersPerAgent: number;
}

export const LONG_POLL_DEFAULTS: LongPollLimits = { maxWaitSeconds: 20, maxWaiters: 50_000, maxWaitersPerAgent: 2 };

/** Agents whose sets are kept (least recently used beyond that are dropped). */
export const CACHE_MAX_AGENTS = 200_000;
/** Entry changes remembered; a set older than the oldest is recomputed. */
export const CHANGE_LOG_MAX = 8192;
/** Waiters re-evaluated at once (at most this many started per event-loop turn). */
export const EVAL_SLICE = 32;
/** How often the store revision is read to catch writes the change feed did not report, ms. */
export const REVISION_CHECK_MS = 1000;
/**
 * How long the store revision may stay ahead of the change feed's before the feed is taken to have
 * lost writes, ms (notifications in flight take milliseconds). With REVISION_CHECK_MS this bounds
 * how stale a served set can be: another verifier's committed write is seen by a check within
 * REVISION_CHECK_MS and, if the feed never reports it, acted on by the first check FEED_GRACE_MS
 * after that one — within 2 × REVISION_CHECK_MS + FEED_GRACE_MS (4 s) plus one revision read.
 */
export const FEED_GRACE_MS = 2000;
/** Parent IDs whose children are kept (beyond that the children cache starts afresh). */
export const CHILDREN_MAX = 500_000;
/** Parents whose dropped children lists are kept for reuse by the next read of those parents. */
export const RETIRED_MAX = 4096;
/** Unreadable store notifications are logged at most once per this many ms (with a count). */
export const BAD_NOTICE_LOG_MS = 10_000;

export interface AuthorizedSet {
  agentId: string;
  selectorsKey: string;
  /** Entries revision at which the set is known to be current. */
  revision: number;
  parentIds: Set<string>;
  nodeSelectors: Set<string>;
  nodeEntries: RegistrationEntry[];
  entries: RegistrationEntry[];
  /** Content hash, sent as ETag and `revision`. */
  etag: string;
  /** Epoch ms at which the first of its entries (or node entries) expires; Infinity if none does. */
  validUntil: number;
}

/** The revision check's timing (tests shorten it) and where a feed found behind is reported. */
export interface RevisionCheckOptions {
  /** Default REVISION_CHECK_MS. */
  revisionCheckMs?: number;
  /** Default FEED_GRACE_MS. */
  feedGraceMs?: number;
  /** Told when the change feed was found to have lost writes (at most one line per BAD_NOTICE_LOG_MS, with a count). */
  feedBehind?: (detail: string, times: number) => void;
}

export interface CacheStats {
  hits: number;
  revalidated: number;
  computed: number;
  waiters: number;
  /** Sets filed in the long-poll index (held by a long-poll, or an idle agent's cached set that was). */
  filed: number;
}

interface Waiter {
  /** Arrival order: waiters a change touches are re-evaluated in this order. */
  seq: number;
  agent: AgentRecord;
  etag: string;
  set: AuthorizedSet;
  /** The filed set this waiter is a holder of (`set`, once filed). */
  indexed: AuthorizedSet | undefined;
  /** The cache's gap count when `set` was last checked against the whole change log. */
  gaps: number;
  /** The cache's count of failed revision checks when the wait began. */
  readFailures: number;
  deadline: number;
  timer: NodeJS.Timeout | undefined;
  queued: boolean;
  /** Queued because a change touches `set`: no need to walk the change log to find that out again. */
  stale: boolean;
  /** Being re-evaluated (reevaluate is reading the agent record or the set): `set` may be behind. */
  busy: boolean;
  done: boolean;
  finish: (r: { set?: AuthorizedSet; error?: unknown }) => void;
  /** Reads the agent record again (bans, evictions) before a new set is handed out. */
  recheck: () => Promise<AgentRecord>;
}

function selectorsKey(agent: AgentRecord): string {
  // JSON, not a join: no selector value can make two different selector lists one key.
  return JSON.stringify(agent.selectors);
}

/** The start of every 200 answer's body (ASCII). */
const BODY_HEAD = '{"entries":[';

/** The children list of a parent that has none, shared (frozen: nothing appends to a cached list). */
const NO_CHILDREN: RegistrationEntry[] = Object.freeze([]) as unknown as RegistrationEntry[];

/**
 * The same text as one flat string. V8 builds long results (JSON.stringify's, a slice) as trees of
 * parts or as views into a larger string; kept for every entry that costs about a third more memory
 * (issue 15). A copy through UTF-8 is exact for any well-formed string (JSON.stringify escapes lone
 * surrogates; an ETag is base64url).
 */
function flat(s: string): string {
  return Buffer.from(s, 'utf8').toString('utf8');
}

function earliestExpiry(es: RegistrationEntry[], from: number): number {
  let t = from;
  for (const e of es) if (e.expiresAt !== null) t = Math.min(t, Date.parse(e.expiresAt));
  return t;
}

export class AuthorizedSetCache {
  private readonly sets = new Map<string, AuthorizedSet>();
  private readonly log: EntriesChange[] = [];
  private readonly vid: string;
  private readonly trustDomain: string;
  private readonly watch: EntriesWatch;
  private readonly agentsWatch: AgentsWatch;
  /** Unreadable agent notifications not yet logged (at most one line per BAD_NOTICE_LOG_MS). */
  private badNotices = 0;
  private badNoticeLoggedAt = -Infinity;
  private readonly waiters = new Set<Waiter>();
  /**
   * Sets held by long-polls, by their parent IDs and node selectors, so that a change finds the
   * waiters it touches without testing every one (issue 15: 50 changes/s against 10,000 held
   * long-polls was half a million tests a second). Sets are filed rather than waiters: an agent's
   * next long-poll holds the same set as its last (every 20 s), and filing the waiter anew each time
   * was ~12 map insertions and deletions per long-poll (in a sampled heap profile at 10,000 agents,
   * up to 28 % of what survived scavenges; docs/benchmarks.md). A set stays filed while a long-poll holds it or while it is its agent's cached
   * set (`filed`: its holders, possibly none); it is taken out when neither holds.
   */
  private readonly setsByParent = new KeySets<AuthorizedSet>();
  private readonly setsByNodeSelector = new KeySets<AuthorizedSet>();
  private readonly filed = new Map<AuthorizedSet, Set<Waiter>>();
  private waiterSeq = 0;
  /** Changes that left revisions undescribed (or described no entries), counted; see Waiter.gaps. */
  private gaps = 0;
  /** The node entries (children of the verifier's ID) by selector, for the list cached in `children`. */
  private nodeIndex: NodeEntryIndex | undefined;
  private readonly waitersPerAgent = new Map<string, number>();
  private readonly queue: Waiter[] = [];
  /** Re-evaluations under way (pump). */
  private inFlight = 0;
  private pumpScheduled = false;
  private readonly checker: NodeJS.Timeout;
  /** A revision check is reading the store revision (checks do not overlap). */
  private checking = false;
  /** When the last revision check that completed began (Date.now()). */
  private checkedAt = Date.now();
  /** Revision checks that could not read the store, counted: a long-poll held across one cannot be answered "unchanged". */
  private readFailures = 0;
  /** Why the last revision check could not read the store, while none has succeeded since. */
  private readFailure: unknown = undefined;
  /** How long after the last completed revision check the change feed is believed: revisionCheckMs + feedGraceMs. */
  private readonly trustMs: number;
  /** The first revision check that found the store ahead of the change feed, while the feed has not caught up with what it found. */
  private feedLag: { rev: number; since: number } | undefined;
  /** The store revision when the change feed was last found to have lost writes: the current revision is never taken to be less. */
  private floor = -1;
  private readonly feedGraceMs: number;
  private readonly feedBehind: (detail: string, times: number) => void;
  /** Feeds found behind not yet logged (at most one line per BAD_NOTICE_LOG_MS). */
  private feedBehinds = 0;
  private feedBehindLoggedAt = -Infinity;
  private closed = false;
  private readonly stats: CacheStats = { hits: 0, revalidated: 0, computed: 0, waiters: 0, filed: 0 };
  /**
   * Entries by parent ID, shared by every agent's computation (agents of one node alias share its
   * children): dropped for a parent when the change feed reports a write under it, and altogether on
   * a gap in the feed. `epoch` counts those drops, so a read that raced one is not stored.
   */
  private readonly children = new Map<string, RegistrationEntry[]>();
  /**
   * A parent's children list dropped by a reported write, until the parent is read again: the read
   * hands back the old object of every entry still there (entries are never changed in place, so an
   * equal ID and revision number is an equal entry). One write under a parent with 50 children then
   * makes one new entry object, not 50 that replace long-lived ones (and their JSON made again):
   * at 50 changes/s that churn was old-generation garbage the collector had to copy and sweep.
   */
  private readonly retired = new Map<string, RegistrationEntry[]>();
  private epoch = 0;
  /** The JSON text of each entry, made once per entry object. */
  private readonly entryJson = new WeakMap<RegistrationEntry, string>();
  /**
   * What each entry adds to the ETag hash (`<prefix><id>:<revisionNumber>`), made once per entry
   * object (entries are never changed in place) rather than once per computation: those strings were
   * the largest single part of the verifier's allocation at 10,000 agents.
   */
  private readonly nodeTags = new WeakMap<RegistrationEntry, string>();
  private readonly entryTags = new WeakMap<RegistrationEntry, string>();

  constructor(
    private readonly store: DataStore,
    trustDomain: string,
    private readonly now: () => Date,
    readonly limits: LongPollLimits = LONG_POLL_DEFAULTS,
    /** Told about unreadable notifications from the store (they are ignored). */
    private readonly warn: (detail: string, ignored: number) => void = () => undefined,
    opts: RevisionCheckOptions = {},
  ) {
    this.feedGraceMs = opts.feedGraceMs ?? FEED_GRACE_MS;
    this.feedBehind = opts.feedBehind ?? (() => undefined);
    const checkMs = opts.revisionCheckMs ?? REVISION_CHECK_MS;
    this.trustMs = checkMs + this.feedGraceMs;
    this.vid = verifierId(trustDomain);
    this.trustDomain = trustDomain;
    this.watch = store.watchEntries(
      (c) => this.onChange(c),
      (detail) => this.badNotice(detail),
    );
    this.agentsWatch = store.watchAgents({
      changed: (id) => void this.agentChanged(id),
      missed: () => void this.everyAgentChanged(),
      invalid: (detail) => this.badNotice(detail),
    });
    this.checker = setInterval(() => void this.checkRevision(), checkMs);
    this.checker.unref();
  }

  counters(): CacheStats {
    return { ...this.stats, waiters: this.waiters.size, filed: this.filed.size };
  }

  private lastLogged(): number | undefined {
    return this.log.length > 0 ? (this.log[this.log.length - 1] as EntriesChange).toRevision : undefined;
  }

  private onChange(c: EntriesChange): void {
    const last = this.lastLogged();
    let gap = c.entries === null;
    if (last !== undefined && c.toRevision <= last) {
      // Reported before (this process at once, its NOTIFY later), or another verifier's write
      // whose notification came after a later write's report: that one still changes sets.
      if (!this.logLate(c)) return;
    } else {
      if (c.fromRevision > (last ?? this.unreported)) gap = true;
      this.log.push(c);
      if (this.log.length > CHANGE_LOG_MAX) this.log.splice(0, this.log.length - CHANGE_LOG_MAX);
    }
    this.epoch++;
    if (gap) {
      this.gaps++;
      this.children.clear();
    } else for (const e of c.entries as NonNullable<EntriesChange['entries']>) this.retire(e.parentId);
    for (const w of this.touchedWaiters(c)) this.enqueue(w, true);
  }

  /** Puts a change older than the newest logged in its place; false if it is logged already (the same write). */
  private logLate(c: EntriesChange): boolean {
    let lo = 0;
    let hi = this.log.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.log[mid] as EntriesChange).toRevision < c.toRevision) lo = mid + 1;
      else hi = mid;
    }
    // Revisions are unique to one write, so the same last revision is the same write.
    if (lo < this.log.length && (this.log[lo] as EntriesChange).toRevision === c.toRevision) return false;
    this.log.splice(lo, 0, c);
    if (this.log.length > CHANGE_LOG_MAX) this.log.splice(0, this.log.length - CHANGE_LOG_MAX);
    return true;
  }

  /**
   * The held long-polls whose sets `c` may change, in arrival order: those filed under a written
   * entry's parent ID, and for a node entry those whose node selectors include all of its selectors
   * (looked up under the one fewest waiters carry). A change the feed did not describe, or a node
   * entry without selectors, touches all.
   */
  private touchedWaiters(c: EntriesChange): Waiter[] {
    if (c.entries === null) return [...this.waiters];
    const found = new Set<Waiter>();
    const holders = (s: AuthorizedSet): void => {
      const h = this.filed.get(s);
      if (h !== undefined) for (const w of h) found.add(w);
    };
    for (const e of c.entries) {
      if (e.parentId !== this.vid) {
        this.setsByParent.forEach(e.parentId, holders);
        continue;
      }
      if (e.selectors.length === 0) return [...this.waiters];
      let rarest = e.selectors[0] as string;
      for (const x of e.selectors) if (this.setsByNodeSelector.count(x) < this.setsByNodeSelector.count(rarest)) rarest = x;
      this.setsByNodeSelector.forEach(rarest, (s) => {
        if (e.selectors.every((x) => s.nodeSelectors.has(x))) holders(s);
      });
    }
    return [...found].sort((a, b) => a.seq - b.seq);
  }

  /** Make `w` a holder of its current set, filing the set under its parent IDs and node selectors if it is not filed (and out of its previous set). */
  private index(w: Waiter): void {
    if (w.indexed === w.set) return;
    this.unindex(w);
    const s = w.set;
    let h = this.filed.get(s);
    if (h === undefined) {
      h = new Set();
      this.filed.set(s, h);
      for (const p of s.parentIds) this.setsByParent.add(p, s);
      for (const x of s.nodeSelectors) this.setsByNodeSelector.add(x, s);
    }
    h.add(w);
    w.indexed = s;
  }

  private unindex(w: Waiter): void {
    const s = w.indexed;
    if (s === undefined) return;
    w.indexed = undefined;
    this.filed.get(s)?.delete(w);
    this.unfileIfIdle(s);
  }

  /** Take `s` out of the index when no long-poll holds it and it is not its agent's cached set. */
  private unfileIfIdle(s: AuthorizedSet): void {
    const h = this.filed.get(s);
    if (h === undefined || h.size > 0 || this.sets.get(s.agentId) === s) return;
    this.filed.delete(s);
    for (const p of s.parentIds) this.setsByParent.delete(p, s);
    for (const x of s.nodeSelectors) this.setsByNodeSelector.delete(x, s);
  }

  /** Drop the agent's cached set (its record went away, it was evicted, or the cache is full). */
  private dropSet(agentId: string): void {
    const s = this.sets.get(agentId);
    if (s === undefined) return;
    this.sets.delete(agentId);
    this.unfileIfIdle(s);
  }

  /**
   * The store revision against what the change feed reported, every REVISION_CHECK_MS whether or not
   * long-polls are held. While the feed is down (get() reads the store revision then), held
   * long-polls whose sets are behind it are re-evaluated. While it is up, the store may be ahead by
   * the notifications in flight; still ahead of what a check found FEED_GRACE_MS earlier, the feed
   * has lost writes (a half-open LISTEN connection, a notification dropped as unreadable): feedMissed.
   */
  private async checkRevision(): Promise<void> {
    if (this.closed || this.checking) return;
    // Without a feed and without held long-polls there is nothing to check: get() reads the revision.
    if (this.waiters.size === 0 && this.watch.currentRevision() === undefined) {
      this.feedLag = undefined;
      this.checkedAt = Date.now();
      return;
    }
    this.checking = true;
    const started = Date.now();
    let rev: number;
    try {
      rev = await this.store.entriesRevision();
    } catch (e) {
      this.readFailures++;
      this.readFailure = e;
      return;
    } finally {
      this.checking = false;
    }
    if (this.closed) return;
    this.checkedAt = started;
    this.readFailure = undefined;
    // Read after the revision: a notification that arrived meanwhile counts.
    const fed = this.watch.currentRevision();
    if (fed === undefined) {
      this.feedLag = undefined;
      const last = this.lastLogged();
      if (last !== undefined && rev <= last) return;
      for (const w of this.waiters) if (w.set.revision < rev && !w.queued) this.enqueue(w);
      return;
    }
    if (rev <= fed) this.feedLag = undefined;
    else if (this.feedLag === undefined || fed >= this.feedLag.rev) this.feedLag = { rev, since: started };
    else if (started - this.feedLag.since >= this.feedGraceMs) this.feedMissed(rev, fed, started - this.feedLag.since);
  }

  /**
   * The change feed lost writes up to `rev`: as for any revision the feed did not describe, the
   * children cache starts afresh and no set is current through the change log; the current revision
   * is never taken below `rev` again; the store opens its feed again (until it is back, get() reads
   * the revision); held long-polls behind `rev` are re-evaluated.
   */
  private feedMissed(rev: number, fed: number, ms: number): void {
    this.feedLag = undefined;
    this.floor = Math.max(this.floor, rev);
    this.unreported = Math.max(this.unreported, rev);
    this.epoch++;
    this.gaps++;
    this.children.clear();
    this.watch.behind?.();
    for (const w of this.waiters) if (w.set.revision < rev) this.enqueue(w);
    this.feedBehinds++;
    const t = Date.now();
    if (t - this.feedBehindLoggedAt < BAD_NOTICE_LOG_MS) return;
    this.feedBehindLoggedAt = t;
    const n = this.feedBehinds;
    this.feedBehinds = 0;
    this.feedBehind(`the store is at entries revision ${rev} but its change feed reported writes only up to ${fed} for ${ms} ms: writes were not notified; reading the revision from the store until the feed is open again`, n);
  }

  private affects(c: EntriesChange, s: AuthorizedSet): boolean {
    if (c.entries === null) return true;
    for (const e of c.entries) {
      if (e.parentId === this.vid) {
        if (e.selectors.every((x) => s.nodeSelectors.has(x))) return true;
      } else if (s.parentIds.has(e.parentId)) return true;
    }
    return false;
  }

  /** Whether the change log shows nothing that touches `s` in (s.revision, rev]; false on any gap. */
  private unchangedThrough(s: AuthorizedSet, rev: number): boolean {
    let covered = s.revision;
    // First change ending after `covered` (the log is ordered by toRevision).
    let lo = 0;
    let hi = this.log.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.log[mid] as EntriesChange).toRevision <= covered) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.log.length && covered < rev; i++) {
      const c = this.log[i] as EntriesChange;
      if (c.fromRevision > covered) return false;
      if (this.affects(c, s)) return false;
      covered = Math.max(covered, c.toRevision);
    }
    return covered >= rev;
  }

  /** The current entries revision: from the feed at once while it is believed, else read from the store. */
  private currentRevision(): number | Promise<number> {
    // The feed is believed only while revision checks complete: one that hangs (the store slow or
    // out of reach) cannot find the feed behind, so past trustMs the revision is read here instead.
    const fed = Date.now() - this.checkedAt <= this.trustMs ? this.watch.currentRevision() : undefined;
    // This process's own writes are reported at once, their NOTIFY may still be on its way; a feed
    // found to have lost writes is not believed below the revision it had missed.
    if (fed !== undefined) return this.noteRevision(Math.max(fed, this.lastLogged() ?? fed, this.floor));
    return this.store.entriesRevision().then((rev) => this.noteRevision(rev));
  }

  /** `rev` is current: past every revision the change log describes, the children cache starts afresh. */
  private noteRevision(rev: number): number {
    const last = this.lastLogged();
    // Once per such revision (not on every call while the log stays behind it).
    if (rev > Math.max(last ?? -1, this.unreported)) {
      // Writes the feed did not describe: nothing cached about children can be trusted.
      this.unreported = rev;
      this.epoch++;
      this.children.clear();
    }
    return rev;
  }

  /** Highest revision seen without a change-feed entry (children cache cleared at it). */
  private unreported = -1;

  /**
   * The node entries that could match `nodeSelectors` (authorization.ts checks them), from the index
   * of the cached node-entry list; the list is read first when it is not cached. A read that raced a
   * write is not cached (childrenOf): then all it returned are candidates.
   */
  private async nodeEntryCandidates(nodeSelectors: ReadonlySet<string>): Promise<readonly RegistrationEntry[]> {
    let list = this.children.get(this.vid);
    if (list === undefined) {
      const read = await this.childrenOf([this.vid]);
      list = this.children.get(this.vid);
      if (list === undefined) return read;
    }
    if (this.nodeIndex?.entries !== list) this.nodeIndex = new NodeEntryIndex(list);
    return this.nodeIndex.candidates(nodeSelectors);
  }

  /** Drop a parent's children (a write under it was reported), kept for reuse by its next read. */
  private retire(parentId: string): void {
    const old = this.children.get(parentId);
    if (old === undefined) return;
    this.children.delete(parentId);
    if (old.length === 0) return;
    if (this.retired.size >= RETIRED_MAX && !this.retired.has(parentId)) this.retired.clear();
    this.retired.set(parentId, old);
  }

  /** The entries of a read, with the objects of its parents' retired lists where the entry is the same. */
  private reuseRetired(read: RegistrationEntry[], parents: readonly string[]): RegistrationEntry[] {
    if (this.retired.size === 0) return read;
    let byId: Map<string, RegistrationEntry> | undefined;
    for (const p of parents) {
      const old = this.retired.get(p);
      if (old === undefined) continue;
      this.retired.delete(p);
      byId ??= new Map();
      for (const e of old) byId.set(e.id, e);
    }
    if (byId === undefined) return read;
    return read.map((e) => {
      const o = byId.get(e.id);
      return o !== undefined && o.revisionNumber === e.revisionNumber && o.parentId === e.parentId ? o : e;
    });
  }

  /**
   * Reads of parents' children in flight, by parent ID, with the epoch each started in. A caller in
   * the same epoch waits for that read instead of reading the same rows again: each read makes its own
   * entry objects, and sets computed side by side (long-polls re-evaluated at once after a change under
   * a shared alias) would otherwise each hold their own copies until the next change. Safe as the
   * children cache is: a write reported, or a revision the feed did not describe, starts a new epoch.
   */
  private readonly reading = new Map<string, { epoch: number; read: Promise<Map<string, RegistrationEntry[]>> }>();

  /** entriesByParents through the shared children cache (and the reads in flight). */
  private async childrenOf(ids: string[]): Promise<RegistrationEntry[]> {
    const out: RegistrationEntry[] = [];
    const missing: string[] = [];
    let joined: { id: string; read: Promise<Map<string, RegistrationEntry[]>> }[] | undefined;
    for (const id of ids) {
      const c = this.children.get(id);
      if (c) {
        for (let i = 0; i < c.length; i++) out.push(c[i] as RegistrationEntry);
        continue;
      }
      const r = this.reading.get(id);
      if (r !== undefined && r.epoch === this.epoch) (joined ??= []).push({ id, read: r.read });
      else missing.push(id);
    }
    if (missing.length > 0) {
      const epoch = this.epoch;
      const read = this.readChildren(missing, epoch);
      for (const id of missing) this.reading.set(id, { epoch, read });
      let byParent: Map<string, RegistrationEntry[]>;
      try {
        byParent = await read;
      } finally {
        for (const id of missing) if (this.reading.get(id)?.read === read) this.reading.delete(id);
      }
      for (const id of missing) {
        const es = byParent.get(id) ?? NO_CHILDREN;
        for (let i = 0; i < es.length; i++) out.push(es[i] as RegistrationEntry);
      }
    }
    if (joined !== undefined) for (const j of joined) for (const e of (await j.read).get(j.id) ?? []) out.push(e);
    return out;
  }

  /** One entriesByParents read, by parent; stored in the children cache if no write was reported meanwhile. */
  private async readChildren(missing: string[], epoch: number): Promise<Map<string, RegistrationEntry[]>> {
    const read = this.reuseRetired(await this.store.entriesByParents(missing), missing);
    const byParent = new Map<string, RegistrationEntry[]>(missing.map((id) => [id, []]));
    for (const e of read) byParent.get(e.parentId)?.push(e);
    // Stored only if no write was reported meanwhile (the read may predate it).
    if (epoch === this.epoch) {
      if (this.children.size + byParent.size > CHILDREN_MAX) this.children.clear();
      // Most IDs asked about (the SPIFFE IDs of authorized entries) have no children: one shared empty list.
      for (const [id, es] of byParent) this.children.set(id, es.length === 0 ? NO_CHILDREN : es);
    }
    return byParent;
  }

  private tag(e: RegistrationEntry, memo: WeakMap<RegistrationEntry, string>, prefix: string): string {
    let t = memo.get(e);
    if (t === undefined) {
      t = flat(`${prefix}${e.id}:${e.revisionNumber}`);
      memo.set(e, t);
    }
    return t;
  }

  private json(e: RegistrationEntry): string {
    let t = this.entryJson.get(e);
    if (t === undefined) {
      t = flat(JSON.stringify(e));
      this.entryJson.set(e, t);
    }
    return t;
  }

  /**
   * The 200 answer for `s`, as bytes. Made when asked (a changed set, a first sync), not kept with
   * the set: at 100,000 entries each agent's text is 20–250 KB, which for every cached agent would be
   * most of the verifier's memory; the entries' own JSON is made once per entry and shared by every
   * set. The entries' texts are written straight into one buffer outside the V8 heap: built as one
   * string, each answer made a long string to flatten and a second copy to encode on its way out,
   * about a quarter of the verifier's young-generation allocation at 10,000 agents (issue 15).
   */
  body(s: AuthorizedSet): Buffer {
    const n = s.entries.length;
    const texts = new Array<string>(n);
    const tail = `],"revision":${JSON.stringify(s.etag)}}`;
    let len = BODY_HEAD.length + Buffer.byteLength(tail, 'utf8') + (n > 0 ? n - 1 : 0);
    for (let i = 0; i < n; i++) {
      const t = this.json(s.entries[i] as RegistrationEntry);
      texts[i] = t;
      len += Buffer.byteLength(t, 'utf8');
    }
    const out = Buffer.allocUnsafeSlow(len);
    let at = out.write(BODY_HEAD, 0, 'latin1');
    for (let i = 0; i < n; i++) {
      if (i > 0) out[at++] = 0x2c; // ','
      at += out.write(texts[i] as string, at, 'utf8');
    }
    at += out.write(tail, at, 'utf8');
    if (at !== len) throw new Error(`authorized-set answer: wrote ${at} bytes of ${len}`);
    return out;
  }

  /** The agent's authorized set, from the cache when it is still current. */
  async get(agent: AgentRecord, knownStale?: AuthorizedSet): Promise<AuthorizedSet> {
    // Most calls know the revision at once (the feed): no promise to wait for then.
    const r = this.currentRevision();
    const rev = typeof r === 'number' ? r : await r;
    const now = this.now().getTime();
    const key = selectorsKey(agent);
    const c = this.sets.get(agent.id);
    if (c && c.selectorsKey === key && now < c.validUntil) {
      if (c !== knownStale && c.revision >= rev) {
        this.stats.hits++;
        this.touch(c);
        return c;
      }
      // A set a reported change touches is not walked to the change again (a long-poll's set may be
      // ~1,000 changes behind when one touches it).
      if (c !== knownStale && this.unchangedThrough(c, rev)) {
        this.stats.revalidated++;
        c.revision = rev;
        this.touch(c);
        return c;
      }
    }
    return this.compute(agent, rev, now);
  }

  private touch(s: AuthorizedSet): void {
    this.sets.delete(s.agentId);
    this.sets.set(s.agentId, s);
  }

  private async compute(agent: AgentRecord, rev: number, now: number): Promise<AuthorizedSet> {
    this.stats.computed++;
    const a = await authorizedEntries(
      { entriesByParents: (ids) => this.childrenOf(ids), nodeEntryCandidates: (sel) => this.nodeEntryCandidates(sel) },
      this.trustDomain,
      agent.id,
      agent.selectors,
      new Date(now),
    );
    const h = createHash('sha256').update(agent.id);
    const nodes = a.nodeEntries.length > 1 ? [...a.nodeEntries].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0)) : a.nodeEntries;
    for (let i = 0; i < nodes.length; i++) h.update(this.tag(nodes[i] as RegistrationEntry, this.nodeTags, '\nn:'));
    for (let i = 0; i < a.entries.length; i++) h.update(this.tag(a.entries[i] as RegistrationEntry, this.entryTags, '\ne:'));
    const etag = flat(h.digest('base64url').slice(0, 22));
    const s: AuthorizedSet = {
      agentId: agent.id,
      selectorsKey: selectorsKey(agent),
      revision: rev,
      parentIds: a.parentIds,
      nodeSelectors: a.nodeSelectors,
      nodeEntries: a.nodeEntries,
      entries: a.entries,
      etag,
      validUntil: earliestExpiry(a.entries, earliestExpiry(a.nodeEntries, Infinity)),
    };
    const prev = this.sets.get(agent.id);
    // A slower computation that started earlier must not replace a newer one.
    if (!prev || prev.revision <= rev) {
      this.sets.delete(agent.id);
      this.sets.set(agent.id, s);
      if (prev !== undefined) this.unfileIfIdle(prev);
      if (this.sets.size > CACHE_MAX_AGENTS) this.dropSet(this.sets.keys().next().value as string);
    }
    return s;
  }

  /** Forget an agent's set (its record went away). */
  forget(agentId: string): void {
    this.dropSet(agentId);
  }

  /**
   * An agent record was evicted or banned (on any verifier sharing the store): every long-poll held
   * by that agent, or by an agent that attested with it as a factor, is re-evaluated now (its recheck
   * refuses it, so the agent learns at once instead of when its wait is over). Returns how many were
   * re-evaluated.
   */
  agentChanged(agentId: string): number {
    this.dropSet(agentId);
    let n = 0;
    for (const w of this.waiters) {
      if (w.agent.id === agentId || w.agent.factorIds.includes(agentId)) {
        this.enqueue(w);
        n++;
      }
    }
    return n;
  }

  /** Agent changes may have been missed: every held long-poll is re-evaluated. Returns how many. */
  everyAgentChanged(): number {
    for (const w of this.waiters) this.enqueue(w);
    return this.waiters.size;
  }

  /** Report an unreadable notification, at most one line per BAD_NOTICE_LOG_MS (with the count since the last). */
  private badNotice(detail: string): void {
    this.badNotices++;
    const t = Date.now();
    if (t - this.badNoticeLoggedAt < BAD_NOTICE_LOG_MS) return;
    this.badNoticeLoggedAt = t;
    const n = this.badNotices;
    this.badNotices = 0;
    this.warn(detail, n);
  }

  /**
   * Hold the caller until its authorized set differs from `etag` (resolves with the new set) or
   * `waitMs` passes (resolves undefined). `recheck` reads the agent record again before a new set is
   * handed out and throws its refusal (evicted, banned). Refused when the caps are reached.
   */
  waitForChange(agent: AgentRecord, current: AuthorizedSet, waitMs: number, recheck: () => Promise<AgentRecord>, onCancel: (cancel: () => void) => void): Promise<AuthorizedSet | undefined> {
    if (this.closed) return Promise.resolve(undefined);
    const { maxWaiters, maxWaitersPerAgent } = this.limits;
    if (maxWaiters === 0) throw new SigilError('entries.long_poll_disabled', 'this verifier does not hold long-polls (longPoll.maxWaiters is 0); poll without ?wait', { status: 503 });
    const mine = this.waitersPerAgent.get(agent.id) ?? 0;
    if (mine >= maxWaitersPerAgent) {
      throw new SigilError('entries.agent_wait_limit', `${agent.id} already holds ${mine} long-polls (longPoll.maxWaitersPerAgent ${maxWaitersPerAgent}); poll without ?wait or wait for one to end`, { status: 429 });
    }
    if (this.waiters.size >= maxWaiters) {
      throw new SigilError('entries.wait_limit', `this verifier holds ${this.waiters.size} long-polls (longPoll.maxWaiters ${maxWaiters}); poll without ?wait and try again later`, { status: 503 });
    }
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        seq: this.waiterSeq++,
        agent,
        etag: current.etag,
        set: current,
        indexed: undefined,
        gaps: 0,
        readFailures: this.readFailures,
        // The wait is measured on the real clock; entry expiry on the verifier's (injectable) one.
        deadline: Date.now() + waitMs,
        timer: undefined,
        queued: false,
        stale: false,
        busy: false,
        done: false,
        recheck,
        finish: (r) => {
          if (w.done) return;
          w.done = true;
          clearTimeout(w.timer);
          this.waiters.delete(w);
          this.unindex(w);
          const n = (this.waitersPerAgent.get(agent.id) ?? 1) - 1;
          if (n > 0) this.waitersPerAgent.set(agent.id, n);
          else this.waitersPerAgent.delete(agent.id);
          if (r.error !== undefined) reject(r.error);
          else resolve(r.set);
        },
      };
      this.waiters.add(w);
      this.index(w);
      this.waitersPerAgent.set(agent.id, mine + 1);
      this.arm(w);
      this.checkHeld(w);
      onCancel(() => w.finish({}));
    });
  }

  /**
   * Timer to the deadline, or earlier to the set's first expiry (then re-evaluated, with a timer to
   * the deadline while that runs). A waiter always has a timer that ends it at its deadline at the
   * latest, also while a re-evaluation of it waits on the store (a read that hangs must not hold the
   * long-poll past its wait: at the deadline it is answered, refused with `store.unavailable` when
   * the store could not be read). The deadline timer ends the waiter whatever Date.now() says when
   * it fires: Node arms a timer from the event loop's cached clock, so it can fire a few ms before
   * Date.now() reaches the deadline, and a waiter re-evaluated then could wait on a hung read.
   */
  private arm(w: Waiter): void {
    clearTimeout(w.timer);
    const toDeadline = w.deadline - Date.now();
    const toExpiry = w.set.validUntil - this.now().getTime();
    if (toDeadline <= toExpiry) {
      this.armDeadline(w, toDeadline);
      return;
    }
    w.timer = setTimeout(() => {
      if (w.done) return;
      if (Date.now() >= w.deadline) {
        this.endUnchanged(w);
        return;
      }
      this.armDeadline(w, w.deadline - Date.now());
      this.enqueue(w);
    }, Math.max(0, Math.min(toExpiry, 2 ** 31 - 1)));
  }

  /** The timer that ends `w` at its deadline (unchanged, or refused when the store could not be read: endUnchanged). */
  private armDeadline(w: Waiter, delay: number): void {
    clearTimeout(w.timer);
    w.timer = setTimeout(() => {
      if (!w.done) this.endUnchanged(w);
    }, Math.max(0, Math.min(delay, 2 ** 31 - 1)));
  }

  /**
   * A set just held may already be behind: changes reported while it was computed (or while the
   * waiter was re-evaluated) were examined before the waiter was filed under it. Those are checked
   * now, and a change that touches it re-evaluates the waiter at once.
   */
  private checkHeld(w: Waiter): void {
    w.gaps = this.gaps;
    // A set made before the feed was found to have lost writes is re-evaluated (get() goes past them).
    if (w.set.revision < this.floor) {
      this.enqueue(w);
      return;
    }
    const last = this.lastLogged();
    if (last !== undefined && w.set.revision < last && !this.unchangedThrough(w.set, last)) this.enqueue(w, true);
  }

  /** End `w` without a change (its deadline, shutdown): unchanged, or refused when the verifier could not tell. */
  private endUnchanged(w: Waiter): void {
    const blind = this.blindness(w);
    if (blind !== undefined) {
      w.finish({ error: blind });
      return;
    }
    this.heldThrough(w);
    w.finish({});
  }

  /**
   * Why "unchanged" cannot be said to `w` now, or undefined when it can: a revision check could not
   * read the store during its wait, or the store cannot be read now (the last check failed, or none
   * has completed within trustMs — they hang). Changes the feed missed meanwhile would not have been
   * found (the revision check is what finds them).
   */
  private blindness(w: Waiter): SigilError | undefined {
    const since = Date.now() - this.checkedAt;
    const failures = this.readFailures - w.readFailures;
    let why: string;
    if (this.readFailure !== undefined) why = `the datastore cannot be read (the last revision read failed: ${errorMessage(this.readFailure)})`;
    else if (failures > 0) why = `the datastore could not be read for part of this long-poll's wait (${failures} failed revision ${failures === 1 ? 'read' : 'reads'})`;
    else if (since > this.trustMs) why = `no read of the datastore has completed for ${since} ms`;
    else return undefined;
    return new SigilError('store.unavailable', `${why}, so whether the authorized set changed is not known; sync without wait`, { status: 503, cause: this.readFailure });
  }

  /**
   * A long-poll ends at its deadline without a change: every change logged since its set was checked
   * was examined against it through the index and touched it not, so the set is current through the
   * newest logged revision — recorded, so the agent's next call is a lookup rather than a walk over
   * every change of the wait (~1,000 at 50 changes/s and 20 s). Not across a gap in the feed, nor
   * while the waiter is queued for or in re-evaluation (a change touched it).
   */
  private heldThrough(w: Waiter): void {
    const last = this.lastLogged();
    if (w.queued || w.busy || w.stale || w.gaps !== this.gaps || last === undefined) return;
    if (w.set.revision < last) w.set.revision = last;
  }

  /** Queue `w` for re-evaluation; `stale`: a reported change touches its set. */
  private enqueue(w: Waiter, stale = false): void {
    if (w.done) return;
    if (stale) w.stale = true;
    if (w.queued) return;
    w.queued = true;
    // Being re-evaluated: queued again when that ends (idle), never two re-evaluations of one waiter at once.
    if (w.busy) return;
    this.queue.push(w);
    this.schedulePump();
  }

  private schedulePump(): void {
    if (this.pumpScheduled || this.closed) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /**
   * Start re-evaluations of queued waiters in arrival order, up to EVAL_SLICE in flight, started
   * in one event-loop turn at most. They run side by side: a store read that hangs (PostgreSQL out of
   * reach, a lock) holds its own waiter and one slot, not every waiter queued behind it.
   */
  private pump(): void {
    const room = EVAL_SLICE - this.inFlight;
    if (room <= 0 || this.closed) return;
    for (const w of this.queue.splice(0, room)) {
      w.queued = false;
      if (w.done) continue;
      this.inFlight++;
      void this.reevaluate(w).finally(() => {
        this.inFlight--;
        if (this.queue.length > 0) this.schedulePump();
      });
    }
  }

  /** `w` is no longer being re-evaluated; queued again if a change reached it meanwhile. */
  private idle(w: Waiter): void {
    w.busy = false;
    if (w.queued && !w.done) {
      this.queue.push(w);
      this.schedulePump();
    }
  }

  /** Read `w`'s agent and set again: answer it with a changed set, or file it under the new one. */
  private async reevaluate(w: Waiter): Promise<void> {
    const stale = w.stale ? w.set : undefined;
    w.stale = false;
    w.busy = true;
    try {
      const agent = await w.recheck();
      const s = await this.get(agent, stale);
      this.idle(w);
      // Ended meanwhile (its wait, the client gone): not filed again under any set.
      if (w.done) return;
      if (s.etag !== w.etag) w.finish({ set: s });
      else {
        w.set = s;
        w.agent = agent;
        this.index(w);
        this.arm(w);
        this.checkHeld(w);
      }
    } catch (e) {
      this.idle(w);
      w.finish({ error: e });
    }
  }

  /** Answer every waiter (unchanged, or refused when the verifier could not tell: endUnchanged) and stop watching the store. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.checker);
    this.watch.close();
    this.agentsWatch.close();
    for (const w of [...this.waiters]) this.endUnchanged(w);
    this.queue.length = 0;
  }
}
