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
 *                                   (st_dev, st_ino, size, mtime, ctime), hashed on worker
 *                                   threads with fair turns per uid (exe-hasher.ts). A caller
 *                                   whose hash cannot be computed fails (never an answer
 *                                   without it)
 *
 * The passwd/group formats are parsed by hand (colon-separated text; no library needed).
 */
import { readlinkSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { SigilError } from '../errors.js';
import { validatePluginConfig } from '../plugins/validate.js';
import type { AgentPluginDeps, JsonSchema, Selector, WorkloadAttestor, WorkloadAttestorPlugin, WorkloadCaller } from '../plugins/types.js';
import { ExeHasher } from './exe-hasher.js';
import { DEFAULT_PROC_ROOT, parseStatus, procPath, readBoundedFileSync, readStatus, type CallerProcFiles, type ExeImage, type HeldFilesAttestor, type ProcStatus } from './proc.js';

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
  /** Hash cache entries one uid other than 0 may hold (default an eighth of hashCacheSize). */
  hashCachePerUid?: number;
  /** Executables waiting to be hashed per uid (default 16); past it a caller fails (`workload.hash_queue_full`). */
  hashQueuePerUid?: number;
  /** Executables waiting to be hashed in all, uid 0 exempt (default 256). */
  hashQueueTotal?: number;
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

export class UnixAttestor implements WorkloadAttestor, HeldFilesAttestor {
  private readonly procRoot: string;
  private readonly passwd: NameFile;
  private readonly group: NameFile;
  private readonly hasher: ExeHasher;
  private readonly hashBinaries: boolean;

  constructor(config: UnixAttestorConfig = {}, opts: UnixAttestorOptions = {}) {
    this.hashBinaries = config.hashBinaries ?? true;
    this.procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
    const recheck = opts.nameFileRecheckMs ?? NAME_FILE_RECHECK_MS;
    this.passwd = new NameFile(opts.passwdPath ?? '/etc/passwd', recheck);
    this.group = new NameFile(opts.groupPath ?? '/etc/group', recheck);
    this.hasher = new ExeHasher({
      maxBinaryBytes: config.maxBinaryBytes ?? DEFAULT_MAX_BINARY_BYTES,
      cacheSize: opts.hashCacheSize,
      cachePerUid: opts.hashCachePerUid,
      queuePerUid: opts.hashQueuePerUid,
      queueTotal: opts.hashQueueTotal,
      logger: opts.logger,
    });
  }

  /** Hash cache hits and misses, executables skipped as too large, hashes failed, callers refused (queue full). */
  get stats(): ExeHasher['stats'] {
    return this.hasher.stats;
  }

  get hashCacheSize(): number {
    return this.hasher.cacheSize;
  }

  /** Hash cache entries charged to `uid`. */
  hashCachedFor(uid: number): number {
    return this.hasher.cachedFor(uid);
  }

  async attest(caller: WorkloadCaller, signal: AbortSignal): Promise<Selector[]> {
    const status = await readStatus(this.procRoot, caller.pid, signal);
    return this.selectorsOf(caller, status, procPath(this.procRoot, caller.pid, 'exe'), signal);
  }

  /**
   * attest() through the files the caller's connection holds open (CallerProcFiles).
   *
   * With `files.exeImage` (the program the connection recorded at accept), the path and hash
   * selectors are that program's, with no readlink or stat of the exe link here. Why this proves
   * no less: such an attestation's selectors are used only after the connection has checked,
   * after every attestor finished, that the caller still runs exactly that program (the link's
   * target and the file's device, inode, size, mtime and ctime; CallerConnection.checkUnchanged),
   * and each later call answered from them checks the file again. Reading the link here instead
   * gave the same selectors whenever that check passed, except for a caller that ran another
   * program while it was attested and came back to the recorded one before the check: that
   * caller got the other program's selectors, and now gets those of the program the check
   * confirms. The hash itself still comes from the cache by the file's identity, or from reading
   * the file through the caller's link, refused unless it is that very file (ExeHasher).
   */
  async attestWithFiles(caller: WorkloadCaller, files: CallerProcFiles, signal: AbortSignal): Promise<Selector[]> {
    abortCheck(signal);
    return this.selectorsOf(caller, parseStatus(files.statusText()), files.exeLink, signal, files.exeImage);
  }

  private async selectorsOf(caller: WorkloadCaller, status: ProcStatus, exeLink: string, signal: AbortSignal, image?: ExeImage): Promise<Selector[]> {
    const { uid, gid } = caller;
    const out: Selector[] = [`unix:uid:${uid}`, `unix:gid:${gid}`];
    const user = this.passwd.lookup(uid);
    const group = this.group.lookup(gid);
    if (user !== undefined) out.push(`unix:user:${user}`);
    if (group !== undefined) out.push(`unix:group:${group}`);
    for (const g of distinct(status.groups)) out.push(`unix:supplementary_gid:${g}`);
    abortCheck(signal);

    let exePath: string | undefined;
    if (image !== undefined) exePath = image.path;
    else {
      try {
        exePath = readlinkSync(exeLink);
      } catch {
        exePath = undefined; // kernel thread, or no permission: no path/hash selectors
      }
    }
    if (exePath !== undefined && isAbsolute(exePath) && !exePath.endsWith(' (deleted)')) out.push(`unix:path:${exePath}`);
    if (this.hashBinaries && exePath !== undefined) {
      // A hit is synchronous (one stat); a miss waits for its turn. Either the hash or a failure:
      // an answer without it would lose the caller its hash-pinned identities in silence.
      const found = image !== undefined ? this.hasher.lookupFile(uid, exeLink, image.file) : this.hasher.lookup(uid, exeLink);
      const hex = 'hex' in found ? found.hex : 'key' in found ? await this.hasher.hash(uid, exeLink, found.key, signal) : undefined;
      if (hex !== undefined) out.push(`unix:sha256:${hex}`);
    }
    return out;
  }
}

/** The distinct numbers of `xs`, in the order they first appear (a few groups: no Set). */
function distinct(xs: number[]): Iterable<number> {
  if (xs.length > 16) return new Set(xs);
  for (let i = 1; i < xs.length; i++) if (xs.lastIndexOf(xs[i]!, i - 1) >= 0) return new Set(xs);
  return xs;
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

