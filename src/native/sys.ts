/**
 * Typed wrapper over build/Release/sigil_sys.node: Unix peer credentials, a Unix socket listener
 * that hands accepted connections over as fds, and the two confidential computing ioctls (Nitro
 * NSM, SEV-SNP extended report). See docs/native.md.
 */
import { SigilError, errorMessage } from '../errors.js';
import { REBUILD_HINT, loadAddon } from './locate.js';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
  /** SO_PEERPIDFD, when the kernel has it (Linux 6.5+); the caller closes it. */
  pidfd?: number;
}

/** A listening AF_UNIX socket made by listenUnix. */
export interface UnixListener {
  /** Stop accepting and close the listening socket (the socket file stays; a second call does nothing). */
  close(): void;
  /** Accept again after `onError` reported a failed accept (which pauses the listener). */
  resume(): void;
}

export interface SysAddon {
  /** getsockopt SO_PEERCRED (+ SO_PEERPIDFD) on a connected AF_UNIX fd. */
  peerCred(fd: number): PeerCred;
  /**
   * Create, bind and listen on an AF_UNIX stream socket at `path` (which must not exist) and
   * accept its connections on Node's event loop: `onAccept` gets each connection's fd
   * (non-blocking, close-on-exec), which the caller owns (wrap it with `new net.Socket({ fd })`).
   * A failed accept (e.g. EMFILE) pauses the listener and is passed to `onError`.
   */
  listenUnix(path: string, backlog: number, onAccept: (fd: number) => void, onError: (err: SigilError) => void): UnixListener;
  /** ioctl on /dev/nsm (Nitro Secure Module), off the main thread. Request and response are CBOR. */
  nsmRequest(request: Buffer, maxResponse?: number): Promise<Buffer>;
  /** /dev/sev-guest SNP_GET_EXT_REPORT: the 1184-byte attestation report and the GHCB certificate table. */
  snpGetExtReport(reportData: Buffer, vmpl: number, certsBufferLen: number): Promise<{ report: Buffer; certs: Buffer }>;
  /**
   * glibc `mallopt(M_MMAP_THRESHOLD, bytes)`, for the whole process: from now on an allocation of at
   * least `bytes` that no free heap chunk fits gets a mapping of its own instead of growing the heap.
   * `not_glibc` on other C libraries, `refused` when glibc refused the value.
   */
  setMallocMmapThreshold(bytes: number): 'set' | 'refused' | 'not_glibc';
  /** glibc `mallinfo2()`: chunks and bytes in mappings of their own, and the heap's bytes in use (undefined before glibc 2.33 or on another C library). */
  mallocStats(): MallocStats | undefined;
}

export interface MallocStats {
  mmappedChunks: number;
  mmappedBytes: number;
  heapInUseBytes: number;
}

/** The raw native addon as exported by native/sys.cc (the optional path arguments exist for tests). */
interface RawSys {
  peerCred(fd: number): PeerCred;
  listenUnix(path: string, backlog: number, onAccept: (fd: number) => void, onError: (err: Error) => void): unknown;
  closeUnixListener(listener: unknown): void;
  resumeUnixListener(listener: unknown): void;
  nsmRequest(request: Buffer, maxResponse?: number, devicePath?: string): Promise<Buffer>;
  snpGetExtReport(reportData: Buffer, vmpl: number, certsBufferLen: number, devicePath?: string): Promise<{ response: Buffer; certs: Buffer }>;
  setMallocMmapThreshold?(bytes: number): string;
  mallocStats?(): MallocStats | null;
  soPeerPidfd: number;
}

/** Size of the kernel's snp_report_resp area (struct snp_report_resp, include/uapi/linux/sev-guest.h). */
export const SNP_REPORT_RESP_SIZE = 4000;
/** MSG_REPORT_RSP header: status u32, report_size u32, 24 reserved bytes (SEV-SNP firmware ABI, table "MSG_REPORT_RSP"). */
const SNP_RSP_HEADER = 32;
/** ATTESTATION_REPORT size defined by the SEV-SNP firmware ABI. */
export const SNP_REPORT_SIZE = 1184;

