/**
 * The memory savings of issue 15 must not change any answer: interning merges only equal strings,
 * shared empty lists cannot be changed through one entry, entries read for the cache equal those
 * read one by one, and the cache's bodies and ETags are the same text as before.
 */
import { createHash } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EntryInterner, INTERN_MAX_LENGTH, INTERN_MAX_VALUES, SHARED_EMPTY_LIST } from '../../src/store/rows.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord, DataStore, RegistrationEntry } from '../../src/store/types.js';
import { AuthorizedSetCache } from '../../src/verifier/authorized-cache.js';
import { newEntry } from '../support/entries.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';

const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;

const entry = newEntry;

const agent = (id: string): AgentRecord => ({ id, attestors: ['join_token'], selectors: [], serial: '01', svidExpiresAt: '2030-01-01T00:00:00.000Z', attestedAt: '2026-01-01T00:00:00.000Z', banned: false, factorIds: [id] });

describe('EntryInterner', () => {
  it('merges only equal strings', () => {
    const values = new Map<string, string>();
    const i = new EntryInterner(values, ['spiffe://example.org/a']);
    expect(i.value('unix:uid:1')).toBe('unix:uid:1');
    expect(i.value('unix:uid:10')).toBe('unix:uid:10');
    expect(i.value('unix:uid:1 ')).toBe('unix:uid:1 ');
    expect(i.value('Unix:uid:1')).toBe('Unix:uid:1');
    expect(i.value('é')).toBe('é');
    expect(i.value('e\u0301')).toBe('e\u0301'); // the same letter, another code point sequence: kept apart
    expect(i.id('spiffe://example.org/a')).toBe('spiffe://example.org/a');
    expect(i.id('spiffe://example.org/A')).toBe('spiffe://example.org/A');
    expect(i.list(['b', 'a', 'b'])).toEqual(['b', 'a', 'b']);
    expect([...values.keys()].sort()).toEqual(['Unix:uid:1', 'a', 'b', 'e\u0301', 'unix:uid:1', 'unix:uid:1 ', 'unix:uid:10', 'é']);
  });

  it('shares one frozen empty list: changing it through one entry throws', () => {
    const i = new EntryInterner(new Map(), []);
    const a = i.list([]);
    const b = i.list([]);
    expect(a).toBe(SHARED_EMPTY_LIST);
    expect(b).toBe(a);
    expect(() => a.push('x')).toThrow(TypeError);
    expect(SHARED_EMPTY_LIST).toEqual([]);
  });

  it('bounds its value table and leaves long strings and non-strings alone', () => {
    const values = new Map<string, string>();
    const i = new EntryInterner(values, []);
    const long = 'x'.repeat(INTERN_MAX_LENGTH + 1);
    expect(i.value(long)).toBe(long);
    expect(values.has(long)).toBe(false);
    for (let k = 0; k < INTERN_MAX_VALUES + 10; k++) expect(i.value(`v${k}`)).toBe(`v${k}`);
    expect(values.size).toBeLessThanOrEqual(INTERN_MAX_VALUES);
    // A corrupt stored list (not all strings) comes back as it was stored, as without interning.
    const odd = [1, null, 'a'] as unknown as string[];
    expect(i.list(odd)).toEqual([1, null, 'a']);
  });
});

let pg: PostgresHandle | null = null;
afterAll(async () => {
  await pg?.stop();
});

