/**
 * SQLite writes and the event loop (src/store/wal-sync.ts). Per entry write, in one run on one
 * temporary directory:
 *  - raw floor: one small write + `fdatasync` of a file on the same disk (the physical limit of an
 *    acknowledged write), and the same through better-sqlite3 with `synchronous = FULL` (the flush
 *    inside the commit, as Sigil did before: the event loop waits for the disk);
 *  - `SqliteStore.createEntry` one at a time: time to acknowledgement, and how long the call holds
 *    the event loop (the synchronous part, before its promise is returned);
 *  - bursts of 50 concurrent `createEntry` calls: writes per flush (group commit) and writes per
 *    second;
 *  - checkpoints (src/store/wal-checkpointer.ts): how long writes hold the event loop when SQLite
 *    checkpoints inside the commit, against the store's checkpoints on a worker thread.
 *
 *   npx tsx bench/store-writes.ts [--writes 300]
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStore } from '../src/store/sqlite.js';
import { pct } from './support/load.js';

const args = process.argv.slice(2);
const i = args.indexOf('--writes');
const WRITES = i >= 0 ? Number(args[i + 1]) : 300;
const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-writes-'));
const ms = (x: number): string => `${x.toFixed(2)} ms`;
const summary = (xs: number[]): string => `p50 ${ms(pct(xs, 50))}, p99 ${ms(pct(xs, 99))}`;
const entry = (k: number) => ({ spiffeId: `spiffe://example.org/w/${k}`, parentId: 'spiffe://example.org/agent/a', selectors: ['unix:uid:1000'], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });

try {
  // 1. Raw: a 300-byte write and fdatasync.
  const fd = openSync(join(dir, 'raw'), 'w');
  const raw: number[] = [];
  const chunk = Buffer.alloc(300, 1);
  for (let k = 0; k < WRITES; k++) {
    const t = performance.now();
    writeSync(fd, chunk);
    fdatasyncSync(fd);
    raw.push(performance.now() - t);
  }
  closeSync(fd);
  console.log(`raw write + fdatasync: ${summary(raw)} (the disk's floor for an acknowledged write)`);

  // 2. better-sqlite3 alone: the flush inside the commit (FULL), and the commit without it (NORMAL).
  const rawCommit = (sync: 'FULL' | 'NORMAL'): number[] => {
    const db = new Database(join(dir, `${sync}.db`));
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${sync}`);
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)');
    const ins = db.prepare('INSERT INTO t (body) VALUES (?)');
    const out: number[] = [];
    for (let k = 0; k < WRITES; k++) {
      const t = performance.now();
      ins.run('x'.repeat(300));
      out.push(performance.now() - t);
    }
    db.close();
    return out;
  };
  const full = rawCommit('FULL');
  const normal = rawCommit('NORMAL');
  console.log(`better-sqlite3 commit, synchronous=FULL (the flush inside, on the event loop: Sigil before): ${summary(full)}; synchronous=NORMAL (no flush): ${summary(normal)}`);

  // 3. SqliteStore, one write at a time.
  const store = new SqliteStore(join(dir, 'sigil.db'));
  const held: number[] = [];
  const ack: number[] = [];
  for (let k = 0; k < WRITES; k++) {
    const t = performance.now();
    const p = store.createEntry(entry(k));
    held.push(performance.now() - t);
    await p;
    ack.push(performance.now() - t);
  }
  console.log(`SqliteStore.createEntry one at a time: acknowledged ${summary(ack)}; event loop held ${summary(held)}`);
  console.log(`  acknowledgement / raw floor (p50): ${(pct(ack, 50) / pct(raw, 50)).toFixed(2)}; event loop held beyond a bare NORMAL commit (Sigil's own work per write, p50): ${ms(pct(held, 50) - pct(normal, 50))}; flush time moved off the event loop (FULL − NORMAL commit, p50 / p99): ${ms(pct(full, 50) - pct(normal, 50))} / ${ms(pct(full, 99) - pct(normal, 99))}`);

  // 4. Bursts of 50 concurrent writes.
  const wal = (store as unknown as { wal: { flushes: number } }).wal;
  const f0 = wal.flushes;
  const bursts = Math.max(1, Math.floor(WRITES / 50));
  const t0 = performance.now();
  for (let b = 0; b < bursts; b++) await Promise.all(Array.from({ length: 50 }, (_, k) => store.createEntry(entry(100_000 + b * 50 + k))));
  const s = (performance.now() - t0) / 1000;
  const flushes = wal.flushes - f0;
  console.log(`bursts of 50 concurrent writes: ${((bursts * 50) / s).toFixed(0)} writes/s acknowledged, ${((bursts * 50) / flushes).toFixed(1)} writes per flush (${flushes} flushes for ${bursts * 50} writes); raw floor one write per flush: ${(1000 / pct(raw, 50)).toFixed(0)}/s`);
  await store.close();

  // 5. Checkpoints: SQLite's automatic one inside the commit that fills the log past 1,000 pages (on
  //    the event loop), against the store's worker thread (wal-checkpointer.ts). Same store code,
  //    100,000 entries first, then CKPT_WRITES writes one at a time of entries with a 1-KiB hint
  //    under 997 parents; the first store has the worker stopped and SQLite's automatic checkpoint
  //    turned back on.
  const CKPT_WRITES = Math.max(WRITES * 10, 3000);
  const hint = 'h'.repeat(1024);
  const holds = async (inline: boolean): Promise<{ held: number[]; over5: number; checkpoints: number }> => {
    const st = new SqliteStore(join(dir, inline ? 'inline.db' : 'worker.db'));
    const inner = st as unknown as { db: Database.Database; checkpointer: { close(): unknown; checkpoints: number } };
    if (inline) {
      inner.checkpointer.close();
      inner.db.pragma('wal_autocheckpoint = 1000');
    }
    // A verifier's datastore: 100,000 entries already there (written before the measurement and
    // checkpointed), so each write touches pages spread over the tables and indexes.
    for (let b = 0; b < 100; b++) await st.createEntries(Array.from({ length: 1000 }, (_, k) => entry(1_000_000 + b * 1000 + k)));
    inner.db.pragma('wal_checkpoint(TRUNCATE)');
    const out: number[] = [];
    for (let k = 0; k < CKPT_WRITES; k++) {
      const t = performance.now();
      const p = st.createEntry({ ...entry(k), parentId: `spiffe://example.org/agent/a${k % 997}`, hint });
      out.push(performance.now() - t);
      await p;
    }
    const checkpoints = inner.checkpointer.checkpoints;
    await st.close();
    return { held: out, over5: out.filter((x) => x > 5).length, checkpoints };
  };
  for (const inline of [true, false]) {
    const r = await holds(inline);
    console.log(
      `${CKPT_WRITES} writes of 1-KiB entries after 100,000 entries, checkpoints ${inline ? 'inside the commit (SQLite automatic, before)' : `on the worker thread (${r.checkpoints} run)`}: event loop held p50 ${ms(pct(r.held, 50))}, p99 ${ms(pct(r.held, 99))}, p99.9 ${ms(pct(r.held, 99.9))}, max ${ms(Math.max(...r.held))}; ${r.over5} writes held it over 5 ms`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
