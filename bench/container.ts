/**
 * Container attestation cost (issue 13's benchmark):
 *  1. per call, cgroup only (no runtime configured) vs. cgroup + cached runtime answer: the cache
 *     must add ≤ 50 µs; a /proc-shaped file tree stands in for /proc so the run is repeatable;
 *  2. the first lookup of a container against a real podman (Docker Engine API), when podman is
 *     installed (skipped with a note otherwise);
 *  3. callers outside containers while the runtime hangs: attestation latency p50/p99 with and
 *     without a hung runtime holding container callers.
 * Usage: npm run bench -- container   (or: node --import tsx bench/container.ts [--calls N])
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { attestCaller } from '../src/agent/workload-api/attest.js';
import type { WorkloadAttestor } from '../src/plugins/types.js';
import { ContainerAttestor } from '../src/workload/container.js';
import { containerToolsMissing, startPodman } from '../test/support/containers.js';

const args = process.argv.slice(2);
const CALLS = Number(args[args.indexOf('--calls') + 1] ?? 0) || 20_000;
const ID = 'ab'.repeat(32);
const signal = new AbortController().signal;
const caller = (pid: number) => ({ pid, uid: 0, gid: 0 });

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

async function batch(a: ContainerAttestor, pid: number, n: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await a.attest(caller(pid), signal);
  return Number(process.hrtime.bigint() - t0) / 1000 / n;
}

/** Interleaved batches (so machine noise hits both sides alike): medians of each and of the paired differences. */
async function compare(a: ContainerAttestor, b: ContainerAttestor, pid: number, calls: number): Promise<{ a: number; b: number; extra: number }> {
  await batch(a, pid, 1000);
  await batch(b, pid, 1000);
  const per = 500;
  const xs: number[] = [];
  const ys: number[] = [];
  const ds: number[] = [];
  for (let i = 0; i < Math.max(1, Math.floor(calls / per)); i++) {
    const x = await batch(a, pid, per);
    const y = await batch(b, pid, per);
    xs.push(x);
    ys.push(y);
    ds.push(y - x);
  }
  const med = (v: number[]): number => quantile([...v].sort((p, q) => p - q), 0.5);
  return { a: med(xs), b: med(ys), extra: med(ds) };
}

const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-container-'));
try {
  const proc = join(dir, 'proc');
  mkdirSync(join(proc, '100'), { recursive: true });
  mkdirSync(join(proc, '200'), { recursive: true });
  writeFileSync(join(proc, '100', 'cgroup'), `0::/system.slice/docker-${ID}.scope\n`);
  writeFileSync(join(proc, '200', 'cgroup'), '0::/user.slice/user-1000.slice/session-3.scope\n');

  const sock = join(dir, 'docker.sock');
  let hang = false;
  const server = http.createServer((req, res) => {
    if (hang) return;
    if (req.url?.includes('/containers/')) res.end(JSON.stringify({ Id: ID, Name: '/web', Image: `sha256:${'cd'.repeat(32)}`, Config: { Image: 'web:1', Labels: { tier: 'web', team: 'pay' } }, State: { Pid: 100 } }));
    else res.end(JSON.stringify({ RepoDigests: [`web@sha256:${'ef'.repeat(32)}`] }));
  });
  await new Promise<void>((r) => server.listen(sock, r));

  console.log(`== 1. per call (${CALLS} calls, file tree in place of /proc)`);
  const cgroupOnly = new ContainerAttestor({}, { procRoot: proc });
  const withRuntime = new ContainerAttestor({ docker: { socket: sock } }, { procRoot: proc });
  for (let round = 1; round <= 3; round++) {
    const r = await compare(cgroupOnly, withRuntime, 100, CALLS);
    console.log(`round ${round}: cgroup only ${r.a.toFixed(2)} µs/call; cgroup + cached runtime answer ${r.b.toFixed(2)} µs/call; extra (median of paired batches) ${r.extra.toFixed(2)} µs (goal ≤ 50)`);
  }

  console.log('== 2. first lookup of a container on a real podman (Docker Engine API)');
  const missing = containerToolsMissing();
  if (missing) console.log(`skipped: ${missing}`);
  else {
    const pdir = join(dir, 'podman');
    mkdirSync(pdir);
    const podman = await startPodman(pdir);
    try {
      podman.importImage('localhost/sigil-bench:1', 'bench');
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const c = podman.run({ name: `b${i}`, image: 'localhost/sigil-bench:1', labels: { tier: 'web' }, cmd: ['/bin/sleep', '120'] });
        const a = new ContainerAttestor({ podman: { socket: podman.socket } });
        const t0 = performance.now();
        const sel = await a.attest(caller(c.pid), signal);
        times.push(performance.now() - t0);
        if (!sel.some((s) => s.startsWith('container:image_id:'))) throw new Error('podman lookup gave no image_id');
        const t1 = performance.now();
        await a.attest(caller(c.pid), signal);
        times.push(-(performance.now() - t1));
      }
      const first = times.filter((t) => t > 0).sort((x, y) => x - y);
      const again = times.filter((t) => t < 0).map((t) => -t).sort((x, y) => x - y);
      console.log(`first lookup (container + image request): ${first.map((t) => t.toFixed(1)).join(', ')} ms; next call (cached): ${again.map((t) => (t * 1000).toFixed(0)).join(', ')} µs`);
    } finally {
      await podman.stop();
    }
  }

  console.log('== 3. callers outside containers while the runtime hangs');
  const logger = pino({ level: 'silent' });
  const hungRuntime = new ContainerAttestor({ docker: { socket: sock }, lookupTimeout: '2s', cacheTtl: '1ms' }, { procRoot: proc });
  const attestors = new Map<string, WorkloadAttestor>([['container', hungRuntime]]);
  for (const label of ['runtime answering', 'runtime hung, 50 container callers waiting'] as const) {
    hang = label !== 'runtime answering';
    const pending: Promise<unknown>[] = [];
    if (hang) for (let i = 0; i < 50; i++) pending.push(attestCaller(caller(100), attestors, logger));
    const lat: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const t0 = performance.now();
      await attestCaller(caller(200), attestors, logger);
      lat.push((performance.now() - t0) * 1000);
    }
    lat.sort((x, y) => x - y);
    console.log(`${label}: outside caller attestation p50 ${quantile(lat, 0.5).toFixed(1)} µs, p99 ${quantile(lat, 0.99).toFixed(1)} µs`);
    await Promise.all(pending);
  }
  server.close();
} finally {
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}