for (const kind of ['sqlite', 'postgres'] as const) describe(`entriesByParents with interning (${kind})`, () => {
  let store: DataStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
  });

  it('returns the same entries as a read one by one; equal selector lists stay separate lists', async ({ skip }) => {
    if (kind === 'sqlite') store = new SqliteStore(':memory:');
    else {
      pg ??= await startPostgres();
      if (!pg) return skip();
      store = await PostgresStore.open(pg.url, { schema: 'interning_test' });
    }
    const p1 = `spiffe://${TD}/node/p1`;
    const p2 = `spiffe://${TD}/node/p10`;
    const written = await store.createEntries([
      entry(`spiffe://${TD}/w/1`, p1, { selectors: ['unix:uid:1', 'unix:gid:1'] }),
      entry(`spiffe://${TD}/w/2`, p1, { selectors: ['unix:uid:1', 'unix:gid:1'], hint: 'ünïcødé ☃', dnsNames: ['a.example.org'] }),
      entry(`spiffe://${TD}/w/3`, p2, { selectors: ['unix:uid:10'], expiresAt: '2030-01-01T00:00:00.000Z', admin: true, x509SvidTtl: 60 }),
      entry(`spiffe://${TD}/w/4`, p2, { selectors: [`k8s:ns:${p1}`], federatesWith: ['other.org', 'b.org'] }),
    ]);
    const read = await store.entriesByParents([p1, p2]);
    expect(read).toHaveLength(4);
    for (const e of read) {
      const one = (await store.getEntry(e.id)) as RegistrationEntry;
      expect(e).toEqual(one);
      expect(JSON.stringify(e)).toBe(JSON.stringify(one));
      expect(e).toEqual(written.find((w) => w.id === e.id));
    }
    const [a, b] = read.filter((e) => e.parentId === p1) as [RegistrationEntry, RegistrationEntry];
    expect(a.selectors).not.toBe(b.selectors);
    a.selectors.push('unix:uid:2');
    expect(b.selectors).toEqual(['unix:gid:1', 'unix:uid:1']);
    expect(read.find((e) => e.parentId === p2 && e.selectors[0] === 'unix:uid:10')?.expiresAt).toBe('2030-01-01T00:00:00.000Z');
  });
});

