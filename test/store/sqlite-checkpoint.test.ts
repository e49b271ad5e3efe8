/**
 * Checkpoints of the SQLite write-ahead log on a worker thread (src/store/wal-checkpointer.ts): the
 * store's own connection never checkpoints inside a commit, a worker copies the log into the
 * database file after writes, a failed worker hands checkpoints back to SQLite, and close() ends the
 * worker before the last connection closes.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { WalCheckpointer } from '../../src/store/wal-checkpointer.js';
import { newEntry } from '../support/entries.js';

const TD = 'spiffe://example.org';
const entry = (id: string) => newEntry(`${TD}/w/${id}`, `${TD}/agent/one`, { id, selectors: ['unix:uid:1000'] });

const dirs: string[] = [];
const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function open(opts: ConstructorParameters<typeof SqliteStore>[1] = {}): { store: SqliteStore; path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-ckpt-'));
  dirs.push(dir);
  const path = join(dir, 'sigil.db');
  const store = new SqliteStore(path, opts);
  stores.push(store);
  return { store, path };
}

const internals = (s: SqliteStore) => s as unknown as { db: Database.Database; checkpointer: WalCheckpointer };

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('SQLite checkpoints on a worker thread', () => {
  it("the store's connection never checkpoints in a commit; the worker copies the log after writes", async () => {
    const { store, path } = open({ checkpointIntervalMs: 20 });
    const { db, checkpointer } = internals(store);
    expect(db.pragma('wal_autocheckpoint', { simple: true })).toBe(0);
    // More than SQLite's 1,000-page automatic threshold, one write at a time.
    const big = 'x'.repeat(3000);
    for (let i = 0; i < 600; i++) await store.createEntry({ ...entry(`e${i}`), hint: big });
    await until(() => checkpointer.last !== undefined && checkpointer.last.checkpointed === checkpointer.last.log && checkpointer.last.log > 0);
    // Copied into the database file, which grows only at a checkpoint (none ran in a commit).
    expect(statSync(path).size).toBeGreaterThan(600 * 3000);
    expect(await store.countEntries()).toBe(600);
  });

  it('writes that never pause cannot grow the log without bound: past the backlog the store copies the rest, and the log restarts and shrinks', async () => {
    const { store, path } = open({ checkpointIntervalMs: 5, checkpointBacklogFrames: 300 });
    const { checkpointer } = internals(store);
    const big = 'x'.repeat(3000);
    // Bursts of concurrent writes keep a write in every checkpoint's way.
    let longest = 0;
    for (let b = 0; b < 80; b++) {
      await Promise.all(Array.from({ length: 50 }, (_, k) => store.createEntry({ ...entry(`e${b}-${k}`), hint: big })));
      longest = Math.max(longest, checkpointer.last?.log ?? 0);
    }
    expect(checkpointer.backlogs).toBeGreaterThan(0);
    // Bounded: 2,200–4,000 frames in 4,000 writes here; without the store's own copy the log grew
    // to 25,000–30,000.
    expect(longest).toBeLessThan(10_000);
    // Once writes pause, the log restarts (at the first write that finds it all copied) and then
    // holds only the frames since (a write's pages here).
    let n = 0;
    while (!(checkpointer.last !== undefined && checkpointer.last.log < 300)) {
      if (n === 20) throw new Error(`the log did not restart: ${JSON.stringify(checkpointer.last)}`);
      const seen = checkpointer.checkpoints;
      await store.createEntry(entry(`after${n++}`));
      await until(() => checkpointer.checkpoints > seen);
    }
    // journal_size_limit: the file itself is cut back at a restart.
    expect(statSync(`${path}-wal`).size).toBeLessThanOrEqual(16 * 1024 * 1024);
    expect(await store.countEntries()).toBe(4000 + n);
  });

  it('no worker for a store with no writes, and close() ends the worker before the last connection (the log is removed)', async () => {
    const quiet = open({ checkpointIntervalMs: 20 });
    await new Promise((r) => setTimeout(r, 60));
    expect(internals(quiet.store).checkpointer['worker']).toBeUndefined();

    const { store, path } = open({ checkpointIntervalMs: 20 });
    await store.createEntry(entry('e1'));
    await until(() => internals(store).checkpointer.checkpoints > 0);
    await store.close();
    stores.splice(stores.indexOf(store), 1);
    // The store's connection was the last: its close checkpointed and deleted the log.
    expect(existsSync(`${path}-wal`)).toBe(false);
    const again = new SqliteStore(path);
    stores.push(again);
    expect(await again.countEntries()).toBe(1);
  });

  it('a failed worker hands checkpoints back to SQLite and says so', async () => {
    const warnings: string[] = [];
    const { store, path } = open({ checkpointIntervalMs: 20, onWarning: (m) => warnings.push(m) });
    await store.createEntry(entry('e1'));
    const { db, checkpointer } = internals(store);
    await until(() => checkpointer.checkpoints > 0);
    await (checkpointer['worker'] as { terminate(): Promise<number> }).terminate();
    await until(() => warnings.length > 0);
    expect(warnings[0]).toMatch(new RegExp(`${path}-wal.*worker exited.*SQLite checkpoints inside commits again`));
    expect(db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    // Writes go on.
    await store.createEntry(entry('e2'));
    expect(await store.countEntries()).toBe(2);
  });

  it('the worker starts in a process whose code is evaluated as modules (--input-type=module: no require)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-ckpt-'));
    dirs.push(dir);
    const code = `
      const { SqliteStore } = await import(${JSON.stringify(resolve('src/store/sqlite.ts'))});
      const warnings = [];
      const s = new SqliteStore(${JSON.stringify(join(dir, 'sigil.db'))}, { checkpointIntervalMs: 20, onWarning: (m) => warnings.push(m) });
      await s.createEntry({ spiffeId: 'spiffe://example.org/w/1', parentId: 'spiffe://example.org/a', selectors: ['unix:uid:1'], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });
      const end = Date.now() + 20000;
      while (s.checkpointer.checkpoints === 0 && warnings.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      console.log(JSON.stringify({ checkpoints: s.checkpointer.checkpoints, warnings }));
      await s.close();`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 });
    const r = JSON.parse(out.trim().split('\n').pop() as string) as { checkpoints: number; warnings: string[] };
    expect(r.warnings).toEqual([]);
    expect(r.checkpoints).toBeGreaterThan(0);
  }, 90_000);

  it('a worker that cannot open the database fails over the same way', async () => {
    const failures: Error[] = [];
    const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-ckpt-'));
    dirs.push(dir);
    const c = new WalCheckpointer(join(dir, 'missing.db'), { intervalMs: 5, onFailure: (e) => failures.push(e), onBacklog: () => undefined });
    c.wrote();
    await until(() => failures.length > 0);
    expect(failures[0]?.message).toMatch(/missing\.db-wal.*cannot open the database for checkpoints/);
    expect(failures).toHaveLength(1);
    c.wrote(); // stopped: no new worker
    await new Promise((r) => setTimeout(r, 30));
    expect(failures).toHaveLength(1);
    expect(c['worker']).toBeUndefined();
  });
});
