/**
 * Caller identification for one accepted Workload API connection.
 *
 * The kernel records the peer's pid/uid/gid when it connects (SO_PEERCRED) and, on newer
 * kernels, hands out a pidfd for it (SO_PEERPIDFD). A pid is only a number: the caller could
 * exit and the number be given to another process, which the attestors would then describe. The
 * defence:
 *   1. the process start time (field 22 of /proc/<pid>/stat) is read right after accept;
 *   2. after every attestation the server checks that
 *      - the start time is unchanged, and the pidfd (when there is one) still refers to a live,
 *        unreaped process holding the pid (so the number cannot have been reused: a live process
 *        keeps its pid), checked after all of the attestation's /proc reads; and
 *      - the effective uid/gid in /proc/<pid>/status still match the peer credentials; and
 *      - the process still runs the program it ran at accept (./proc.ts ExeImage: the
 *        /proc/<pid>/exe link's target and the device, inode, size, mtime and ctime of the file
 *        behind it), so that a process that connected and then exec'd a trusted binary (while a
 *        child it forked keeps using the inherited socket) is not attested as that binary;
 *      on any mismatch the connection is closed and nothing is served on it.
 *   3. between attestations, every call that uses the cached selectors first compares the exe
 *      file's identity (one stat of /proc/<pid>/exe) with the one recorded at accept, and the
 *      credential lines of the held /proc/<pid>/status with those the attestation saw
 *      (./connection.ts: a uid or gid drop closes the connection, other changes re-attest).
 * The pidfd is kept open for the life of the connection and closed with it, and so are
 * /proc/<pid>/stat (opened in the accept callback), /proc/<pid>/status, /proc/<pid>/cgroup and the
 * pidfd's fdinfo (at their first read), read again from their start at every check: an open
 * /proc/<pid>/ file stays bound to the process it was opened for (a read fails once that process
 * has been reaped, whoever holds the pid number by then), so these reads cannot describe a process
 * that reused the pid after they were opened, and they cost no path walk, open or close (see
 * proc.ts HeldProcFile). The built-in `unix` and `container` attestors read status and cgroup
 * through the same held files (attestationFiles(): status is the text the attestation read just
 * before it ran them, from which it also takes its credential baseline); the checks above still
 * read everything again after the attestors have finished.
 *
 * What this cannot see: an exec between the client's connect() and the agent's accept (the
 * image is recorded synchronously in the accept callback, right after SO_PEERCRED, before the
 * start time is read) — see docs/workload-api.md.
 */
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import type { WorkloadCaller } from '../../plugins/types.js';
import { SigilError } from '../../errors.js';
import {
  FDINFO_MAX_BYTES,
  HeldProcFile,
  describeImage,
  fdinfoNamesPid,
  parseStatStartTime,
  parseStatus,
  procPath,
  readExeFileSync,
  readExeImageAtSync,
  readExeImageSync,
  sameFile,
  sameImage,
  type CallerProcFiles,
  type ExeImage,
} from '../../workload/proc.js';

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  pidfd?: number;
}

export class CallerConnection implements CallerProcFiles {
  readonly caller: WorkloadCaller;
  /** Start time read right after accept (undefined until `ready` resolves). */
  startTime: bigint | undefined;
  /** The program the caller ran at accept (undefined until `ready` resolves). */
  image: ExeImage | undefined;
  /** Resolves once the start time has been captured; rejects if the process is already gone. */
  readonly ready: Promise<void>;
  /** `ready` has resolved. */
  private captured = false;
  private closed = false;
  /**
   * /proc/<pid>/stat (opened in the accept callback), /proc/<pid>/status and /proc/<pid>/cgroup
   * (at their first read), held open until close.
   */
  private statFile: HeldProcFile | undefined;
  private statusFile: HeldProcFile | undefined;
  private cgroupFile: HeldProcFile | undefined;
  /**
   * The pidfd's fdinfo (<fdinfoRoot>/<pidfd>), held open from the first check to close. The
   * kernel looks the fd number up in this process's table again at every read, so the pidfd
   * itself stays open for as long (until close(), after which nothing reads it).
   */
  private fdinfoFile: HeldProcFile | undefined;

