/**
 * AgentRecordCache (src/verifier/agent-records.ts): records are kept only while the store's agent
 * feed is live, dropped on what it says (a write, an eviction or ban of the record or of one of its
 * factors, a missed or unreadable notification), never kept from a read that a notification
 * overtook, read again after the maximum age, bounded, and frozen. The store here is a fake with a
 * switch for the feed; test/verifier/agent-records-postgres.test.ts runs the real thing.
 */
import { describe, expect, it } from 'vitest';
import type { AgentRecord, AgentsListener, DataStore } from '../../src/store/types.js';
import { AgentRecordCache, type AgentRecordSource } from '../../src/verifier/agent-records.js';

const TD = 'spiffe://example.org/spire/agent';

function record(id: string, over: Partial<AgentRecord> = {}): AgentRecord {
  return { id, attestors: ['join_token'], selectors: ['join_token:x'], serial: '01', svidExpiresAt: '2030-01-01T00:00:00.000Z', attestedAt: '2029-12-31T00:00:00.000Z', banned: false, factorIds: [id], ...over };
}

/** A store with agent records, a switchable `live` feed, reads counted and optionally held open. */
class FakeStore {
  readonly rows = new Map<string, AgentRecord>();
  reads = 0;
  live: boolean | undefined = true;
  listener: AgentsListener | undefined;
  /** When set, reads wait for it. */
  gate: Promise<void> | undefined;
  closed = false;

  watchAgents(l: AgentsListener) {
    this.listener = l;
    const live = (): boolean => this.live === true;
    return {
      ...(this.live === undefined ? {} : { live }),
      close: () => {
        this.closed = true;
      },
    };
  }

  async getAgent(id: string): Promise<AgentRecord | undefined> {
    this.reads++;
    const r = this.rows.get(id);
    const copy = r ? { ...r, attestors: [...r.attestors], selectors: [...r.selectors], factorIds: [...r.factorIds] } : undefined;
    if (this.gate) await this.gate;
    return copy;
  }

  /** Reads started from now on wait until the returned function is called. */
  holdReads(): () => void {
    let open!: () => void;
    this.gate = new Promise((r) => (open = r));
    return () => {
      this.gate = undefined;
      open();
    };
  }

  asStore(): DataStore {
    return this as unknown as DataStore;
  }
}

function cacheOf(s: FakeStore, opts: { now?: () => number; max?: number; maxAgeMs?: number } = {}) {
  const sources: AgentRecordSource[] = [];
  const c = new AgentRecordCache(s.asStore(), opts.now ?? Date.now, { ...(opts.max ? { max: opts.max } : {}), ...(opts.maxAgeMs ? { maxAgeMs: opts.maxAgeMs } : {}), onRead: (x) => sources.push(x) });
  return { c, sources };
}

async function get(c: AgentRecordCache, id: string): Promise<AgentRecord | undefined> {
  return c.get(id);
}

