/**
 * Workload API benchmark: FetchX509SVID and FetchJWTSVID latency with 1,000 cached SVIDs in the
 * agent's SVID cache (src/agent/svid-cache.ts; the caller matches 3) and 200 concurrent grpc-js clients (one connection
 * each), the server's RSS, and the cost of workload attestation.
 *
 * The server runs in a child process (so its RSS and event loop are its own); the clients run
 * here. Two load shapes are measured:
 *   - closed loop: 200 clients each issue calls back to back (latency includes queueing at
 *     saturation; throughput is the server's capacity on this machine);
 *   - open loop: 200 connected clients issue calls at a fixed total rate (service latency).
 * Raw crypto rate (ES256 signatures/s) is measured in the same run for scale.
 *
 *   npx tsx bench/workload-api.ts [--clients 200] [--calls 20] [--rate 1000] [--client raw|h2|grpc-js]
 *   The server child runs with bin/sigil's own Node flags (BENCH_SERVER_FLAGS="…" replaces them);
 *   BENCH_PROF=DIR also writes a CPU profile of the server process into DIR.
 *   BENCH_WORKLOAD_SERVER=/abs/module.ts runs that module's `startWorkloadApi` (same options and
 *   result) in place of Sigil's, e.g. to measure another gRPC layer under the same load.
 */
import { generateKeyPairSync } from 'node:crypto';
import { fork } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { mkdtempSync, rmSync, chmodSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import pino from 'pino';
import { SvidCache } from '../src/agent/svid-cache.js';
import type { AuthorizedEntry } from '../src/agent/verifier-client.js';
import { SpiffeBundle } from '../src/spiffe/bundle.js';
import { mintJwtSvidSync } from '../src/spiffe/jwtsvid.js';
import type { WorkloadAttestor } from '../src/plugins/types.js';
import { startWorkloadApi } from '../src/agent/workload-api/server.js';
import type { ServiceTimeSummary } from '../src/agent/workload-api/service-time.js';
import { workloadCodecs, workloadProtoPath } from '../src/agent/workload-api/proto.js';
import { closedLoop, connectLoadClient, fetchJwt, fetchX509, launcherNodeFlags, openLoop, pct, rawEs256PerSec, relaunchAsLoadGenerator, type BenchClient } from './support/load.js';
import { createContainerAttestor } from '../src/workload/container.js';
import { createUnixAttestor } from '../src/workload/unix.js';
import { makePki, TD } from '../test/workload-api/support.js';
import { ATTESTATIONS_PER_CALL, callerCheckCost } from './support/caller-checks.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : dflt;
};

// ---------------------------------------------------------------- server child

/**
 * The floor for comparison, in the same process: a bare node:http2 server on its own socket that
 * answers FetchX509SVID and FetchJWTSVID with the very bytes the agent would send this caller
 * (encoded once), with no peer credentials, attestation, matching or limits.
 */