  constructor(
    peer: PeerCredentials,
    private readonly procRoot: string,
    private readonly fdinfoRoot = '/proc/self/fdinfo',
  ) {
    this.caller = { pid: peer.pid, uid: peer.uid, gid: peer.gid };
    if (peer.pidfd !== undefined && peer.pidfd >= 0) this.caller.pidfd = peer.pidfd;
    // The program is read here, synchronously, in the accept callback: nothing may run between
    // accept and this read (an await would let the caller exec a trusted binary meanwhile, while
    // the read waits in the thread pool, and be recorded as that binary).
    let image: ExeImage | undefined;
    let unreadable: unknown;
    if (peer.pid > 0) {
      try {
        image = readExeImageSync(procRoot, peer.pid);
        this.statFile = HeldProcFile.openSync(procPath(procRoot, peer.pid, 'stat'), 8192);
      } catch (e) {
        image = undefined;
        unreadable = e;
        this.closeHeld();
      }
    }
    this.ready = this.capture(image, unreadable);
    this.ready.catch(() => undefined); // observed by whoever awaits it
  }

  private async capture(image: ExeImage | undefined, unreadable: unknown): Promise<void> {
    if (this.caller.pid <= 0) throw new SigilError('workload_api.no_peer_pid', 'peer credentials carry no pid (caller in another pid namespace?)');
    if (image === undefined) throw unreadable;
    this.startTime = this.readStartTime();
    this.image = image;
    this.checkPidfd();
    this.captured = true;
  }

  private readStartTime(): bigint {
    if (this.statFile === undefined) throw new SigilError('workload_api.caller_changed', `connection of pid ${this.caller.pid} is closed`);
    return parseStatStartTime(this.statFile.readText());
  }

  private exeLinkPath: string | undefined;
  /** The path of the caller's /proc/<pid>/exe link. */
  get exeLink(): string {
    return (this.exeLinkPath ??= procPath(this.procRoot, this.caller.pid, 'exe'));
  }

  /** /proc/<pid>/status through the held file (CallerProcFiles, for the built-in attestors). */
  statusText(): string {
    return (this.statusFile ??= this.hold('status', 64 * 1024)).readText();
  }

  /** /proc/<pid>/cgroup through the held file (CallerProcFiles, for the built-in attestors). */
  cgroupText(): string {
    return (this.cgroupFile ??= this.hold('cgroup', 64 * 1024)).readText();
  }

  /** Open and hold /proc/<pid>/<file> (never once the connection is closed). */
  private hold(file: string, maxBytes: number): HeldProcFile {
    if (this.closed) throw new SigilError('workload.process_gone', `connection of pid ${this.caller.pid} is closed`);
    return HeldProcFile.openSync(procPath(this.procRoot, this.caller.pid, file), maxBytes);
  }

  /**
   * The per-call check (synchronous, one stat): throws `workload_api.caller_changed` when the file
   * behind /proc/<pid>/exe is not the one the caller ran at accept, or the process is gone.
   */
  checkImage(): void {
    const image = this.image;
    if (image === undefined) throw new SigilError('workload_api.caller_changed', `caller pid ${this.caller.pid} was never identified`);
    let now;
    try {
      now = readExeFileSync(this.exeLink);
    } catch (e) {
      throw new SigilError('workload_api.caller_changed', `caller pid ${this.caller.pid} is gone: ${(e as Error).message}`, { cause: e });
    }
    if (!sameFile(now, image.file)) {
      throw new SigilError('workload_api.caller_changed', `pid ${this.caller.pid} executed another program since it connected (it ran ${describeImage(image)})`);
    }
  }

  private checkPidfd(): void {
    const fd = this.caller.pidfd;
    if (fd === undefined) return;
    // Once closed, the fd number may already name another connection's pidfd.
    if (this.closed) throw new SigilError('workload_api.caller_changed', `connection of pid ${this.caller.pid} is closed`);
    let holds: boolean;
    try {
      this.fdinfoFile ??= HeldProcFile.openSync(join(this.fdinfoRoot, String(fd)), FDINFO_MAX_BYTES);
      holds = fdinfoNamesPid(this.fdinfoFile.readText(), this.caller.pid);
    } catch {
      holds = false; // unreadable: not (or no longer) a pidfd of a live process
    }
    if (!holds) throw new SigilError('workload_api.caller_changed', `caller pid ${this.caller.pid} has exited (pidfd)`);
  }

  /** Throws `workload_api.caller_changed` when the process behind the pid is not the one that connected. */
  async verifyUnchanged(): Promise<void> {
    if (!this.captured) await this.ready;
    this.checkUnchanged();
  }

