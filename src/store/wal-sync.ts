/**
 * The flush of SQLite's write-ahead log before a write is acknowledged (sqlite.ts): `fdatasync` of
 * the `-wal` file on libuv's thread pool instead of inside the commit on the event loop.
 *
 * Group commit: a flush covers every write committed before it started. A write that commits while
 * a flush is under way waits for the next one, and every write that commits meanwhile shares that
 * next flush, so a burst of writes costs about two flushes, not one each.
 *
 * The log's path is the one SQLite uses: the database file's real path (SQLite resolves symbolic
 * links) with `-wal`; the caller passes it resolved. Its descriptor is opened at the first flush
 * and kept: the store holds its SQLite connection for its whole life, so SQLite never deletes or
 * replaces the log file meanwhile (it resets it in place after a checkpoint). Before the first
 * commit there may be no log file (the constructor's flush then has nothing to do); after a commit
 * a missing log is a failure, never "nothing to flush". The directory is flushed once, with the
 * first flush, so that the log's own entry in it is on disk.
 *
 * A failed flush is final. Linux reports a write-back error once per open file and may drop the
 * pages that failed, so a later `fdatasync` can succeed although the log on disk is missing frames
 * that later commits build on (WAL frames are checksummed as a chain, and recovery stops at the
 * first bad one). So after one failure every later flush is refused with `store.sync_failed`, the
 * write waiting for it included, and `onFailure` tells the store (which then refuses writes and
 * reports itself not ready). Only a restart, which recovers from what the disk holds, clears it.
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
  /** The first failed flush's error; once set, every flush is refused. */
  private failedWith: SigilError | undefined;
  /** Flushes started, for tests and metrics. */
  flushes = 0;

  constructor(
    private readonly walPath: string,
    private readonly sync: FileSync = threadPoolDataSync,
    private readonly onFailure?: (e: SigilError) => void,
  ) {}

  /** After a failed flush: the error every write is refused with (undefined while flushes succeed). */
  get refusal(): SigilError | undefined {
    const first = this.failedWith;
    if (!first) return undefined;
    return new SigilError(
      'store.sync_failed',
      `the datastore refuses writes: a flush of the SQLite write-ahead log ${this.walPath} failed earlier (${errorMessage(first.cause)}), so what was committed since may not be on disk; restart the verifier (SQLite then recovers from what the disk holds)`,
      { status: 500, cause: first },
    );
  }

  /** Resolves once every write committed before this call is on disk; rejects with `store.sync_failed`. */
  flush(): Promise<void> {
    const refused = this.refusal;
    if (refused) return Promise.reject(refused);
    if (this.closed) {
      return Promise.reject(new SigilError('store.sync_failed', `cannot flush the SQLite write-ahead log ${this.walPath}: the datastore is closed`, { status: 500 }));
    }
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

  /** Flush now, on this thread (the constructor's migrations, which cannot wait). No log yet: nothing to do. */
  flushNow(): void {
    const fd = this.open(false);
    if (fd === undefined) return;
    try {
      if (!this.dirSynced) {
        syncDirSync(dirname(this.walPath));
        this.dirSynced = true;
      }
      fdatasyncSync(fd);
    } catch (e) {
      throw this.failed(e);
    }
  }

  /**
   * Undefined when no flush is under way or waiting; else a promise that resolves (never rejects)
   * when those have ended. A write may commit meanwhile and start another: ask again.
   */
  idle(): Promise<void> | undefined {
    const busy = this.queued ?? this.running;
    return busy?.then(
      () => undefined,
      () => undefined,
    );
  }

  /** Close the log's descriptor; the caller has waited for `idle()` (no flush may be under way). */
  closeFd(): void {
    this.closed = true;
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
    // Queued behind the flush that failed: its writes get no flush of their own (see the header).
    const refused = this.refusal;
    if (refused) throw refused;
    this.flushes++;
    try {
      const fd = this.open(true) as number;
      if (!this.dirSynced) {
        await syncDir(dirname(this.walPath), this.sync === threadPoolDataSync ? threadPoolSync : this.sync);
        this.dirSynced = true;
      }
      await this.sync(fd);
    } catch (e) {
      throw this.failed(e);
    }
  }

  /** The log's descriptor, opened once; undefined while there is no log file, unless `required`. */
  private open(required: boolean): number | undefined {
    if (this.fd !== undefined) return this.fd;
    try {
      this.fd = openSync(this.walPath, fsc.O_RDONLY);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !required) return undefined;
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('the log file is missing after a commit', { cause: e });
      throw e;
    }
    return this.fd;
  }

  /** Records the first failure (then every later flush is refused) and tells the store. */
  private failed(e: unknown): SigilError {
    const err = this.failure(e);
    if (!this.failedWith) {
      this.failedWith = err;
      this.onFailure?.(err);
    }
    return err;
  }

  private failure(e: unknown): SigilError {
    return new SigilError(
      'store.sync_failed',
      `cannot flush the SQLite write-ahead log ${this.walPath} to disk: ${errorMessage(e)}; the write is committed but may not survive a power loss, and the datastore refuses writes until the verifier is restarted`,
      { status: 500, cause: e },
    );
  }
}

/** A file system that cannot flush a directory says so with EINVAL or ENOTSUP; SQLite goes on then too. */
const dirSyncUnsupported = (e: unknown): boolean => ['EINVAL', 'ENOTSUP', 'EOPNOTSUPP'].includes((e as NodeJS.ErrnoException).code ?? '');

async function syncDir(dir: string, sync: FileSync): Promise<void> {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await sync(fd);
  } catch (e) {
    if (!dirSyncUnsupported(e)) throw e;
  } finally {
    closeSync(fd);
  }
}

function syncDirSync(dir: string): void {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } catch (e) {
    if (!dirSyncUnsupported(e)) throw e;
  } finally {
    closeSync(fd);
  }
}
