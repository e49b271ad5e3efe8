/**
 * A fleet against real verifiers: `bin/sigil verifier run` (one, or two on one PostgreSQL each taking
 * half the agents), N simulated agents each attested through the real protocol (join token: POST
 * /v1/attest + POST /v1/attest/{session}) and holding its own node SVID, 100,000 registration
 * entries spread over the agents and their node aliases, a steady trickle of entry changes.
 *
 * Layout: every agent has a join token and one node entry (parent = the verifier, selector
 * `sigil:agent_id:<agent>`) that makes it a member of an alias `/node/g<k>` shared by --group agents;
 * the remaining entries are workload entries, half parented by agents, half by aliases.
 *
 * Each simulated agent does what `sigil agent run` does against the verifier. By default (push mode,
 * the agent since issue 15) it holds one keep-alive mTLS connection, and on it a long-poll
 * GET /v1/entries/authorized?wait=20 with If-None-Match: every answer (200 with a new set, or 304
 * when the wait is over) is that agent's entries sync, and names the bundle ETag; GET /v1/bundle
 * follows on the same connection only when that ETag is not the one held. The first long-poll of
 * each agent asks a random 1–20 s, so the fleet's answers are spread as agents started at different
 * times would be. With --poll (the agent before issue 15):
 *   - every --interval seconds (default 2, the agent's default syncInterval; start times spread
 *     evenly) a sync on its own keep-alive mTLS connection: GET /v1/entries/authorized with
 *     If-None-Match, then GET /v1/bundle when the answer names another bundle ETag;
 *   - on a second connection, a held long-poll GET /v1/entries/authorized?wait=20 (unless --no-push).
 * A trickle of --rate entry changes per second (creates and deletes, under one agent or one alias,
 * through the first verifier's admin socket) runs meanwhile; for each, the time until every affected
 * agent has received the new set.
 *
 * Phases: attestation; first sync of every agent (each computes and sends a full set); --seconds of
 * steady state (measured: verifier CPU per sync from /proc/<pid>/stat, sync latency, change
 * propagation, verifier RSS); then --saturate seconds of back-to-back syncs (no interval, no push,
 * no trickle): the syncs per second the verifier(s) answer. With --verifiers 2 that phase runs twice,
 * first with verifier 0's agents alone, then with all (see --cpu-quota).
 *
 * Push mode's sync latency is printed twice: as this load generator sees each 304 (request written
 * to answer read, minus the wait: its own event-loop delays included, with ten thousand agents on one
 * core) and as the verifier does (`sigil_long_poll_late_seconds`, route start to the 304 written,
 * minus the wait; histogram buckets, so an upper bound).
 *
 *   npx tsx bench/fleet.ts [--agents 1000] [--entries 100000] [--group 10] [--seconds 20] [--rate 50]
 *                          [--interval 2] [--store sqlite|postgres] [--verifiers 1|2] [--poll [--no-push]]
 *                          [--saturate 8] [--pin 1] [--threads 1] [--client node|native] [--cpu-quota F]
 *                          [--malloc-mmap-threshold B]
 *
 * --threads K (push mode, --saturate 0): the simulated agents' connections and long-polls run in K
 * worker threads of the load generator (agent i in thread i mod K; bench/support/fleet-worker.ts),
 * each with its own heap and event loop; the main thread makes the entry changes. With ten thousand
 * agents in one thread, that thread's garbage-collection pauses and answer batches land in every
 * latency measured; real agents are separate hosts. The threads share the load generator's CPUs:
 * on the 2-core development machine (all of them on one core) they did not help, and four made the
 * verifier's own tail worse (docs/benchmarks.md, "A threaded load generator"); use them where each
 * thread gets a core of its own.
 *
 * --client native (push mode, --saturate 0): the simulated agents' connections and long-polls run in
 * bench/support/fleet-agents.c, compiled here with `cc` against OpenSSL (Debian: gcc libssl-dev): one
 * epoll loop holding every agent's mutual-TLS connection (its own node SVID, its own source address),
 * doing what the Node.js client does, and reporting 304 lateness and change arrivals on CLOCK_MONOTONIC.
 * Ten thousand agents in this Node.js process put its own event-loop delays (p99 20-30 ms) into every
 * latency measured; the C client's share is the time it takes to read a socket (how long its answers
 * waited in its loop before being read is printed). Attestation and the entry changes stay in this process.
 *
 * --seconds: the verifier makes a major garbage collection every one to two minutes at 10,000 agents
 * (its held long-polls' objects are promoted and die old); a 30-s window often has none and then
 * shows a shorter tail than a long run keeps. The window's collections are printed; judge the p99
 * on windows of 120 s or more.
 *
 * --pin <cpus> runs the verifier(s) under `taskset -c <cpus>` and this load generator (with the
 * PostgreSQL it starts) on the other CPUs, so "CPU per core" means one core: on a 2-core machine
 * `--pin 1` gives the verifier core 1 and everything else core 0.
 *
 * --cpu-quota F runs each verifier in a control group of its own limited to F of one CPU (CFS
 * bandwidth; needs root). With --verifiers 2 the saturation phase then measures what two verifiers
 * with a core each would: first verifier 0's agents alone back to back (one verifier's syncs per
 * second), then all agents (both verifiers'), and prints the ratio. On a 2-core machine
 * `--pin 1 --cpu-quota 0.4` gives each verifier 0.4 of core 1 and leaves core 0 to the load generator
 * and PostgreSQL; without a quota two verifiers on one core share it, and the ratio says nothing
 * about scaling.
 *
 * The verifier is compiled first into build/bench-fleet/ (not dist/, which other work may rebuild
 * meanwhile) so it runs the current code; --no-build reuses that build (repeated runs).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { Agent as HttpsAgent, request } from 'node:https';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { adminCall } from '../src/cli/admin-client.js';
import { createCsr } from '../src/spiffe/csr.js';
import { generateKey } from '../src/spiffe/keys.js';
import { certsToPem } from '../src/spiffe/x509svid.js';
import { PostgresStore } from '../src/store/postgres.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { DataStore, NewEntry } from '../src/store/types.js';
import { hashToken } from '../src/verifier/tokens.js';
import { freePort } from '../test/agent/harness.js';
import { startPostgres, type PostgresHandle } from '../test/support/postgres.js';
import { createCpuQuotaGroup, inGroup, type CpuQuotaGroup } from './support/cpu-quota.js';
import { FleetConn } from './support/fleet-client.js';
import { buildNativeClient, monoNow, NativeAgents } from './support/fleet-native.js';
import type { FleetWorkerData, FromWorker, ToWorker, WindowStats, WorkerAgent } from './support/fleet-worker.js';
import { pct } from './support/load.js';
import { errorMessage } from '../src/errors.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : dflt;
};
const optS = (name: string, dflt: string): string => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? (args[i + 1] as string) : dflt;
};
const root = fileURLToPath(new URL('..', import.meta.url));
const TD = 'example.org';
const VID = `spiffe://${TD}/sigil/verifier`;
// BENCH_FLEET_BUILD names another build folder (e.g. to keep an older build for a before/after pair).
const buildDir = process.env.BENCH_FLEET_BUILD ?? join(root, 'build', 'bench-fleet');

const N = opt('--agents', 1000);
const ENTRIES = opt('--entries', 100_000);
const GROUP = opt('--group', 10);
const SECONDS = opt('--seconds', 20);
const RATE = opt('--rate', 50);
const INTERVAL_MS = opt('--interval', 2) * 1000;
const SATURATE = opt('--saturate', 8);
const STORE = optS('--store', 'sqlite');
const VERIFIERS = opt('--verifiers', 1);
/** --poll: the agent before issue 15 (a sync every --interval, plus a long-poll on a second connection unless --no-push). */
const POLL = args.includes('--poll');
const PUSH = !args.includes('--no-push');
if (!POLL && !PUSH) throw new Error('--no-push needs --poll (without --poll the long-poll is the sync)');
/** Seconds each long-poll asks to be held (the agent's LONG_POLL_SECONDS). */
const WAIT = 20;
if (STORE !== 'sqlite' && STORE !== 'postgres') throw new Error('--store must be sqlite or postgres');
if (VERIFIERS !== 1 && VERIFIERS !== 2) throw new Error('--verifiers must be 1 or 2');
if (VERIFIERS === 2 && STORE !== 'postgres') throw new Error('two verifiers need --store postgres');
const PIN = optS('--pin', '');
const THREADS = opt('--threads', 1);
if (!Number.isInteger(THREADS) || THREADS < 1 || THREADS > 64) throw new Error('--threads must be an integer from 1 to 64');
if (THREADS > 1 && POLL) throw new Error('--threads runs push mode only (not with --poll)');
if (THREADS > 1 && SATURATE > 0) throw new Error('--threads needs --saturate 0 (the saturation phase runs in one thread)');
/** --client native: the simulated agents run in bench/support/fleet-agents.c (one epoll loop, OpenSSL) instead of this process. */
const CLIENT = optS('--client', 'node');
if (CLIENT !== 'node' && CLIENT !== 'native') throw new Error('--client must be node or native');
const NATIVE = CLIENT === 'native';
if (NATIVE && (POLL || SATURATE > 0 || THREADS > 1)) throw new Error('--client native runs push mode with --saturate 0 and one load-generator thread');
if (PIN !== '' && !/^[0-9]+(?:[-,][0-9]+)*$/.test(PIN)) throw new Error('--pin takes a taskset CPU list such as 1 or 1-3');
/** --cpu-quota F: each verifier in its own control group limited to F of one CPU (0: no limit). */
const QUOTA = opt('--cpu-quota', 0);
/** --malloc-mmap-threshold B: the verifiers' mallocMmapThreshold (default: theirs, 65,536; 0 leaves glibc's). */
const MMAP_THRESHOLD = args.includes('--malloc-mmap-threshold') ? opt('--malloc-mmap-threshold', -1) : undefined;
if (MMAP_THRESHOLD !== undefined && !(Number.isInteger(MMAP_THRESHOLD) && MMAP_THRESHOLD >= 0)) throw new Error('--malloc-mmap-threshold takes a byte count (0: the C library decides)');
if (!(QUOTA >= 0 && QUOTA <= 64)) throw new Error('--cpu-quota takes a fraction of one CPU, such as 0.4');

