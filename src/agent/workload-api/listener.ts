/**
 * The Workload API's Unix socket: its path prepared (an absolute path within sun_path's 107
 * bytes, the directory created 0755 if missing and refused when another user could change it, a
 * stale socket file removed, anything else left alone), the listener, and on close the socket
 * file removed only if it is still the one this listener created.
 *
 * Connections are accepted by the native addon (src/native/sys.ts listenUnix), not by
 * net.Server: peer credentials need the accepted socket's fd, which net.Socket keeps on a private
 * handle. The addon hands over each accepted fd, and it becomes a net.Socket through the public
 * `new net.Socket({ fd })`. A failed accept (out of fds) pauses accepting for ACCEPT_RETRY_MS;
 * the pending connections wait in the kernel's backlog meanwhile.
 */
import { closeSync, type Stats } from 'node:fs';
import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, isSigilError, errorFields } from '../../errors.js';
import type { SysAddon } from '../../native/sys.js';
import { makeDirs } from '../../util/private-dir.js';
import { checkSocketDir, removeStaleSocket } from '../../util/socket-dir.js';

/** Pending connections the kernel queues before accept. */
const BACKLOG = 511;
/** Pause after a failed accept (e.g. EMFILE) before accepting again. */
const ACCEPT_RETRY_MS = 100;

export interface WorkloadListener {
  /**
   * Stop accepting; resolves once every accepted connection has closed (the caller closes them)
   * and the socket file is removed.
   */
  close(): Promise<void>;
}

/**
 * Listen on `socketPath` (mode 0777: who may call is decided per connection, by its peer
 * credentials) and hand every accepted connection to `onConnection` with its fd.
 */
export async function listenWorkloadSocket(
  socketPath: string,
  logger: Logger,
  onConnection: (socket: net.Socket, fd: number) => void,
  sys?: Pick<SysAddon, 'listenUnix'>,
): Promise<WorkloadListener> {
  await prepareSocketPath(socketPath);
  // No other user may be able to replace the socket (and serve workloads their own SVIDs).
  checkSocketDir(dirname(socketPath), 'workload_api.socket_dir_insecure', 'workloadApiSocket');
  const addon = sys ?? (await import('../../native/sys.js')).loadSys();
  /** Accepted connections not yet closed: close() waits for them. */
  const open = new Set<net.Socket>();
  let stopped = false;
  let drained: (() => void) | undefined;
  let retry: NodeJS.Timeout | undefined;
  const onAccept = (fd: number): void => {
    let socket: net.Socket;
    try {
      socket = new net.Socket({ fd, readable: true, writable: true });
    } catch (e) {
      closeQuietly(fd);
      logger.warn(errorFields(e), 'cannot use an accepted Workload API connection; closed');
      return;
    }
    socket.on('error', () => undefined);
    open.add(socket);
    socket.once('close', () => {
      open.delete(socket);
      if (stopped && open.size === 0) drained?.();
    });
    onConnection(socket, fd);
  };
  let listening: ReturnType<SysAddon['listenUnix']>;
  try {
    listening = addon.listenUnix(socketPath, BACKLOG, onAccept, (e) => {
      logger.error(errorFields(e), `Workload API listener error; accepting again in ${ACCEPT_RETRY_MS} ms`);
      if (stopped) return;
      retry = setTimeout(() => {
        retry = undefined;
        listening.resume();
      }, ACCEPT_RETRY_MS);
    });
  } catch (e) {
    throw new SigilError('workload_api.listen_failed', `cannot listen on ${socketPath}: ${(e as Error).message}`, { status: 500, cause: e });
  }
  let ours: Stats;
  try {
    await chmod(socketPath, 0o777);
    ours = await lstat(socketPath);
  } catch (e) {
    listening.close();
    throw new SigilError('workload_api.listen_failed', `cannot open ${socketPath} to callers: ${(e as Error).message}`, { status: 500, cause: e });
  }
  return {
    async close(): Promise<void> {
      stopped = true;
      if (retry !== undefined) clearTimeout(retry);
      listening.close();
      if (open.size > 0) await new Promise<void>((resolve) => (drained = resolve));
      try {
        const now = await lstat(socketPath);
        if (now.ino === ours.ino && now.dev === ours.dev) await unlink(socketPath);
      } catch {
        // already gone
      }
    },
  };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/** Create the socket's directory (0755) if needed and remove a stale socket file (only a socket). */
async function prepareSocketPath(socketPath: string): Promise<void> {
  if (!isAbsolute(socketPath)) throw new SigilError('workload_api.socket_path_invalid', `Workload API socket path "${socketPath}" must be absolute`);
  if (Buffer.byteLength(socketPath) > 107) {
    throw new SigilError('workload_api.socket_path_invalid', `Workload API socket path is longer than 107 bytes (sun_path limit): ${socketPath}`);
  }
  const dir = dirname(socketPath);
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new SigilError('workload_api.socket_path_invalid', `${dir} exists and is not a directory`);
  } catch (e) {
    if (isSigilError(e)) throw e;
    if ((e as { code?: string }).code !== 'ENOENT') throw new SigilError('workload_api.socket_path_invalid', `cannot inspect ${dir}: ${(e as Error).message}`);
    // makeDirs, not mkdir -p: Node's recursive mkdir never returns for a path under /proc.
    try {
      makeDirs(dir, 0o755);
    } catch (err) {
      throw new SigilError('workload_api.socket_path_invalid', `cannot create ${dir}: ${(err as Error).message}`);
    }
    await chmod(dir, 0o755);
  }
  // One stale-socket routine for every socket Sigil binds (src/util/socket-dir.ts).
  await removeStaleSocket(socketPath, 'Workload API socket', {
    notSocket: 'workload_api.socket_path_in_use',
    inUse: 'workload_api.socket_path_in_use',
    unusable: 'workload_api.socket_path_invalid',
  });
}
