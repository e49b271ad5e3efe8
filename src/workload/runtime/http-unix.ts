/**
 * One bounded JSON GET over a Unix socket (the Docker Engine API) or HTTPS (the kubelet): the
 * body is capped, the request ends at its deadline or when the caller's signal aborts, and every
 * failure is a SigilError naming the endpoint. node:http is enough here; no client library
 * is needed for a GET.
 */
import http from 'node:http';
import https from 'node:https';
import { SigilError } from '../../errors.js';

export interface JsonGetOptions {
  /** Unix socket path (http over the socket) … */
  socketPath?: string;
  /** … or an https:// base URL. */
  baseUrl?: URL;
  path: string;
  timeoutMs: number;
  maxBytes: number;
  signal?: AbortSignal;
  headers?: Record<string, string>;
  ca?: Buffer;
  /** What to call the peer in messages ("docker API at /var/run/docker.sock"). */
  what: string;
}

export interface JsonAnswer {
  status: number;
  body: unknown;
}

export function getJson(o: JsonGetOptions): Promise<JsonAnswer> {
  return new Promise<JsonAnswer>((resolve, reject) => {
    let done = false;
    const finish = (e: SigilError | null, v?: JsonAnswer): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      req.destroy();
      if (e) reject(e);
      else resolve(v as JsonAnswer);
    };
    const common = { method: 'GET', path: o.path, headers: { accept: 'application/json', ...o.headers } };
    const req =
      o.baseUrl !== undefined
        ? https.request({ ...common, host: o.baseUrl.hostname, port: o.baseUrl.port || 443, ca: o.ca, servername: o.baseUrl.hostname, agent: false })
        : http.request({ ...common, socketPath: o.socketPath, agent: false });
    const timer = setTimeout(() => finish(new SigilError('container.runtime_timeout', `${o.what} did not answer within ${o.timeoutMs} ms`, { status: 503 })), o.timeoutMs);
    const onAbort = (): void => finish(new SigilError('container.runtime_timeout', `${o.what}: lookup abandoned (attestation deadline)`, { status: 503 }));
    if (o.signal?.aborted) {
      onAbort();
      return;
    }
    o.signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (e: NodeJS.ErrnoException) => {
      finish(new SigilError('container.runtime_unavailable', `${o.what} is unreachable: ${e.code ?? e.message}`, { status: 503 }));
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > o.maxBytes) {
          finish(new SigilError('container.runtime_bad_answer', `${o.what} answered with more than ${o.maxBytes} bytes`, { status: 502 }));
          return;
        }
        chunks.push(c);
      });
      res.on('error', (e) => finish(new SigilError('container.runtime_unavailable', `${o.what}: ${e.message}`, { status: 503 })));
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        const text = Buffer.concat(chunks).toString('utf8');
        if (status === 404) {
          finish(null, { status, body: undefined });
          return;
        }
        if (status !== 200) {
          finish(new SigilError('container.runtime_error', `${o.what} answered HTTP ${status} to GET ${o.path.split('?')[0]}`, { status: 502 }));
          return;
        }
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          finish(new SigilError('container.runtime_bad_answer', `${o.what} answered GET ${o.path.split('?')[0]} with malformed JSON`, { status: 502 }));
          return;
        }
        finish(null, { status, body });
      });
    });
    req.end();
  });
}
