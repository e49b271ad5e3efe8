/**
 * SHA-256 of open files on worker threads, so that hashing an executable (about 0.5 s of CPU for
 * 255 MiB here) never runs on the agent's event loop, and in turns, so that a large file does not
 * hold a thread while a small one waits.
 *
 * The caller opens the file, checks what it is and closes it afterwards; a worker only reads the
 * descriptor it is given (pread from offset 0) and answers with the digest, or with "too large"
 * as soon as more than `maxBytes` were read. File descriptors are per process, so the number means
 * the same file on every thread. Each file is given to one worker (the one with the fewest files),
 * which reads its files `SLICE_BYTES` at a time, one slice of each in turn, by itself (one message
 * in and one out per file: a round trip per slice cost the event loop about 0.25 ms, 20 ms per
 * 255 MiB). A file therefore waits at most one slice of each other file on its worker between two
 * of its own slices, however large they are (ExeHasher hashes at most one file per uid at a time,
 * so these turns are turns between uids).
 *
 * Workers start on first use, are unref'd while idle (an idle pool keeps no process alive) and end
 * after `idleMs` without work. A worker that fails or exits fails the files it was hashing, and is
 * replaced at the next one.
 */
import { Worker } from 'node:worker_threads';
import { SigilError, errorMessage } from '../errors.js';

export type HashResult = { hex: string } | { tooLarge: true };

/** Bytes a worker reads of one file before it turns to its next file (about 8 ms of SHA-256 here). */
export const SLICE_BYTES = 4 * 1024 * 1024;

// The worker's code, evaluated from this string (no file to find next to the compiled or the
// TypeScript module). Node evaluates it as CommonJS, or as a module under `--input-type=module`,
// so it uses only what both have: dynamic import. One slice per turn of the worker's event loop
// (setImmediate), so files that arrive meanwhile join the round at once.
const WORKER_SOURCE = `
(async () => {
  const { parentPort, workerData } = await import('node:worker_threads');
  const { readSync } = await import('node:fs');
  const { createHash } = await import('node:crypto');
  const buf = Buffer.allocUnsafe(1024 * 1024);
  const turns = [];
  let scheduled = false;
  // One slice of f: false once f is finished (its answer posted).
  const slice = (f) => {
    try {
      const end = f.position + workerData.sliceBytes;
      while (f.position < end) {
        const n = readSync(f.fd, buf, 0, Math.min(buf.length, end - f.position), f.position);
        if (n === 0) {
          parentPort.postMessage({ id: f.id, hex: f.hash.digest('hex') });
          return false;
        }
        f.position += n;
        if (f.position > f.maxBytes) {
          parentPort.postMessage({ id: f.id, tooLarge: true });
          return false;
        }
        f.hash.update(buf.subarray(0, n));
      }
      return true;
    } catch (e) {
      parentPort.postMessage({ id: f.id, error: e && e.message ? e.message : String(e) });
      return false;
    }
  };
  const step = () => {
    const f = turns.shift();
    if (f !== undefined && slice(f)) turns.push(f);
    scheduled = turns.length > 0;
    if (scheduled) setImmediate(step);
  };
  parentPort.on('message', (m) => {
    turns.push({ id: m.id, fd: m.fd, maxBytes: m.maxBytes, hash: createHash('sha256'), position: 0 });
    if (!scheduled) {
      scheduled = true;
      setImmediate(step);
    }
  });
})();
`;

interface Job {
  resolve: (r: HashResult) => void;
  reject: (e: Error) => void;
}

interface Lane {
  worker: Worker;
  /** Files given to this worker and not yet answered. */
  jobs: Map<number, Job>;
  idleTimer: NodeJS.Timeout | undefined;
}

interface Answer {
  id: number;
  hex?: string;
  tooLarge?: boolean;
  error?: string;
}

export class HashWorkers {
  private readonly lanes = new Set<Lane>();
  private nextId = 1;

  /** `size`: worker threads at most; `idleMs`: a worker idle this long ends. */
  constructor(
    readonly size: number,
    private readonly idleMs = 60_000,
    private readonly sliceBytes = SLICE_BYTES,
  ) {}

  /** SHA-256 of the file open as `fd`, read from its start; `tooLarge` once more than `maxBytes` were read. */
  hash(fd: number, maxBytes: number): Promise<HashResult> {
    return new Promise<HashResult>((resolve, reject) => {
      let lane: Lane;
      try {
        lane = this.laneFor();
      } catch (e) {
        reject(new SigilError('workload.binary_hash_failed', `cannot start a hashing worker thread: ${errorMessage(e)}`, { cause: e }));
        return;
      }
      const id = this.nextId++;
      lane.jobs.set(id, { resolve, reject });
      if (lane.idleTimer !== undefined) {
        // Busy again, the worker keeps the process alive: callers wait for its answers.
        clearTimeout(lane.idleTimer);
        lane.idleTimer = undefined;
        lane.worker.ref();
      }
      lane.worker.postMessage({ id, fd, maxBytes });
    });
  }

  /** An idle worker, else a new one while there are fewer than `size`, else the least loaded. */
  private laneFor(): Lane {
    let best: Lane | undefined;
    for (const l of this.lanes) {
      if (best === undefined || l.jobs.size < best.jobs.size) best = l;
    }
    if (best !== undefined && best.jobs.size === 0) return best;
    if (this.lanes.size < this.size) return this.start();
    return best ?? this.start();
  }

  private start(): Lane {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { sliceBytes: this.sliceBytes } });
    const lane: Lane = { worker, jobs: new Map(), idleTimer: undefined };
    worker.on('message', (m: Answer) => {
      const job = lane.jobs.get(m.id);
      if (job === undefined) return;
      lane.jobs.delete(m.id);
      if (typeof m.hex === 'string') job.resolve({ hex: m.hex });
      else if (m.tooLarge === true) job.resolve({ tooLarge: true });
      else job.reject(new SigilError('workload.binary_hash_failed', `reading the executable failed: ${m.error ?? 'no answer'}`));
      if (lane.jobs.size === 0) {
        // Idle: no longer keeps the process alive, and ends after a while.
        worker.unref();
        lane.idleTimer = setTimeout(() => this.retire(lane), this.idleMs);
        lane.idleTimer.unref();
      }
    });
    const gone = (why: string): void => {
      if (!this.lanes.delete(lane)) return;
      if (lane.idleTimer !== undefined) clearTimeout(lane.idleTimer);
      const failed = [...lane.jobs.values()];
      lane.jobs.clear();
      for (const j of failed) j.reject(new SigilError('workload.binary_hash_failed', `the hashing worker thread ${why}`));
    };
    worker.on('error', (e) => gone(`failed: ${errorMessage(e)}`));
    worker.on('exit', (code) => gone(`exited (code ${code})`));
    this.lanes.add(lane);
    return lane;
  }

  private retire(lane: Lane): void {
    if (lane.jobs.size > 0 || !this.lanes.delete(lane)) return;
    void lane.worker.terminate();
  }
}
