/**
 * Shared load generation for the Workload API benchmarks: the clients (a minimal HTTP/2 client of
 * our own by default, node:http2 on request) and open-/closed-loop drivers.
 */
import { createSign, generateKeyPairSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { workloadCodecs } from '../../src/agent/workload-api/proto.js';

export function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** One connected Workload API client: one connection, calls issued one at a time or concurrently. */
export interface BenchClient {
  x509(): Promise<void>;
  jwt(): Promise<void>;
  close(): void;
}

/**
 * A lean gRPC client on node:http2: the same requests on the wire (HTTP/2 POST, gRPC framing,
 * the security header), responses decoded with protobufjs and checked, but without grpc-js's
 * channel machinery, so that fewer of the client's own CPU cycles and GC pauses on this shared
 * 2-core machine end up in the measured latency.
 */
export async function h2Client(socket: string): Promise<BenchClient> {
  const codecs = workloadCodecs();
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  session.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve());
    session.once('error', reject);
  });
  const frame = (msg: Uint8Array): Buffer => {
    const out = Buffer.alloc(5 + msg.length);
    out.writeUInt32BE(msg.length, 1);
    out.set(msg, 5);
    return out;
  };
  const emptyReq = frame(new Uint8Array(0));
  const jwtReq = frame(codecs.JWTSVIDRequest.encode({ audience: ['bench'] }).finish());
  const headers = (method: string): http2.OutgoingHttpHeaders => ({
    ':method': 'POST',
    ':path': `/SpiffeWorkloadAPI/${method}`,
    'content-type': 'application/grpc',
    te: 'trailers',
    'workload.spiffe.io': 'true',
  });
  /** Read the first gRPC message of a response stream (or fail on a non-OK status). */
  const call = (method: string, req: Buffer, keepOpen: boolean, check: (msg: Uint8Array) => void): Promise<void> =>
    new Promise((resolve, reject) => {
      const st = session.request(headers(method), { endStream: false });
      st.end(req);
      let buf: Buffer = Buffer.alloc(0);
      let settled = false;
      const done = (e?: Error): void => {
        if (settled) return;
        settled = true;
        if (keepOpen) st.close(http2.constants.NGHTTP2_CANCEL);
        if (e) reject(e);
        else resolve();
      };
      st.on('data', (chunk: Buffer) => {
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        if (buf.length < 5) return;
        const len = buf.readUInt32BE(1);
        if (buf.length < 5 + len) return;
        try {
          check(buf.subarray(5, 5 + len));
          if (keepOpen) done();
        } catch (e) {
          done(e as Error);
        }
      });
      st.on('trailers', (t) => {
        if (t['grpc-status'] !== '0') done(new Error(`grpc-status ${String(t['grpc-status'])}: ${String(t['grpc-message'])}`));
      });
      st.on('response', (h) => {
        if (h['grpc-status'] !== undefined && h['grpc-status'] !== '0') done(new Error(`grpc-status ${String(h['grpc-status'])}`));
      });
      st.on('end', () => done());
      st.on('error', (e) => done(e));
    });
  return {
    x509: () =>
      call('FetchX509SVID', emptyReq, true, (m) => {
        const r = codecs.X509SVIDResponse.decode(m) as unknown as { svids: unknown[] };
        if (r.svids.length !== 3) throw new Error(`expected 3 SVIDs, got ${r.svids.length}`);
      }),
    jwt: () =>
      call('FetchJWTSVID', jwtReq, false, (m) => {
        const r = codecs.JWTSVIDResponse.decode(m) as unknown as { svids: unknown[] };
        if (r.svids.length !== 3) throw new Error(`expected 3 JWT-SVIDs, got ${r.svids.length}`);
      }),
    close: () => session.close(),
  };
}

export const fetchX509 = (c: BenchClient): Promise<void> => c.x509();
export const fetchJwt = (c: BenchClient): Promise<void> => c.jwt();

export async function closedLoop(stubs: BenchClient[], calls: number, fn: (s: BenchClient) => Promise<void>): Promise<{ lat: number[]; perSec: number }> {
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    stubs.map(async (s) => {
      for (let i = 0; i < calls; i++) {
        const a = performance.now();
        await fn(s);
        lat.push(performance.now() - a);
      }
    }),
  );
  return { lat, perSec: (lat.length / (performance.now() - t0)) * 1000 };
}

/**
 * Open loop: calls issued at a fixed total rate, round-robin over the clients, whatever the
 * responses do. Each latency runs from the moment its call was due. Returns latencies and this
 * (client) process's event-loop delay over the run: stalls on the client side inflate the
 * measured latency.
 */