async function startRawServer(socketPath: string, src: SvidCache, uid: number): Promise<net.Server> {
  const codecs = workloadCodecs();
  const frame = (msg: Uint8Array): Buffer => {
    const out = Buffer.alloc(5 + msg.length);
    out.writeUInt32BE(msg.length, 1);
    out.set(msg, 5);
    return out;
  };
  const mine = [`unix:uid:${uid}`];
  const bundle = src.x509Bundles().get(TD)![0]!;
  const x509 = frame(
    codecs.X509SVIDResponse.encode({
      svids: src.x509SvidsFor(mine).map((v) => ({ spiffe_id: v.spiffeId, x509_svid: Buffer.concat(v.chainDer), x509_svid_key: v.privateKeyPkcs8Der, bundle, hint: v.hint })),
      crl: [],
      federated_bundles: {},
    }).finish(),
  );
  const jwt = frame(codecs.JWTSVIDResponse.encode({ svids: (await src.jwtSvidsFor(mine, ['bench'])).map((r) => ({ spiffe_id: r.spiffeId, svid: r.token, hint: r.hint })) }).finish());
  const server = net.createServer((sock) => {
    const session = http2.performServerHandshake(sock);
    session.on('error', () => undefined);
    session.on('stream', (st, headers) => {
      st.on('error', () => undefined);
      st.on('data', () => undefined);
      st.on('end', () => {
        if (headers[':path'] === '/SpiffeWorkloadAPI/FetchX509SVID') {
          st.respond({ ':status': 200, 'content-type': 'application/grpc+proto' });
          st.write(x509); // a stream: stays open until the client cancels
        } else {
          st.respond({ ':status': 200, 'content-type': 'application/grpc+proto' }, { waitForTrailers: true });
          st.once('wantTrailers', () => st.sendTrailers({ 'grpc-status': '0' }));
          st.end(jwt);
        }
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return server;
}

async function runServer(socketPath: string, uid: number): Promise<void> {
  const pki = makePki();
  const jwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const bundle = new SpiffeBundle(TD, { x509Authorities: [pki.rootDer], jwtAuthorities: [{ kid: 'k1', publicKey: jwtKey.publicKey }] });
  // The agent's real cache (src/agent/svid-cache.ts); only the verifier behind mintJwt is local.
  const src = new SvidCache({
    trustDomain: TD,
    logger: pino({ level: 'silent' }),
    now: () => new Date(),
    bundle: () => bundle,
    mintJwt: async (entryId, audience) => {
      const spiffeId = `spiffe://${TD}/bench/${entryId.slice(1)}`;
      const now = new Date();
      const expiresAt = new Date(now.getTime() + 300_000);
      return { token: mintJwtSvidSync({ privateKey: jwtKey.privateKey, kid: 'k1', spiffeId, audience, notAfter: expiresAt, now }), spiffeId, expiresAt };
    },
  });
  const entries: AuthorizedEntry[] = [];
  for (let i = 0; i < 1000; i++) {
    const mine = i < 3;
    entries.push({
      id: `e${i}`,
      spiffeId: `spiffe://${TD}/bench/${i}`,
      parentId: `spiffe://${TD}/sigil/agent/bench`,
      selectors: mine ? [`unix:uid:${uid}`] : [`unix:uid:${100000 + i}`],
      x509SvidTtl: 3600,
      jwtSvidTtl: 300,
      dnsNames: [],
      hint: mine ? `h${i}` : '',
      admin: false,
      expiresAt: null,
      revisionNumber: 1,
    });
  }
  src.setEntries(entries);
  for (const e of entries) {
    const issued = pki.issue(e.spiffeId);
    src.putSvid(e, issued.chainDer, issued.privateKey, new Date(Date.now() - 1000), issued.expiresAt, new Date());
  }
  const start: typeof startWorkloadApi = process.env.BENCH_WORKLOAD_SERVER
    ? ((await import(pathToFileURL(process.env.BENCH_WORKLOAD_SERVER).href)) as { startWorkloadApi: typeof startWorkloadApi }).startWorkloadApi
    : startWorkloadApi;
  const server = await start({
    socketPath,
    trustDomain: TD,
    source: src,
    attestors: new Map<string, WorkloadAttestor>([
      ['unix', createUnixAttestor({ hashBinaries: true })],
      ['container', createContainerAttestor({})],
    ]),
    logger: pino({ level: 'silent' }),
  });
  const raw = await startRawServer(`${socketPath}.raw`, src, uid);
  process.on('disconnect', () => process.exit(0));
  // BENCH_HEAPPROF=file: sampled allocations that survived scavenges and died in a full GC (what
  // the young generation promotes), written when the run ends.
  let heapSession: import('node:inspector').Session | undefined;
  if (process.env.BENCH_HEAPPROF) {
    const { Session } = await import('node:inspector');
    heapSession = new Session();
    heapSession.connect();
    heapSession.post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: false } as object);
  }
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  process.send!({ type: 'ready', rss: process.memoryUsage().rss });
  process.on('message', async (m: { type: string }) => {
    if (m.type === 'cpu') {
      const cpu = process.cpuUsage();
      process.send!({ type: 'cpu', cpuUs: cpu.user + cpu.system });
    }
    if (m.type === 'rss') {
      const cpu = process.cpuUsage();
      process.send!({
        type: 'rss',
        rss: process.memoryUsage().rss,
        mem: process.memoryUsage(),
        stats: server.stats(),
        cpuUs: cpu.user + cpu.system,
        loopP99Ms: loop.percentile(99) / 1e6,
        loopMaxMs: loop.max / 1e6,
        service: server.serviceTimes(true),
      });
      loop.reset();
    }
    if (m.type === 'rss' && process.env.BENCH_SNAP) (await import('node:v8')).writeHeapSnapshot(`${process.env.BENCH_SNAP}/server-${Date.now()}.heapsnapshot`);
    if (m.type === 'stop' && heapSession) {
      const out = process.env.BENCH_HEAPPROF!;
      heapSession.post('HeapProfiler.stopSampling', (err, r) => {
        if (!err) writeFileSync(out, JSON.stringify(r.profile));
        raw.close();
        void server.close().then(() => process.exit(0));
      });
      return;
    }
    if (m.type === 'stop') {
      raw.close();
      void server.close().then(() => process.exit(0));
    }
  });
}

// ---------------------------------------------------------------- client side

type Stub = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

function md(): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('workload.spiffe.io', 'true');
  return m;
}

/** grpc-js (the full client library a Node workload would use). */
function grpcJsClient(Ctor: grpc.ServiceClientConstructor, socket: string): BenchClient {
  const stub = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as Stub;
  return {
    x509: () =>
      new Promise((resolve, reject) => {
        const call = (stub.FetchX509SVID as (r: object, m: grpc.Metadata) => grpc.ClientReadableStream<{ svids: unknown[] }>).call(stub, {}, md());
        call.once('data', (m) => {
          if (m.svids.length !== 3) reject(new Error(`expected 3 SVIDs, got ${m.svids.length}`));
          else resolve();
          call.cancel();
        });
        call.on('error', (e: grpc.ServiceError) => {
          if (e.code !== grpc.status.CANCELLED) reject(e);
        });
      }),
    jwt: () =>
      new Promise((resolve, reject) => {
        (stub.FetchJWTSVID as (r: object, m: grpc.Metadata, cb: (e: grpc.ServiceError | null, v?: { svids: unknown[] }) => void) => void).call(
          stub,
          { audience: ['bench'] },
          md(),
          (e, v) => (e ? reject(e) : v!.svids.length === 3 ? resolve() : reject(new Error('expected 3 JWT-SVIDs'))),
        );
      }),
    close: () => stub.close(),
  };
}



async function attestationCost(): Promise<void> {
  const caller = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() };
  const signal = new AbortController().signal;
  const cached = createUnixAttestor({ hashBinaries: true });
  await cached.attest(caller, signal); // fill the cache
  const time = async (fn: () => Promise<unknown>, n: number): Promise<number> => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await fn();
    return ((performance.now() - t0) / n) * 1000;
  };
  const hit = await time(() => cached.attest(caller, signal), 2000);
  const noHash = createUnixAttestor({ hashBinaries: false });
  const nh = await time(() => noHash.attest(caller, signal), 2000);
  const miss = await time(() => createUnixAttestor({ hashBinaries: true }).attest(caller, signal), 3);
  const ctr = createContainerAttestor({});
  const c = await time(() => ctr.attest(caller, signal), 2000);
  const { statSync, realpathSync } = await import('node:fs');
  const size = statSync(realpathSync(process.execPath)).size;
  console.log('\nworkload attestation (this process, real /proc):');
  console.log(`  unix, exe hash cached     ${hit.toFixed(0).padStart(8)} µs/attestation`);
  console.log(`  unix, exe hash uncached   ${miss.toFixed(0).padStart(8)} µs/attestation  (hashing ${(size / 1e6).toFixed(1)} MB: ${((size / 1e6) / (miss / 1e6)).toFixed(0)} MB/s)`);
  console.log(`  unix, hashBinaries=false  ${nh.toFixed(0).padStart(8)} µs/attestation`);
  console.log(`  container                 ${c.toFixed(0).padStart(8)} µs/attestation`);

  const checks = await callerCheckCost();
  console.log(`caller checks on a held connection record (this process, measured alone; bench/support/caller-checks.ts):`);
  console.log(`  call from cached selectors (exe stat, status read, compare) ${checks.cachedCall.toFixed(1).padStart(6)} µs`);
  console.log(`  attestation (status, unix + container, the check after)     ${checks.attestation.toFixed(1).padStart(6)} µs`);
  console.log(`  per call at ${ATTESTATIONS_PER_CALL} attestations per call                      ${checks.perCall.toFixed(1).padStart(6)} µs`);
}

async function main(): Promise<void> {
  const nClients = opt('--clients', 200);
  const calls = opt('--calls', 20);
  const rate = opt('--rate', 1000);
  const ci = args.indexOf('--client');
  const clientKind = ci >= 0 ? args[ci + 1] : 'raw';
  if (clientKind !== 'raw' && clientKind !== 'h2' && clientKind !== 'grpc-js') throw new Error('--client must be raw, h2 or grpc-js');
  const es256 = rawEs256PerSec();
  await attestationCost();

  const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-'));
  chmodSync(dir, 0o755);
  const socket = join(dir, 'agent.sock');
  const child = fork(fileURLToPath(import.meta.url), ['--server', socket, String(process.getuid!())], {
    // Run the server child like this process: under tsx from the sources, or plain node when the
    // bench was compiled to JavaScript (then its RSS has no TypeScript loader in it).
    execArgv: [...(import.meta.url.endsWith('.ts') ? ['--import', 'tsx'] : []), ...(process.env.BENCH_SERVER_FLAGS !== undefined ? process.env.BENCH_SERVER_FLAGS.split(' ').filter((f) => f.length > 0) : launcherNodeFlags()), ...(process.env.BENCH_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROF] : [])],
    stdio: 'inherit',
  });
  const ask = <T>(type: string): Promise<T> =>
    new Promise((resolve) => {
      child.once('message', (m) => resolve(m as T));
      if (type !== 'ready') child.send({ type });
    });
  const ready = await ask<{ rss: number }>('ready');

  const def = protoLoader.loadSync(workloadProtoPath(), { keepCase: true, defaults: true });
  const Ctor = grpc.loadPackageDefinition(def).SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
  const stubs: BenchClient[] =
    clientKind === 'grpc-js' ? Array.from({ length: nClients }, () => grpcJsClient(Ctor, socket)) : await Promise.all(Array.from({ length: nClients }, () => connectLoadClient(clientKind, socket)));
  await Promise.all(stubs.map((s) => fetchX509(s))); // connect + warm up
  const afterConnect = await ask<{ rss: number; stats: { connections: number } }>('rss');

  type Probe = { rss: number; mem: NodeJS.MemoryUsage; stats: { connections: number }; cpuUs: number; loopP99Ms: number; loopMaxMs: number; service: Record<string, ServiceTimeSummary> };
  const p0 = await ask<Probe>('rss');
  const x = await closedLoop(stubs, calls, fetchX509);
  const p1 = await ask<Probe>('rss');
  const j = await closedLoop(stubs, calls, fetchJwt);
  const p2 = await ask<Probe>('rss');
  // The bare node:http2 floor in the same child process, with its own 200 connections.
  const rawClients: BenchClient[] =
    clientKind === 'grpc-js'
      ? Array.from({ length: nClients }, () => grpcJsClient(Ctor, `${socket}.raw`))
      : await Promise.all(Array.from({ length: nClients }, () => connectLoadClient(clientKind, `${socket}.raw`)));
  await Promise.all(rawClients.map((s) => fetchX509(s)));
  const r0 = await ask<Probe>('rss');
  const rx = await closedLoop(rawClients, calls, fetchX509);
  const r1 = await ask<Probe>('rss');
  const rj = await closedLoop(rawClients, calls, fetchJwt);
  const r2 = await ask<Probe>('rss');

  /**
   * Open loop, Sigil and the floor interleaved in 1-s slices (so that both see the same machine
   * load), `slices` of each; CPU per call from the child's CPU time around each slice.
   */
  const cpuNow = async (): Promise<number> => (await ask<{ cpuUs: number }>('cpu')).cpuUs;
  const slices = opt('--slices', 5);
  type Interleaved = { sigil: number[]; floor: number[]; sigilCpu: number; floorCpu: number; client: { p99: number; max: number } };
  async function interleaved(fn: (c: BenchClient) => Promise<void>): Promise<Interleaved> {
    const out: Interleaved = { sigil: [], floor: [], sigilCpu: 0, floorCpu: 0, client: { p99: 0, max: 0 } };
    for (let i = 0; i < slices; i++) {
      const c0 = await cpuNow();
      const a = await openLoop(stubs, rate, 1, fn);
      const c1 = await cpuNow();
      const b = await openLoop(rawClients, rate, 1, fn);
      const c2 = await cpuNow();
      out.sigil.push(...a.lat);
      out.floor.push(...b.lat);
      out.sigilCpu += c1 - c0;
      out.floorCpu += c2 - c1;
      out.client = { p99: Math.max(out.client.p99, a.clientLoop.p99), max: Math.max(out.client.max, a.clientLoop.max) };
    }
    return out;
  }
  await ask<Probe>('rss'); // resets the service-time histograms
  const xi = await interleaved(fetchX509);
  const p3 = await ask<Probe>('rss');
  const ji = await interleaved(fetchJwt);
  const end = await ask<Probe>('rss');
  for (const s of rawClients) s.close();
  const xo = xi.sigil;
  const jo = ji.sigil;
  const rawCpu = (a: Probe, b: Probe, n: number): string => `${((b.cpuUs - a.cpuUs) / n).toFixed(0)} µs server CPU/call`;
  const loopNote = (b: Probe): string =>
    `in-server service time ${Object.values(b.service)
      .map((t) => `p50 ${t.p50Ms.toFixed(2)} p99 ${t.p99Ms.toFixed(2)} max ${t.maxMs.toFixed(1)} ms`)
      .join(', ')}; server event-loop delay p99 ${b.loopP99Ms.toFixed(1)} ms max ${b.loopMaxMs.toFixed(1)} ms`;
  const cpuPerCall = (a: Probe, b: Probe, n: number): string => {
    const svc = Object.entries(b.service)
      .map(([m, t]) => `${m} p50 ${t.p50Ms.toFixed(2)} p99 ${t.p99Ms.toFixed(2)} max ${t.maxMs.toFixed(1)} ms`)
      .join(', ');
    return `${((b.cpuUs - a.cpuUs) / n).toFixed(0)} µs server CPU/call; in-server service time ${svc}; server event-loop delay p99 ${b.loopP99Ms.toFixed(1)} ms max ${b.loopMaxMs.toFixed(1)} ms`;
  };

  const row = (name: string, lat: number[], perSec?: number): string =>
    `  ${name.padEnd(44)} p50 ${pct(lat, 50).toFixed(2).padStart(7)} ms   p99 ${pct(lat, 99).toFixed(2).padStart(7)} ms` +
    (perSec !== undefined ? `   ${perSec.toFixed(0).padStart(6)} calls/s (${(perSec / es256).toFixed(2)}× raw ES256 sign rate)` : '');
  console.log(`\nWorkload API: 1,000 cached SVIDs, caller matches 3, ${nClients} ${clientKind === 'raw' ? 'minimal HTTP/2 (bench/support/raw-h2.ts) gRPC' : clientKind === 'h2' ? 'lean node:http2 gRPC' : 'grpc-js'} clients (one connection each), server in a child process`);
  console.log(`raw ES256 sign rate: ${es256.toFixed(0)} signatures/s`);
  console.log(`closed loop (${nClients} concurrent, ${calls} calls each, back to back):`);
  console.log(row('FetchX509SVID (first message of the stream)', x.lat, x.perSec) + `   ${cpuPerCall(p0, p1, x.lat.length)}`);
  console.log(row('FetchJWTSVID (cached tokens)', j.lat, j.perSec) + `   ${cpuPerCall(p1, p2, j.lat.length)}`);
  console.log(`open loop (${rate} calls/s spread over ${nClients} connected clients; ${slices} 1-s slices, interleaved with the same against the floor below):`);
  const clientNote = (c: { p99: number; max: number }): string => `; client event-loop delay p99 ${c.p99.toFixed(1)} ms max ${c.max.toFixed(1)} ms`;
  console.log(row('FetchX509SVID', xo) + `   ${(xi.sigilCpu / xo.length).toFixed(0)} µs server CPU/call; ${loopNote(p3)}${clientNote(xi.client)}`);
  console.log(row('FetchJWTSVID', jo) + `   ${(ji.sigilCpu / jo.length).toFixed(0)} µs server CPU/call; ${loopNote(end)}${clientNote(ji.client)}`);
  console.log(`the floor: bare node:http2 server in the same process sending the same bytes (no attestation, matching or limits):`);
  const ratio = (a: number, b: number): string => `${(a / b).toFixed(2)}× the floor`;
  console.log(row('closed FetchX509SVID', rx.lat, rx.perSec) + `   ${rawCpu(r0, r1, rx.lat.length)}; Sigil throughput ${ratio(x.perSec, rx.perSec)}`);
  console.log(row('closed FetchJWTSVID', rj.lat, rj.perSec) + `   ${rawCpu(r1, r2, rj.lat.length)}; Sigil throughput ${ratio(j.perSec, rj.perSec)}`);
  console.log(row('open FetchX509SVID', xi.floor) + `   ${(xi.floorCpu / xi.floor.length).toFixed(0)} µs server CPU/call; Sigil p99 ${ratio(pct(xo, 99), pct(xi.floor, 99))}`);
  console.log(row('open FetchJWTSVID', ji.floor) + `   ${(ji.floorCpu / ji.floor.length).toFixed(0)} µs server CPU/call; Sigil p99 ${ratio(pct(jo, 99), pct(ji.floor, 99))}`);
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;
  const m = end.mem;
  console.log(`server memory after the runs: heap ${mb(m.heapUsed)} used of ${mb(m.heapTotal)}, external ${mb(m.external)} (array buffers ${mb(m.arrayBuffers)})`);
  console.log(
    `server RSS: ${(ready.rss / 1e6).toFixed(1)} MB idle with 1,000 SVIDs, ${(afterConnect.rss / 1e6).toFixed(1)} MB with ${afterConnect.stats.connections} connections, ${(end.rss / 1e6).toFixed(1)} MB after the runs`,
  );
  for (const s of stubs) s.close();
  child.send({ type: 'stop' });
  await new Promise((r) => child.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}

if (args[0] === '--server') {
  await runServer(args[1]!, Number(args[2]));
} else {
  relaunchAsLoadGenerator();
  await main();
}
