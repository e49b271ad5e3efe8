/**
 * One thread of the fleet benchmark's load generator (`bench/fleet.ts --threads K`, push mode): it
 * holds the connections of its share of the simulated agents, runs each agent's held long-poll (its
 * sync) and bundle fetch, and tells the main thread when an agent has received the set an entry
 * change makes. Ten thousand agents in one thread put that thread's garbage-collection pauses and
 * answer batches into every measured latency; real agents are separate hosts, so the load is split
 * over threads (each its own heap and event loop).
 *
 * Times crossing threads are absolute milliseconds (performance.timeOrigin + performance.now()).
 */
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../../src/errors.js';
import { FleetConn } from './fleet-client.js';

export interface WorkerAgent {
  i: number;
  port: number;
  localAddress: string;
  tls: { cert: string; key: string };
}

export interface FleetWorkerData {
  entry: string;
  agents: WorkerAgent[];
  ca: string;
  serverId: string;
  /** Seconds each long-poll asks to be held. */
  wait: number;
  /** First syncs in flight at once in this thread. */
  concurrency: number;
}

/** Main thread → worker. */
export type ToWorker =
  | { t: 'start' }
  | { t: 'measure'; on: boolean }
  | { t: 'op'; id: string; create: boolean; t0: number; agents: number[] }
  | { t: 'stop' };

export interface WindowStats {
  syncs: number;
  pushed: number;
  bundleFetches: number;
  requests: number;
  lateness: number[];
  errors: [string, number][];
  loopP99: number;
  loopMax: number;
  gc: number[];
  handshakes: number;
  reconnects: number;
}

/** Worker → main thread. */
export type FromWorker =
  | { t: 'started'; bytes: number }
  | { t: 'seen'; id: string; create: boolean; i: number; at: number }
  | { t: 'window'; stats: WindowStats }
  | { t: 'stopped' }
  | { t: 'failed'; message: string };

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Agent {
  i: number;
  conn: FleetConn;
  etag: string;
  bundleEtag: string;
  lastSet?: { body: Buffer; at: number };
}

interface PendingOp {
  id: string;
  create: boolean;
}

