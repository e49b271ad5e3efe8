import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { SQLITE_SCHEMA_VERSION, SqliteStore } from '../../src/store/sqlite.js';
import { runStoreConformance } from './conformance.js';

runStoreConformance('sqlite (file, WAL)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-'));
  const store = new SqliteStore(join(dir, 'sigil.db'));
  return {
    store,
    async cleanup() {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('SqliteStore migrations', () => {
  it('migrates a version 1 database: existing agents get their own ID as their only factor ID', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-mig-'));
    try {
      const path = join(dir, 'sigil.db');
      await new SqliteStore(path).close();
      // Back to what version 1 had: no factor_ids column; an agent written then.
      const db = new Database(path);
      db.exec('ALTER TABLE agents DROP COLUMN factor_ids');
      // … and nothing of version 3 (federation).
      db.exec('DROP TABLE federated_bundles; DROP TABLE federations; ALTER TABLE entries DROP COLUMN federates_with');
      db.pragma('user_version = 1');
      const id = 'spiffe://example.org/sigil/agent/tpm/old';
      db.prepare(
        `INSERT INTO agents (id, attestors, selectors, serial, svid_expires_at, attested_at, banned)
         VALUES (?, '["tpm","join_token"]', '[]', '0a', '2030-01-01T01:00:00.000Z', '2030-01-01T00:00:00.000Z', 0)`,
      ).run(id);
      db.close();
      const s = new SqliteStore(path);
      try {
        expect(SQLITE_SCHEMA_VERSION).toBe(4);
        expect((await s.getAgent(id))?.factorIds).toEqual([id]);
        expect(await s.renewAgentSvid(id, '0a', '0b', '2030-01-01T02:00:00.000Z')).toBe(true);
      } finally {
        await s.close();
      }
      const check = new Database(path, { readonly: true });
      expect(check.pragma('user_version', { simple: true })).toBe(4);
      expect(check.prepare('SELECT factor_ids FROM agents WHERE id = ?').get(id)).toEqual({ factor_ids: JSON.stringify([id]) });
      check.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
