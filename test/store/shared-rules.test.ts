import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { isSigilError } from '../../src/errors.js';
import { pendingMigrations } from '../../src/store/migrations.js';
import { evictedPluginStateKeys, pluginStateExpectedText, pluginStateText } from '../../src/store/plugin-state.js';
import { entriesChangeOf, newEntryRecord, parseStoredJson } from '../../src/store/rows.js';
import { SqliteStore } from '../../src/store/sqlite.js';

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return isSigilError(e) ? e.code : `not a SigilError: ${String(e)}`;
  }
  return undefined;
}

describe('pendingMigrations', () => {
  const m = ['one', 'two', 'three'];
  it('lists what a database at each version still needs, in order, with the version each yields', () => {
    expect(pendingMigrations(0, m)).toEqual([
      { version: 1, migration: 'one' },
      { version: 2, migration: 'two' },
      { version: 3, migration: 'three' },
    ]);
    expect(pendingMigrations(2, m)).toEqual([{ version: 3, migration: 'three' }]);
    expect(pendingMigrations(3, m)).toEqual([]);
  });
  it('refuses a schema newer than this build, and a version that is not a count', () => {
    expect(codeOf(() => pendingMigrations(4, m))).toBe('store.schema_too_new');
    expect(codeOf(() => pendingMigrations(-1, m))).toBe('store.corrupt');
    expect(codeOf(() => pendingMigrations(1.5, m))).toBe('store.corrupt');
    expect(codeOf(() => pendingMigrations(Number.NaN, m))).toBe('store.corrupt');
  });
});

describe('evictedPluginStateKeys', () => {
  const stateOf = (agentId: string) => [
    { plugin: 'tpm', key: `ek/${agentId}` },
    { plugin: 'shared', key: 'one-key-for-all' },
  ];
  it('every factor of every hit once, plus the evicted id itself when not banning', () => {
    const keys = evictedPluginStateKeys([{ factorIds: ['a', 'b'] }, { factorIds: ['b', 'c'] }], 'x', false, stateOf);
    expect(keys).toEqual([
      { plugin: 'tpm', key: 'ek/a' },
      { plugin: 'shared', key: 'one-key-for-all' },
      { plugin: 'tpm', key: 'ek/b' },
      { plugin: 'tpm', key: 'ek/c' },
      { plugin: 'tpm', key: 'ek/x' },
    ]);
  });
  it('a ban removes only the state of the records it hit', () => {
    expect(evictedPluginStateKeys([{ factorIds: ['a'] }], 'a', true, stateOf)).toEqual([
      { plugin: 'tpm', key: 'ek/a' },
      { plugin: 'shared', key: 'one-key-for-all' },
    ]);
    expect(evictedPluginStateKeys([], 'z', true, stateOf)).toEqual([]);
  });
});

describe('plugin state values', () => {
  it('refuses what JSON cannot hold; a compare with such a value matches nothing', () => {
    expect(pluginStateText({ a: 1 })).toBe('{"a":1}');
    expect(codeOf(() => pluginStateText(undefined))).toBe('store.invalid_value');
    expect(codeOf(() => pluginStateText(() => 1))).toBe('store.invalid_value');
    expect(pluginStateExpectedText(Symbol('s'))).toBeUndefined();
  });
});

describe('rows', () => {
  it('a new entry has canonical (sorted) selectors and federatesWith, a fresh id unless given', () => {
    const e = newEntryRecord(
      { spiffeId: 'spiffe://t/w', parentId: 'spiffe://t/a', selectors: ['unix:uid:2', 'unix:uid:1'], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: ['b', 'a'], hint: '', admin: false, expiresAt: null, federatesWith: ['z.org', 'a.org'] },
      7,
      '2030-01-01T00:00:00.000Z',
    );
    expect(e.selectors).toEqual(['unix:uid:1', 'unix:uid:2']);
    expect(e.federatesWith).toEqual(['a.org', 'z.org']);
    expect(e.dnsNames).toEqual(['b', 'a']); // DNS SAN order is the user's
    expect(e.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(e.revisionNumber).toBe(7);
  });
  it('the change of one transaction spans its lowest to its highest revision', () => {
    expect(
      entriesChangeOf([
        { parentId: 'p', selectors: ['s'], revisionNumber: 5 },
        { parentId: 'q', selectors: [], revisionNumber: 7 },
      ]),
    ).toEqual({ fromRevision: 4, toRevision: 7, entries: [{ parentId: 'p', selectors: ['s'] }, { parentId: 'q', selectors: [] }] });
  });
  it('stored text that is not JSON is store.corrupt naming what it was', () => {
    expect(parseStoredJson('[1]', 'x')).toEqual([1]);
    expect(codeOf(() => parseStoredJson('{', 'a CA journal for i'))).toBe('store.corrupt');
  });
  it('SQLite: plugin state changed outside Sigil into non-JSON is store.corrupt, not a SyntaxError', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-rows-'));
    try {
      const path = join(dir, 'sigil.db');
      const s = new SqliteStore(path);
      await s.putPluginState('tpm', 'k', { n: 1 });
      await s.close();
      const db = new Database(path);
      db.prepare(`UPDATE plugin_state SET value = '{not json' WHERE plugin = 'tpm'`).run();
      db.close();
      const t = new SqliteStore(path);
      try {
        await expect(t.getPluginState('tpm', 'k')).rejects.toMatchObject({ code: 'store.corrupt', message: expect.stringContaining('plugin state tpm/k') });
      } finally {
        await t.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
