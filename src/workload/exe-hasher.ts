/**
 * SHA-256 of the executable behind a caller's /proc/<pid>/exe link, for the `unix` attestor's
 * `unix:sha256:` selector: cached, computed off the event loop, and shared fairly between uids.
 *
 * - **Cache** (exe-hash-cache.ts): by file identity (device, inode, size, mtime, ctime); a hit is
 *   synchronous (one stat of the link). One uid cannot push out another uid's entries wholesale.
 * - **Runs**: a file not in the cache is hashed by a run. Callers of one uid asking for the same
 *   file share its queued run; any caller may join a run that has started, and when a run starts,
 *   the queued runs of other uids for the same file join it.
 * - **Fair scheduling** (fair-queue.ts): runs are queued per uid and started round-robin between
 *   uids, one run per uid at a time and `MAX_FILES_HASHING` in all, so no uid waits behind another
 *   uid's queue. At most `queuePerUid` runs wait per uid and `queueTotal` in all; beyond that the
 *   caller is refused (`workload.hash_queue_full`). A queued run nobody waits for any more is
 *   dropped.
 * - **Off the event loop, in turns** (hash-workers.ts): the file is opened here, through the link
 *   of a caller waiting for the run, its identity checked against the key (fstat), read and hashed
 *   on one of `HASH_THREADS` worker threads 4 MiB at a time, in turn with the other files being
 *   hashed (one per uid), and its identity checked again before the digest is trusted or cached.
 *   A small file thus waits for a few slices of the others, never for a whole large file.
 * - **Every caller gets its hash or a failure**: if the run cannot open the file through one
 *   caller's link (that process exited, or now runs another file), that caller's hash fails and the
 *   run tries the next waiting caller's own link. A caller whose hash cannot be computed gets
 *   `workload.binary_hash_failed`, never an answer without the hash.
 *
 * Cost is charged by apparent size (`st_size`): hashing reads every byte, holes included, so a
 * sparse file costs as much CPU as a dense one of the same size; its allocated blocks say nothing
 * about that. Files larger than `maxBinaryBytes` are not hashed (no selector, as documented).
 */
import { constants, statSync, type BigIntStats } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Logger } from 'pino';
import { SigilError, errorMessage } from '../errors.js';
import { ExeHashCache } from './exe-hash-cache.js';
import type { FileIdentity } from './proc.js';
import { FairQueue } from './fair-queue.js';
import { HashWorkers } from './hash-workers.js';

export interface ExeHasherOptions {
  /** Files larger than this are not hashed. */
  maxBinaryBytes: number;
  /** Entries in the hash cache (default 512). */
  cacheSize?: number;
  /** Cache entries charged to one uid other than 0 (default an eighth of cacheSize). */
  cachePerUid?: number;
  /** Runs waiting per uid (default 16). */
  queuePerUid?: number;
  /** Runs waiting in all, uid 0 exempt (default 256). */
  queueTotal?: number;
  /** Worker threads the runs share (default: one pool of HASH_THREADS for the process). */
  workers?: HashWorkers;
  logger?: Logger;
}

/** Worker threads that hash, shared by every unix attestor of the process. */
export const HASH_THREADS = 2;
/** Files being hashed at once, in turns (each of another uid: one uid hashes one file at a time). */
export const MAX_FILES_HASHING = 16;
export const DEFAULT_HASH_QUEUE_PER_UID = 16;
export const DEFAULT_HASH_QUEUE_TOTAL = 256;

let sharedWorkers: HashWorkers | undefined;

/** What lookup() found: the hash, a file not to hash, or the key of a file to hash(). */
export type Lookup = { hex: string } | { skip: 'too_large' | 'not_a_file' } | { key: string };

interface Waiter {
  uid: number;
  link: string;
  settle: (r: string | SigilError) => void;
}

interface Run {
  key: string;
  /** The uid whose queue the run was in (it runs as that uid's one run). */
  uid: number;
  waiters: Set<Waiter>;
  started: boolean;
}

export class ExeHasher {
  readonly stats = { hashHits: 0, hashMisses: 0, hashSkippedTooLarge: 0, hashFailed: 0, hashRefused: 0 };
  private readonly cache: ExeHashCache;
  private readonly queue: FairQueue<Run>;
  /** Runs that have started, by key. */
  private readonly running = new Map<string, Run>();
  /** Queued runs, by key, then by uid. */
  private readonly queued = new Map<string, Map<number, Run>>();
  private readonly maxBinaryBytes: number;
  private readonly workers: HashWorkers;
  private readonly logger: Logger | undefined;

