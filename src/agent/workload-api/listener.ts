/**
 * The Workload API's Unix socket: its path prepared (an absolute path within sun_path's 107
 * bytes, the directory created 0755 if missing and refused when another user could change it, a
 * stale socket file removed, anything else left alone), the listener, and on close the socket
 * file removed only if it is still the one this listener created.
 */
import { chmod, lstat, mkdir, stat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, isSigilError } from '../../errors.js';
import { checkSocketDir } from '../../util/socket-dir.js';

export interface WorkloadListener {
  /**
   * Stop accepting; resolves once every accepted connection has closed (the caller closes them)
   * and the socket file is removed.
   */
  close(): Promise<void>;
}

/** The fd of an accepted Unix socket (net.Socket keeps it on its libuv pipe handle). */
function socketFd(socket: net.Socket): number {
  const handle: unknown = Reflect.get(socket, '_handle');
  const fd: unknown = typeof handle === 'object' && handle !== null ? Reflect.get(handle, 'fd') : undefined;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) {
    throw new SigilError('workload_api.no_socket_fd', 'accepted connection has no file descriptor', { status: 500 });
  }
  return fd;
}

/**
 * Listen on `socketPath` (mode 0777: who may call is decided per connection, by its peer
 * credentials) and hand every accepted connection to `onConnection` with its fd.
 */
export async function listenWorkloadSocket(socketPath: string, logger: Logger, onConnection: (socket: net.Socket, fd: number) => void): Promise<WorkloadListener> {
  await prepareSocketPath(socketPath);
  // No other user may be able to replace the socket (and serve workloads their own SVIDs).
  checkSocketDir(dirname(socketPath), 'workload_api.socket_dir_insecure', 'workloadApiSocket');
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    let fd: number;
    try {
      fd = socketFd(socket);
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'cannot read peer credentials; connection refused');
      socket.destroy();
      return;
    }
    onConnection(socket, fd);
  });
  server.on('error', (e) => logger.error({ err: e.message }, 'Workload API listener error'));
  await new Promise<void>((resolve, rejectListen) => {
    const onErr = (e: Error): void => rejectListen(new SigilError('workload_api.listen_failed', `cannot listen on ${socketPath}: ${e.message}`, { status: 500, cause: e }));
    server.once('error', onErr);
    server.listen({ path: socketPath, backlog: 511 }, () => {
      server.off('error', onErr);
      resolve();
    });
  });
  await chmod(socketPath, 0o777);
  const ours = await lstat(socketPath);
  return {
    async close(): Promise<void> {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        const now = await lstat(socketPath);
        if (now.ino === ours.ino && now.dev === ours.dev) await unlink(socketPath);
      } catch {
        // already gone
      }
    },
  };
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
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o755);
  }
  let st;
  try {
    st = await lstat(socketPath);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return;
    throw new SigilError('workload_api.socket_path_invalid', `cannot inspect ${socketPath}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new SigilError('workload_api.socket_path_in_use', `${socketPath} exists and is not a socket; refusing to remove it`);
  if (await socketIsLive(socketPath)) throw new SigilError('workload_api.socket_path_in_use', `another process is serving on ${socketPath}`);
  await unlink(socketPath);
}

function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    const done = (live: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(live);
    };
    const t = setTimeout(() => done(true), 1000);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}
