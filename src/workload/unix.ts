/**
 * `unix` workload attestor (DESIGN §4): selectors from the caller's kernel credentials and its
 * executable.
 *
 *   unix:uid:<n> unix:gid:<n>       the caller's effective uid/gid from SO_PEERCRED
 *   unix:user:<name> unix:group:<name>   names from /etc/passwd and /etc/group (files only: NSS
 *                                   sources such as LDAP/SSSD are NOT consulted, since there is
 *                                   no getpwuid binding; a uid without a local name gets no
 *                                   user selector)
 *   unix:supplementary_gid:<n>      each gid on the "Groups:" line of /proc/<pid>/status
 *   unix:path:<abs path>            readlink /proc/<pid>/exe, skipped when the file was deleted
 *   unix:sha256:<hex>               SHA-256 of the executable read through /proc/<pid>/exe (the
 *                                   file the process runs, even if the path was replaced or
 *                                   deleted), skipped above maxBinaryBytes; cached by
 *                                   (st_dev, st_ino, size, mtime, ctime) in a bounded LRU
 *
 * The passwd/group formats are parsed by hand (colon-separated text; no library needed).
 */
import { createHash } from 'node:crypto';
import { readlinkSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { SigilError } from '../errors.js';
import { validatePluginConfig } from '../plugins/validate.js';
import type { AgentPluginDeps, JsonSchema, Selector, WorkloadAttestor, WorkloadAttestorPlugin, WorkloadCaller } from '../plugins/types.js';
import { DEFAULT_PROC_ROOT, parseStatus, procPath, readBoundedFileSync, readStatus, type CallerProcFiles, type HeldFilesAttestor, type ProcStatus } from './proc.js';

export interface UnixAttestorConfig {
  /** Add `unix:sha256:` selectors (default true). */
  hashBinaries?: boolean;
  /** Executables larger than this are not hashed (default 256 MiB). */
  maxBinaryBytes?: number;
}

export interface UnixAttestorOptions {
  /** Root of the proc file system (tests point it at a fake tree). Default /proc. */
  procRoot?: string;
  passwdPath?: string;
  groupPath?: string;
  /** Entries in the executable hash cache (default 512). */
  hashCacheSize?: number;
  /** Changes to the passwd/group files are looked for at most this often (default 1000 ms). */
  nameFileRecheckMs?: number;
  logger?: Logger;
}

export const DEFAULT_MAX_BINARY_BYTES = 256 * 1024 * 1024;

export const unixConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    hashBinaries: { type: 'boolean', default: true },
    maxBinaryBytes: { type: 'integer', minimum: 1, maximum: 64 * 1024 * 1024 * 1024, default: DEFAULT_MAX_BINARY_BYTES },
  },
};

/** name per numeric id, first occurrence wins (as getpwuid on a files database). */
export function parseIdNameFile(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.length === 0 || line.startsWith('#') || line.startsWith('+') || line.startsWith('-')) continue;
    const fields = line.split(':');
    const name = fields[0];
    const id = fields[2];
    if (name === undefined || name.length === 0 || id === undefined || !/^\d{1,10}$/.test(id)) continue;
    const n = Number(id);
    if (n > 0xffffffff) continue;
    if (!out.has(n)) out.set(n, name);
  }
  return out;
}

const NAME_FILE_MAX_BYTES = 32 * 1024 * 1024;

/** How often a passwd/group file is checked for changes (its stat), at most, by default. */
export const NAME_FILE_RECHECK_MS = 1000;

/** A passwd/group file, re-read when its inode, size, mtime or ctime changes (checked at most once a second). */
class NameFile {
  private cached: { key: string; map: Map<number, string> } | undefined;
  private checkedAt = Number.NEGATIVE_INFINITY;
  constructor(
    private readonly path: string,
    private readonly recheckMs: number,
  ) {}