describe('AuthorizedSetCache answers after the memory changes', () => {
  let store: SqliteStore | undefined;
  let cache: AuthorizedSetCache | undefined;
  afterEach(async () => {
    cache?.close();
    await store?.close();
    cache = undefined;
    store = undefined;
  });

  it('body is the entries JSON in order; the ETag is the content hash as before', async () => {
    store = new SqliteStore(':memory:');
    const a = `spiffe://${TD}/sigil/agent/join_token/a`;
    await store.createEntries([
      entry(`spiffe://${TD}/node/g`, VID, { selectors: [`sigil:agent_id:${a}`] }),
      entry(`spiffe://${TD}/w/own`, a, { hint: 'line\u2028sep "quoted" \\ ☃' }),
      entry(`spiffe://${TD}/w/alias`, `spiffe://${TD}/node/g`, { dnsNames: ['x.example.org'] }),
    ]);
    cache = new AuthorizedSetCache(store, TD, () => new Date());
    const s = await cache.get(agent(a));
    expect(s.entries.map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/alias`, `spiffe://${TD}/w/own`]);
    const h = createHash('sha256').update(a);
    for (const n of s.nodeEntries) h.update(`\nn:${n.id}:${n.revisionNumber}`);
    for (const e of s.entries) h.update(`\ne:${e.id}:${e.revisionNumber}`);
    expect(s.etag).toBe(h.digest('base64url').slice(0, 22));
    const body = cache.body(s).toString('utf8');
    expect(body).toBe(JSON.stringify({ entries: s.entries, revision: s.etag }));
    // Byte for byte the UTF-8 of that text (multi-byte characters in the hint), and for an empty set.
    expect(cache.body(s).equals(Buffer.from(JSON.stringify({ entries: s.entries, revision: s.etag }), 'utf8'))).toBe(true);
    const none = await cache.get(agent(`spiffe://${TD}/sigil/agent/join_token/none`));
    expect(none.entries).toEqual([]);
    expect(cache.body(none).toString('utf8')).toBe(JSON.stringify({ entries: [], revision: none.etag }));
    expect(JSON.parse(body)).toEqual(JSON.parse(JSON.stringify({ entries: s.entries, revision: s.etag })));
  });

  it('a write under a parent keeps the objects of its unchanged children; a deleted child is gone and one created again under the same ID is the new entry', async () => {
    store = new SqliteStore(':memory:');
    const a = `spiffe://${TD}/sigil/agent/join_token/a`;
    const kept = await store.createEntries([entry(`spiffe://${TD}/w/1`, a), entry(`spiffe://${TD}/w/2`, a)]);
    const doomed = await store.createEntry(entry(`spiffe://${TD}/w/3`, a, { id: 'same-id' }));
    cache = new AuthorizedSetCache(store, TD, () => new Date());
    const s1 = await cache.get(agent(a));
    const obj = (s: { entries: RegistrationEntry[] }, id: string): RegistrationEntry => s.entries.find((e) => e.id === id) as RegistrationEntry;
    const body1 = cache.body(s1).toString('utf8');
    await store.createEntry(entry(`spiffe://${TD}/w/4`, a));
    const s2 = await cache.get(agent(a));
    expect(s2.entries.map((e) => e.spiffeId).sort()).toEqual([1, 2, 3, 4].map((n) => `spiffe://${TD}/w/${n}`));
    for (const k of [...kept, doomed]) expect(obj(s2, k.id)).toBe(obj(s1, k.id));
    // The same text for the unchanged entries as a fresh read gives.
    expect(JSON.parse(cache.body(s2).toString('utf8')).entries).toEqual(JSON.parse(JSON.stringify(s2.entries)));
    expect(JSON.parse(body1).entries.length).toBe(3);
    // Deleted, then created again with the same ID but other content before anyone reads: the old
    // object (still in the dropped list) must not come back.
    expect(await store.deleteEntry('same-id')).toBe(true);
    const again = await store.createEntry(entry(`spiffe://${TD}/w/3-again`, a, { id: 'same-id', selectors: ['unix:uid:2'] }));
    const s4 = await cache.get(agent(a));
    const got = obj(s4, 'same-id');
    expect(got).not.toBe(obj(s1, 'same-id'));
    expect(got.spiffeId).toBe(`spiffe://${TD}/w/3-again`);
    expect(got.selectors).toEqual(['unix:uid:2']);
    expect(got.revisionNumber).toBe(again.revisionNumber);
    expect(JSON.parse(cache.body(s4).toString('utf8')).entries.find((e: RegistrationEntry) => e.id === 'same-id').spiffeId).toBe(`spiffe://${TD}/w/3-again`);
    for (const k of kept) expect(obj(s4, k.id)).toBe(obj(s1, k.id));
    // Deleted only: gone.
    expect(await store.deleteEntry(kept[0]!.id)).toBe(true);
    const s5 = await cache.get(agent(a));
    expect(s5.entries.map((e) => e.id)).not.toContain(kept[0]!.id);
    expect(obj(s5, kept[1]!.id)).toBe(obj(s1, kept[1]!.id));
  });

  it('a child created under an entry that had none reaches that agent only (the shared empty children list is not changed)', async () => {
    store = new SqliteStore(':memory:');
    const a = `spiffe://${TD}/sigil/agent/join_token/a`;
    const b = `spiffe://${TD}/sigil/agent/join_token/b`;
    await store.createEntries([entry(`spiffe://${TD}/w/a`, a), entry(`spiffe://${TD}/w/b`, b)]);
    cache = new AuthorizedSetCache(store, TD, () => new Date());
    const sa = await cache.get(agent(a));
    const sb = await cache.get(agent(b));
    expect(sa.entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/w/a`]);
    expect(sb.entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/w/b`]);
    await store.createEntry(entry(`spiffe://${TD}/w/a/child`, `spiffe://${TD}/w/a`));
    const sa2 = await cache.get(agent(a));
    const sb2 = await cache.get(agent(b));
    expect(sa2.entries.map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/a`, `spiffe://${TD}/w/a/child`]);
    expect(sa2.etag).not.toBe(sa.etag);
    expect(sb2.entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/w/b`]);
    expect(sb2.etag).toBe(sb.etag);
    // A third agent reading from the cache afresh sees no stray child under its own childless entry.
    const c = `spiffe://${TD}/sigil/agent/join_token/c`;
    await store.createEntry(entry(`spiffe://${TD}/w/c`, c));
    expect((await cache.get(agent(c))).entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/w/c`]);
  });
});
