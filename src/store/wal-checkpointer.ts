/**
 * Checkpoints of SQLite's write-ahead log on a worker thread (sqlite.ts).
 *
 * SQLite's automatic checkpoint runs inside the commit that fills the log past 1,000 pages: it
 * copies the log's pages into the database file and flushes both, on the thread that committed,
 * which for the verifier is its event loop (5–7 ms each with 100,000 entries on this quiet disk,
 * `bench/store-writes.ts`; once every few seconds at 50 entry changes a second; longer when the
 * disk is busy). The store turns it off on
 * its connection (`wal_autocheckpoint = 0`) and this class runs `PRAGMA wal_checkpoint(PASSIVE)`
 * instead, on a second connection in a worker thread, at most once per interval and only after
 * writes. A passive checkpoint never waits for a lock and never blocks the writer; SQLite restarts
 * the log from its start at the next write once every frame has been copied. Writes that keep coming
 * while the worker copies would keep the log from ever restarting, so past a bound the store copies
 * the last frames itself (onBacklog), and its `journal_size_limit` shrinks the file again.
 *
 * The worker starts at the first checkpoint (a store with few writes never starts one). If it cannot
 * start or a checkpoint fails, `onFailure` is told once and the store turns SQLite's automatic
 * checkpoint back on, so the log never grows without bound.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { errorMessage } from '../errors.js';

/** What one checkpoint reported (SQLite's `wal_checkpoint` row). */
export interface CheckpointResult {
  /** Frames in the log. */
  log: number;
  /** Frames copied into the database file (all of them: the log restarts at the next write). */
  checkpointed: number;
}

export interface WalCheckpointerOptions {
  /** At most one checkpoint per this many ms, and only after writes (default 1,000). */
  intervalMs?: number;
  /** The worker failed or a checkpoint failed: the store checkpoints on its own connection again. */
  onFailure: (e: Error) => void;
  /**
   * The log has not restarted for `backlogFrames` frames (default 4,000, about 16 MiB): writes kept
   * coming while the worker copied, so no write found it all copied. The store then copies the rest
   * on its own connection, where no write can come in between (a few frames: the worker copied the
   * others), and the next write restarts the log.
   */
  onBacklog: () => void;
  backlogFrames?: number;
}

// The worker's code, evaluated from this string (no file to find next to the compiled or the
// TypeScript module). Node evaluates it as CommonJS, or as a module under `--input-type=module`, so
// it uses only what both have: dynamic import, of the same better-sqlite3 the store uses (by URL).
const WORKER_SOURCE = `
(async () => {
  const { parentPort, workerData } = await import('node:worker_threads');
  let db;
  try {
    const Database = (await import(workerData.driver)).default;
    db = new Database(workerData.path, { fileMustExist: true });
    db.pragma('busy_timeout = 5000');
  } catch (e) {
    parentPort.postMessage({ error: 'cannot open the database for checkpoints: ' + (e && e.message ? e.message : String(e)) });
  }
  parentPort.on('message', (m) => {
    if (m === 'close') {
      if (db) db.close();
      parentPort.close();
      return;
    }
    if (!db) return;
    try {
      const row = db.pragma('wal_checkpoint(PASSIVE)')[0];
      parentPort.postMessage({ log: row.log, checkpointed: row.checkpointed });
    } catch (e) {
      parentPort.postMessage({ error: e && e.message ? e.message : String(e) });
    }
  });
})();
`;

export class WalCheckpointer {
  private worker: Worker | undefined;
  private timer: NodeJS.Timeout | undefined;
  private written = false;
  private inFlight = false;
  private stopped = false;
  /** Checkpoints finished, and the last one's result (tests, diagnostics). */
  checkpoints = 0;
  /** Times the log had grown past `backlogFrames` (onBacklog called). */
  backlogs = 0;
  last: CheckpointResult | undefined;
  private readonly intervalMs: number;

  /** `dbPath`: the database file's real path. */
  constructor(
    private readonly dbPath: string,
    private readonly opts: WalCheckpointerOptions,
  ) {
    this.intervalMs = opts.intervalMs ?? 1000;
  }

  /** A write committed: a checkpoint follows within the interval. */
  wrote(): void {
    if (this.stopped) return;
    this.written = true;
    if (!this.timer) {
      this.timer = setTimeout(() => this.tick(), this.intervalMs);
      this.timer.unref();
    }
  }

  /**
   * Ends the worker after the checkpoint under way (its connection closes first): undefined when no
   * worker was started (nothing to wait for), else a promise of its end.
   */
  close(): Promise<void> | undefined {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const w = this.worker;
    this.worker = undefined;
    if (!w) return undefined;
    const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    // Waited for: the process stays up until the worker has closed its connection.
    w.ref();
    w.postMessage('close');
    return exited;
  }

  private tick(): void {
    this.timer = undefined;
    if (this.stopped || !this.written) return;
    if (this.inFlight) {
      // The previous checkpoint is still running: look again after another interval.
      this.wrote();
      return;
    }
    this.written = false;
    let w: Worker;
    try {
      w = this.worker ?? this.start();
    } catch (e) {
      this.fail(e);
      return;
    }
    this.inFlight = true;
    w.postMessage('checkpoint');
  }

  private start(): Worker {
    const driver = pathToFileURL(createRequire(import.meta.url).resolve('better-sqlite3')).href;
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { driver, path: this.dbPath } });
    // A store that is never closed must not keep its process alive.
    w.unref();
    w.on('message', (m: { error?: string } & Partial<CheckpointResult>) => {
      this.inFlight = false;
      if (m.error !== undefined) {
        this.fail(new Error(m.error));
        return;
      }
      this.checkpoints++;
      this.last = { log: Number(m.log), checkpointed: Number(m.checkpointed) };
      if (this.last.log >= (this.opts.backlogFrames ?? 4000) && !this.stopped) {
        this.backlogs++;
        this.opts.onBacklog();
      }
    });
    w.on('error', (e) => this.fail(e));
    w.on('exit', (code) => {
      if (!this.stopped) this.fail(new Error(`the checkpoint worker exited (code ${code})`));
    });
    this.worker = w;
    return w;
  }

  private fail(e: unknown): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const w = this.worker;
    this.worker = undefined;
    void w?.terminate();
    this.opts.onFailure(new Error(`checkpoints of ${this.dbPath}-wal on a worker thread stopped: ${errorMessage(e)}`, { cause: e }));
  }
}
