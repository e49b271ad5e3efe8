/** Minimal JSON client for the verifier's admin API over its Unix socket. */
import { lstatSync, realpathSync, type Stats } from 'node:fs';
import { request } from 'node:http';
import { dirname, resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';

export const DEFAULT_ADMIN_SOCKET = '/run/sigil/admin.sock';
const MAX_RESPONSE = 64 * 1024 * 1024;

function untrusted(socketPath: string, why: string): SigilError {
  return new SigilError('cli.admin_socket_untrusted', `admin socket ${socketPath}: ${why}; refusing to talk to it (the verifier's socket is mode 0600 in a directory only its user or root can change)`);
}

/**
 * Walk `start` and every directory above it without following links: each symlink and directory
 * must be owned by one of `owners`; the socket's own directory must not be group- or
 * world-writable, an ancestor only with the sticky bit. `start` itself may be the socket.
 */
function walkTrusted(socketPath: string, start: string, owners: ReadonlySet<number>): void {
  let p = start;
  for (;;) {
    let st: Stats;
    try {
      st = lstatSync(p);
    } catch (e) {
      throw untrusted(socketPath, `${p} cannot be inspected (${errorMessage(e)})`);
    }
    if (st.isSymbolicLink()) {
      if (!owners.has(st.uid)) throw untrusted(socketPath, `the path goes through the symlink ${p}, owned by uid ${st.uid}`);
    } else if (st.isDirectory()) {
      if (!owners.has(st.uid)) throw untrusted(socketPath, `the directory ${p} is owned by uid ${st.uid}, neither this user, root nor the socket's owner`);
      const othersWrite = (st.mode & 0o022) !== 0;
      if (othersWrite && (p === dirname(start) || (st.mode & 0o1000) === 0)) {
        throw untrusted(socketPath, `the directory ${p} is writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode 0${(st.mode & 0o7777).toString(8)}), so another user could have put their socket there`);
      }
    }
    const parent = dirname(p);
    if (parent === p) return;
    p = parent;
  }
}

/**
 * Refuse an admin socket that may not be the verifier's (a fake one answers with its own bundle,
 * tokens and entries): the socket must not be connectable by users other than its owner, and no
 * user but this one, root or the socket's owner (the verifier's user) may be able to change the
 * path to it. A missing path is left to connect(), which reports it as unreachable.
 */
export function checkAdminSocket(socketPath: string): void {
  const euid = process.geteuid?.();
  if (euid === undefined) return;
  const given = resolve(socketPath);
  let real: string;
  try {
    real = realpathSync(given);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'EACCES') throw new SigilError('cli.permission_denied', `no permission to open ${socketPath}; run as the verifier's user or root`);
    throw untrusted(socketPath, `cannot be inspected (${errorMessage(e)})`);
  }
  let st: Stats;
  try {
    st = lstatSync(real);
  } catch (e) {
    throw untrusted(socketPath, `cannot be inspected (${errorMessage(e)})`);
  }
  if (!st.isSocket()) throw untrusted(socketPath, 'it is not a socket');
  if ((st.mode & 0o077) !== 0) throw untrusted(socketPath, `its mode 0${(st.mode & 0o777).toString(8)} lets other users connect, as the verifier's never does`);
  const owners = new Set([euid, 0, st.uid]);
  walkTrusted(socketPath, given, owners);
  if (real !== given) walkTrusted(socketPath, real, owners);
}

export async function adminCall<T>(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<T> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  checkAdminSocket(socketPath);
  return new Promise<T>((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        timeout: timeoutMs,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE) {
            req.destroy(new SigilError('cli.response_too_large', 'verifier answer too large'));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const ct = String(res.headers['content-type'] ?? '');
          let parsed: unknown = text;
          if (ct.includes('json')) {
            try {
              parsed = JSON.parse(text);
            } catch {
              reject(new SigilError('cli.bad_response', `verifier sent invalid JSON (HTTP ${res.statusCode})`));
              return;
            }
          }
          if ((res.statusCode ?? 500) >= 400) {
            const err = (parsed as { error?: { code?: string; message?: string } })?.error;
            reject(new SigilError(err?.code ?? 'cli.http_error', err?.message ?? `verifier answered HTTP ${res.statusCode}`));
            return;
          }
          resolve(parsed as T);
        });
      },
    );
    req.on('timeout', () => req.destroy(new SigilError('cli.timeout', `no answer from ${socketPath} within ${timeoutMs} ms`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e instanceof SigilError) return reject(e);
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
        return reject(new SigilError('cli.verifier_unreachable', `cannot reach the verifier admin socket ${socketPath} (${e.code}); is the verifier running? (--admin-socket)`));
      }
      if (e.code === 'EACCES') return reject(new SigilError('cli.permission_denied', `no permission to open ${socketPath}; run as the verifier's user or root`));
      reject(new SigilError('cli.verifier_unreachable', `admin socket ${socketPath}: ${e.message}`));
    });
    if (payload) req.write(payload);
    req.end();
  });
}