/**
 * Extracts the attestation report from the firmware's MSG_REPORT_RSP message (the bytes the
 * driver copies into snp_report_resp.data). Hand-written: the layout is a fixed firmware ABI.
 */
export function parseSnpReportResponse(resp: Buffer): Buffer {
  if (resp.length < SNP_RSP_HEADER) {
    throw new SigilError('native.snp_failed', `SNP report response is ${resp.length} bytes, shorter than its ${SNP_RSP_HEADER}-byte header`);
  }
  const status = resp.readUInt32LE(0);
  const size = resp.readUInt32LE(4);
  if (status !== 0) {
    const why = status === 0x16 ? 'invalid parameters (e.g. a VMPL below the guest\'s own)' : 'firmware error';
    throw new SigilError('native.snp_failed', `SNP firmware refused the report request: status 0x${status.toString(16)} (${why})`);
  }
  if (size !== SNP_REPORT_SIZE || SNP_RSP_HEADER + size > resp.length) {
    throw new SigilError('native.snp_failed', `SNP report response announces a ${size}-byte report; expected ${SNP_REPORT_SIZE} within ${resp.length - SNP_RSP_HEADER} bytes`);
  }
  return Buffer.from(resp.subarray(SNP_RSP_HEADER, SNP_RSP_HEADER + size));
}

function errMessage(e: unknown): string {
  return errorMessage(e);
}