export async function openLoop(
  stubs: BenchClient[],
  ratePerSec: number,
  seconds: number,
  fn: (s: BenchClient) => Promise<void>,
): Promise<{ lat: number[]; clientLoop: { p99: number; max: number } }> {
  const mon = monitorEventLoopDelay({ resolution: 1 });
  mon.enable();
  const total = Math.round(ratePerSec * seconds);
  // Latencies go into a preallocated array and outstanding calls are only counted: keeping a
  // promise per call until the end made this process's own garbage collections (up to 20 ms
  // here) show up as latency of the server under test.
  const times = new Float64Array(total);
  let n = 0;
  let outstanding = 0;
  let failure: unknown;
  let allSent = false;
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const interval = 1000 / ratePerSec;
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const due = t0 + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const s = stubs[i % stubs.length]!;
    // Latency counts from when the call was due (or from when it went out, if that was a little
    // early): a call this process sends late because it stalled is charged its wait, so stalls
    // of the load generator cannot hide slow answers (no coordinated omission).
    const a = Math.min(due, performance.now());
    outstanding++;
    fn(s).then(
      () => {
        times[n++] = performance.now() - a;
        if (--outstanding === 0 && allSent) finish();
      },
      (e: unknown) => {
        failure ??= e;
        if (--outstanding === 0 && allSent) finish();
      },
    );
  }
  allSent = true;
  if (outstanding === 0) finish();
  await done;
  mon.disable();
  if (failure !== undefined) throw failure;
  const lat = Array.from(times.subarray(0, n));
  return { lat, clientLoop: { p99: mon.percentile(99) / 1e6, max: mon.max / 1e6 } };
}


/** Node's own ES256 (P-256 ECDSA) signature rate over half a second, for scale. */
export function rawEs256PerSec(): number {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const data = Buffer.alloc(300, 1);
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < 500) {
    createSign('sha256').update(data).sign({ key: privateKey, dsaEncoding: 'ieee-p1363' });
    n++;
  }
  return (n / (performance.now() - t0)) * 1000;
}

/** The Node flags `bin/sigil` starts the agent daemon with (from its `exec node … "$0"` line for `agent run`). */
export function launcherNodeFlags(): string[] {
  const text = readFileSync(new URL('../../bin/sigil', import.meta.url), 'utf8');
  const m = /'agent run'\) exec node((?: --[\w-]+(?:=\S+)?)*) "\$0"/.exec(text);
  if (!m) throw new Error('bin/sigil has no `\'agent run\') exec node <flags> "$0"` line');
  return m[1]!.split(' ').filter((f) => f.length > 0);
}

/**
 * Flags for the load-generating process. It stands in for 200 separate client processes of one
 * connection each, whose heaps are tiny; one process holding all 200 has a heap whose garbage
 * collections (7–20 ms pauses measured with Node's defaults) would be counted as server latency.
 * A large young generation and no pretenuring let per-call objects die young.
 */
const LOAD_GENERATOR_FLAGS = ['--max-semi-space-size=64', '--no-allocation-site-pretenuring'];

/**
 * Run this benchmark again in a Node process started with LOAD_GENERATOR_FLAGS (unless it already
 * is, or BENCH_CLIENT_DEFAULT_FLAGS is set), and exit with its status. Returns when this process
 * is the one to do the work.
 */
export function relaunchAsLoadGenerator(): void {
  if (process.env.BENCH_LOAD_GENERATOR === '1' || process.env.BENCH_CLIENT_DEFAULT_FLAGS) return;
  const r = spawnSync(process.execPath, [...LOAD_GENERATOR_FLAGS, ...process.execArgv, process.argv[1]!, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, BENCH_LOAD_GENERATOR: '1' },
  });
  process.exit(r.status ?? 1);
}

/**
 * Which load client drives the benchmark:
 *   raw — bench/support/raw-h2.ts: HTTP/2 written for the load generator (≈20 µs of client CPU
 *         per call, almost no garbage), so that the latency measured is the server's and not
 *         the load generator's own pauses (200 node:http2 clients in one process cost ≈100–225 µs
 *         per call and stalled it for 10–47 ms in garbage collections);
 *   h2  — h2Client above, on node:http2.
 */
export type LoadClientKind = 'raw' | 'h2';

export async function connectLoadClient(kind: LoadClientKind, socket: string): Promise<BenchClient> {
  if (kind === 'h2') return h2Client(socket);
  const { rawH2Client } = await import('./raw-h2.js');
  return rawH2Client(socket);
}