  constructor(opts: ExeHasherOptions) {
    this.maxBinaryBytes = opts.maxBinaryBytes;
    const size = opts.cacheSize ?? 512;
    this.cache = new ExeHashCache(size, opts.cachePerUid ?? Math.max(1, Math.floor(size / 8)));
    this.workers = opts.workers ?? (sharedWorkers ??= new HashWorkers(HASH_THREADS));
    this.queue = new FairQueue({
      slots: MAX_FILES_HASHING,
      perUid: opts.queuePerUid ?? DEFAULT_HASH_QUEUE_PER_UID,
      total: opts.queueTotal ?? DEFAULT_HASH_QUEUE_TOTAL,
    });
    this.logger = opts.logger;
  }

  get cacheSize(): number {
    return this.cache.size;
  }

  /** Cache entries charged to `uid`. */
  cachedFor(uid: number): number {
    return this.cache.heldBy(uid);
  }

  /**
   * The cached hash of the file behind `exeLink` for a caller of `uid` (synchronous: one stat), or
   * why it is not hashed, or its key for hash(). Throws `workload.binary_hash_failed` when the link
   * cannot be followed any more (the process exited since its link was read).
   */
  lookup(uid: number, exeLink: string): Lookup {
    let st: BigIntStats;
    try {
      st = statSync(exeLink, { bigint: true });
    } catch (e) {
      this.stats.hashFailed++;
      throw new SigilError('workload.binary_hash_failed', `cannot stat the executable behind ${exeLink}: ${errorMessage(e)}`, { cause: e });
    }
    return this.lookupKnown(uid, exeLink, st.isFile(), st.size, fileKey(st));
  }

  /**
   * lookup() for a file whose identity the caller already has (the program its connection recorded
   * at accept, which the connection checks again after the attestation: see
   * UnixAttestor.attestWithFiles), without a stat; undefined `file` (the kernel hid it) fails as
   * an unreadable link does. A hash() of its key still opens the file through `exeLink` and hashes
   * it only if it is that very file.
   */
  lookupFile(uid: number, exeLink: string, file: FileIdentity | undefined): Lookup {
    if (file === undefined) {
      this.stats.hashFailed++;
      throw new SigilError('workload.binary_hash_failed', `cannot stat the executable behind ${exeLink}: the kernel does not show it`);
    }
    let key = knownKeys.get(file);
    if (key === undefined) knownKeys.set(file, (key = fileKey(file)));
    return this.lookupKnown(uid, exeLink, file.isFile, file.size, key);
  }

  private lookupKnown(uid: number, exeLink: string, isFile: boolean, size: bigint, key: string): Lookup {
    if (!isFile) return { skip: 'not_a_file' };
    if (size > BigInt(this.maxBinaryBytes)) {
      this.stats.hashSkippedTooLarge++;
      this.logger?.warn({ exe: exeLink, size: Number(size), maxBinaryBytes: this.maxBinaryBytes }, 'executable too large to hash; no unix:sha256 selector');
      return { skip: 'too_large' };
    }
    const hex = this.cache.get(key, uid);
    if (hex !== undefined) {
      this.stats.hashHits++;
      return { hex };
    }
    return { key };
  }

