/**
 * Small, bounded readers for /proc/<pid>/{stat,status,cgroup,exe} used by the Workload API's caller
 * identification and by the workload attestors. The /proc root is a parameter so that tests can
 * point it at a fake tree. The text formats are parsed by hand (they are kernel text formats, not
 * something a library covers); every parser is total: bad input gives a SigilError, never a hang
 * or a raw exception.
 */
import { closeSync, openSync, readSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SigilError } from '../errors.js';
import type { Selector, WorkloadCaller } from '../plugins/types.js';

export const DEFAULT_PROC_ROOT = '/proc';

/** Largest /proc text file we are willing to read (status is ~1.5 KiB, cgroup rarely > 4 KiB). */
export const PROC_FILE_MAX_BYTES = 256 * 1024;

const SCRATCH = Buffer.alloc(16384);

function checkPid(pid: number): void {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new SigilError('workload.bad_pid', `pid ${String(pid)} is not a positive integer`);
}

export function procPath(procRoot: string, pid: number, file: string): string {
  checkPid(pid);
  return join(procRoot, String(pid), file);
}

function isNotFound(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'ENOENT' || code === 'ESRCH';
}

/**
 * Read a whole (small) file, refusing anything larger than `maxBytes`. Works for /proc files,
 * whose size is reported as 0. A missing file or process gives `workload.process_gone`.
 *
 * The read is synchronous on purpose: /proc files are generated in memory by the kernel and
 * read in microseconds, and three thread-pool round trips (open, read, close) per file cost
 * far more than the read itself on a busy Workload API. Files are bounded by `maxBytes`.
 */
export function readBoundedFileSync(path: string, maxBytes = PROC_FILE_MAX_BYTES): Buffer {
  const fd = openProcFileSync(path);
  try {
    return readFdBounded(fd, path, maxBytes, null, false);
  } finally {
    closeSync(fd);
  }
}