/** The CPUs not in `list` (a taskset list), of the machine's. */
function otherCpus(list: string): string {
  const mine = new Set<number>();
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map(Number) as [number, number | undefined];
    for (let c = a; c <= (b ?? a); c++) mine.add(c);
  }
  const all = Number(execFileSync('nproc', ['--all']).toString().trim());
  const rest = Array.from({ length: all }, (_, c) => c).filter((c) => !mine.has(c));
  if (rest.length === 0) throw new Error(`--pin ${list} leaves no CPU for the load generator`);
  return rest.join(',');
}

/** Sockets a process holds open (its TLS connections, the listeners, the datastore's). */
function socketCount(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

function procRss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** User + system CPU of a process in µs (/proc/<pid>/stat fields 14 and 15, USER_HZ 100). */
function procCpuUs(pid: number): number {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / 100;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** Attestation requests reuse kept-alive connections (one per worker): a TLS handshake per request would cost more than the attestation. */
const attestAgent = new HttpsAgent({ keepAlive: true, maxSockets: 16 });

function postJson(port: number, path: string, body: unknown, ca: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path, ca, agent: attestAgent, checkServerIdentity: () => undefined, headers: { 'content-type': 'application/json', 'content-length': String(payload.length) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString() || '{}') as Record<string, unknown> }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * The verifier's own V8 heap figures and event-loop delay from its /metrics (prom-client default
 * metrics). prom-client starts its event-loop delay histogram afresh at every read of /metrics, so a
 * read at the start of the window and one at its end give the delay over the window alone.
 */
/** The verifier's garbage collections so far, by prom-client's kinds (count, seconds in all). */
type GcTotals = Record<'minor' | 'major' | 'incremental', { count: number; seconds: number }>;

/** `sigil_long_poll_late_seconds`: cumulative counts per bucket upper bound (seconds; Infinity last). */
type LateBuckets = [number, number][];

/**
 * A quantile of the observations between two reads of a cumulative histogram, as the upper bound of
 * the bucket it falls in (the histogram holds no finer truth), or undefined when nothing was observed.
 */
function bucketQuantile(before: LateBuckets, after: LateBuckets, q: number): { le: number; n: number } | undefined {
  const d = after.map(([le, c], k) => [le, c - (before[k]?.[1] ?? 0)] as [number, number]);
  const n = d.at(-1)?.[1] ?? 0;
  if (n <= 0) return undefined;
  const want = (q / 100) * n;
  for (const [le, c] of d) if (c >= want) return { le, n };
  return { le: Infinity, n };
}

/** `sigil_agent_record_reads_total` so far, by source (both 0 on a verifier without that counter). */
type RecordReads = { memory: number; store: number };

function metricsOf(port: number, ca: string): Promise<{ heapUsed: number; heapTotal: number; external: number; lagP99: number; lagMax: number; scrapeMs: number; gc: GcTotals; late: LateBuckets; reads: RecordReads }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: '127.0.0.1', port, path: '/metrics', ca, agent: attestAgent, checkServerIdentity: () => undefined }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const scrapeMs = performance.now() - t0;
        const text = Buffer.concat(chunks).toString();
        const num = (name: string): number => {
          const m = new RegExp(`^sigil_verifier_${name} ([0-9.e+]+)$`, 'm').exec(text);
          if (!m) throw new Error(`no ${name} in /metrics`);
          return Number(m[1]);
        };
        // A kind with no collection yet has no series.
        const gcOf = (kind: string): { count: number; seconds: number } => {
          const c = new RegExp(`^sigil_verifier_nodejs_gc_duration_seconds_count\\{kind="${kind}"\\} ([0-9.e+]+)$`, 'm').exec(text);
          const t = new RegExp(`^sigil_verifier_nodejs_gc_duration_seconds_sum\\{kind="${kind}"\\} ([0-9.e+-]+)$`, 'm').exec(text);
          return { count: c ? Number(c[1]) : 0, seconds: t ? Number(t[1]) : 0 };
        };
        const readsOf = (source: string): number => Number(new RegExp(`^sigil_agent_record_reads_total\\{source="${source}"\\} ([0-9.e+]+)$`, 'm').exec(text)?.[1] ?? 0);
        const late: LateBuckets = [];
        for (const m of text.matchAll(/^sigil_long_poll_late_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$/gm)) {
          late.push([m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2])]);
        }
        try {
          resolve({
            late,
            reads: { memory: readsOf('memory'), store: readsOf('store') },
            gc: { minor: gcOf('minor'), major: gcOf('major'), incremental: gcOf('incremental') },
            heapUsed: num('nodejs_heap_size_used_bytes'),
            heapTotal: num('nodejs_heap_size_total_bytes'),
            external: num('nodejs_external_memory_bytes'),
            lagP99: num('nodejs_eventloop_lag_p99_seconds'),
            lagMax: num('nodejs_eventloop_lag_max_seconds'),
            scrapeMs,
          });
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

const mk = (spiffeId: string, parentId: string, selectors: string[]): NewEntry => ({ spiffeId, parentId, selectors, x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });

interface SimAgent {
  i: number;
  v: number;
  agentId: string;
  group: number;
  tls: { cert: string; key: string };
  /** The agent's connection: its long-poll (push mode) or its periodic sync (--poll). */
  poll: FleetConn;
  /** --poll: the second connection holding the long-poll (the same object as `poll` in push mode). */
  push: FleetConn;
  /** A new connection of this agent (push mode: saturation, after the long-polls were ended by closing theirs). */
  fresh: () => FleetConn;
  etag: string;
  bundleEtag: string;
  /** The last set received (a 200's body) and when: a change may reach the agent before its admin call returns. */
  lastSet?: { body: Buffer; at: number };
}

/** An entry change being propagated: which agents still have to see it. */
interface Op {
  id: string;
  create: boolean;
  t0: number;
  remaining: Set<number>;
  /** --threads: the latest arrival reported so far (absolute ms). */
  latest?: number;
}

/** What the attestation gave each agent (kept by the main thread in every mode). */
interface AgentInfo {
  i: number;
  agentId: string;
  group: number;
  worker: WorkerAgent;
}

/** --threads: the load generator's worker threads, driven by messages (bench/support/fleet-worker.ts). */
class Threads {
  private readonly workers: Worker[] = [];
  private readonly waiters = new Map<string, ((m: FromWorker) => void)[]>();
  failure: string | undefined;

  constructor(k: number, infos: AgentInfo[], ca: string, serverId: string, wait: number, onSeen: (id: string, create: boolean, i: number, at: number) => void) {
    const entry = new URL('./support/fleet-worker.ts', import.meta.url).href;
    for (let w = 0; w < k; w++) {
      const data: FleetWorkerData = { entry, agents: infos.filter((a) => a.i % k === w).map((a) => a.worker), ca, serverId, wait, concurrency: Math.max(1, Math.ceil(16 / k)) };
      const worker = new Worker(new URL('./support/ts-worker.mjs', import.meta.url), { workerData: data });
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'seen') onSeen(m.id, m.create, m.i, m.at);
        else if (m.t === 'failed') this.failure ??= `load-generator thread ${w}: ${m.message}`;
        else this.waiters.get(`${w}:${m.t}`)?.shift()?.(m);
      });
      worker.on('error', (e) => (this.failure ??= `load-generator thread ${w}: ${errorMessage(e)}`));
      this.workers.push(worker);
    }
  }

  /** Send `m` to every thread and wait for each one's `reply`. */
  private all<T extends FromWorker['t']>(m: ToWorker, reply: T): Promise<Extract<FromWorker, { t: T }>[]> {
    return Promise.all(
      this.workers.map((worker, w) => {
        const got = new Promise<Extract<FromWorker, { t: T }>>((resolve, reject) => {
          const key = `${w}:${reply}`;
          const list = this.waiters.get(key) ?? [];
          list.push((x) => resolve(x as Extract<FromWorker, { t: T }>));
          this.waiters.set(key, list);
          worker.once('exit', () => reject(new Error(this.failure ?? `load-generator thread ${w} exited`)));
        });
        worker.postMessage(m);
        return got;
      }),
    );
  }

  async start(): Promise<number> {
    const timer = setInterval(() => {
      if (this.failure) for (const w of this.workers) void w.terminate();
    }, 500);
    try {
      const r = await this.all({ t: 'start' }, 'started');
      return r.reduce((n, x) => n + x.bytes, 0);
    } finally {
      clearInterval(timer);
    }
  }

  measure(): void {
    for (const w of this.workers) w.postMessage({ t: 'measure', on: true } satisfies ToWorker);
  }

  async window(): Promise<WindowStats[]> {
    return (await this.all({ t: 'measure', on: false }, 'window')).map((m) => m.stats);
  }

  /** Tell the threads holding `affected` of a change made at `t0` (absolute ms). */
  op(id: string, create: boolean, t0: number, affected: number[]): void {
    const k = this.workers.length;
    const by = new Map<number, number[]>();
    for (const i of affected) {
      const list = by.get(i % k) ?? [];
      list.push(i);
      by.set(i % k, list);
    }
    for (const [w, agents] of by) this.workers[w]?.postMessage({ t: 'op', id, create, t0, agents } satisfies ToWorker);
  }

  async stop(): Promise<void> {
    await this.all({ t: 'stop' }, 'stopped').catch(() => undefined);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

async function main(): Promise<void> {
  // The verifier runs from its own build of the current sources (build/bench-fleet/, beside the
  // native addons in build/Release), not from dist/: other work in the tree can rebuild dist/ at any time.
  if (args.includes('--no-build')) console.log(`${buildDir} used as it is (--no-build)`);
  else {
    process.stdout.write(`building ${buildDir} (tsc -p tsconfig.build.json)… `);
    rmSync(buildDir, { recursive: true, force: true });
    try {
      execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', join(buildDir, 'dist')], { cwd: root, stdio: 'pipe' });
    } catch (e) {
      // tsc still writes every file; type errors in parts the verifier does not load are reported, not fatal.
      const out = String((e as { stdout?: Buffer }).stdout ?? '');
      console.log(`\n  type errors (files written anyway):\n${out.trim().split('\n').map((l) => `  ${l}`).join('\n')}`);
    }
    mkdirSync(join(buildDir, 'bin'), { recursive: true });
    copyFileSync(join(root, 'bin/sigil'), join(buildDir, 'bin/sigil'));
    copyFileSync(join(root, 'package.json'), join(buildDir, 'package.json'));
    console.log('done');
  }
  if (PIN !== '') {
    const rest = otherCpus(PIN);
    execFileSync('taskset', ['-a', '-p', '-c', rest, String(process.pid)], { stdio: 'ignore' });
    console.log(`verifier(s) pinned to CPU ${PIN}; load generator and PostgreSQL to CPU ${rest}`);
  }
  // One connection per simulated agent (two with --poll and its long-poll), on both ends: raise the
  // open-file limit (soft and hard; needs root or CAP_SYS_RESOURCE beyond the hard limit) of this
  // process and of the verifiers. Without CAP_SYS_RESOURCE the hard limit is the ceiling (20,000 on
  // the development machine: some 9,900 agents per verifier process with --poll).
  const CONNS = POLL && PUSH ? 2 : 1;
  const hard = Number(execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output', 'HARD', '--noheadings']).toString().trim());
  const want = CONNS * N + 4096;
  let NOFILE = want;
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${NOFILE}:${NOFILE}`], { stdio: 'pipe' });
  } catch {
    NOFILE = Number.isFinite(hard) ? Math.min(want, hard) : 1024;
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${NOFILE}:${NOFILE}`], { stdio: 'pipe' });
    if (NOFILE < want) console.log(`open-file limit ${NOFILE} (the hard limit; ${want} wanted): ${CONNS} connection(s) per agent leave room for about ${Math.floor((NOFILE - 200) / CONNS)} agents`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-fleet-'));
  chmodSync(dir, 0o755);
  const daemons: { child: ChildProcess; exited: Promise<unknown> }[] = [];
  let pg: PostgresHandle | null = null;
  const agents: SimAgent[] = [];
  const infos: AgentInfo[] = [];
  let threads: Threads | NativeAgents | undefined;
  /** --cpu-quota: each verifier's control group. */
  const quotaGroups: CpuQuotaGroup[] = [];
  try {
    if (STORE === 'postgres') {
      pg = await startPostgres();
      if (!pg) throw new Error('PostgreSQL is not available here');
    }
    const groups = Math.max(1, Math.ceil(N / GROUP));
    // 1. Tokens and entries written to the store before the verifiers start.
    const t0 = performance.now();
    const store: DataStore = pg ? await PostgresStore.open(pg.url, { schema: 'fleet' }) : new SqliteStore(join(dir, 'v0', 'sigil.db'));
    const tokens: { token: string; agentId: string }[] = [];
    const expiresAt = new Date(Date.now() + 86400_000).toISOString();
    let batch: NewEntry[] = [];
    for (let i = 0; i < N; i++) {
      const token = randomBytes(24).toString('base64url');
      const id = randomUUID();
      await store.createJoinToken({ id, secretHash: hashToken(token), expiresAt, usedAt: null, spiffeId: null, createdAt: new Date().toISOString() });
      const agentId = `spiffe://${TD}/sigil/agent/join_token/${id}`;
      tokens.push({ token, agentId });
      batch.push(mk(`spiffe://${TD}/node/g${i % groups}`, VID, [`sigil:agent_id:${agentId}`]));
    }
    const workload = ENTRIES - N;
    for (let k = 0; k < workload; k++) {
      const half = k % 2 === 0;
      const parent = half ? (tokens[(k >> 1) % N] as { agentId: string }).agentId : `spiffe://${TD}/node/g${(k >> 1) % groups}`;
      batch.push(mk(`spiffe://${TD}/w/${k}`, parent, [`unix:uid:${1000 + (k % 50)}`]));
      if (batch.length >= 10_000) {
        await store.createEntries(batch);
        batch = [];
      }
    }
    if (batch.length) await store.createEntries(batch);
    const total = await store.countEntries();
    await store.close();
    console.log(`${N} join tokens, ${total} entries (${N} node entries → ${groups} aliases of ${GROUP} agents, ${workload} workload entries: half under agents, half under aliases) written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    // 2. Verifiers.
    const ports: number[] = [];
    const pids: number[] = [];
    const adminSockets: string[] = [];
    for (let v = 0; v < VERIFIERS; v++) {
      const port = await freePort();
      const adminSocket = join(dir, `admin${v}.sock`);
      writeFileSync(
        join(dir, `verifier${v}.yaml`),
        [
          `trustDomain: ${TD}`,
          // Every agent's connection(s) (with --poll: sync + long-poll) must fit under the total cap,
          // and the cap under the open-file limit (the verifier warns otherwise).
          `listen: { address: 127.0.0.1, port: ${port}, maxConnections: ${NOFILE - 256} }`,
          `adminSocket: ${adminSocket}`,
          `dataDir: ${join(dir, `v${v}`)}`,
          pg ? `datastore: { kind: postgres, url: "${pg.url}", schema: fleet }` : 'datastore: { kind: sqlite }',
          'logLevel: warn',
          ...(MMAP_THRESHOLD !== undefined ? [`mallocMmapThreshold: ${MMAP_THRESHOLD}`] : []),
          'nodeAttestors: { join_token: {} }',
          '',
        ].join('\n'),
      );
      // BENCH_VERIFIER_NODE_FLAGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") runs `node <flags> bin/sigil`.
      const flags = process.env.BENCH_VERIFIER_NODE_FLAGS?.split(' ').filter((f) => f.length > 0);
      let cmd = ['prlimit', `--nofile=${NOFILE}:${NOFILE}`, '--', ...(PIN !== '' ? ['taskset', '-c', PIN] : []), process.execPath, ...(flags ?? []), join(buildDir, 'bin/sigil'), 'verifier', 'run', '--config', join(dir, `verifier${v}.yaml`)];
      if (QUOTA > 0) {
        const group = createCpuQuotaGroup(`sigil-fleet-${process.pid}-v${v}`, QUOTA);
        quotaGroups.push(group);
        cmd = inGroup(group, cmd);
      }
      // The native addons stay where `npm ci` built them. NODE_OPTIONS (the load generator's own
      // settings) does not reach the verifier: its flags are BENCH_VERIFIER_NODE_FLAGS.
      const env: NodeJS.ProcessEnv = { ...process.env, SIGIL_NATIVE_DIR: join(root, 'build', 'Release') };
      delete env.NODE_OPTIONS;
      const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'inherit', 'inherit'], env });
      let gone = false;
      daemons.push({ child, exited: new Promise((r) => child.once('exit', (c) => ((gone = true), r(c)))) });
      await sleep(500);
      if (gone) throw new Error(`verifier ${v} exited at start`);
      await waitFor(() => adminCall(adminSocket, 'GET', '/readyz').then(() => true), 60_000, `verifier ${v}`);
      ports.push(port);
      pids.push(child.pid as number);
      adminSockets.push(adminSocket);
    }
    // Let every verifier publish the others' CAs (journals are re-read every half refresh hint).
    let caPem = '';
    await waitFor(
      async () => {
        const pems = await Promise.all(adminSockets.map((s) => adminCall<string>(s, 'GET', '/v1/admin/bundle?format=pem')));
        caPem = pems[0] as string;
        return pems.every((p) => p === caPem && (p.match(/BEGIN CERTIFICATE/g) ?? []).length === VERIFIERS) ? true : undefined;
      },
      60_000,
      'the verifiers to publish one bundle',
    );

    // 3. Attestation, 16 at a time, agent i at verifier i % VERIFIERS.
    const t1 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        for (let i = next++; i < N; i = next++) {
          const v = i % VERIFIERS;
          const key = generateKey('ec-p256');
          const tok = tokens[i] as { token: string; agentId: string };
          const b = await postJson(ports[v] as number, '/v1/attest', { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') }, caPem);
          if (b.status !== 200) throw new Error(`attest begin ${b.status} ${JSON.stringify(b.body)}`);
          const f = await postJson(ports[v] as number, `/v1/attest/${String(b.body.session)}`, { responses: { join_token: {} } }, caPem);
          if (f.status !== 200 || f.body.agentId !== tok.agentId) throw new Error(`attest finish ${f.status} ${JSON.stringify(f.body)}`);
          const tls = { cert: certsToPem((f.body.svid as string[]).map((s) => Buffer.from(s, 'base64'))), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
          // Each agent its own source address (127.1.0.0/16), as separate hosts are: the verifier's per-address connection cap applies per agent.
          const localAddress = `127.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
          infos[i] = { i, agentId: tok.agentId, group: i % groups, worker: { i, port: ports[v] as number, localAddress, tls } };
          // --threads: the connections are the worker threads' (made there).
          if (THREADS > 1 || NATIVE) continue;
          const conn = (): FleetConn => new FleetConn({ host: '127.0.0.1', port: ports[v] as number, ca: caPem, ...tls, serverId: VID, localAddress });
          const main = conn();
          agents[i] = { i, v, agentId: tok.agentId, group: i % groups, tls, poll: main, push: POLL ? conn() : main, fresh: conn, etag: '', bundleEtag: '' };
        }
      }),
    );
    const attestS = (performance.now() - t1) / 1000;
    console.log(`${N} agents attested (join token, real protocol) in ${attestS.toFixed(1)} s (${(N / attestS).toFixed(0)}/s)`);

    // 5. Steady state.
    const byAgent = new Map<number, Set<Op>>();
    const propagation: number[] = [];
    const unfinished = (): number => [...byAgent.values()].reduce((s, x) => s + x.size, 0);
    // The body stays a Buffer (outside the V8 heap): a 16-KiB string per answer, kept until the
    // agent's next set, made the load generator's own scavenges long, and its pauses count as latency.
    const seen = (a: SimAgent, body: Buffer): void => {
      const now = performance.now();
      a.lastSet = { body, at: now };
      const ops = byAgent.get(a.i);
      if (!ops) return;
      for (const op of ops) {
        if (body.includes(`"id":"${op.id}"`) !== op.create) continue;
        ops.delete(op);
        op.remaining.delete(a.i);
        if (op.remaining.size === 0) propagation.push(now - op.t0);
      }
      if (ops.size === 0) byAgent.delete(a.i);
    };
    let running = true;
    let measuring = false;
    const syncLat: number[] = [];
    let syncs = 0;
    let full = 0;
    let pushed = 0;
    let bundleFetches = 0;
    /** Answers received in the window (every request: syncs, long-polls, bundle fetches). */
    let requests = 0;
    /** Push mode: how long after its granted wait each 304 came, ms (how late the verifier answers). */
    const lateness: number[] = [];
    let errors = 0;
    const errorKinds = new Map<string, number>();
    const failed = (e: unknown): void => {
      errors++;
      const k = errorMessage(e);
      errorKinds.set(k, (errorKinds.get(k) ?? 0) + 1);
    };
    /** As the agent does: GET /v1/bundle (on the same connection) only when the entries answer names another bundle ETag. */
    const bundleIfNamed = async (a: SimAgent, named: string | undefined): Promise<void> => {
      if (named !== undefined && named === a.bundleEtag) return;
      const b = await a.poll.get('/v1/bundle', a.bundleEtag ? { 'if-none-match': a.bundleEtag } : {});
      if (b.status === 200) a.bundleEtag = b.etag ?? '';
      else if (b.status !== 304) throw new Error(`bundle ${b.status}`);
      if (measuring) {
        bundleFetches++;
        requests++;
      }
    };
    /** Push mode: the held long-poll is the agent's sync (its only request while nothing changes). */
    const heldLoop = async (a: SimAgent, firstWait: number): Promise<void> => {
      let wait = firstWait;
      while (running) {
        const s = performance.now();
        try {
          const r = await a.poll.get(`/v1/entries/authorized?wait=${wait}`, { 'if-none-match': a.etag });
          const held = performance.now() - s;
          if (r.status === 200) {
            a.etag = r.etag ?? '';
            seen(a, r.body);
            if (measuring) {
              full++;
              pushed++;
            }
          } else if (r.status === 304) {
            if (measuring) lateness.push(held - wait * 1000);
          } else throw new Error(`long-poll ${r.status}`);
          if (measuring) {
            syncs++;
            requests++;
          }
          await bundleIfNamed(a, r.bundleEtag);
        } catch (e) {
          if (!running) return;
          failed(e);
          await sleep(1000);
        }
        wait = WAIT;
      }
    };
    const pollLoop = async (a: SimAgent, offset: number): Promise<void> => {
      await sleep(offset);
      let due = performance.now();
      while (running) {
        const s = performance.now();
        try {
          // As the agent does: the entries with the revision it holds (304 while unchanged), then the
          // bundle only when the answer names another bundle ETag than the one held.
          const r = await a.poll.get('/v1/entries/authorized', { 'if-none-match': a.etag });
          if (measuring) requests++;
          if (r.status === 200) {
            a.etag = r.etag ?? '';
            seen(a, r.body);
            if (measuring) full++;
          } else if (r.status !== 304) throw new Error(`sync ${r.status}`);
          await bundleIfNamed(a, r.bundleEtag);
          if (measuring) {
            syncs++;
            syncLat.push(performance.now() - s);
          }
        } catch (e) {
          failed(e);
        }
        due += INTERVAL_MS;
        await sleep(Math.max(0, due - performance.now()));
      }
    };
    const pushLoop = async (a: SimAgent): Promise<void> => {
      while (running) {
        try {
          const r = await a.push.get(`/v1/entries/authorized?wait=${WAIT}`, { 'if-none-match': a.etag });
          if (measuring) requests++;
          if (r.status === 200) {
            a.etag = r.etag ?? '';
            seen(a, r.body);
            if (measuring) pushed++;
          } else if (r.status !== 304) throw new Error(`long-poll ${r.status}`);
        } catch (e) {
          if (!running) return;
          failed(e);
          await sleep(1000);
        }
      }
    };
    // 4. First sync of every agent (a full set each), 16 at a time; each agent then goes straight
    //    into its sync loop (first sync at a random point of its interval) and its long-poll, so no
    //    connection sits idle past the verifier's keep-alive timeout while the others start.
    const cpu = (): number => pids.reduce((s, p) => s + procCpuUs(p), 0);
    const c0 = cpu();
    const t2 = performance.now();
    let bytes = 0;
    next = 0;
    const loops: Promise<void>[] = [];
    const pushLoops: Promise<void>[] = [];
    /** --threads, --client native: changes not yet seen by every affected agent, by kind and ID. */
    const opsById = new Map<string, Op>();
    /**
     * --threads, --client native: an agent reported holding the set a change made. Changes are kept
     * by kind and entry ID: an entry's delete comes ~2 s after its create, and an agent still
     * missing the create then must not have its late arrival counted for the delete.
     */
    const opKey = (id: string, create: boolean): string => `${create ? '+' : '-'}${id}`;
    const onSeen = (id: string, create: boolean, i: number, at: number): void => {
      const key = opKey(id, create);
      const op = opsById.get(key);
      if (!op || !op.remaining.delete(i)) return;
      op.latest = Math.max(op.latest ?? 0, at);
      if (op.remaining.size === 0) {
        propagation.push(op.latest - op.t0);
        opsById.delete(key);
      }
    };
    if (NATIVE) {
      threads = new NativeAgents(buildNativeClient(buildDir), dir, infos.map((a) => a.worker), caPem, VID, WAIT, onSeen);
      bytes = await threads.start();
    } else if (THREADS > 1) {
      threads = new Threads(THREADS, infos, caPem, VID, WAIT, onSeen);
      bytes = await threads.start();
    } else await Promise.all(
      Array.from({ length: 16 }, async () => {
        for (let i = next++; i < N; i = next++) {
          const a = agents[i] as SimAgent;
          const r = await a.poll.get('/v1/entries/authorized');
          if (r.status !== 200 || !r.etag) throw new Error(`first sync ${r.status} ${r.body.toString().slice(0, 200)}`);
          a.etag = r.etag;
          bytes += r.body.length;
          const b = await a.poll.get('/v1/bundle');
          if (b.status !== 200 || !b.etag) throw new Error(`first bundle ${b.status}`);
          a.bundleEtag = b.etag;
          if (!POLL) loops.push(heldLoop(a, 1 + Math.floor(Math.random() * WAIT)));
          else {
            loops.push(pollLoop(a, Math.random() * INTERVAL_MS));
            if (PUSH) pushLoops.push(pushLoop(a));
          }
        }
      }),
    );
    const firstCpu = cpu() - c0;
    console.log(
      `first sync (full set, ${(bytes / N / 1024).toFixed(0)} KiB average) of ${N} agents in ${((performance.now() - t2) / 1000).toFixed(1)} s; verifier CPU ${(firstCpu / N / 1000).toFixed(2)} ms per agent (its TLS handshakes included; the agents already started sync meanwhile)`,
    );
    // The connections of an agent (one object twice in push mode).
    const connsOf = (a: SimAgent): FleetConn[] => (a.push === a.poll ? [a.poll] : [a.poll, a.push]);
    const sumConns = (f: (c: FleetConn) => number): number => agents.reduce((n, a) => n + connsOf(a).reduce((m, c) => m + f(c), 0), 0);
    const handshakes0 = sumConns((c) => c.connects);
    const absNow = (): number => performance.timeOrigin + performance.now();
    // The trickle: creates and deletes under one agent or one alias, through verifier 0.
    const live: { id: string; affected: number[] }[] = [];
    let changes = 0;
    let adminErrors = 0;
    // --rate 0: no changes (an idle fleet).
    const trickle = (async () => {
      if (RATE <= 0) return;
      let due = performance.now();
      let k = 0;
      while (running) {
        k++;
        const create = live.length < 50 || k % 2 === 0;
        let op: Op;
        let affected: number[];
        const t = performance.now();
        // The time a change is made, on the clock the agent threads (or the native client) report arrivals on.
        const tAbs = NATIVE ? monoNow() : absNow();
        try {
        if (create) {
          const underAlias = k % 4 < 2;
          const target = Math.floor(Math.random() * (underAlias ? groups : N));
          affected = underAlias ? infos.filter((a) => a.group === target).map((a) => a.i) : [target];
          const parentId = underAlias ? `spiffe://${TD}/node/g${target}` : (infos[target] as AgentInfo).agentId;
          const e = await adminCall<{ id: string }>(adminSockets[0] as string, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${TD}/trickle/${k}`, parentId, selectors: ['unix:uid:7'] });
          live.push({ id: e.id, affected });
          op = { id: e.id, create: true, t0: t, remaining: new Set(affected) };
        } else {
          const victim = live.shift() as { id: string; affected: number[] };
          affected = victim.affected;
          await adminCall(adminSockets[0] as string, 'DELETE', `/v1/admin/entries/${victim.id}`);
          op = { id: victim.id, create: false, t0: t, remaining: new Set(affected) };
        }
        if (measuring && threads) {
          changes++;
          // The threads check the sets their agents hold already (see below) and report each arrival.
          opsById.set(opKey(op.id, op.create), { ...op, t0: tAbs });
          threads.op(op.id, op.create, tAbs, affected);
        } else if (measuring) {
          changes++;
          // The verifier pushes a change once it is committed, and acknowledges the admin call once it
          // is also on disk: an agent may hold the new set already. Its arrival time counts then.
          let latest = 0;
          for (const i of affected) {
            const last = (agents[i] as SimAgent).lastSet;
            if (last && last.at >= t && last.body.includes(`"id":"${op.id}"`) === op.create) {
              op.remaining.delete(i);
              latest = Math.max(latest, last.at);
              continue;
            }
            let s = byAgent.get(i);
            if (!s) byAgent.set(i, (s = new Set()));
            s.add(op);
          }
          if (op.remaining.size === 0) propagation.push(latest - op.t0);
        }
        } catch (e) {
          // e.g. EPIPE on a keep-alive admin connection the verifier had just closed: counted, not fatal.
          adminErrors++;
          if (adminErrors <= 3) console.error(`entry change failed: ${errorMessage(e)}`);
        }
        due += 1000 / RATE;
        await sleep(Math.max(0, due - performance.now()));
      }
    })();
    // Warm-up; in push mode until every agent's first (shortened) long-poll has been answered.
    await sleep(POLL ? Math.max(INTERVAL_MS * 2, 5000) : (WAIT + 2) * 1000);
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    // The load generator's own garbage-collection pauses in the window (they delay its reading of answers).
    const genGc: number[] = [];
    const gcObserver = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) genGc.push(e.duration);
    });
    gcObserver.observe({ entryTypes: ['gc'] });
    // Starts the verifiers' own event-loop delay histograms afresh (read again at the window's end).
    const heap0 = await Promise.all(ports.map((port) => metricsOf(port, caPem).catch(() => undefined)));
    const cpuStart = pids.map(procCpuUs);
    const tStart = performance.now();
    measuring = true;
    threads?.measure();
    await sleep(SECONDS * 1000);
    measuring = false;
    const windows = threads ? await threads.window() : [];
    for (const x of windows) {
      syncs += x.syncs;
      full += x.pushed;
      pushed += x.pushed;
      bundleFetches += x.bundleFetches;
      requests += x.requests;
      for (const l of x.lateness) lateness.push(l);
      for (const [k, n] of x.errors) {
        errors += n;
        errorKinds.set(k, (errorKinds.get(k) ?? 0) + n);
      }
    }
    const elapsed = (performance.now() - tStart) / 1000;
    const cpuUsed = pids.map((p, k) => procCpuUs(p) - (cpuStart[k] as number));
    const rss = pids.map(procRss);
    const sockets = pids.map(socketCount);
    // Where the verifier's memory is: V8 heap in use, and memory outside it (TLS connections live in
    // native memory, which RSS includes and the heap figures do not).
    const heap = await Promise.all(ports.map((port) => metricsOf(port, caPem).catch(() => undefined)));
    loopDelay.disable();
    gcObserver.disconnect();
    // Counted before the run's own shutdown closes the held long-polls.
    const reconnects = sumConns((c) => c.reconnects) + windows.reduce((n, x) => n + x.reconnects, 0);
    const handshakes = sumConns((c) => c.connects) - handshakes0 + windows.reduce((n, x) => n + x.handshakes, 0);
    await sleep(3000); // let the last changes arrive
    const stillPending = unfinished() + [...opsById.values()].reduce((n, op) => n + op.remaining.size, 0);
    running = false;
    await trickle;
    for (const a of agents) a.push.close(); // ends the held long-polls
    await Promise.all([...loops, ...pushLoops]);
    await threads?.stop();
    threads = undefined;

    const cpuTotal = cpuUsed.reduce((s, x) => s + x, 0);
    const perSync = cpuTotal / syncs;
    const ms = (x: number): string => `${x.toFixed(1)} ms`;
    const perAgentSecond = cpuTotal / N / elapsed;
    if (POLL) {
      console.log(`\n== steady state (--poll: the agent before issue 15): ${VERIFIERS} verifier(s) on ${STORE}, ${N} agents, sync every ${INTERVAL_MS / 1000} s${PUSH ? ' + a held long-poll each on a second connection' : ''}, ${changes} entry changes (${RATE}/s) in ${elapsed.toFixed(1)} s`);
      console.log(
        `syncs: ${syncs} (${(syncs / elapsed).toFixed(0)}/s; ${full} answered 200, the rest 304; ${bundleFetches} bundle fetches), ${pushed} sets pushed by long-poll, ${errors} errors, ${adminErrors} failed entry changes, ${reconnects} requests sent again after the verifier closed an idle connection, ${handshakes} TLS handshakes (warm-up and window)`,
      );
    } else {
      console.log(`\n== steady state (push: the held long-poll is each agent's sync): ${VERIFIERS} verifier(s) on ${STORE}, ${N} agents, one connection each holding GET /v1/entries/authorized?wait=${WAIT}, ${changes} entry changes (${RATE}/s) in ${elapsed.toFixed(1)} s`);
      console.log(
        `syncs (long-poll answers): ${syncs} (${(syncs / elapsed).toFixed(0)}/s; ${pushed} answered 200 with a changed set, ${syncs - pushed} answered 304 when the wait was over; ${bundleFetches} bundle fetches), ${errors} errors, ${adminErrors} failed entry changes, ${reconnects} requests sent again after the verifier closed an idle connection, ${handshakes} TLS handshakes (warm-up and window)`,
      );
    }
    console.log(`requests answered: ${requests} (${(requests / elapsed).toFixed(0)}/s); verifier sockets open at the end of the window: ${sockets.join(' + ')} (its agents' connections, listeners and datastore)`);
    console.log(
      `verifier CPU: ${cpuUsed.map((c) => `${((c / 1e6 / elapsed) * 100).toFixed(0)} %`).join(' + ')} of a core; ${perAgentSecond.toFixed(1)} µs per agent per second; ${perSync.toFixed(0)} µs per sync (${POLL ? 'GET /v1/entries/authorized, plus GET /v1/bundle when the answer names a new bundle; long-polls and' : 'a long-poll answer;'} changes included)`,
    );
    console.log(`one core at this cost (extrapolated, not measured): ${(1e6 / perAgentSecond).toFixed(0)} agents with this change rate (goal ≥ 10,000)`);
    if (POLL) console.log(`sync latency: p50 ${ms(pct(syncLat, 50))}, p99 ${ms(pct(syncLat, 99))}, max ${ms(Math.max(...syncLat))} (goal p99 < 50 ms)`);
    else if (lateness.length > 0) {
      console.log(
        `long-poll 304s answered after their wait by: p50 ${ms(pct(lateness, 50))}, p99 ${ms(pct(lateness, 99))}, max ${ms(Math.max(...lateness))} over ${lateness.length} (the time a sync of an unchanged agent costs it beyond the hold; the sync latency of push mode)`,
      );
    }
    if (!POLL) {
      // The same 304s seen from the verifier: from its route start to the answer handed to the socket, minus the
      // wait. What the line above adds to this is the network and the load generator's own delays
      // (its event loop sends the request and reads the answer, on the other core).
      const server = heap.map((h, k) => {
        const h0 = heap0[k];
        if (!h || !h0) return 'metrics not read';
        const p50 = bucketQuantile(h0.late, h.late, 50);
        const p99 = bucketQuantile(h0.late, h.late, 99);
        if (!p50 || !p99) return 'none observed';
        return `p50 ≤ ${ms(p50.le * 1000)}, p99 ≤ ${ms(p99.le * 1000)} over ${p99.n}`;
      });
      console.log(`the same 304s late at the verifier (sigil_long_poll_late_seconds, bucket upper bounds): ${server.join(' + ')}`);
    }
    console.log(
      `entry change → every affected agent: p50 ${ms(pct(propagation, 50))}, p99 ${ms(pct(propagation, 99))}, max ${ms(Math.max(...propagation))} over ${propagation.length} changes; ${stillPending} agent-changes unseen 3 s after the window (goal p99 < 1 s)`,
    );
    if (errors > 0) console.log(`errors: ${[...errorKinds].map(([k, n]) => `${n} × ${k}`).join('; ')}`);
    console.log(`verifier RSS: ${rss.map((r) => `${(r / 1e6).toFixed(0)} MB`).join(' + ')} (goal < 500 MB)`);
    console.log(
      `verifier memory: ${heap
        .map((h) => (h ? `V8 heap used ${(h.heapUsed / 1e6).toFixed(0)} MB of ${(h.heapTotal / 1e6).toFixed(0)} MB, external ${(h.external / 1e6).toFixed(0)} MB` : 'metrics not read'))
        .join(' + ')}; the rest of RSS is native (OpenSSL connection state, allocator)`,
    );
    console.log(
      `verifier event-loop delay over the window (its part of the lateness above): ${heap.map((h) => (h ? `p99 ${(h.lagP99 * 1000).toFixed(1)} ms, max ${(h.lagMax * 1000).toFixed(1)} ms` : 'metrics not read')).join(' + ')}`,
    );
    // A scrape's own time (request to last byte, over an idle keep-alive connection): the verifier's
    // event loop is held for most of it, so it lands in the window's delays above.
    // A major collection marks the whole old generation (mostly on the main thread when the verifier
    // has one core) and comes every minute or two here: a window without one shows a tail that a
    // long run does not keep.
    const gcLine = (k: number): string => {
      const a = heap0[k]?.gc;
      const b = heap[k]?.gc;
      if (!a || !b) return 'metrics not read';
      const d = (kind: keyof GcTotals): string => `${b[kind].count - a[kind].count} (${((b[kind].seconds - a[kind].seconds) * 1000).toFixed(0)} ms)`;
      return `${d('minor')} scavenges, ${d('major')} major, ${d('incremental')} incremental-marking steps`;
    };
    console.log(`verifier garbage collections in the window: ${ports.map((_, k) => gcLine(k)).join(' + ')}`);
    const readsLine = (k: number): string => {
      const a = heap0[k]?.reads;
      const b = heap[k]?.reads;
      if (!a || !b) return 'metrics not read';
      return `${b.memory - a.memory} from memory, ${b.store - a.store} from the datastore`;
    };
    console.log(`agent records read by agent calls in the window (sigil_agent_record_reads_total): ${ports.map((_, k) => readsLine(k)).join(' + ')}`);
    console.log(`verifier /metrics scrape at the window's start and end: ${ports.map((_, k) => `${heap0[k] ? heap0[k].scrapeMs.toFixed(1) : '?'} and ${heap[k] ? heap[k].scrapeMs.toFixed(1) : '?'} ms`).join(' + ')}`);
    const gcSorted = [...genGc].sort((x, y) => x - y);
    console.log(
      `load generator ${windows.length > 0 ? 'main thread (the entry changes) ' : ''}event-loop delay: p99 ${(loopDelay.percentile(99) / 1e6).toFixed(1)} ms, max ${(loopDelay.max / 1e6).toFixed(1)} ms; its GC pauses in the window: ${gcSorted.length}` +
        (gcSorted.length > 0 ? ` (p50 ${ms(pct(gcSorted, 50))}, max ${ms(gcSorted[gcSorted.length - 1] as number)}, ${ms(gcSorted.reduce((x, y) => x + y, 0))} in all)` : ''),
    );
    if (NATIVE) {
      const x = windows[0];
      console.log(`native load generator (bench/support/fleet-agents.c): how long each answer waited in its loop pass before it was read, p99 ${x ? x.loopP99.toFixed(2) : '?'} ms, max ${x ? x.loopMax.toFixed(2) : '?'} ms`);
    } else if (windows.length > 0) {
      const gcs = windows.flatMap((x) => x.gc).sort((x, y) => x - y);
      console.log(
        `load generator's ${windows.length} agent threads: event-loop delay p99 ${windows.map((x) => x.loopP99.toFixed(1)).join(', ')} ms, max ${windows.map((x) => x.loopMax.toFixed(1)).join(', ')} ms; their GC pauses in the window: ${gcs.length}` +
          (gcs.length > 0 ? ` (p50 ${ms(pct(gcs, 50))}, max ${ms(gcs[gcs.length - 1] as number)}, ${ms(gcs.reduce((x, y) => x + y, 0))} in all)` : ''),
      );
    }

    // 6. Saturation: back-to-back syncs (entries only, 304), no interval. With two verifiers, first
    //    verifier 0's agents alone (one verifier's throughput), then every agent (both verifiers').
    if (SATURATE > 0) {
      // Push mode: the long-polls were ended by closing their connections, so each agent opens a new
      // one (16 handshakes at a time). Until its phase comes, an agent syncs every 2 s, so that no
      // connection idles past the verifier's keep-alive timeout; each phase is timed from a moment
      // every connection is open and every agent of the phase is going back to back.
      interface Phase {
        what: string;
        /** Whether agent `a` syncs back to back in this phase. */
        busy: (a: SimAgent) => boolean;
        /** The verifiers whose throughput this is (their CPU is counted per 304). */
        verifiers: number[];
      }
      const phases: Phase[] =
        VERIFIERS === 2
          ? [
              { what: `verifier 0 alone (its ${Math.ceil(N / 2)} agents back to back; verifier 1's agents sync every 2 s)`, busy: (a) => a.v === 0, verifiers: [0] },
              { what: `both verifiers (all ${N} agents back to back)`, busy: () => true, verifiers: [0, 1] },
            ]
          : [{ what: `${N} agents back to back`, busy: () => true, verifiers: [0] }];
      let phase: Phase | undefined;
      let counting = false;
      let stopped = false;
      let n = 0;
      let open = POLL ? N : 0;
      let allOpen: () => void = () => undefined;
      const opened = new Promise<void>((r) => (allOpen = r));
      if (open === N) allOpen();
      const t = performance.now();
      let gate = 0;
      const gates: (() => void)[] = [];
      const handshake = async (): Promise<void> => {
        if (gate < 16) {
          gate++;
          return;
        }
        await new Promise<void>((r) => gates.push(r));
      };
      const release = (): void => {
        const g = gates.shift();
        if (g) g();
        else gate--;
      };
      const loops = agents.map(async (a) => {
        if (!POLL) {
          a.poll = a.fresh();
          await handshake();
          const r = await a.poll.get('/v1/entries/authorized', { 'if-none-match': a.etag }).catch(() => undefined);
          if (r?.status === 200) a.etag = r.etag ?? '';
          release();
          if (++open === N) {
            console.log(`\n${N} new connections for the saturation phase opened in ${((performance.now() - t) / 1000).toFixed(1)} s, each syncing every 2 s meanwhile (not timed)`);
            allOpen();
          }
        }
        while (!stopped) {
          const busy = phase !== undefined && phase.busy(a);
          if (!busy) await sleep(2000);
          if (stopped) break;
          const r = await a.poll.get('/v1/entries/authorized', { 'if-none-match': a.etag }).catch(() => undefined);
          if (r?.status === 304) {
            if (busy && counting) n++;
          } else if (r?.status === 200) a.etag = r.etag ?? '';
        }
      });
      await opened;
      const rates: number[] = [];
      for (const p of phases) {
        phase = p;
        // Agents that were syncing every 2 s are back to back within 2 s.
        await sleep(2500);
        const hs1 = agents.reduce((x, a) => x + a.poll.connects, 0);
        const c1 = pids.map(procCpuUs);
        const th1 = quotaGroups.map((g) => g.throttled());
        n = 0;
        counting = true;
        const t3 = performance.now();
        await sleep(SATURATE * 1000);
        counting = false;
        const count = n;
        const s = (performance.now() - t3) / 1000;
        const used = pids.map((pid, k) => procCpuUs(pid) - (c1[k] as number));
        const usedBusy = p.verifiers.reduce((x, k) => x + (used[k] as number), 0);
        const throttle = quotaGroups.map((g, k) => {
          const a = th1[k] as { periods: number; throttled: number; throttledMs: number };
          const b = g.throttled();
          const throttled = b.throttled - a.throttled;
          const periods = b.periods - a.periods;
          // A verifier whose quota was not used up in nearly every period was not CPU-bound: something
          // else (the load generator, the datastore) limited the phase's throughput.
          const slack = p.verifiers.includes(k) && throttled < 0.9 * periods ? ' — its quota was not reached in every period, so this phase was not limited by its CPU alone' : '';
          return `verifier ${k}: ${throttled} of ${periods} periods throttled (${(b.throttledMs - a.throttledMs).toFixed(0)} ms)${slack}`;
        });
        rates.push(count / s);
        console.log(
          `\n== saturation, ${p.what}, GET /v1/entries/authorized → 304: ${(count / s).toFixed(0)} syncs/s; verifier CPU ${used.map((c) => `${((c / 1e6 / s) * 100).toFixed(0)} %`).join(' + ')}; ${(usedBusy / count).toFixed(0)} µs per 304 (verifier${p.verifiers.length > 1 ? 's' : ''} ${p.verifiers.join(' + ')}); ${agents.reduce((x, a) => x + a.poll.connects, 0) - hs1} TLS handshakes meanwhile` +
            (QUOTA > 0 ? `\n   CPU quota ${QUOTA} of a CPU per verifier; ${throttle.join('; ')}` : ''),
        );
      }
      stopped = true;
      await Promise.all(loops);
      if (rates.length === 2) {
        console.log(
          `two verifiers against one: ${((rates[1] as number) / (rates[0] as number)).toFixed(2)}× the syncs per second (goal ≥ 1.7×)` +
            (QUOTA > 0 ? `, each verifier limited to ${QUOTA} of a CPU` : '; without --cpu-quota both verifiers share the CPUs of --pin, so this is not the scaling of a verifier per core'),
        );
      }
    }
    const cpus = execFileSync('nproc').toString().trim();
    const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    console.log(`machine: ${cpus} CPUs, load average ${load}`);
  } finally {
    await threads?.stop();
    for (const a of agents) {
      a?.poll.close();
      a?.push.close();
    }
    for (const d of daemons.reverse()) {
      d.child.kill('SIGTERM');
      await d.exited;
    }
    for (const g of quotaGroups) {
      try {
        g.remove();
      } catch (e) {
        console.log(`control group ${g.dir} not removed: ${errorMessage(e)}`);
      }
    }
    await pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
