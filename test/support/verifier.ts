/** Test helpers: an in-process verifier on a random port with a temp dataDir, and a small HTTPS client. */
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
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

/**
 * A new agent attested with a join token through the real protocol (POST /v1/attest, then the
 * session): its agent ID and its node SVID and key as PEM, ready for `httpsJson`'s cert/key.
 */
export async function attestWithJoinToken(tv: TestVerifier, caPem: string): Promise<{ agentId: string; tls: { cert: string; key: string } }> {
  const tok = await adminCall<{ token: string; agentId: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
  if (r1.status !== 200) throw new Error(`POST /v1/attest answered ${r1.status}: ${JSON.stringify(r1.body)}`);
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
  if (r2.status !== 200) throw new Error(`POST /v1/attest/{session} answered ${r2.status}: ${JSON.stringify(r2.body)}`);
  const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  return { agentId: tok.agentId, tls: { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } };
}