function openProcFileSync(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    if (isNotFound(e)) throw new SigilError('workload.process_gone', `${path} does not exist (process gone?)`, { cause: e });
    throw new SigilError('workload.proc_read_failed', `cannot open ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Read all of an open file, refusing more than `maxBytes`: from its current offset
 * (`position` null) or, with `position` 0, from its start (pread, whatever its offset). As a
 * Buffer, or (`text`) as UTF-8 text decoded straight from the scratch buffer.
 *
 * A read that returns fewer bytes than were asked for ends the file: no second read to see the
 * end. The /proc/<pid>/ files read here (stat, status, cgroup, a pidfd's fdinfo) are each one
 * seq_file record, which the kernel generates whole and hands out whole to any read that has
 * room for it (seq_read_iter: the record goes into a buffer grown until it fits, then
 * min(record, count) bytes are copied), and a regular file (a test's fake /proc) returns less
 * than asked for only at its end. A caller check then costs one read syscall per file, not two.
 */
function readFdBounded(fd: number, path: string, maxBytes: number, position: number | null, text: true): string;
function readFdBounded(fd: number, path: string, maxBytes: number, position: number | null, text: false): Buffer;
function readFdBounded(fd: number, path: string, maxBytes: number, position: number | null, text: boolean): Buffer | string {
  try {
    // Reads go through one reused scratch buffer (the read is synchronous, so nothing else can
    // use it meanwhile); only the bytes read are copied out. A fresh 16 KiB buffer per file was
    // most of the memory a busy Workload API allocated for caller checks.
    const want = Math.min(SCRATCH.length, maxBytes + 1);
    const n = readSync(fd, SCRATCH, 0, want, position);
    if (n < want) return text ? SCRATCH.toString('utf8', 0, n) : Buffer.from(SCRATCH.subarray(0, n));
    const chunks: Buffer[] = [Buffer.from(SCRATCH.subarray(0, n))];
    let total = n;
    for (;;) {
      if (total > maxBytes) throw new SigilError('workload.proc_file_too_large', `${path} is larger than ${maxBytes} bytes`);
      const more = Math.min(SCRATCH.length, maxBytes + 1 - total);
      const m = readSync(fd, SCRATCH, 0, more, position === null ? null : position + total);
      if (m === 0) break;
      chunks.push(Buffer.from(SCRATCH.subarray(0, m)));
      total += m;
      if (m < more) break;
    }
    const all = Buffer.concat(chunks, total);
    return text ? all.toString('utf8') : all;
  } catch (e) {
    if (e instanceof SigilError) throw e;
    if (isNotFound(e)) throw new SigilError('workload.process_gone', `${path} vanished while reading (process gone?)`, { cause: e });
    throw new SigilError('workload.proc_read_failed', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * One /proc/<pid>/ file held open and read again from its start on each `read()`.
 *
 * A /proc/<pid>/ file opened while a process runs stays bound to that process (the kernel keeps
 * its struct pid, not the number): once the process has been reaped, a read fails with ESRCH
 * (`workload.process_gone`), even if the pid number has been given to another process since —
 * which a path opened anew would then describe. Reading a held file is also cheaper than opening
 * it again (no path walk, no open and close: about half the CPU of a fresh read here).
 *
 * After `close()` every read throws: the fd number may by then belong to another file.
 */
export class HeldProcFile {
  private fd: number | undefined;
  private constructor(
    readonly path: string,
    fd: number,
    private readonly maxBytes: number,
  ) {
    this.fd = fd;
  }

  /** Open `path` now (synchronously); errors as readBoundedFileSync's. */
  static openSync(path: string, maxBytes = PROC_FILE_MAX_BYTES): HeldProcFile {
    return new HeldProcFile(path, openProcFileSync(path), maxBytes);
  }

  /** The whole file as the kernel generates it now. */
  read(): Buffer {
    if (this.fd === undefined) throw new SigilError('workload.process_gone', `${this.path} is no longer held open`);
    return readFdBounded(this.fd, this.path, this.maxBytes, 0, false);
  }

  /** The whole file as the kernel generates it now, as UTF-8 text (no intermediate Buffer). */
  readText(): string {
    if (this.fd === undefined) throw new SigilError('workload.process_gone', `${this.path} is no longer held open`);
    return readFdBounded(this.fd, this.path, this.maxBytes, 0, true);
  }

  close(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    this.fd = undefined;
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

/**
 * A caller's /proc/<pid>/ files as the Workload API connection that identified it holds them open
 * (src/agent/workload-api/caller.ts), for the built-in workload attestors to read instead of
 * opening the paths again at every attestation: no path walk, open or close, and a held file
 * never describes a process that took over the pid after the connection's caller was reaped (its
 * reads fail with `workload.process_gone` instead). Each call reads the file anew.
 */
export interface CallerProcFiles {
  /** /proc/<pid>/status. */
  statusText(): string;
  /** /proc/<pid>/cgroup. */
  cgroupText(): string;
  /** The path of the /proc/<pid>/exe link (a link is not held: it is followed anew on every use). */
  readonly exeLink: string;
  /**
   * The program the caller ran when its connection was accepted (the exe link's target and the
   * identity of the file behind it, read in the accept callback), given only for an attestation
   * after which the connection checks that the caller still runs exactly that program (link
   * target and file identity, CallerConnection.checkUnchanged) before its selectors are used.
   * The `unix` attestor then takes its path and hash selectors from it instead of reading the
   * link again: see UnixAttestor.attestWithFiles for why that proves the same.
   */
  readonly exeImage?: ExeImage;
}

/**
 * A workload attestor that can also read the caller's /proc files through a connection's held
 * files (the built-in `unix` and `container`). An internal contract between the agent and its
 * built-in attestors, not part of the plugin API: a third-party attestor is only ever called
 * through `attest()`.
 */
export interface HeldFilesAttestor {
  attestWithFiles(caller: WorkloadCaller, files: CallerProcFiles, signal: AbortSignal): Promise<Selector[]>;
}

export function readsHeldFiles(a: object): a is HeldFilesAttestor {
  return typeof (a as Partial<HeldFilesAttestor>).attestWithFiles === 'function';
}

/** Async form of readBoundedFileSync (checks `signal` first). */
export async function readBoundedFile(path: string, maxBytes = PROC_FILE_MAX_BYTES, signal?: AbortSignal): Promise<Buffer> {
  if (signal?.aborted) throw new SigilError('workload.attestation_aborted', `reading ${path} was aborted`);
  return readBoundedFileSync(path, maxBytes);
}

/**
 * Field 22 (starttime, clock ticks since boot) of /proc/<pid>/stat. The second field (comm) is in
 * parentheses and may itself contain spaces and ')' characters, so fields are counted after the
 * LAST ')'.
 */
export function parseStatStartTime(text: string): bigint {
  const close = text.lastIndexOf(')');
  if (close < 0 || text.indexOf('(') < 0 || text.indexOf('(') > close) {
    throw new SigilError('workload.bad_proc_stat', 'stat line has no "(comm)" field');
  }
  const fast = startTimeField(text, close + 1);
  if (fast !== undefined) return BigInt(fast);
  const rest = text.slice(close + 1).trim().split(/\s+/);
  // rest[0] is field 3 (state); field 22 is rest[19].
  const v = rest[19];
  if (v === undefined || !/^\d{1,20}$/.test(v)) throw new SigilError('workload.bad_proc_stat', 'stat line has no valid starttime (field 22)');
  return BigInt(v);
}

/**
 * Field 22 of a stat line as the kernel writes it (fields after "(comm)" separated by single
 * spaces, each made of ASCII letters, digits and '-'), found without splitting the line: the
 * digits of field 22 when it is 1–20 of them followed by a space, a newline or the end; undefined
 * for anything else, which the general parser then reads (and refuses) as before.
 */
function startTimeField(text: string, from: number): string | undefined {
  let i = from;
  const n = text.length;
  // Fields 3 to 21: " <field>" each.
  for (let field = 3; field < 22; field++) {
    if (i >= n || text.charCodeAt(i) !== 0x20) return undefined;
    i++;
    const start = i;
    while (i < n && isFieldChar(text.charCodeAt(i))) i++;
    if (i === start) return undefined;
  }
  if (i >= n || text.charCodeAt(i) !== 0x20) return undefined;
  const start = ++i;
  while (i < n && isDigit(text.charCodeAt(i))) i++;
  const len = i - start;
  if (len < 1 || len > 20) return undefined;
  if (i < n && text.charCodeAt(i) !== 0x20 && text.charCodeAt(i) !== 0x0a) return undefined;
  return text.slice(start, i);
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isFieldChar(c: number): boolean {
  return isDigit(c) || c === 0x2d || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

export async function readStartTime(procRoot: string, pid: number): Promise<bigint> {
  const buf = await readBoundedFile(procPath(procRoot, pid, 'stat'), 8192);
  return parseStatStartTime(buf.toString('utf8'));
}

export interface ProcStatus {
  /** Real, effective, saved set, filesystem. */
  uids: [number, number, number, number];
  gids: [number, number, number, number];
  /** Supplementary groups (the "Groups:" line). */
  groups: number[];
}

const MAX_ID = 0xffffffff;
const MAX_GROUPS = 65536;

function parseIdList(line: string, what: string, exactlyFour: boolean): number[] {
  const parts = line.trim().length === 0 ? [] : line.trim().split(/\s+/);
  if (exactlyFour && parts.length !== 4) throw new SigilError('workload.bad_proc_status', `status ${what} line does not have 4 ids`);
  if (parts.length > MAX_GROUPS) throw new SigilError('workload.bad_proc_status', `status ${what} line has too many ids`);
  return parts.map((p) => {
    if (!/^\d{1,10}$/.test(p)) throw new SigilError('workload.bad_proc_status', `status ${what} line has a non-numeric id`);
    const n = Number(p);
    if (n > MAX_ID) throw new SigilError('workload.bad_proc_status', `status ${what} id ${p} is out of range`);
    return n;
  });
}

/**
 * The ids of one status line's value (from `start` to `end`) when it is written as the kernel
 * writes it: ids of 1–10 digits, each at most MAX_ID, separated by tabs or spaces. Undefined for
 * anything else (then parseIdList reads it, and refuses it, as it always did), so that this
 * gives exactly what parseIdList would.
 */
function plainIdList(text: string, start: number, end: number, exactlyFour: boolean): number[] | undefined {
  const out: number[] = [];
  let i = start;
  for (;;) {
    while (i < end && (text.charCodeAt(i) === 0x09 || text.charCodeAt(i) === 0x20)) i++;
    if (i >= end) break;
    let v = 0;
    let digits = 0;
    while (i < end) {
      const c = text.charCodeAt(i);
      if (c === 0x09 || c === 0x20) break;
      if (!isDigit(c) || ++digits > 10) return undefined;
      v = v * 10 + (c - 0x30);
      i++;
    }
    if (v > MAX_ID || out.length >= MAX_GROUPS) return undefined;
    out.push(v);
  }
  if (exactlyFour && out.length !== 4) return undefined;
  return out;
}

/** Where the value of a status line starts (after "<key>:") and ends; undefined: no such line. */
interface ValueSpan {
  from: number;
  end: number;
}

/**
 * Parse the Uid, Gid and Groups lines of /proc/<pid>/status (a line's key is the text before its
 * first ':'; other lines are skipped, two lines with one of these keys are refused). The lines
 * are found by hopping from newline to newline and looking at their first characters, not by
 * splitting the whole text (about 60 lines) into strings.
 */
export function parseStatus(text: string): ProcStatus {
  let uid: ValueSpan | undefined;
  let gid: ValueSpan | undefined;
  let groups: ValueSpan | undefined;
  const n = text.length;
  for (let at = 0; at < n; ) {
    const nl = text.indexOf('\n', at);
    const end = nl < 0 ? n : nl;
    const c = text.charCodeAt(at);
    if (c === 0x55 /* U */ && text.startsWith('Uid:', at)) {
      if (uid) throw new SigilError('workload.bad_proc_status', 'status has two Uid lines');
      uid = { from: at + 4, end };
    } else if (c === 0x47 /* G */) {
      if (text.startsWith('Gid:', at)) {
        if (gid) throw new SigilError('workload.bad_proc_status', 'status has two Gid lines');
        gid = { from: at + 4, end };
      } else if (text.startsWith('Groups:', at)) {
        if (groups) throw new SigilError('workload.bad_proc_status', 'status has two Groups lines');
        groups = { from: at + 7, end };
      }
    }
    at = end + 1;
  }
  if (!uid || !gid) throw new SigilError('workload.bad_proc_status', 'status has no Uid/Gid lines');
  return {
    uids: idsOf(text, uid, 'Uid', true) as ProcStatus['uids'],
    gids: idsOf(text, gid, 'Gid', true) as ProcStatus['gids'],
    groups: groups ? idsOf(text, groups, 'Groups', false) : [],
  };
}

/** The ids of a status line's value: read directly when plain, else by parseIdList (which refuses it or reads it as always). */
function idsOf(text: string, span: ValueSpan, what: string, exactlyFour: boolean): number[] {
  return plainIdList(text, span.from, span.end, exactlyFour) ?? parseIdList(text.slice(span.from, span.end), what, exactlyFour);
}

export async function readStatus(procRoot: string, pid: number, signal?: AbortSignal): Promise<ProcStatus> {
  const buf = await readBoundedFile(procPath(procRoot, pid, 'status'), 64 * 1024, signal);
  return parseStatus(buf.toString('utf8'));
}

/**
 * Whether the process a pidfd refers to still holds `pid` (i.e. it has not been reaped, so the
 * number cannot have been recycled). Reads the "Pid:" line of /proc/self/fdinfo/<pidfd>, which
 * the kernel sets to -1 once the process has been reaped. Returns false when the fdinfo cannot be
 * read or has no Pid line (then the fd is not a pidfd).
 */
export async function pidfdStillHolds(pidfd: number, pid: number, fdinfoRoot = '/proc/self/fdinfo'): Promise<boolean> {
  let text: string;
  try {
    text = (await readBoundedFile(join(fdinfoRoot, String(pidfd)), FDINFO_MAX_BYTES)).toString('utf8');
  } catch {
    return false;
  }
  return fdinfoNamesPid(text, pid);
}

/** Whether the text of a pidfd's fdinfo has a "Pid:" line naming `pid` (see pidfdStillHolds). */
export function fdinfoNamesPid(text: string, pid: number): boolean {
  const m = /^Pid:\s*(-?\d+)\s*$/m.exec(text);
  return m !== null && Number(m[1]) === pid;
}

/** Largest pidfd fdinfo text read. */
export const FDINFO_MAX_BYTES = 16384;

/** Identity of a file: device, inode, size, and modification and change times (ns); and whether it is a regular file. */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** A regular file (not part of the identity compared by sameFile: an inode's type never changes). */
  isFile: boolean;
}

/**
 * The program a process runs, as /proc/<pid>/exe shows it. `path` is the link's target (it may
 * end in " (deleted)"); `file` the identity of the file behind it. Either is undefined when the
 * kernel refuses to show it (EACCES/EPERM: an agent without CAP_SYS_PTRACE looking at another
 * user's or a non-dumpable process).
 */
export interface ExeImage {
  path: string | undefined;
  file: FileIdentity | undefined;
}

function exeError(e: unknown, what: string, link: string): 'hidden' {
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 'EACCES' || code === 'EPERM') return 'hidden';
  if (isNotFound(e)) throw new SigilError('workload.process_gone', `${link} does not exist (process gone?)`, { cause: e });
  throw new SigilError('workload.proc_read_failed', `cannot ${what} ${link}: ${(e as Error).message}`, { cause: e });
}

/**
 * The identity of the file behind /proc/<pid>/exe (one stat). Undefined when the kernel hides
 * it; `workload.process_gone` when the process has exited (a zombie has no exe either).
 */
export function readExeFileSync(exeLink: string): FileIdentity | undefined {
  try {
    const st = statSync(exeLink, { bigint: true });
    return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, isFile: st.isFile() };
  } catch (e) {
    exeError(e, 'stat', exeLink);
    return undefined;
  }
}

/** The program /proc/<pid>/exe shows (one readlink, one stat). */
export function readExeImageSync(procRoot: string, pid: number): ExeImage {
  return readExeImageAtSync(procPath(procRoot, pid, 'exe'));
}

/** readExeImageSync for the path of a /proc/<pid>/exe link. */
export function readExeImageAtSync(link: string): ExeImage {
  let path: string | undefined;
  try {
    path = readlinkSync(link);
  } catch (e) {
    exeError(e, 'read link', link);
    path = undefined;
  }
  return { path, file: readExeFileSync(link) };
}

export function sameFile(a: FileIdentity | undefined, b: FileIdentity | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

export function sameImage(a: ExeImage, b: ExeImage): boolean {
  return a.path === b.path && sameFile(a.file, b.file);
}

/** One line for logs and errors: the path, else the inode. */
export function describeImage(i: ExeImage): string {
  if (i.path !== undefined) return i.path;
  return i.file ? `inode ${i.file.dev}:${i.file.ino}` : '(hidden)';
}