  /**
   * The caller's files as the built-in attestors of one attestation read them: /proc/<pid>/status
   * is `status`, the text the attestation read through the held file just before it ran its
   * attestors (./connection.ts takes its credential baseline from that same text); the program is
   * the one recorded at accept (`exeImage`, see CallerProcFiles); cgroup is read anew as usual.
   * The caller of this must run checkUnchanged() after the attestors and before it uses their
   * selectors (./connection.ts attestNow does).
   *
   * Why this keeps every guarantee: before, the `unix` attestor read status again a moment later
   * through the same held file, so its supplementary groups came from a read between the baseline
   * and the check that follows the attestors. Now they come from the baseline read itself, so the
   * selectors describe exactly the credential lines the connection records, and the check after
   * the attestors (checkUnchanged: a fresh status read, the exe, the start time, the pidfd) and the
   * comparison of that fresh read with the baseline run as before: credentials that changed at any
   * time after the baseline are seen there (the result is then not kept, or the connection closed),
   * exactly as a change after the attestor's own read was. The text is from the held file, so it
   * can only describe the process identified at accept (a held /proc/<pid>/ file fails once that
   * process is reaped); and it is read before the pidfd check, like every read it replaces.
   */
  attestationFiles(status: string): CallerProcFiles {
    return new AttestationFiles(this, status);
  }

  /**
   * verifyUnchanged() once `ready` has resolved, without waiting (every check is a synchronous
   * read); throws as verifyUnchanged() rejects. Returns the /proc/<pid>/status text the check
   * read (after every attestor had finished, before the pidfd check), so that the caller need not
   * read it once more to compare credential lines.
   */
  checkUnchanged(): string {
    if (!this.captured) throw new SigilError('workload_api.caller_changed', `caller pid ${this.caller.pid} was never identified`);
    // Two proofs that the pid still names the process that connected. The start time must be
    // the one read at accept. With a pidfd, one check after all reads is also proof: a process
    // keeps its pid until it is reaped, so if the pidfd's process still holds the pid now, every
    // /proc read since accept (the attestors' and the ones below) described that process.
    // Status first, start time after it: had the pid been reused between the two reads, the start
    // time would show it (read the other way round, the status could be a new process's).
    let start: bigint;
    let status;
    let statusText: string;
    let image: ExeImage;
    try {
      if (this.closed) throw new SigilError('workload_api.caller_changed', `connection of pid ${this.caller.pid} is closed`);
      statusText = this.statusText();
      status = parseStatus(statusText);
      image = readExeImageAtSync(this.exeLink);
      start = this.readStartTime();
    } catch (e) {
      throw new SigilError('workload_api.caller_changed', `caller pid ${this.caller.pid} is gone: ${(e as Error).message}`, { cause: e });
    }
    if (start !== this.startTime) {
      throw new SigilError('workload_api.caller_changed', `pid ${this.caller.pid} now belongs to another process (start time changed)`);
    }
    if (status.uids[1] !== this.caller.uid || status.gids[1] !== this.caller.gid) {
      throw new SigilError(
        'workload_api.caller_changed',
        `pid ${this.caller.pid} credentials changed since connect (uid ${this.caller.uid}→${status.uids[1]}, gid ${this.caller.gid}→${status.gids[1]})`,
      );
    }
    if (this.image === undefined || !sameImage(image, this.image)) {
      const was = this.image === undefined ? '(unknown)' : describeImage(this.image);
      throw new SigilError('workload_api.caller_changed', `pid ${this.caller.pid} executed another program since it connected (${was} → ${describeImage(image)})`);
    }
    // The pidfd check last: if the process was reaped while /proc was read, the values read may
    // belong to a new process that happens to match.
    this.checkPidfd();
    return statusText;
  }

  private closeHeld(): void {
    this.statFile?.close();
    this.statusFile?.close();
    this.cgroupFile?.close();
    this.fdinfoFile?.close();
    this.statFile = undefined;
    this.statusFile = undefined;
    this.cgroupFile = undefined;
    this.fdinfoFile = undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closeHeld();
    const fd = this.caller.pidfd;
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // already closed
      }
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

/** CallerConnection.attestationFiles(): status as one attestation read it, the rest through the connection. */
class AttestationFiles implements CallerProcFiles {
  constructor(
    private readonly peer: CallerConnection,
    private readonly status: string,
  ) {}

  statusText(): string {
    return this.status;
  }

  cgroupText(): string {
    return this.peer.cgroupText();
  }

  get exeLink(): string {
    return this.peer.exeLink;
  }

  /** The program recorded at accept; the attestation's check (checkUnchanged) confirms the caller still runs it. */
  get exeImage(): ExeImage | undefined {
    return this.peer.image;
  }
}
