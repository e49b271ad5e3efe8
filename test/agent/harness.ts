/** Test support for agent integration tests: a real gRPC Workload API client, agent configs, waiting. */
import { createServer } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { pino } from 'pino';
import { agentConfigFrom, type AgentConfig } from '../../src/agent/config.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { splitConcatenatedDer } from '../../src/spiffe/bundle.js';
import { verifyX509Svid } from '../../src/spiffe/x509svid.js';

export const UID = process.getuid!();
export const GID = process.getgid!();

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function waitFor<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what: string, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String((last as Error).message ?? last)})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface X509Msg {
  svids: { spiffe_id: string; x509_svid: Buffer; x509_svid_key: Buffer; bundle: Buffer; hint: string }[];
}

/** The SPIFFE ID, serial and notAfter of each SVID of a message, after verifying it against its bundle. */
export function describeSvids(m: X509Msg): { id: string; serial: string; notAfter: Date }[] {
  return m.svids.map((s) => {
    const chain = splitConcatenatedDer(s.x509_svid);
    const bundle = splitConcatenatedDer(s.bundle);
    const v = verifyX509Svid(chain, () => bundle, new Date());
    if (v.spiffeId.toString() !== s.spiffe_id) throw new Error(`spiffe_id ${s.spiffe_id} differs from the certificate's ${v.spiffeId.toString()}`);
    return { id: s.spiffe_id, serial: v.leafDer.subarray(0, 64).toString('hex') + v.notAfter.getTime(), notAfter: v.notAfter };
  });
}

let pkg: grpc.GrpcObject | undefined;
function workloadService(): grpc.ServiceClientConstructor {
  if (!pkg) {
    const def = protoLoader.loadSync(fileURLToPath(new URL('../../proto/workload.proto', import.meta.url)), { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    pkg = grpc.loadPackageDefinition(def);
  }
  return pkg.SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
}

function md(): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('workload.spiffe.io', 'true');
  return m;
}

export class X509Stream {
  readonly messages: X509Msg[] = [];
  error: grpc.ServiceError | undefined;
  ended = false;
  private readonly call: grpc.ClientReadableStream<X509Msg>;
  constructor(client: grpc.Client) {
    this.call = (client as unknown as { FetchX509SVID(req: object, md: grpc.Metadata): grpc.ClientReadableStream<X509Msg> }).FetchX509SVID({}, md());
    this.call.on('data', (m: X509Msg) => this.messages.push(m));
    this.call.on('error', (e: grpc.ServiceError) => {
      this.error = e;
      this.ended = true;
    });
    this.call.on('end', () => {
      this.ended = true;
    });
  }
  latest(): X509Msg | undefined {
    return this.messages[this.messages.length - 1];
  }
  ids(m = this.latest()): string[] {
    return (m?.svids ?? []).map((s) => s.spiffe_id).sort();
  }
  cancel(): void {
    this.call.cancel();
  }
}

export class WorkloadClient {
  readonly client: grpc.Client;
  private readonly streams: X509Stream[] = [];
  constructor(socketPath: string) {
    const Svc = workloadService();
    this.client = new Svc(`unix://${socketPath}`, grpc.credentials.createInsecure());
  }
  stream(): X509Stream {
    const s = new X509Stream(this.client);
    this.streams.push(s);
    return s;
  }
  /** Open streams until one delivers a message satisfying `pred`; returns that stream (left open). */
  async streamWhen(pred: (m: X509Msg) => boolean, timeoutMs: number, what: string): Promise<X509Stream> {
    return waitFor(
      async () => {
        const s = this.stream();
        const got = await waitFor(() => (s.messages.some(pred) ? 'yes' : s.ended ? 'ended' : undefined), 5000, 'first message').catch(() => 'ended');
        if (got === 'yes') return s;
        s.cancel();
        return undefined;
      },
      timeoutMs,
      what,
      100,
    );
  }
  private unary<T>(method: string, req: object): Promise<T> {
    return new Promise((resolve, reject) => {
      (this.client as unknown as Record<string, (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: T) => void) => void>)[method]!(req, md(), { deadline: Date.now() + 10_000 }, (e, v) => (e ? reject(e) : resolve(v)));
    });
  }
  fetchJwt(audience: string[], spiffeId = ''): Promise<{ svids: { spiffe_id: string; svid: string; hint: string }[] }> {
    return this.unary('FetchJWTSVID', { audience, spiffe_id: spiffeId });
  }
  validateJwt(svid: string, audience: string): Promise<{ spiffe_id: string; claims: unknown }> {
    return this.unary('ValidateJWTSVID', { svid, audience });
  }
  firstJwtBundles(): Promise<{ bundles: Record<string, Buffer> }> {
    return new Promise((resolve, reject) => {
      const c = (this.client as unknown as { FetchJWTBundles(r: object, m: grpc.Metadata): grpc.ClientReadableStream<{ bundles: Record<string, Buffer> }> }).FetchJWTBundles({}, md());
      c.once('data', (m: { bundles: Record<string, Buffer> }) => {
        resolve(m);
        c.cancel();
      });
      c.once('error', (e: grpc.ServiceError) => {
        if (e.code !== grpc.status.CANCELLED) reject(e);
      });
    });
  }
  close(): void {
    for (const s of this.streams) s.cancel();
    this.client.close();
  }
}

export interface AgentEnv {
  dir: string;
  config: AgentConfig;
  socket: string;
  trustBundlePath: string;
}

/** Write the verifier's bundle as the bootstrap trustBundle and build an agent config in `dir`. */
export async function agentEnv(dir: string, adminSocket: string, verifierPort: number, nodeAttestors: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<AgentEnv> {
  const trustBundlePath = join(dir, 'bootstrap.pem');
  writeFileSync(trustBundlePath, await adminCall<string>(adminSocket, 'GET', '/v1/admin/bundle?format=pem'));
  const socket = join(dir, 'agent.sock');
  const config = agentConfigFrom(
    {
      trustDomain: 'example.org',
      verifier: { address: '127.0.0.1', port: verifierPort },
      trustBundle: trustBundlePath,
      workloadApiSocket: socket,
      dataDir: join(dir, 'data'),
      nodeAttestors,
      workloadAttestors: { unix: { hashBinaries: false } },
      syncInterval: '200ms',
      logLevel: 'silent',
      ...extra,
    },
    dir,
  );
  return { dir, config, socket, trustBundlePath };
}

export function runAgent(env: AgentEnv): Promise<RunningAgent> {
  const level = process.env.SIGIL_TEST_LOG ? 'debug' : 'silent';
  return startAgent(env.config, { logger: pino({ level }), backoff: { baseMs: 100, capMs: 1000 } });
}

export async function createEntry(adminSocket: string, body: Record<string, unknown>): Promise<{ id: string; spiffeId: string }> {
  return adminCall(adminSocket, 'POST', '/v1/admin/entries', body);
}

export async function joinToken(adminSocket: string, body: Record<string, unknown> = {}): Promise<{ token: string; tokenId: string; agentId: string }> {
  return adminCall(adminSocket, 'POST', '/v1/admin/tokens', body);
}