describe('agent record cache', () => {
  it('keeps nothing where the store makes no promise (no live(), as on SQLite): every call reads', async () => {
    const s = new FakeStore();
    s.live = undefined;
    s.rows.set(`${TD}/a`, record(`${TD}/a`));
    const { c, sources } = cacheOf(s);
    for (let i = 0; i < 3; i++) expect((await get(c, `${TD}/a`))?.serial).toBe('01');
    expect(s.reads).toBe(3);
    expect(sources).toEqual(['store', 'store', 'store']);
    expect(c.size).toBe(0);
  });

  it('while the feed is live, the second call is answered from memory without a promise, absent records too', async () => {
    const s = new FakeStore();
    s.rows.set(`${TD}/a`, record(`${TD}/a`));
    const { c, sources } = cacheOf(s);
    expect((await get(c, `${TD}/a`))?.serial).toBe('01');
    const again = c.get(`${TD}/a`);
    expect(again).not.toBeInstanceOf(Promise);
    expect((again as AgentRecord).serial).toBe('01');
    expect(await get(c, `${TD}/none`)).toBeUndefined();
    expect(c.get(`${TD}/none`)).toBeUndefined();
    expect(s.reads).toBe(2);
    expect(sources).toEqual(['store', 'memory', 'store', 'memory']);
  });

  it('a write drops that record only; an eviction or ban drops the record and every record naming it as a factor', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    const b = `${TD}/b`;
    const multi = `${TD}/multi`;
    s.rows.set(a, record(a));
    s.rows.set(b, record(b));
    s.rows.set(multi, record(multi, { factorIds: [multi, a] }));
    const { c } = cacheOf(s);
    for (const id of [a, b, multi]) await get(c, id);
    expect(s.reads).toBe(3);

    s.rows.set(a, record(a, { serial: '02' }));
    s.listener?.written?.(a);
    expect((await get(c, a))?.serial).toBe('02');
    expect(s.reads).toBe(4);
    await get(c, b);
    await get(c, multi);
    expect(s.reads).toBe(4);

    // A ban of `a`: `a` and `multi` (which attested with `a`) are read again, `b` is not.
    s.rows.set(a, record(a, { banned: true, serial: '' }));
    s.listener?.changed(a);
    expect((await get(c, a))?.banned).toBe(true);
    await get(c, multi);
    expect(s.reads).toBe(6);
    await get(c, b);
    expect(s.reads).toBe(6);
  });

  it('missed and invalid notifications drop everything', async () => {
    const s = new FakeStore();
    s.rows.set(`${TD}/a`, record(`${TD}/a`));
    const { c } = cacheOf(s);
    await get(c, `${TD}/a`);
    s.listener?.missed();
    expect(c.size).toBe(0);
    await get(c, `${TD}/a`);
    s.listener?.invalid('not JSON');
    expect(c.size).toBe(0);
    await get(c, `${TD}/a`);
    expect(s.reads).toBe(3);
  });

  it('a read that a notification overtakes is not kept (its answer may be older than the write)', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    s.rows.set(a, record(a));
    const { c } = cacheOf(s);
    let release = s.holdReads();
    const first = c.get(a) as Promise<AgentRecord | undefined>;
    // The read has taken the old row; a renewal commits and is reported before the read returns.
    s.rows.set(a, record(a, { serial: '02' }));
    s.listener?.written?.(a);
    release();
    expect((await first)?.serial).toBe('01');
    expect(c.size).toBe(0);
    expect((await get(c, a))?.serial).toBe('02');
    // Any other agent's write overtaking a read also stops it being kept (one counter for all): a
    // read again, never an old answer.
    const b = `${TD}/b`;
    s.rows.set(b, record(b));
    release = s.holdReads();
    const second = c.get(b) as Promise<AgentRecord | undefined>;
    s.listener?.written?.(a);
    release();
    await second;
    expect(c.size).toBe(0);
  });

  it('a feed that goes down: calls read the store, and what was kept is dropped even if no `missed` follows', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    s.rows.set(a, record(a));
    const { c } = cacheOf(s);
    await get(c, a);
    expect(c.size).toBe(1);
    s.live = false;
    // A ban committed while the feed is down: never heard, but every call reads.
    s.rows.set(a, record(a, { banned: true }));
    expect((await get(c, a))?.banned).toBe(true);
    expect(c.size).toBe(0);
    expect((await get(c, a))?.banned).toBe(true);
    expect(s.reads).toBe(3);
    // Back up (a store tells `missed` then, but the cache does not depend on it).
    s.live = true;
    s.rows.set(a, record(a, { banned: true, serial: '09' }));
    expect((await get(c, a))?.serial).toBe('09');
    expect(s.reads).toBe(4);
  });

  it('a read that began while the feed was live is not kept if the feed went down meanwhile', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    s.rows.set(a, record(a));
    const { c } = cacheOf(s);
    const release = s.holdReads();
    const first = c.get(a) as Promise<AgentRecord | undefined>;
    s.live = false;
    release();
    await first;
    s.live = true;
    expect(c.size).toBe(0);
  });

  it('a kept record is read again after the maximum age, whatever the feed says', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    s.rows.set(a, record(a));
    let now = 1_000_000;
    const { c } = cacheOf(s, { now: () => now, maxAgeMs: 60_000 });
    await get(c, a);
    now += 59_999;
    await get(c, a);
    expect(s.reads).toBe(1);
    // Edited by hand in SQL: no notification.
    s.rows.set(a, record(a, { banned: true }));
    now += 1;
    expect((await get(c, a))?.banned).toBe(true);
    expect(s.reads).toBe(2);
  });

  it('is bounded (the oldest record is dropped first) and hands out frozen records', async () => {
    const s = new FakeStore();
    for (let i = 0; i < 5; i++) s.rows.set(`${TD}/${i}`, record(`${TD}/${i}`));
    const { c } = cacheOf(s, { max: 3 });
    for (let i = 0; i < 5; i++) await get(c, `${TD}/${i}`);
    expect(c.size).toBe(3);
    await get(c, `${TD}/4`);
    expect(s.reads).toBe(5);
    await get(c, `${TD}/0`);
    expect(s.reads).toBe(6);
    const kept = c.get(`${TD}/0`) as AgentRecord;
    expect(() => {
      (kept as { serial: string }).serial = 'ff';
    }).toThrow(TypeError);
    expect(() => kept.selectors.push('x')).toThrow(TypeError);
    expect((c.get(`${TD}/0`) as AgentRecord).serial).toBe('01');
  });

  it('fresh() reads the store whatever is kept, and keeps what it read', async () => {
    const s = new FakeStore();
    const a = `${TD}/a`;
    s.rows.set(a, record(a));
    const { c, sources } = cacheOf(s);
    await get(c, a);
    // Written elsewhere, not reported yet.
    s.rows.set(a, record(a, { serial: '02' }));
    expect((c.get(a) as AgentRecord).serial).toBe('01');
    expect((await c.fresh(a))?.serial).toBe('02');
    expect((c.get(a) as AgentRecord).serial).toBe('02');
    expect(sources).toEqual(['store', 'memory', 'store', 'memory']);
    // Without a live feed it reads and keeps nothing.
    s.live = false;
    expect((await c.fresh(a))?.serial).toBe('02');
    expect(c.size).toBe(0);
  });

  it('close() stops listening and drops everything', async () => {
    const s = new FakeStore();
    s.rows.set(`${TD}/a`, record(`${TD}/a`));
    const { c } = cacheOf(s);
    await get(c, `${TD}/a`);
    c.close();
    expect(s.closed).toBe(true);
    expect(c.size).toBe(0);
  });
});
