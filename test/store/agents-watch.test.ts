/**
 * DataStore.watchAgents: an eviction or ban is reported after it commits, by the ID given to
 * evictAgent — SQLite in-process; PostgreSQL to this store at once and to every store on the same
 * schema through NOTIFY (never twice to the store that evicted, never to another schema). Nothing is
 * reported when nothing changed or the eviction rolled back; an ID too long for a NOTIFY is reported
 * as `missed`. Also: NOTIFY payload sizes are counted in UTF-8 bytes, so an entry write with a long
 * non-ASCII description is announced as "not described" instead of failing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PostgresStore, parseAgentsPayload } from '../../src/store/postgres.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord, AgentsWatch, DataStore, EntriesChange } from '../../src/store/types.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';

const TD = 'spiffe://example.org';

function agent(id: string): AgentRecord {
  return { id, attestors: ['join_token'], selectors: ['join_token:id:x'], serial: '0a1b', svidExpiresAt: '2030-01-01T01:00:00.000Z', attestedAt: '2030-01-01T00:00:00.000Z', banned: false, factorIds: [id] };
}

interface Heard {
  events: string[];
  watch: AgentsWatch;
}

/** Record what a watcher hears as `changed:<id>`, `missed`, `invalid`. */
function listen(s: DataStore): Heard {
  const events: string[] = [];
  const watch = s.watchAgents({ changed: (id) => events.push(`changed:${id}`), missed: () => events.push('missed'), invalid: () => events.push('invalid') });
  return { events, watch };
}

