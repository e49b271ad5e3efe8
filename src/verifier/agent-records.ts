/**
 * Agent records as the agent routes read them on every call (requireAgent: the caller's record, its
 * serial, and the bans of its other factors), kept in memory while the datastore promises to report
 * every write of them (AgentsWatch.live). On PostgreSQL that turns an unchanged sync from a query
 * into a map lookup; on SQLite, which makes no such promise, every call still reads the store.
 *
 * A kept record (or the fact that there is none) is dropped, never replaced, on what the feed says:
 *   - `written(id)` (an attestation's record, a renewal's new serial, on any verifier): that record;
 *   - `changed(id)` (an eviction or ban): that record and every kept record that names `id` among
 *     its factors (an eviction deletes those too; a ban refuses them through banOf);
 *   - `missed` (the LISTEN connection came back) or `invalid` (a notification that could not be
 *     read): everything.
 * While the feed is not live every call reads the store, and what is kept is dropped the first time
 * a call sees it down. A read is kept only if nothing was dropped and the feed stayed live while it
 * ran, so a notification that overtakes a read cannot leave that read's older answer behind. A
 * notification can only make the next call read again; a forged or malformed one costs a read.
 *
 * Only accepting a call may rest on kept records: the routes confirm a refusal (no record, another
 * serial, a ban) with fresh(), since an agent that has just attested or renewed through another
 * verifier may call here before that write's notification arrives.
 *
 * How stale can a kept record be? A write through another verifier reaches this one when its NOTIFY
 * does (the commit, then milliseconds); a LISTEN connection that dies silently is found by its probe
 * (the PostgreSQL store's probe interval plus its timeout, 10 s by default), and from then on every call
 * reads. A change the feed never reports — a row edited by hand in SQL, not through the admin API —
 * is read again at the latest after MAX_AGE_MS.
 */
import type { AgentRecord, AgentsWatch, DataStore } from '../store/types.js';

/** Records kept at most (oldest dropped first beyond that). */
export const AGENT_RECORDS_MAX = 200_000;
/** A kept record is read again after this long, whatever the feed says (ms). */
export const MAX_AGE_MS = 300_000;

/** Where an agent record came from, for the read counter. */
export type AgentRecordSource = 'memory' | 'store';

interface Kept {
  /** null: the store has no record of that ID. */
  record: AgentRecord | null;
  /** When its read began (ms, on the constructor's clock). */
  at: number;
}

export interface AgentRecordCacheOptions {
  max?: number;
  maxAgeMs?: number;
  /** Told where each record came from (a metric). */
  onRead?: (source: AgentRecordSource) => void;
}

export class AgentRecordCache {
  private readonly kept = new Map<string, Kept>();
  /** Bumped on every drop: a read that began before one is not kept. */
  private epoch = 0;
  /** The feed was live at the last look (when it is seen down, everything is dropped). */
  private wasLive = false;
  private readonly watch: AgentsWatch;
  private readonly max: number;
  private readonly maxAgeMs: number;
  private readonly onRead: (source: AgentRecordSource) => void;

  constructor(
    private readonly store: DataStore,
    /** Milliseconds on a clock that does not jump (the wall clock can be set back). */
    private readonly clock: () => number = () => performance.now(),
    opts: AgentRecordCacheOptions = {},
  ) {
    this.max = opts.max ?? AGENT_RECORDS_MAX;
    this.maxAgeMs = opts.maxAgeMs ?? MAX_AGE_MS;
    this.onRead = opts.onRead ?? (() => undefined);
    this.watch = store.watchAgents({
      written: (id) => this.drop(id),
      changed: (id) => this.dropWithFactor(id),
      missed: () => this.dropAll(),
      invalid: () => this.dropAll(),
    });
  }

  /**
   * The record of `id`, undefined when there is none: from memory when the feed is live and a kept
   * copy is younger than maxAgeMs (no promise then), otherwise read from the store.
   */
  get(id: string): AgentRecord | undefined | Promise<AgentRecord | undefined> {
    if (!this.live()) {
      this.onRead('store');
      return this.store.getAgent(id);
    }
    const k = this.kept.get(id);
    if (k !== undefined && this.clock() - k.at < this.maxAgeMs) {
      this.onRead('memory');
      return k.record ?? undefined;
    }
    return this.read(id);
  }

  /**
   * The record of `id` read from the store, whatever is kept (and kept in its place when it may be).
   * A caller refusing on what get() gave — no record, another serial — confirms it here first: a
   * write through another verifier can commit a moment before its notification arrives (an agent
   * that has just attested or renewed there and calls here at once), and only accepting may rest on
   * a kept copy.
   */
  fresh(id: string): Promise<AgentRecord | undefined> {
    if (!this.live()) {
      this.onRead('store');
      return this.store.getAgent(id);
    }
    return this.read(id);
  }

  /** Records kept now (for tests and metrics). */
  get size(): number {
    return this.kept.size;
  }

  close(): void {
    this.watch.close();
    this.dropAll();
  }

  private live(): boolean {
    const live = this.watch.live?.() === true;
    if (!live && this.wasLive) this.dropAll();
    this.wasLive = live;
    return live;
  }

  private async read(id: string): Promise<AgentRecord | undefined> {
    this.onRead('store');
    const epoch = this.epoch;
    const at = this.clock();
    const record = await this.store.getAgent(id);
    if (epoch === this.epoch && this.live()) this.keep(id, record, at);
    return record;
  }

  private keep(id: string, record: AgentRecord | undefined, at: number): void {
    this.kept.delete(id);
    if (this.kept.size >= this.max) {
      const oldest = this.kept.keys().next();
      if (!oldest.done) this.kept.delete(oldest.value);
    }
    // Shared by every call that reads it: frozen, so that no caller can change what the next one sees.
    if (record) {
      Object.freeze(record.attestors);
      Object.freeze(record.selectors);
      Object.freeze(record.factorIds);
      Object.freeze(record);
    }
    this.kept.set(id, { record: record ?? null, at });
  }

  private drop(id: string): void {
    this.epoch++;
    this.kept.delete(id);
  }

  private dropWithFactor(id: string): void {
    this.epoch++;
    this.kept.delete(id);
    for (const [key, k] of this.kept) if (k.record?.factorIds.includes(id)) this.kept.delete(key);
  }

  private dropAll(): void {
    this.epoch++;
    this.kept.clear();
  }
}