/** Wraps the raw addon, mapping its errors to SigilErrors. `devicePath` overrides exist for tests. */
export function wrapSys(raw: RawSys, paths: { nsm?: string; sevGuest?: string } = {}): SysAddon {
  return {
    peerCred(fd: number): PeerCred {
      if (!Number.isInteger(fd) || fd < 0) throw new SigilError('native.invalid_argument', `peerCred: fd must be a non-negative integer, got ${String(fd)}`);
      try {
        const c = raw.peerCred(fd);
        const out: PeerCred = { pid: c.pid, uid: c.uid, gid: c.gid };
        if (typeof c.pidfd === 'number') out.pidfd = c.pidfd;
        return out;
      } catch (e) {
        throw new SigilError('native.peercred_failed', `peer credentials of fd ${fd}: ${errMessage(e)}`, { cause: e, status: 500 });
      }
    },
    listenUnix(path: string, backlog: number, onAccept: (fd: number) => void, onError: (err: SigilError) => void): UnixListener {
      if (typeof raw.listenUnix !== 'function') {
        throw new SigilError('native.unavailable', `native addon sigil_sys predates listenUnix; ${REBUILD_HINT}`, { status: 500 });
      }
      if (!Number.isInteger(backlog) || backlog < 1 || backlog > 65535) throw new SigilError('native.invalid_argument', 'listenUnix: backlog must be an integer in 1..65535');
      if (Buffer.byteLength(path) > 107 || path.length === 0 || path.includes('\0')) {
        throw new SigilError('native.invalid_argument', 'listenUnix: path must be 1..107 bytes without NUL (sun_path)');
      }
      let handle: unknown;
      try {
        handle = raw.listenUnix(path, backlog, onAccept, (e) => onError(new SigilError('native.accept_failed', `accepting on ${path}: ${errMessage(e)}`, { cause: e, status: 500 })));
      } catch (e) {
        throw new SigilError('native.listen_failed', `listening on ${path}: ${errMessage(e)}`, { cause: e, status: 500 });
      }
      let closed = false;
      return {
        close() {
          if (closed) return;
          closed = true;
          raw.closeUnixListener(handle);
        },
        resume() {
          if (!closed) raw.resumeUnixListener(handle);
        },
      };
    },
    async nsmRequest(request: Buffer, maxResponse?: number): Promise<Buffer> {
      if (!Buffer.isBuffer(request) || request.length === 0 || request.length > 0x1000) {
        throw new SigilError('native.invalid_argument', 'nsmRequest: request must be a non-empty Buffer of at most 4096 bytes');
      }
      if (maxResponse !== undefined && (!Number.isInteger(maxResponse) || maxResponse < 1 || maxResponse > 1_048_576)) {
        throw new SigilError('native.invalid_argument', 'nsmRequest: maxResponse must be an integer in 1..1048576');
      }
      try {
        return await raw.nsmRequest(request, maxResponse, paths.nsm);
      } catch (e) {
        throw new SigilError('native.nsm_failed', `Nitro Secure Module request failed: ${errMessage(e)}`, { cause: e, status: 500 });
      }
    },
    async snpGetExtReport(reportData: Buffer, vmpl: number, certsBufferLen: number): Promise<{ report: Buffer; certs: Buffer }> {
      if (!Buffer.isBuffer(reportData) || reportData.length !== 64) {
        throw new SigilError('native.invalid_argument', 'snpGetExtReport: reportData must be a 64-byte Buffer');
      }
      if (!Number.isInteger(vmpl) || vmpl < 0 || vmpl > 3) throw new SigilError('native.invalid_argument', 'snpGetExtReport: vmpl must be 0..3');
      if (!Number.isInteger(certsBufferLen) || certsBufferLen < 0 || certsBufferLen > 0x4000) {
        throw new SigilError('native.invalid_argument', 'snpGetExtReport: certsBufferLen must be an integer in 0..16384');
      }
      let r: { response: Buffer; certs: Buffer };
      try {
        r = await raw.snpGetExtReport(reportData, vmpl, certsBufferLen, paths.sevGuest);
      } catch (e) {
        throw new SigilError('native.snp_failed', `SEV-SNP extended report request failed: ${errMessage(e)}`, { cause: e, status: 500 });
      }
      return { report: parseSnpReportResponse(r.response), certs: r.certs };
    },
    setMallocMmapThreshold(bytes: number): 'set' | 'refused' | 'not_glibc' {
      if (typeof raw.setMallocMmapThreshold !== 'function') {
        throw new SigilError('native.unavailable', `native addon sigil_sys predates setMallocMmapThreshold; ${REBUILD_HINT}`, { status: 500 });
      }
      if (!Number.isInteger(bytes) || bytes < 0 || bytes > 0x7fffffff) throw new SigilError('native.invalid_argument', 'setMallocMmapThreshold: bytes must be an integer in 0..2^31-1');
      const r = raw.setMallocMmapThreshold(bytes);
      if (r !== 'set' && r !== 'refused' && r !== 'not_glibc') throw new SigilError('native.invalid_argument', `setMallocMmapThreshold: unexpected answer ${JSON.stringify(r)} from the addon`);
      return r;
    },
    mallocStats(): MallocStats | undefined {
      if (typeof raw.mallocStats !== 'function') {
        throw new SigilError('native.unavailable', `native addon sigil_sys predates mallocStats; ${REBUILD_HINT}`, { status: 500 });
      }
      return raw.mallocStats() ?? undefined;
    },
  };
}

let cached: { raw: RawSys } | { error: SigilError } | undefined;

function loadRaw(): RawSys {
  if (cached === undefined) {
    const r = loadAddon<RawSys>('sigil_sys');
    if (r.ok) cached = { raw: r.addon };
    else if (r.missing === 'file') {
      cached = { error: new SigilError('native.unavailable', `native addon ${r.path} not found: the addon was not built; ${REBUILD_HINT}`, { status: 500 }) };
    } else {
      cached = { error: new SigilError('native.unavailable', `native addon ${r.path} failed to load (${r.error}); ${REBUILD_HINT}`, { status: 500 }) };
    }
  }
  if ('error' in cached) throw cached.error;
  return cached.raw;
}

/** Loads build/Release/sigil_sys.node; throws SigilError('native.unavailable', …) if it is absent. */
export function loadSys(): SysAddon {
  return wrapSys(loadRaw());
}

/**
 * Test hook: the same addon with the device paths replaced (e.g. /dev/null or a missing path), so
 * the ioctl error paths can be exercised on machines without /dev/nsm or /dev/sev-guest.
 */
export function loadSysWithDevices(paths: { nsm?: string; sevGuest?: string }): SysAddon {
  return wrapSys(loadRaw(), paths);
}
