/**
 * The flush of SQLite's write-ahead log before a write is acknowledged (sqlite.ts): `fdatasync` of
 * the `-wal` file on libuv's thread pool instead of inside the commit on the event loop.
 *
 * Group commit: a flush covers every write committed before it started. A write that commits while
 * a flush is under way waits for the next one, and every write that commits meanwhile shares that
 * next flush, so a burst of writes costs about two flushes, not one each.
 *
 * The log's descriptor is opened at the first flush and kept: the store holds its SQLite connection
 * for its whole life, so SQLite never deletes or replaces the log file meanwhile (it resets it in
 * place after a checkpoint). No log file yet means nothing was written through it: every committed
 * write is then in the database file, which SQLite flushes at each checkpoint. The directory is
 * flushed once, with the first flush, so that the log's own entry in it is on disk.
 */
import { closeSync, constants as fsc, fdatasync, fdatasyncSync, fsync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';

/** Flush one open file to disk (the default: `fdatasync` on the thread pool). */
export type FileSync = (fd: number) => Promise<void>;

const threadPoolDataSync: FileSync = (fd) => new Promise((resolve, reject) => fdatasync(fd, (e) => (e ? reject(e) : resolve())));
const threadPoolSync = (fd: number): Promise<void> => new Promise((resolve, reject) => fsync(fd, (e) => (e ? reject(e) : resolve())));

export class WalSync {
  private fd: number | undefined;
  private dirSynced = false;
  private closed = false;
  /** The flush under way. */
  private running: Promise<void> | undefined;
  /** The flush that starts when the running one ends (shared by every write that waits for it). */
  private queued: Promise<void> | undefined;
  /** Flushes started, for tests and metrics. */
  flushes = 0;

  constructor(
    private readonly walPath: string,
    private readonly sync: FileSync = threadPoolDataSync,
  ) {}

  /** Resolves once every write committed before this call is on disk; rejects with `store.sync_failed`. */
  flush(): Promise<void> {
    if (this.queued) return this.queued;
    if (this.running) {
      const q: Promise<void> = this.running.then(
        (): Promise<void> => this.startAfterQueue(q),
        (): Promise<void> => this.startAfterQueue(q),
      );
      this.queued = q;
      return q;
    }
    return this.start();
  }

  /** Flush now, on this thread (the constructor's migrations, which cannot wait). */
  flushNow(): void {
    const fd = this.open();
    if (fd === undefined) return;
    try {
      if (!this.dirSynced) {
        syncDirSync(dirname(this.walPath));
        this.dirSynced = true;
      }
      fdatasyncSync(fd);
    } catch (e) {
      throw this.failure(e);
    }
  }

  /**
   * Close the log's descriptor: at once when no flush is under way (undefined is returned), else
   * after the flushes under way (the promise returned).
   */
  close(): Promise<void> | undefined {
    this.closed = true;
    const busy = this.queued ?? this.running;
    if (!busy) {
      this.closeFd();
      return undefined;
    }
    return busy.then(
      () => this.closeFd(),
      () => this.closeFd(),
    );
  }

  private closeFd(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private startAfterQueue(q: Promise<void>): Promise<void> {
    if (this.queued === q) this.queued = undefined;
    return this.start();
  }

  private start(): Promise<void> {
    const p: Promise<void> = this.flushOnce().finally(() => {
      if (this.running === p) this.running = undefined;
    });
    this.running = p;
    return p;
  }

  private async flushOnce(): Promise<void> {
    this.flushes++;
    let fd: number | undefined;
    try {
      fd = this.open();
    } catch (e) {
      throw this.failure(e);
    }
    if (fd === undefined) return;
    try {
      if (!this.dirSynced) {
        await syncDir(dirname(this.walPath), this.sync === threadPoolDataSync ? threadPoolSync : this.sync);
        this.dirSynced = true;
      }
      await this.sync(fd);
    } catch (e) {
      throw this.failure(e);
    }
  }

  /** The log's descriptor, opened once; undefined while there is no log file. */
  private open(): number | undefined {
    if (this.closed) throw new Error('the datastore is closed');
    if (this.fd !== undefined) return this.fd;
    try {
      this.fd = openSync(this.walPath, fsc.O_RDONLY);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    return this.fd;
  }

  private failure(e: unknown): SigilError {
    return new SigilError(
      'store.sync_failed',
      `cannot flush the SQLite write-ahead log ${this.walPath} to disk: ${errorMessage(e)}; the write is committed but may not survive a power loss`,
      { status: 500, cause: e },
    );
  }
}

async function syncDir(dir: string, sync: FileSync): Promise<void> {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await sync(fd);
  } finally {
    closeSync(fd);
  }
}

function syncDirSync(dir: string): void {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
