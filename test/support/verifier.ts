/** Test helpers: an in-process verifier on a random port with a temp dataDir, and a small HTTPS client. */
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';

export interface TestVerifier {
  v: RunningVerifier;
  dir: string;
  adminSocket: string;
  trustDomain: string;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startTestVerifier(extra: Record<string, unknown> = {}, opts: { now?: () => Date; dir?: string } = {}): Promise<TestVerifier> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'sigil-v-'));
  const raw = {
    trustDomain: 'example.org',
    listen: { address: '127.0.0.1', port: 0 },
    adminSocket: join(dir, 'admin.sock'),
    dataDir: join(dir, 'data'),
    nodeAttestors: { join_token: {} },
    logLevel: 'silent',
    ...extra,
  };
  const cfg = verifierConfigFrom(raw, dir);
  const start = () => startVerifier(cfg, { logger: pino({ level: process.env.SIGIL_TEST_LOG ? 'debug' : 'silent' }), tickMs: 0, ...(opts.now ? { now: opts.now } : {}) });
  const t: TestVerifier = {
    v: await start(),
    dir,
    adminSocket: cfg.adminSocket,
    trustDomain: cfg.trustDomain,
    async restart() {
      await t.v.close();
      t.v = await start();
    },
    async stop() {
      await t.v.close();
      if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return t;
}

export interface HttpsResult {
  status: number;
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}

/** HTTPS JSON call that trusts `caPem` and checks the server's SPIFFE ID instead of a hostname. */
export function httpsJson(
  port: number,
  method: string,
  path: string,
  opts: { caPem: string; body?: unknown; rawBody?: Buffer | string; cert?: string; key?: string; headers?: Record<string, string>; serverId?: string },
): Promise<HttpsResult> {
  const payload = opts.rawBody !== undefined ? Buffer.from(opts.rawBody) : opts.body !== undefined ? Buffer.from(JSON.stringify(opts.body)) : undefined;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        ca: opts.caPem,
        ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
        headers: { ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}), ...(opts.headers ?? {}) },
        checkServerIdentity: (_host, cert) => {
          const want = `URI:${opts.serverId ?? 'spiffe://example.org/sigil/verifier'}`;
          return cert.subjectaltname === want ? undefined : new Error(`server SAN ${cert.subjectaltname} != ${want}`);
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = text ? JSON.parse(text) : undefined;
          } catch {
            /* not JSON (e.g. metrics) */
          }
          resolve({ status: res.statusCode ?? 0, body, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}
