/** Minimal JSON client for the verifier's admin API over its Unix socket. */
import { request } from 'node:http';
import { SigilError } from '../errors.js';

export const DEFAULT_ADMIN_SOCKET = '/run/sigil/admin.sock';
const MAX_RESPONSE = 64 * 1024 * 1024;

export async function adminCall<T>(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<T> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
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