  /**
   * Hash the file of `key` (from lookup()) for a caller of `uid` whose exe link is `exeLink`.
   * Rejects with `workload.hash_queue_full` when its uid (or everyone) has too many runs waiting,
   * `workload.binary_hash_failed` when its hash cannot be computed, `workload.attestation_aborted`
   * when `signal` aborts first (the run goes on for the others, or to fill the cache if it has
   * started).
   */
  hash(uid: number, exeLink: string, key: string, signal: AbortSignal): Promise<string> {
    if (signal.aborted) return Promise.reject(aborted());
    let run = this.running.get(key) ?? this.queued.get(key)?.get(uid);
    if (run === undefined) {
      const hex = this.cache.get(key, uid); // a run may have finished since lookup()
      if (hex !== undefined) {
        this.stats.hashHits++;
        return Promise.resolve(hex);
      }
      run = { key, uid, waiters: new Set(), started: false };
      const refused = this.queue.push(uid, run);
      if (refused !== undefined) {
        this.stats.hashRefused++;
        const why =
          refused.limit === 'perUid'
            ? `uid ${uid} has ${refused.queued} executables waiting to be hashed, the limit per uid`
            : `${refused.queued} executables are waiting to be hashed, the limit for all uids but 0`;
        return Promise.reject(new SigilError('workload.hash_queue_full', `unix: ${why}; no unix:sha256 selector for this caller now (retry)`, { status: 503 }));
      }
      this.stats.hashMisses++;
      let byUid = this.queued.get(key);
      if (byUid === undefined) this.queued.set(key, (byUid = new Map()));
      byUid.set(uid, run);
    }
    const r = run;
    const p = new Promise<string>((resolve, reject) => {
      const onAbort = (): void => {
        this.leave(r, w);
        reject(aborted());
      };
      const w: Waiter = {
        uid,
        link: exeLink,
        settle: (x) => {
          signal.removeEventListener('abort', onAbort);
          if (typeof x === 'string') resolve(x);
          else reject(x);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      r.waiters.add(w);
    });
    this.pump();
    return p;
  }

  /** A waiter stopped waiting: a queued run nobody waits for is dropped. */
  private leave(run: Run, w: Waiter): void {
    run.waiters.delete(w);
    if (!run.started && run.waiters.size === 0 && this.queue.remove(run.uid, run)) this.unqueue(run);
  }

  private unqueue(run: Run): void {
    const byUid = this.queued.get(run.key);
    if (byUid?.get(run.uid) !== run) return;
    byUid.delete(run.uid);
    if (byUid.size === 0) this.queued.delete(run.key);
  }

  private pump(): void {
    for (;;) {
      const next = this.queue.take();
      if (next === undefined) return;
      void this.start(next.item);
    }
  }

  private async start(run: Run): Promise<void> {
    this.unqueue(run);
    run.started = true;
    try {
      const hex = this.cache.get(run.key, run.uid);
      if (hex !== undefined) {
        for (const w of run.waiters) w.settle(hex);
        run.waiters.clear();
        return;
      }
      const other = this.running.get(run.key);
      if (other !== undefined) {
        for (const w of run.waiters) other.waiters.add(w);
        run.waiters.clear();
        return;
      }
      this.running.set(run.key, run);
      // Callers of other uids waiting for the same file wait no longer in their own queues.
      for (const q of this.queued.get(run.key)?.values() ?? []) {
        if (!this.queue.remove(q.uid, q)) continue;
        q.started = true;
        for (const w of q.waiters) run.waiters.add(w);
      }
      this.queued.delete(run.key);
      await this.runHash(run);
    } catch (e) {
      // Not expected (runHash answers its callers itself): nobody is left waiting regardless.
      this.end(run);
      this.failAll(run, `hashing failed: ${errorMessage(e)}`);
    } finally {
      this.end(run);
      this.failAll(run, 'the hashing run ended without an answer'); // none left, normally
      this.queue.finish(run.uid);
      this.pump();
    }
  }

  /**
   * No caller joins `run` any more. Called in the same synchronous step as the run's last answer,
   * so that no caller can join it between that answer and the end of the run.
   */
  private end(run: Run): void {
    if (this.running.get(run.key) === run) this.running.delete(run.key);
  }

  /**
   * Open the file through a waiting caller's own link, check it is the file of `run.key`, hash it
   * on a worker, check again. A link that cannot be opened, or leads to another file, fails that
   * caller only, and the next caller's link is tried.
   */
  private async runHash(run: Run): Promise<void> {
    const tried = new Set<Waiter>();
    for (;;) {
      let w: Waiter | undefined;
      for (const x of run.waiters) {
        if (!tried.has(x)) {
          w = x;
          break;
        }
      }
      if (w === undefined) {
        this.end(run); // every caller has been answered, or has gone
        return;
      }
      tried.add(w);
      let fh;
      try {
        fh = await open(w.link, constants.O_RDONLY | constants.O_NONBLOCK);
      } catch (e) {
        this.fail(run, w, `cannot open ${w.link}: ${errorMessage(e)}`);
        continue;
      }
      try {
        const before = await fh.stat({ bigint: true });
        if (!before.isFile() || fileKey(before) !== run.key) {
          this.fail(run, w, `${w.link} no longer leads to the file it did when the caller was looked up`);
          continue;
        }
        const r = await this.workers.hash(fh.fd, this.maxBinaryBytes);
        // Only trust (and cache) the digest when the file did not change while it was read.
        if ('tooLarge' in r || fileKey(await fh.stat({ bigint: true })) !== run.key) {
          this.end(run);
          this.failAll(run, 'the executable changed while it was hashed');
          return;
        }
        const shared = [...run.waiters].some((x) => x.uid !== run.uid);
        this.cache.set(run.key, r.hex, run.uid, shared);
        this.end(run);
        for (const x of run.waiters) x.settle(r.hex);
        run.waiters.clear();
        return;
      } catch (e) {
        this.end(run);
        this.failAll(run, errorMessage(e));
        return;
      } finally {
        await fh.close().catch(() => undefined);
      }
    }
  }

  private fail(run: Run, w: Waiter, why: string): void {
    run.waiters.delete(w);
    this.stats.hashFailed++;
    w.settle(hashFailed(why));
  }

  private failAll(run: Run, why: string): void {
    for (const w of [...run.waiters]) this.fail(run, w, why);
  }
}

function aborted(): SigilError {
  return new SigilError('workload.attestation_aborted', 'unix attestation was aborted (timeout)');
}

function hashFailed(why: string): SigilError {
  return new SigilError('workload.binary_hash_failed', `unix: the executable's SHA-256 could not be computed for this caller: ${why} (retry)`, { status: 503 });
}

/** Keys of identities lookupFile() was given (a connection's recorded program: the same object at every attestation). */
const knownKeys = new WeakMap<FileIdentity, string>();

function fileKey(st: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}
