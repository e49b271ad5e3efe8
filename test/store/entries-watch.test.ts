/**
 * DataStore.watchEntries: every committed entry write is reported with its revision range and the
 * parents/selectors it touched — SQLite in-process, PostgreSQL to every store on the database
 * through NOTIFY (a write on store A reaches a watcher on store B); a write too long to describe is
 * reported as "not described" (entries null); a rolled-back write is never reported.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pg_ from 'pg';
import { PostgresStore, parseEntriesPayload } from '../../src/store/postgres.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { EntriesChange, NewEntry } from '../../src/store/types.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { codeOf } from '../support/codes.js';
import { newEntry } from '../support/entries.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';

const { Client } = pg_;

const mk = (spiffeId: string, parentId: string, selectors = ['unix:uid:1'], id?: string): NewEntry => newEntry(spiffeId, parentId, { selectors, ...(id ? { id } : {}) });

async function until<T>(fn: () => T | undefined, ms = 3000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

let pg: PostgresHandle | null = null;
const dirs: string[] = [];
afterAll(async () => {
  await pg?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('entry change feed', () => {
  it('SQLite reports each committed write with contiguous revisions, parents and selectors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-watch-'));
    dirs.push(dir);
    const s = new SqliteStore(join(dir, 'db.sqlite'));
    const seen: EntriesChange[] = [];
    const w = s.watchEntries((c) => seen.push(c));
    const a = await s.createEntry(mk('spiffe://example.org/a', 'spiffe://example.org/p1'));
    await s.createEntries([mk('spiffe://example.org/b', 'spiffe://example.org/p2'), mk('spiffe://example.org/n', 'spiffe://example.org/sigil/verifier', ['x:y'])]);
    await s.deleteEntry(a.id);
    expect(await s.deleteEntry(a.id)).toBe(false); // nothing deleted: nothing reported
    await expect(s.createEntries([mk('spiffe://example.org/c', 'spiffe://example.org/p3', ['unix:uid:1'], 'dup'), mk('spiffe://example.org/d', 'spiffe://example.org/p3', ['unix:uid:1'], 'dup')])).rejects.toThrow();
    expect(seen).toEqual([
      { fromRevision: 0, toRevision: 1, entries: [{ parentId: 'spiffe://example.org/p1', selectors: ['unix:uid:1'] }] },
      {
        fromRevision: 1,
        toRevision: 3,
        entries: [
          { parentId: 'spiffe://example.org/p2', selectors: ['unix:uid:1'] },
          { parentId: 'spiffe://example.org/sigil/verifier', selectors: ['x:y'] },
        ],
      },
      { fromRevision: 3, toRevision: 4, entries: [{ parentId: 'spiffe://example.org/p1', selectors: ['unix:uid:1'] }] },
    ]);
    expect(await s.entriesRevision()).toBe(4);
    expect(w.currentRevision()).toBeUndefined();
    w.close();
    await s.createEntry(mk('spiffe://example.org/e', 'spiffe://example.org/p1'));
    expect(seen).toHaveLength(3);
    await s.close();
  });

  it('PostgreSQL: a write through one store reaches the watcher of another through NOTIFY', async ({ skip }) => {
    pg = await startPostgres();
    if (!pg) return skip();
    const a = await PostgresStore.open(pg.url, { schema: 'watch_test' });
    const b = await PostgresStore.open(pg.url, { schema: 'watch_test' });
    const other = await PostgresStore.open(pg.url, { schema: 'watch_other' });
    try {
      const seen: EntriesChange[] = [];
      const w = b.watchEntries((c) => seen.push(c));
      await until(() => w.currentRevision()); // LISTEN up and primed
      expect(w.currentRevision()).toBe(0);
      const e = await a.createEntry(mk('spiffe://example.org/a', 'spiffe://example.org/p1'));
      await other.createEntry(mk('spiffe://example.org/o', 'spiffe://example.org/p9')); // another schema: not ours
      await until(() => (seen.length >= 1 ? true : undefined));
      expect(seen[0]).toEqual({ fromRevision: 0, toRevision: 1, entries: [{ parentId: 'spiffe://example.org/p1', selectors: ['unix:uid:1'] }] });
      await a.deleteEntry(e.id);
      await until(() => (seen.length >= 2 ? true : undefined));
      expect(seen[1]).toEqual({ fromRevision: 1, toRevision: 2, entries: [{ parentId: 'spiffe://example.org/p1', selectors: ['unix:uid:1'] }] });
      // A rolled-back write (duplicate id) is not announced.
      await expect(a.createEntries([mk('spiffe://example.org/c', 'spiffe://example.org/p3', ['unix:uid:1'], 'dup'), mk('spiffe://example.org/d', 'spiffe://example.org/p3', ['unix:uid:1'], 'dup')])).rejects.toThrow();
      // Too long to describe in one NOTIFY: announced without entries.
      const many = Array.from({ length: 200 }, (_, i) => mk(`spiffe://example.org/m${i}`, `spiffe://example.org/parent-with-a-long-name/${i}`));
      await a.createEntries(many);
      await until(() => (seen.length >= 3 ? true : undefined));
      expect(seen[2]).toEqual({ fromRevision: 2, toRevision: 202, entries: null });
      await new Promise((r) => setTimeout(r, 200));
      expect(seen).toHaveLength(3);
      expect(w.currentRevision()).toBe(202);
      w.close();
    } finally {
      await a.close();
      await b.close();
      await other.close();
    }
  });

  it('an entries payload is read only when its header is well formed; a malformed entry list is a change not described', () => {
    expect(parseEntriesPayload(JSON.stringify({ s: 'x', f: 1, t: 2, e: [['p', ['unix:uid:1']]] }), 'x')).toEqual({ fromRevision: 1, toRevision: 2, entries: [{ parentId: 'p', selectors: ['unix:uid:1'] }] });
    expect(parseEntriesPayload(JSON.stringify({ s: 'x', f: 1, t: 2, e: null }), 'x')).toEqual({ fromRevision: 1, toRevision: 2, entries: null });
    expect(parseEntriesPayload(JSON.stringify({ s: 'x', f: 1, t: 2, e: [['p', [7]]] }), 'x')).toEqual({ fromRevision: 1, toRevision: 2, entries: null });
    expect(parseEntriesPayload(JSON.stringify({ s: 'y', f: 1, t: 2, e: null }), 'x')).toBeUndefined();
    for (const bad of [undefined, '', '{', '[]', 'null', '7', '{"f":1,"t":2}', '{"s":1,"f":1,"t":2}', '{"s":"x","t":2}', '{"s":"x","f":1.5,"t":2}', '{"s":"x","f":1,"t":"2"}', `{"s":"x","f":1,"t":${2 ** 60}}`]) {
      const r = parseEntriesPayload(bad, 'x');
      expect(r !== undefined && 'invalid' in r, String(bad)).toBe(true);
    }
    const r = parseEntriesPayload(`\u0000${'x'.repeat(5000)}`, 'x') as { invalid: string };
    expect(r.invalid.length).toBeLessThan(200);
  });

  it('PostgreSQL: a malformed notification on the entries channel is reported to onInvalid and ignored; writes are still heard', async ({ skip }) => {
    pg ??= await startPostgres();
    if (!pg) return skip();
    const a = await PostgresStore.open(pg.url, { schema: 'watch_invalid' });
    const b = await PostgresStore.open(pg.url, { schema: 'watch_invalid' });
    const sql = new Client(pg.url);
    await sql.connect();
    try {
      const seen: EntriesChange[] = [];
      const invalid: string[] = [];
      const w = b.watchEntries((c) => seen.push(c), (d) => invalid.push(d));
      await until(() => (w.currentRevision() !== undefined ? true : undefined));
      for (const m of ['not json', '{"s":"watch_invalid"}', '[1]']) await sql.query('SELECT pg_notify($1, $2)', ['sigil_entries', m]);
      await sql.query('SELECT pg_notify($1, $2)', ['sigil_entries', JSON.stringify({ s: 'another_schema', f: 5, t: 6, e: null })]);
      await until(() => (invalid.length >= 3 ? true : undefined));
      expect(invalid.every((d) => d.startsWith('sigil_entries notification ignored'))).toBe(true);
      expect(seen).toEqual([]);
      await a.createEntry(mk('spiffe://example.org/after', 'spiffe://example.org/p'));
      await until(() => (seen.length >= 1 ? true : undefined));
      expect(seen[0]).toMatchObject({ fromRevision: 0, toRevision: 1 });
      expect(invalid).toHaveLength(3);
      w.close();
    } finally {
      await sql.end();
      await a.close();
      await b.close();
    }
  });

  it('verifier config: longPoll.maxWait must stay under the listener\'s 30 s idle timeout', () => {
    const base = { trustDomain: 'example.org', dataDir: '/tmp/x' };
    expect(codeOf(() => verifierConfigFrom({ ...base, longPoll: { maxWait: '30s' } }, '/tmp'))).toBe('config.invalid');
    expect(verifierConfigFrom({ ...base, longPoll: { maxWait: '5s', maxWaiters: 0 } }, '/tmp').longPoll).toEqual({ maxWaitSeconds: 5, maxWaiters: 0, maxWaitersPerAgent: 2 });
    expect(verifierConfigFrom(base, '/tmp').longPoll).toEqual({ maxWaitSeconds: 20, maxWaiters: 50_000, maxWaitersPerAgent: 2 });
  });
});