function run(data: FleetWorkerData): void {
  const port = parentPort;
  if (!port) throw new Error('fleet-worker runs as a worker thread');
  const send = (m: FromWorker): void => port.postMessage(m);
  const agents = data.agents.map(
    (a): Agent => ({
      i: a.i,
      conn: new FleetConn({ host: '127.0.0.1', port: a.port, ca: data.ca, ...a.tls, serverId: data.serverId, localAddress: a.localAddress }),
      etag: '',
      bundleEtag: '',
    }),
  );
  const byIndex = new Map(agents.map((a) => [a.i, a]));
  /** Changes each agent still has to see. */
  const waiting = new Map<number, Set<PendingOp>>();
  let running = true;
  let measuring = false;
  let w: WindowStats = blank();
  let loopDelay: ReturnType<typeof monitorEventLoopDelay> | undefined;
  let gcObserver: PerformanceObserver | undefined;
  let connects0 = 0;
  const loops: Promise<void>[] = [];

  function blank(): WindowStats {
    return { syncs: 0, pushed: 0, bundleFetches: 0, requests: 0, lateness: [], errors: [], loopP99: 0, loopMax: 0, gc: [], handshakes: 0, reconnects: 0 };
  }
  const errorKinds = new Map<string, number>();

  const seen = (a: Agent, body: Buffer): void => {
    const at = now();
    a.lastSet = { body, at };
    const ops = waiting.get(a.i);
    if (!ops) return;
    for (const op of ops) {
      if (body.includes(`"id":"${op.id}"`) !== op.create) continue;
      ops.delete(op);
      send({ t: 'seen', id: op.id, create: op.create, i: a.i, at });
    }
    if (ops.size === 0) waiting.delete(a.i);
  };

  const bundleIfNamed = async (a: Agent, named: string | undefined): Promise<void> => {
    if (named !== undefined && named === a.bundleEtag) return;
    const b = await a.conn.get('/v1/bundle', a.bundleEtag ? { 'if-none-match': a.bundleEtag } : {});
    if (b.status === 200) a.bundleEtag = b.etag ?? '';
    else if (b.status !== 304) throw new Error(`bundle ${b.status}`);
    if (measuring) {
      w.bundleFetches++;
      w.requests++;
    }
  };

  const heldLoop = async (a: Agent, firstWait: number): Promise<void> => {
    let wait = firstWait;
    while (running) {
      const s = performance.now();
      try {
        const r = await a.conn.get(`/v1/entries/authorized?wait=${wait}`, { 'if-none-match': a.etag });
        const held = performance.now() - s;
        if (r.status === 200) {
          a.etag = r.etag ?? '';
          seen(a, r.body);
          if (measuring) w.pushed++;
        } else if (r.status === 304) {
          if (measuring) w.lateness.push(held - wait * 1000);
        } else throw new Error(`long-poll ${r.status}`);
        if (measuring) {
          w.syncs++;
          w.requests++;
        }
        await bundleIfNamed(a, r.bundleEtag);
      } catch (e) {
        if (!running) return;
        const k = errorMessage(e);
        errorKinds.set(k, (errorKinds.get(k) ?? 0) + 1);
        await sleep(1000);
      }
      wait = data.wait;
    }
  };

  /** First sync of every agent (a full set each), then straight into its held long-poll. */
  const start = async (): Promise<void> => {
    let next = 0;
    let bytes = 0;
    await Promise.all(
      Array.from({ length: data.concurrency }, async () => {
        for (let k = next++; k < agents.length; k = next++) {
          const a = agents[k] as Agent;
          const r = await a.conn.get('/v1/entries/authorized');
          if (r.status !== 200 || !r.etag) throw new Error(`first sync ${r.status} ${r.body.toString().slice(0, 200)}`);
          a.etag = r.etag;
          bytes += r.body.length;
          const b = await a.conn.get('/v1/bundle');
          if (b.status !== 200 || !b.etag) throw new Error(`first bundle ${b.status}`);
          a.bundleEtag = b.etag;
          loops.push(heldLoop(a, 1 + Math.floor(Math.random() * data.wait)));
        }
      }),
    );
    send({ t: 'started', bytes });
  };

  const connects = (): number => agents.reduce((n, a) => n + a.conn.connects, 0);

  const measure = (on: boolean): void => {
    if (on) {
      w = blank();
      errorKinds.clear();
      loopDelay = monitorEventLoopDelay({ resolution: 10 });
      loopDelay.enable();
      const gc = w.gc;
      gcObserver = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) gc.push(e.duration);
      });
      gcObserver.observe({ entryTypes: ['gc'] });
      connects0 = connects();
      measuring = true;
      return;
    }
    measuring = false;
    loopDelay?.disable();
    gcObserver?.disconnect();
    w.loopP99 = (loopDelay?.percentile(99) ?? 0) / 1e6;
    w.loopMax = (loopDelay?.max ?? 0) / 1e6;
    w.handshakes = connects() - connects0;
    w.reconnects = agents.reduce((n, a) => n + a.conn.reconnects, 0);
    w.errors = [...errorKinds];
    send({ t: 'window', stats: w });
  };

  /** A change the main thread made: which of this thread's agents hold the new set already, the rest are watched for. */
  const op = (m: Extract<ToWorker, { t: 'op' }>): void => {
    const p: PendingOp = { id: m.id, create: m.create };
    for (const i of m.agents) {
      const a = byIndex.get(i);
      if (!a) continue;
      const last = a.lastSet;
      if (last && last.at >= m.t0 && last.body.includes(`"id":"${m.id}"`) === m.create) {
        send({ t: 'seen', id: m.id, create: m.create, i, at: last.at });
        continue;
      }
      let s = waiting.get(i);
      if (!s) waiting.set(i, (s = new Set()));
      s.add(p);
    }
  };

  const stop = async (): Promise<void> => {
    running = false;
    for (const a of agents) a.conn.close(); // ends the held long-polls
    await Promise.all(loops);
    send({ t: 'stopped' });
  };

  port.on('message', (m: ToWorker) => {
    const fail = (e: unknown): void => send({ t: 'failed', message: errorMessage(e) });
    if (m.t === 'start') start().catch(fail);
    else if (m.t === 'measure') measure(m.on);
    else if (m.t === 'op') op(m);
    else stop().catch(fail);
  });
}

run(workerData as FleetWorkerData);