async function until(fn: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const failing = (): never => {
  throw new Error('mapper failed');
};

let pg: PostgresHandle | null = null;
const dirs: string[] = [];
afterAll(async () => {
  await pg?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Also record `written:<id>`, and whether the watch says it is live. */
function listenWrites(s: DataStore): Heard {
  const events: string[] = [];
  const watch = s.watchAgents({
    changed: (id) => events.push(`changed:${id}`),
    written: (id) => events.push(`written:${id}`),
    missed: () => events.push('missed'),
    invalid: () => events.push('invalid'),
  });
  return { events, watch };
}

/**
 * Two stores on `schema` and one on another schema of the test server, each watched with `watch`
 * and heard from once (its LISTEN connection up: `missed`), then their events cleared. `run` gets
 * them; the stores are closed afterwards.
 */
async function onThreeStores(schema: string, watch: (s: DataStore) => Heard, run: (a: PostgresStore, b: PostgresStore, other: PostgresStore, h: [Heard, Heard, Heard]) => Promise<void>): Promise<void> {
  const url = (pg as PostgresHandle).url;
  const stores = [await PostgresStore.open(url, { schema }), await PostgresStore.open(url, { schema }), await PostgresStore.open(url, { schema: `${schema}_other` })] as const;
  try {
    const h = stores.map(watch) as [Heard, Heard, Heard];
    // Each LISTEN connection, once up, reports `missed` (evictions before it were not heard).
    await until(() => h.every((x) => x.events.length > 0));
    expect(h.map((x) => x.events)).toEqual([['missed'], ['missed'], ['missed']]);
    for (const x of h) x.events.length = 0;
    await run(...stores, h);
    for (const x of h) x.watch.close();
  } finally {
    for (const x of stores) await x.close();
  }
}

describe('agent change feed', () => {
  it('SQLite reports committed attestations and renewals as `written`, refused ones not, and makes no `live` promise', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-agents-watch-'));
    dirs.push(dir);
    const s = new SqliteStore(join(dir, 'db.sqlite'));
    try {
      const h = listenWrites(s);
      expect(h.watch.live).toBeUndefined();
      expect(await s.upsertAgent(agent(`${TD}/a`))).toBe(true);
      expect(h.events).toEqual([`written:${TD}/a`]); // before upsertAgent resolved
      expect(await s.renewAgentSvid(`${TD}/a`, 'not-the-serial', '0c', '2030-01-01T02:00:00.000Z')).toBe(false);
      expect(await s.renewAgentSvid(`${TD}/a`, '0a1b', '0c', '2030-01-01T02:00:00.000Z')).toBe(true);
      expect(h.events).toEqual([`written:${TD}/a`, `written:${TD}/a`]);
      expect(await s.evictAgent(`${TD}/a`, true)).toBe(true);
      expect(await s.upsertAgent(agent(`${TD}/a`))).toBe(false); // banned: nothing written
      expect(h.events).toEqual([`written:${TD}/a`, `written:${TD}/a`, `changed:${TD}/a`]);
      h.watch.close();
    } finally {
      await s.close();
    }
  });

  it('PostgreSQL reports attestations and renewals as `written` to the writing store at once and to every store on its schema, and says when it is live', async ({ skip }) => {
    pg ??= await startPostgres();
    if (!pg) return skip();
    await onThreeStores('agents_written', listenWrites, async (a, b, _other, [ha, hb, ho]) => {
      expect([ha.watch.live?.(), hb.watch.live?.()]).toEqual([true, true]);

      expect(await a.upsertAgent(agent(`${TD}/a`))).toBe(true);
      expect(ha.events).toEqual([`written:${TD}/a`]); // at once
      await until(() => hb.events.length > 0);
      expect(hb.events).toEqual([`written:${TD}/a`]);
      expect(await a.renewAgentSvid(`${TD}/a`, 'not-the-serial', '0c', '2030-01-01T02:00:00.000Z')).toBe(false);
      expect(await b.renewAgentSvid(`${TD}/a`, '0a1b', '0c', '2030-01-01T02:00:00.000Z')).toBe(true);
      expect((await a.getAgent(`${TD}/a`))?.serial).toBe('0c');
      await until(() => ha.events.length > 1);
      expect(ha.events).toEqual([`written:${TD}/a`, `written:${TD}/a`]);
      expect(await a.evictAgent(`${TD}/a`, true)).toBe(true);
      expect(await b.upsertAgent(agent(`${TD}/a`))).toBe(false); // banned: nothing written, nothing sent
      await until(() => hb.events.length > 2);
      await new Promise((r) => setTimeout(r, 200));
      expect(hb.events).toEqual([`written:${TD}/a`, `written:${TD}/a`, `changed:${TD}/a`]);
      expect(ha.events).toEqual([`written:${TD}/a`, `written:${TD}/a`, `changed:${TD}/a`]);
      expect(ho.events).toEqual([]);
    });
  });

  it('SQLite reports committed evictions and bans at once, and nothing else', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-agents-watch-'));
    dirs.push(dir);
    const s = new SqliteStore(join(dir, 'db.sqlite'));
    try {
      const h = listen(s);
      await s.upsertAgent(agent(`${TD}/a`));
      await s.upsertAgent(agent(`${TD}/b`));
      expect(h.events).toEqual([]);
      await expect(s.evictAgent(`${TD}/a`, false, failing)).rejects.toThrow('mapper failed'); // rolled back
      expect(await s.evictAgent(`${TD}/none`, true)).toBe(false);
      expect(h.events).toEqual([]);
      expect(await s.evictAgent(`${TD}/a`, false)).toBe(true);
      expect(h.events).toEqual([`changed:${TD}/a`]); // before evictAgent resolved
      expect(await s.evictAgent(`${TD}/b`, true)).toBe(true);
      expect(h.events).toEqual([`changed:${TD}/a`, `changed:${TD}/b`]);
      h.watch.close();
      await s.upsertAgent(agent(`${TD}/c`));
      expect(await s.evictAgent(`${TD}/c`, false)).toBe(true);
      expect(h.events).toHaveLength(2);
    } finally {
      await s.close();
    }
  });

  it('PostgreSQL reports an eviction to the evicting store once and to every store on its schema', async ({ skip }) => {
    pg ??= await startPostgres();
    if (!pg) return skip();
    await onThreeStores('agents_watch', listen, async (a, b, other, [ha, hb, ho]) => {

      await a.upsertAgent(agent(`${TD}/a`));
      await other.upsertAgent(agent(`${TD}/a`));
      await expect(a.evictAgent(`${TD}/a`, true, failing)).rejects.toThrow('mapper failed'); // rolled back: no NOTIFY
      expect(await a.evictAgent(`${TD}/none`, false)).toBe(false);
      expect(await a.evictAgent(`${TD}/a`, true)).toBe(true);
      expect(ha.events).toEqual([`changed:${TD}/a`]); // at once
      await until(() => hb.events.length > 0);
      expect(hb.events).toEqual([`changed:${TD}/a`]);

      // An ID too long for one NOTIFY: the others are told `missed`; the eviction itself commits.
      const long = `${TD}/${'€'.repeat(3000)}`;
      await b.upsertAgent(agent(long));
      expect(await b.evictAgent(long, false)).toBe(true);
      expect(await a.getAgent(long)).toBeUndefined();
      // (The attestation's record is announced the same way: `missed` too.)
      await until(() => ha.events.length > 2);
      expect(hb.events).toEqual([`changed:${TD}/a`, `changed:${long}`]);
      expect(ha.events).toEqual([`changed:${TD}/a`, 'missed', 'missed']);

      await new Promise((r) => setTimeout(r, 200));
      // Never twice to the evicting store; nothing to the other schema (where the same ID exists).
      expect(ha.events).toHaveLength(3);
      expect(hb.events).toHaveLength(2);
      expect(ho.events).toEqual([]);
      expect(await other.getAgent(`${TD}/a`)).toEqual(agent(`${TD}/a`));
    });
  });

  it('an agents payload is read only when every field is well formed', () => {
    const ok = parseAgentsPayload(JSON.stringify({ s: 'x', o: 'o1', a: 'spiffe://example.org/a' }), 'x');
    expect(ok).toEqual({ origin: 'o1', agentId: 'spiffe://example.org/a', written: false });
    expect(parseAgentsPayload(JSON.stringify({ s: 'x', o: 'o1', a: null }), 'x')).toEqual({ origin: 'o1', agentId: null, written: false });
    expect(parseAgentsPayload(JSON.stringify({ s: 'x', o: 'o1', a: 'spiffe://example.org/a', k: 'w' }), 'x')).toEqual({ origin: 'o1', agentId: 'spiffe://example.org/a', written: true });
    for (const k of ['e', 1, null, '', 'W']) {
      const r = parseAgentsPayload(JSON.stringify({ s: 'x', o: 'o1', a: 'z', k }), 'x');
      expect(r && 'invalid' in r && r.invalid, JSON.stringify(k)).toMatch(/^unknown kind \(k\)/);
    }
    expect(parseAgentsPayload(JSON.stringify({ s: 'y', o: 'o1', a: 'z' }), 'x')).toBeUndefined();
    for (const bad of [undefined, '', '{', '"s"', '[]', 'null', '{"s":1}', '{"s":"x","a":"z"}', '{"s":"x","o":7,"a":"z"}', `{"s":"x","o":"${'o'.repeat(65)}","a":"z"}`, '{"s":"x","o":"o1"}', '{"s":"x","o":"o1","a":""}', '{"s":"x","o":"o1","a":["z"]}']) {
      const r = parseAgentsPayload(bad, 'x');
      expect(r && 'invalid' in r, String(bad)).toBe(true);
    }
    // The quote of a malformed payload is short and escaped.
    const r = parseAgentsPayload(`\u0000${'x'.repeat(5000)}`, 'x') as { invalid: string };
    expect(r.invalid.length).toBeLessThan(200);
    expect(r.invalid).toContain('\\u0000');
  });

  it('PostgreSQL: an entry write whose description is short in characters but long in UTF-8 bytes is announced without entries', async ({ skip }) => {
    pg ??= await startPostgres();
    if (!pg) return skip();
    const a = await PostgresStore.open(pg.url, { schema: 'entries_bytes' });
    const b = await PostgresStore.open(pg.url, { schema: 'entries_bytes' });
    try {
      const seen: EntriesChange[] = [];
      const w = b.watchEntries((c) => seen.push(c));
      await until(() => w.currentRevision() !== undefined);
      // 3,000 characters, 9,000 bytes: over the 8,000-byte NOTIFY limit.
      const sel = `unix:user:${'€'.repeat(3000)}`;
      await a.createEntry({ spiffeId: `${TD}/w`, parentId: `${TD}/p`, selectors: [sel], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });
      await until(() => seen.length > 0);
      expect(seen).toEqual([{ fromRevision: 0, toRevision: 1, entries: null }]);
      w.close();
    } finally {
      await a.close();
      await b.close();
    }
  });
});
