/**
 * The real agent under Workload API load: `bin/sigil agent run` (compiled, launched exactly as a
 * user launches it, with the launcher's V8 flags) attests with a join token to a verifier that
 * runs as `bin/sigil verifier run` in its own process, receives 1,000 authorized entries and their
 * X.509-SVIDs, and then serves 200 concurrent clients (one connection each, driven from this
 * process, which does nothing else) whose caller matches 3 of the entries.
 *
 * Measured: FetchX509SVID and FetchJWTSVID latency (open loop at a fixed rate, and closed loop
 * back to back), the agent process's RSS (from /proc/<pid>/status: idle with 1,000 SVIDs, with
 * 200 connections, after the runs) and its CPU time per call (from /proc/<pid>/stat).
 *
 * The floor, in the same run: a bare node:http2 server process (bench/support/floor-server.ts,
 * same Node flags as the agent, on the agent's CPU with --pin) answering with the very bytes and
 * response headers the agent sent, under the same loads from its own 200 connections of the same
 * client code; its CPU per call and the agent's ratio to it are printed. The open loops of the
 * agent and the floor alternate in `--slice`-second slices (so that both see the same machine
 * load), the closed loops run back to back. Each row also splits the CPU into user and system
 * time, and the main (JavaScript) thread's share of each. Each process's background CPU (the
 * agent's entry sync and bundle fetches) is measured while the other one is under load, and the
 * ratio is also given net of it (the floor has none to speak of).
 *
 *   npx tsx bench/agent.ts [--clients 200] [--calls 20] [--rate 1000] [--seconds 10] [--slice 2] [--entries 1000] [--pin] [--client raw|h2]
 *
 * The compiled CLI in dist/ is rebuilt first (`npm run build`) so the agent runs the current code.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:https';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminCall } from '../src/cli/admin-client.js';
import { freePort } from '../test/agent/harness.js';
import { closedLoop, connectLoadClient, type BenchClient, fetchJwt, fetchX509, launcherNodeFlags, openLoop, pct, rawEs256PerSec, relaunchAsLoadGenerator, type LoadClientKind } from './support/load.js';
import { grpcFirstMessage } from './support/floor-server.js';
import { ATTESTATIONS_PER_CALL, callerCheckCost } from './support/caller-checks.js';
import { workloadCodecs } from '../src/agent/workload-api/proto.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : dflt;
};
const root = fileURLToPath(new URL('..', import.meta.url));

function procRss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** RssAnon, RssFile and RssShmem of a process and its thread count (/proc/<pid>/status), as "anon X MB, file Y MB, shmem Z MB; N threads". */
function rssSplit(pid: number): string {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): string => {
    const m = new RegExp(`^${k}:\\s+(\\d+) kB$`, 'm').exec(text);
    return m ? `${(Number(m[1]) / 1024).toFixed(1)} MB` : '?';
  };
  const threads = /^Threads:\s+(\d+)$/m.exec(text)?.[1] ?? '?';
  return `anon ${kb('RssAnon')}, file ${kb('RssFile')}, shmem ${kb('RssShmem')}; ${threads} threads`;
}

/** User and system CPU of a process or thread in µs (fields 14 and 15 of its stat file, in clock ticks). */
function statCpu(path: string): { user: number; sys: number } {
  const text = readFileSync(path, 'utf8');
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { user: (Number(f[11]) * 1e6) / 100, sys: (Number(f[12]) * 1e6) / 100 }; // USER_HZ is 100 on Linux
}

/** Where a process's CPU went: user and system time of the whole process, and of its main (JavaScript) thread. */
interface CpuSplit {
  user: number;
  sys: number;
  mainUser: number;
  mainSys: number;
}

function cpuSplit(pid: number): CpuSplit {
  const all = statCpu(`/proc/${pid}/stat`);
  const main = statCpu(`/proc/${pid}/task/${pid}/stat`);
  return { user: all.user, sys: all.sys, mainUser: main.user, mainSys: main.sys };
}

/** Per call between two splits: "user U + sys S µs (main thread U + S)". */
function splitNote(a: CpuSplit, b: CpuSplit, n: number): string {
  const per = (x: number): string => (x / n).toFixed(0);
  return `user ${per(b.user - a.user)} + sys ${per(b.sys - a.sys)} µs (main thread ${per(b.mainUser - a.mainUser)} + ${per(b.mainSys - a.mainSys)})`;
}


async function waitFor<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}


