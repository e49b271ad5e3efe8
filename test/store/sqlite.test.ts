import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite.js';
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