  /** The name of `id` (synchronous: a stat at most once per recheck interval, the file read only when it changed). */
  lookup(id: number): string | undefined {
    const now = performance.now();
    if (this.cached && now - this.checkedAt < this.recheckMs) return this.cached.map.get(id);
    this.checkedAt = now;
    let key: string;
    try {
      const st = statSync(this.path, { bigint: true });
      key = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch {
      this.cached = undefined;
      return undefined; // no such file: no names
    }
    if (!this.cached || this.cached.key !== key) {
      // The file changed: until it has been read again, nothing of the old one is served.
      this.cached = undefined;
      const text = readBoundedFileSync(this.path, NAME_FILE_MAX_BYTES).toString('utf8');
      this.cached = { key, map: parseIdNameFile(text) };
    }
    return this.cached.map.get(id);
  }
}

/** Bounded LRU keyed by file identity → hex SHA-256. */
class HashCache {
  private readonly map = new Map<string, string>();
  /** The most recently used key (re-inserting it again would change nothing). */
  private newest: string | undefined;
  constructor(private readonly max: number) {}
  get(k: string): string | undefined {
    const v = this.map.get(k);
    // Move a hit to the back, unless it is there already: the common case (many callers of one
    // program) then leaves the long-lived map alone instead of reallocating it on every call.
    if (v !== undefined && k !== this.newest) {
      this.map.delete(k);
      this.map.set(k, v);
      this.newest = k;
    }
    return v;
  }
  set(k: string, v: string): void {
    this.map.delete(k);
    this.map.set(k, v);
    this.newest = k;
    while (this.map.size > this.max) {
      const oldest = this.map.keys().next().value;
      if (oldest === undefined) break;
      this.map.delete(oldest);
    }
  }
  get size(): number {
    return this.map.size;
  }
}

export class UnixAttestor implements WorkloadAttestor, HeldFilesAttestor {
  readonly stats = { hashHits: 0, hashMisses: 0, hashSkippedTooLarge: 0 };
  private readonly procRoot: string;
  private readonly passwd: NameFile;
  private readonly group: NameFile;
  private readonly cache: HashCache;
  private readonly inflight = new Map<string, Promise<string | undefined>>();
  private readonly slots = new Slots(MAX_PARALLEL_HASHES);
  private readonly hashBinaries: boolean;
  private readonly maxBinaryBytes: number;
  private readonly logger: Logger | undefined;

  constructor(config: UnixAttestorConfig = {}, opts: UnixAttestorOptions = {}) {
    this.hashBinaries = config.hashBinaries ?? true;
    this.maxBinaryBytes = config.maxBinaryBytes ?? DEFAULT_MAX_BINARY_BYTES;
    this.procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
    const recheck = opts.nameFileRecheckMs ?? NAME_FILE_RECHECK_MS;
    this.passwd = new NameFile(opts.passwdPath ?? '/etc/passwd', recheck);
    this.group = new NameFile(opts.groupPath ?? '/etc/group', recheck);
    this.cache = new HashCache(opts.hashCacheSize ?? 512);
    this.logger = opts.logger;
  }

  get hashCacheSize(): number {
    return this.cache.size;
  }

  async attest(caller: WorkloadCaller, signal: AbortSignal): Promise<Selector[]> {
    const status = await readStatus(this.procRoot, caller.pid, signal);
    return this.selectorsOf(caller, status, procPath(this.procRoot, caller.pid, 'exe'), signal);
  }

  /** attest() through the files the caller's connection holds open (CallerProcFiles). */
  async attestWithFiles(caller: WorkloadCaller, files: CallerProcFiles, signal: AbortSignal): Promise<Selector[]> {
    abortCheck(signal);
    return this.selectorsOf(caller, parseStatus(files.statusText()), files.exeLink, signal);
  }

  private async selectorsOf(caller: WorkloadCaller, status: ProcStatus, exeLink: string, signal: AbortSignal): Promise<Selector[]> {
    const { uid, gid } = caller;
    const out: Selector[] = [`unix:uid:${uid}`, `unix:gid:${gid}`];
    const user = this.passwd.lookup(uid);
    const group = this.group.lookup(gid);
    if (user !== undefined) out.push(`unix:user:${user}`);
    if (group !== undefined) out.push(`unix:group:${group}`);
    for (const g of distinct(status.groups)) out.push(`unix:supplementary_gid:${g}`);
    abortCheck(signal);

    let exePath: string | undefined;
    try {
      exePath = readlinkSync(exeLink);
    } catch {
      exePath = undefined; // kernel thread, or no permission: no path/hash selectors
    }
    if (exePath !== undefined && isAbsolute(exePath) && !exePath.endsWith(' (deleted)')) out.push(`unix:path:${exePath}`);
    if (this.hashBinaries && exePath !== undefined) {
      const h = this.hashCached(exeLink);
      const hex = typeof h === 'string' || h === undefined ? h : await this.hashExecutable(exeLink, h, signal);
      if (hex !== undefined) out.push(`unix:sha256:${hex}`);
    }
    return out;
  }