/** The verifier's `sigil_svids_issued_total{type="x509"}` from its /metrics (HTTPS, trusting its own bundle). */
function issuedX509(port: number, caPem: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', ca: caPem, checkServerIdentity: () => undefined }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        const m = /^sigil_svids_issued_total\{type="x509"\} (\d+)$/m.exec(body);
        resolve(m ? Number(m[1]) : 0);
      });
    });
    req.on('error', reject);
    req.end();
  });
}

async function main(): Promise<void> {
  const nClients = opt('--clients', 200);
  const calls = opt('--calls', 20);
  const rate = opt('--rate', 1000);
  const nEntries = opt('--entries', 1000);
  const seconds = opt('--seconds', 10);
  const slice = opt('--slice', 2);
  const uid = process.getuid!();
  // --pin: the agent alone on CPU 1; this load generator and the verifier on CPU 0, so that the
  // harness does not take the agent's CPU on a 2-core machine.
  const pin = args.includes('--pin');
  const ci = args.indexOf('--client');
  const clientKind = (ci >= 0 ? args[ci + 1] : 'raw') as LoadClientKind;
  if (clientKind !== 'raw' && clientKind !== 'h2') throw new Error('--client must be raw or h2');

  const load0 = loadavg().map((l) => l.toFixed(1)).join(' ');
  process.stdout.write('building dist/ (npm run build)… ');
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' });
  console.log('done');
  if (pin) execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const es256 = rawEs256PerSec();
  // Measured here, before any process of the run starts (see bench/support/caller-checks.ts).
  const checks = await callerCheckCost();

  const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-agent-'));
  chmodSync(dir, 0o755);
  const daemons: { child: ChildProcess; exited: Promise<unknown> }[] = [];
  /**
   * Run bin/sigil as a user does (its sh launcher), or with `nodeFlags` (then also give the launcher's own
   * flags); with `cpu`, pinned to that CPU (taskset).
   */
  const daemon = (args: string[], nodeFlags?: string[], cpu?: number): ChildProcess => {
    const bin = join(root, 'bin/sigil');
    const cmd = nodeFlags ? [process.execPath, ...nodeFlags, bin, ...args] : [bin, ...args];
    const argv = cpu === undefined ? cmd : ['taskset', '-c', String(cpu), ...cmd];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'inherit', 'inherit'] });
    daemons.push({ child, exited: new Promise((r) => child.once('exit', r)) });
    return child;
  };
  try {
    const port = await freePort();
    const adminSocket = join(dir, 'admin.sock');
    writeFileSync(
      join(dir, 'verifier.yaml'),
      [
        'trustDomain: example.org',
        `listen: { address: 127.0.0.1, port: ${port} }`,
        `adminSocket: ${adminSocket}`,
        `dataDir: ${join(dir, 'verifier-data')}`,
        'logLevel: warn',
        'nodeAttestors: { join_token: {} }',
        '',
      ].join('\n'),
    );
    daemon(['verifier', 'run', '--config', join(dir, 'verifier.yaml')], undefined, pin ? 0 : undefined);
    await waitFor(() => adminCall(adminSocket, 'GET', '/readyz').then(() => true), 30_000, 'the verifier');

    const token = await adminCall<{ token: string; agentId: string }>(adminSocket, 'POST', '/v1/admin/tokens', {});
    const t0 = performance.now();
    for (let i = 0; i < nEntries; i++) {
      const mine = i < 3;
      await adminCall(adminSocket, 'POST', '/v1/admin/entries', {
        spiffeId: `spiffe://example.org/bench/${i}`,
        parentId: token.agentId,
        selectors: [mine ? `unix:uid:${uid}` : `unix:uid:${100000 + i}`],
        ...(mine ? { hint: `h${i}` } : {}),
      });
    }
    console.log(`${nEntries} entries registered in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const bundlePem = await adminCall<string>(adminSocket, 'GET', '/v1/admin/bundle?format=pem');
    writeFileSync(join(dir, 'bootstrap.pem'), bundlePem);
    const socket = join(dir, 'agent.sock');
    writeFileSync(
      join(dir, 'agent.yaml'),
      [
        'trustDomain: example.org',
        `verifier: { address: 127.0.0.1, port: ${port} }`,
        'trustBundle: bootstrap.pem',
        `dataDir: ${join(dir, 'agent-data')}`,
        `workloadApiSocket: ${socket}`,
        `nodeAttestors: { join_token: { token: ${token.token} } }`,
        'workloadAttestors: { unix: {}, container: {} }',
        'logLevel: warn',
        '',
      ].join('\n'),
    );
    const t1 = performance.now();
    // BENCH_AGENT_NODE_FLAGS (e.g. "--max-semi-space-size=4 --cpu-prof --cpu-prof-dir=/tmp/prof")
    // runs the agent as `node <flags> bin/sigil` instead of through its launcher.
    const flags = process.env.BENCH_AGENT_NODE_FLAGS?.split(' ').filter((f) => f.length > 0);
    const agentProc = daemon(['agent', 'run', '--config', join(dir, 'agent.yaml')], flags, pin ? 1 : undefined);
    // Under taskset the child is taskset until it execs the agent: the same pid either way.
    const pid = agentProc.pid!;
    const first = await waitFor(() => connectLoadClient(clientKind, socket), 30_000, 'the Workload API socket');
    // Every entry's X.509-SVID issued (the verifier's own counter), and ours served.
    await waitFor(async () => ((await issuedX509(port, bundlePem)) >= nEntries ? true : undefined), 120_000, `${nEntries} X.509-SVIDs issued to the agent`);
    await waitFor(() => first.x509().then(() => true), 30_000, 'the three matching X.509-SVIDs served');
    console.log(`agent attested and holding SVIDs after ${((performance.now() - t1) / 1000).toFixed(1)} s`);
    first.close();
    await new Promise((r) => setTimeout(r, 500));
    const rssIdle = procRss(pid);

    const clients = await Promise.all(Array.from({ length: nClients }, () => connectLoadClient(clientKind, socket)));
    await Promise.all(clients.map((c) => c.x509())); // connect + warm up
    await Promise.all(clients.map((c) => c.jwt())); // JWT-SVIDs minted once by the verifier, then cached
    const rssConns = procRss(pid);
    // The floor: the same bytes from a bare node:http2 server process (started now, idle while
    // the agent is measured and the other way round), on the agent's CPU with --pin.
    const x509Bytes = await grpcFirstMessage(socket, 'FetchX509SVID', new Uint8Array(0));
    const jwtBytes = await grpcFirstMessage(socket, 'FetchJWTSVID', workloadCodecs().JWTSVIDRequest.encode({ audience: ['bench'] }).finish());
    writeFileSync(join(dir, 'floor-x509.bin'), x509Bytes);
    writeFileSync(join(dir, 'floor-jwt.bin'), jwtBytes);
    const floorSocket = join(dir, 'floor.sock');
    const floorArgv = [process.execPath, '--import', 'tsx', ...launcherNodeFlags(), join(root, 'bench/support/floor-server.ts'), floorSocket, join(dir, 'floor-x509.bin'), join(dir, 'floor-jwt.bin')];
    const floorCmd = pin ? ['taskset', '-c', '1', ...floorArgv] : floorArgv;
    const floorProc = spawn(floorCmd[0]!, floorCmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'], cwd: root });
    daemons.push({ child: floorProc, exited: new Promise((r) => floorProc.once('exit', r)) });
    await new Promise<void>((resolve, reject) => {
      floorProc.stdout!.once('data', () => resolve());
      floorProc.once('exit', (c) => reject(new Error(`floor server exited (${c})`)));
    });
    const floorPid = floorProc.pid!;
    const floorClients = await Promise.all(Array.from({ length: nClients }, () => connectLoadClient(clientKind, floorSocket)));

    // Warm-up at the measured rate (JIT compilation of the call paths), not measured.
    for (const cs of [clients, floorClients]) {
      await openLoop(cs, rate, 1, fetchX509);
      await openLoop(cs, rate, 1, fetchJwt);
    }

    /**
     * Open loop, the agent and the floor interleaved in slices of `slice` seconds (`seconds` in
     * all for each), so that both see the same machine load; CPU from /proc around each slice.
     */
    type Side = { lat: number[]; cpu: number; ms: number; split: CpuSplit; clientLoop: { p99: number; max: number } };
    const zeroSplit = (): CpuSplit => ({ user: 0, sys: 0, mainUser: 0, mainSys: 0 });
    const addSplit = (acc: CpuSplit, a: CpuSplit, b: CpuSplit): void => {
      acc.user += b.user - a.user;
      acc.sys += b.sys - a.sys;
      acc.mainUser += b.mainUser - a.mainUser;
      acc.mainSys += b.mainSys - a.mainSys;
    };
    const side = (): Side => ({ lat: [], cpu: 0, ms: 0, split: zeroSplit(), clientLoop: { p99: 0, max: 0 } });
    /**
     * Each process's own background CPU (the agent's entry sync, bundle fetches, timers), measured
     * while the other one is under load and it has no calls: CPU µs and wall ms.
     */
    const background = new Map<number, { cpu: number; ms: number }>([
      [pid, { cpu: 0, ms: 0 }],
      [floorPid, { cpu: 0, ms: 0 }],
    ]);
    async function measured(p: number, cs: BenchClient[], fn: (c: BenchClient) => Promise<void>, s: Side, run: (cs: BenchClient[], fn: (c: BenchClient) => Promise<void>) => Promise<{ lat: number[]; clientLoop?: { p99: number; max: number } }>): Promise<void> {
      const idle = p === pid ? floorPid : pid;
      const i0 = cpuSplit(idle);
      const a = cpuSplit(p);
      const t0 = performance.now();
      const r = await run(cs, fn);
      const ms = performance.now() - t0;
      const b = cpuSplit(p);
      const i1 = cpuSplit(idle);
      const bg = background.get(idle)!;
      bg.cpu += i1.user - i0.user + (i1.sys - i0.sys);
      bg.ms += ms;
      for (const l of r.lat) s.lat.push(l);
      addSplit(s.split, a, b);
      s.cpu += b.user - a.user + (b.sys - a.sys);
      s.ms += ms;
      if (r.clientLoop) s.clientLoop = { p99: Math.max(s.clientLoop.p99, r.clientLoop.p99), max: Math.max(s.clientLoop.max, r.clientLoop.max) };
    }
    const open = (cs: BenchClient[], fn: (c: BenchClient) => Promise<void>, secs: number) => openLoop(cs, rate, secs, fn);
    async function interleavedOpen(fn: (c: BenchClient) => Promise<void>): Promise<{ agent: Side; floor: Side }> {
      const agent = side();
      const floor = side();
      for (let left = seconds; left > 0; left -= slice) {
        const secs = Math.min(slice, left);
        await measured(pid, clients, fn, agent, (cs, f) => open(cs, f, secs));
        await measured(floorPid, floorClients, fn, floor, (cs, f) => open(cs, f, secs));
      }
      return { agent, floor };
    }
    const xo = await interleavedOpen(fetchX509);
    const jo = await interleavedOpen(fetchJwt);
    const closed = (cs: BenchClient[], fn: (c: BenchClient) => Promise<void>) => closedLoop(cs, calls, fn);
    const x = side();
    const fx = side();
    const j = side();
    const fj = side();
    const t = { x: 0, fx: 0, j: 0, fj: 0 };
    let t0c = performance.now();
    await measured(pid, clients, fetchX509, x, closed);
    t.x = performance.now() - t0c;
    t0c = performance.now();
    await measured(floorPid, floorClients, fetchX509, fx, closed);
    t.fx = performance.now() - t0c;
    t0c = performance.now();
    await measured(pid, clients, fetchJwt, j, closed);
    t.j = performance.now() - t0c;
    t0c = performance.now();
    await measured(floorPid, floorClients, fetchJwt, fj, closed);
    t.fj = performance.now() - t0c;
    const rssAfter = procRss(pid);
    const rssAfterSplit = rssSplit(pid);
    for (const c of floorClients) c.close();

    const row = (name: string, s: Side, extra = ''): string =>
      `  ${name.padEnd(44)} p50 ${pct(s.lat, 50).toFixed(2).padStart(7)} ms   p99 ${pct(s.lat, 99).toFixed(2).padStart(7)} ms   ${(s.cpu / s.lat.length).toFixed(0)} µs CPU/call${extra}`;
    /** CPU per call less the process's background CPU over the same time (µs). */
    const net = (s: Side, p: number): number => {
      const bg = background.get(p)!;
      return (s.cpu - (bg.ms > 0 ? (bg.cpu / bg.ms) * s.ms : 0)) / s.lat.length;
    };
    const netRatio = (agent: Side, floor: Side): string =>
      `net of background: agent ${net(agent, pid).toFixed(0)} µs, floor ${net(floor, floorPid).toFixed(0)} µs per call, ${(net(agent, pid) / net(floor, floorPid)).toFixed(2)}×`;
    const detail = (s: Side, extra = ''): string => `      ${splitNote(zeroSplit(), s.split, s.lat.length)}${extra}`;
    const loopNote = (s: Side): string => `; client event-loop delay p99 ${s.clientLoop.p99.toFixed(1)} ms max ${s.clientLoop.max.toFixed(1)} ms`;
    const perSec = (s: Side, ms: number): string => `   ${((s.lat.length / ms) * 1000).toFixed(0)} calls/s`;
    const vs = (agent: Side, floor: Side): string => `; ${(agent.cpu / agent.lat.length / (floor.cpu / floor.lat.length)).toFixed(2)}× the floor's CPU/call (goal ≤ 1.3)`;
    console.log(`\nreal agent (bin/sigil agent run, pid ${pid}${pin ? ', alone on CPU 1; clients and verifier on CPU 0' : ', sharing both CPUs with the clients'}): ${nEntries} entries with SVIDs, caller matches 3, ${nClients} clients (one connection each; load client: ${clientKind === 'raw' ? 'bench/support/raw-h2.ts' : 'node:http2'})`);
    console.log(`raw ES256 sign rate: ${es256.toFixed(0)} signatures/s; load average now ${loadavg().map((l) => l.toFixed(1)).join(' ')} (at the start: ${load0})`);
    console.log(`open loop (${rate} calls/s spread over ${nClients} clients, ${seconds} s each, in ${slice}-s slices interleaved with the floor's):`);
    console.log(row('FetchX509SVID', xo.agent, loopNote(xo.agent)));
    console.log(detail(xo.agent));
    console.log(row('FetchJWTSVID (cached tokens)', jo.agent, loopNote(jo.agent)));
    console.log(detail(jo.agent));
    console.log(`closed loop (${nClients} concurrent, ${calls} calls each, back to back; latency includes queueing):`);
    console.log(row('FetchX509SVID', x, perSec(x, t.x)));
    console.log(detail(x));
    console.log(row('FetchJWTSVID', j, perSec(j, t.j)));
    console.log(detail(j));
    console.log(`the floor (bare node:http2 server process, pid ${floorPid}, same bytes and headers, no caller checks; same loads and clients' code, interleaved with the agent's):`);
    console.log(row('open FetchX509SVID', xo.floor, vs(xo.agent, xo.floor)));
    console.log(detail(xo.floor, `; ${netRatio(xo.agent, xo.floor)}`));
    console.log(row('open FetchJWTSVID', jo.floor, vs(jo.agent, jo.floor)));
    console.log(detail(jo.floor, `; ${netRatio(jo.agent, jo.floor)}`));
    const share = (floor: Side): string => (checks.perCall / (floor.cpu / floor.lat.length)).toFixed(2);
    console.log(
      `  caller checks alone (this process, before the run; bench/support/caller-checks.ts): ${checks.cachedCall.toFixed(1)} µs per call from cached selectors + ` +
        `${ATTESTATIONS_PER_CALL} × ${checks.attestation.toFixed(1)} µs per attestation = ${checks.perCall.toFixed(1)} µs per call, ` +
        `${share(xo.floor)} / ${share(jo.floor)} of the floor's open-loop CPU per call (X.509 / JWT); the goal leaves 0.3 for all the agent does beyond the floor`,
    );
    console.log(row('closed FetchX509SVID', fx, `${perSec(fx, t.fx)}${vs(x, fx)}`));
    console.log(detail(fx, `; ${netRatio(x, fx)}`));
    console.log(row('closed FetchJWTSVID', fj, `${perSec(fj, t.fj)}${vs(j, fj)}`));
    console.log(detail(fj, `; ${netRatio(j, fj)}`));
    const bgNote = (p: number): string => {
      const bg = background.get(p)!;
      return `${((bg.cpu / bg.ms) * 1000).toFixed(0)} µs/s over ${(bg.ms / 1000).toFixed(1)} s`;
    };
    console.log(`background CPU without calls (measured while the other process was under load): agent ${bgNote(pid)}, floor ${bgNote(floorPid)}`);
    const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;
    console.log(`agent RSS: ${mb(rssIdle)} idle with ${nEntries} SVIDs, ${mb(rssConns)} with ${nClients} connections, ${mb(rssAfter)} after the runs (${rssAfterSplit}) (goal < 150 MB)`);
    for (const c of clients) c.close();
  } finally {
    for (const d of daemons.reverse()) {
      d.child.kill('SIGTERM');
      await d.exited;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

relaunchAsLoadGenerator();
await main();
