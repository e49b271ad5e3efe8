/** Minimal JSON client for the verifier's admin API over its Unix socket. */
import { lstatSync, realpathSync, type Stats } from 'node:fs';
import { request } from 'node:http';
import { SigilError, errorMessage } from '../errors.js';
import { checkTrustedPath } from '../util/trusted-path.js';

export const DEFAULT_ADMIN_SOCKET = '/run/sigil/admin.sock';
const MAX_RESPONSE = 64 * 1024 * 1024;

function untrusted(socketPath: string, why: string): SigilError {
  return new SigilError('cli.admin_socket_untrusted', `admin socket ${socketPath}: ${why}; refusing to talk to it (the verifier's socket is mode 0600 in a directory only its user or root can change)`);
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
  // The path as connect() will use it: `..` after a symlink goes up from where the link leads.
  let real: string;
  try {
    real = realpathSync.native(socketPath); // not realpathSync: it resolves `..` lexically first
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
  checkTrustedPath(socketPath, 'entry', {
    code: 'cli.admin_socket_untrusted',
    dir: `admin socket ${socketPath}: directory`,
    leaf: `admin socket ${socketPath}:`,
    risk: "the verifier's socket with their own",
    alsoOwner: { uid: st.uid, who: "the socket's owner" },
  });
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