  /**
   * The cached SHA-256 of the file behind the /proc/<pid>/exe link (a hit is synchronous: one
   * stat), undefined when it is not hashed (not a regular file, gone), or the file's key and size
   * for hashExecutable().
   */
  private hashCached(exeLink: string): string | undefined | { key: string; size: bigint } {
    let key: string;
    let size: bigint;
    try {
      const st = statSync(exeLink, { bigint: true });
      if (!st.isFile()) return undefined;
      key = fileKey(st);
      size = st.size;
    } catch {
      return undefined;
    }
    const hit = this.cache.get(key);
    if (hit !== undefined) {
      this.stats.hashHits++;
      return hit;
    }
    return { key, size };
  }

  /**
   * SHA-256 of the file behind the /proc/<pid>/exe magic link; undefined if skipped. Concurrent
   * callers for the same file share one hashing run (so a burst of new connections from one
   * program reads it once), at most `MAX_PARALLEL_HASHES` files are hashed at a time, and a
   * caller whose deadline passes stops waiting while the run goes on to fill the cache.
   */
  private async hashExecutable(exeLink: string, file: { key: string; size: bigint }, signal: AbortSignal): Promise<string | undefined> {
    const { key, size } = file;
    if (size > BigInt(this.maxBinaryBytes)) {
      this.stats.hashSkippedTooLarge++;
      this.logger?.warn({ exe: exeLink, size: Number(size), maxBinaryBytes: this.maxBinaryBytes }, 'executable too large to hash; no unix:sha256 selector');
      return undefined;
    }
    let run = this.inflight.get(key);
    if (!run) {
      this.stats.hashMisses++;
      run = this.slots.run(() => this.hashFile(exeLink, key)).finally(() => this.inflight.delete(key));
      this.inflight.set(key, run);
    }
    return await abortable(run, signal);
  }

  /** Hash the file now behind `exeLink` if it is still the file identified by `key`. */
  private async hashFile(exeLink: string, key: string): Promise<string | undefined> {
    let fh;
    try {
      fh = await open(exeLink, 'r');
    } catch {
      return undefined;
    }
    try {
      if (fileKey(await fh.stat({ bigint: true })) !== key) return undefined;
      const hash = createHash('sha256');
      const buf = Buffer.allocUnsafe(1024 * 1024);
      let position = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, position);
        if (bytesRead === 0) break;
        position += bytesRead;
        if (position > this.maxBinaryBytes) {
          this.stats.hashSkippedTooLarge++;
          return undefined; // grew while reading
        }
        hash.update(buf.subarray(0, bytesRead));
      }
      // Only trust (and cache) the digest when the file did not change while it was read.
      if (fileKey(await fh.stat({ bigint: true })) !== key) return undefined;
      const hex = hash.digest('hex');
      this.cache.set(key, hex);
      return hex;
    } finally {
      await fh.close().catch(() => undefined);
    }
  }
}

const MAX_PARALLEL_HASHES = 2;

/** The distinct numbers of `xs`, in the order they first appear (a few groups: no Set). */
function distinct(xs: number[]): Iterable<number> {
  if (xs.length > 16) return new Set(xs);
  for (let i = 1; i < xs.length; i++) if (xs.lastIndexOf(xs[i]!, i - 1) >= 0) return new Set(xs);
  return xs;
}

function fileKey(st: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** A tiny counting semaphore. */
class Slots {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new SigilError('workload.attestation_aborted', 'unix attestation was aborted (timeout)'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new SigilError('workload.attestation_aborted', 'unix attestation was aborted (timeout)'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

function abortCheck(signal: AbortSignal): void {
  if (signal.aborted) throw new SigilError('workload.attestation_aborted', 'unix attestation was aborted (timeout)');
}

export function createUnixAttestor(config: unknown, opts: UnixAttestorOptions = {}): UnixAttestor {
  const cfg = validatePluginConfig<UnixAttestorConfig>(unixConfigSchema, config, { namespace: 'unix', what: 'plugin "unix" config' });
  return new UnixAttestor(cfg, opts);
}

export const unixAttestorPlugin: WorkloadAttestorPlugin = {
  name: 'unix',
  configSchema: unixConfigSchema,
  create(config: unknown, deps: AgentPluginDeps): WorkloadAttestor {
    return createUnixAttestor(config, { logger: deps.logger });
  },
};

