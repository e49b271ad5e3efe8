/**
 * The agent's metrics and health endpoint: unit tests with fake sources on port 0, prom-client
 * loaded only when the endpoint starts, and the endpoint of a real agent against a real verifier.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent as HttpAgent, request } from 'node:http';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { startMetricsServer, type AgentIdentityCounts, type MetricsServer, type MetricsSources } from '../../src/agent/metrics.js';
import type { WorkloadApiStats } from '../../src/agent/workload-api/server.js';
import type { ServiceTimeSummary } from '../../src/agent/workload-api/service-time.js';
import { SigilError } from '../../src/errors.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { UID, WorkloadClient, agentEnv, createEntry, freePort, joinToken, runAgent, waitFor } from './harness.js';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(url: string, opts: { method?: string; agent?: HttpAgent } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', ...(opts.agent ? { agent: opts.agent } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

interface Scrape {
  /** `name{a="x",b="y"}` (labels sorted) → value */
  samples: Map<string, number>;
  /** metric family → TYPE */
  types: Map<string, string>;
}

/** Minimal Prometheus text format reader (enough for prom-client's output). */
function parseProm(text: string): Scrape {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable sample line: ${line}`);
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => `${l[1]}="${l[2]}"`).sort();
    samples.set(labels.length ? `${m[1]}{${labels.join(',')}}` : m[1]!, Number(m[3]));
  }
  return { samples, types };
}

/** The label sets of one metric's samples, e.g. ['method="A",quantile="0.5"', …]. */
function labelSets(s: Scrape, name: string): string[] {
  return [...s.samples.keys()]
    .filter((k) => k.startsWith(`${name}{`))
    .map((k) => k.slice(name.length + 1, -1))
    .sort();
}

async function scrape(url: string): Promise<Scrape> {
  const r = await get(`${url}/metrics`);
  expect(r.status).toBe(200);
  return parseProm(r.body);
}

class FakeSources implements MetricsSources {
  stats: WorkloadApiStats = { connections: 0, rejectedConnections: 0, activeCalls: 0, watchingStreams: 0, callerChanged: 0, bufferedOutputBytes: 0 };
  times: Record<string, ServiceTimeSummary> = {};
  ids: AgentIdentityCounts = { entries: 0, x509Svids: 0, jwtSvids: 0, nodeSvidExpiresAt: undefined };
  reason: string | undefined = 'no valid node SVID (attestation in progress)';
  statsReads = 0;
  workloadApiStats(): WorkloadApiStats {
    this.statsReads++;
    return { ...this.stats };
  }
  serviceTimes(): Record<string, ServiceTimeSummary> {
    return structuredClone(this.times);
  }
  identities(): AgentIdentityCounts {
    return { ...this.ids };
  }
  notReadyReason(): string | undefined {
    return this.reason;
  }
}

function captureLogger(): { logger: Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as { level: number; msg: string }) });
  return { logger, lines };
}

const silent = pino({ level: 'silent' });
const started: MetricsServer[] = [];
async function start(sources: MetricsSources, extra: { host?: string; port?: number; closeGraceMs?: number; logger?: Logger; scrapeReuseMs?: number } = {}): Promise<MetricsServer> {
  const m = await startMetricsServer({
    host: extra.host ?? '127.0.0.1',
    port: extra.port ?? 0,
    sources,
    logger: extra.logger ?? silent,
    // Every scrape renders afresh unless a test asks otherwise (the default shares a rendering for 1 s).
    scrapeReuseMs: extra.scrapeReuseMs ?? 0,
    ...(extra.closeGraceMs !== undefined ? { closeGraceMs: extra.closeGraceMs } : {}),
  });
  started.push(m);
  return m;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((m) => m.close()));
});

async function ipv6LoopbackWorks(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(0, '::1', () => s.close(() => resolve(true)));
  });
}
const hasIpv6 = await ipv6LoopbackWorks();

describe('agent metrics endpoint (fake sources)', () => {
  it('serves the Workload API gauges and counters, and counters follow the totals across scrapes', async () => {
    const src = new FakeSources();
    const m = await start(src);
    expect(m.url).toBe(`http://127.0.0.1:${m.port}`);
    src.stats = { connections: 4, rejectedConnections: 3, activeCalls: 2, watchingStreams: 1, callerChanged: 1, bufferedOutputBytes: 4096 };
    const r = await get(`${m.url}/metrics`);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const s1 = parseProm(r.body);
    expect(s1.samples.get('sigil_agent_workload_api_connections')).toBe(4);
    expect(s1.samples.get('sigil_agent_workload_api_active_calls')).toBe(2);
    expect(s1.samples.get('sigil_agent_workload_api_watching_streams')).toBe(1);
    expect(s1.samples.get('sigil_agent_workload_api_buffered_output_bytes')).toBe(4096);
    expect(s1.samples.get('sigil_agent_workload_api_rejected_connections_total')).toBe(3);
    expect(s1.samples.get('sigil_agent_workload_api_caller_changed_total')).toBe(1);
    for (const g of ['connections', 'active_calls', 'watching_streams', 'buffered_output_bytes']) expect(s1.types.get(`sigil_agent_workload_api_${g}`)).toBe('gauge');
    expect(s1.types.get('sigil_agent_workload_api_rejected_connections_total')).toBe('counter');
    expect(s1.types.get('sigil_agent_workload_api_caller_changed_total')).toBe('counter');
    // One read of the sources per scrape, however many metrics use it.
    expect(src.statsReads).toBe(1);

    // Levels go down as they are; counters never do.
    src.stats = { connections: 1, rejectedConnections: 7, activeCalls: 0, watchingStreams: 0, callerChanged: 1, bufferedOutputBytes: 0 };
    const s2 = await scrape(m.url);
    expect(s2.samples.get('sigil_agent_workload_api_connections')).toBe(1);
    expect(s2.samples.get('sigil_agent_workload_api_buffered_output_bytes')).toBe(0);
    expect(s2.samples.get('sigil_agent_workload_api_rejected_connections_total')).toBe(7);
    expect(s2.samples.get('sigil_agent_workload_api_caller_changed_total')).toBe(1);
    // Unchanged totals: scraping again adds nothing.
    expect((await scrape(m.url)).samples.get('sigil_agent_workload_api_rejected_connections_total')).toBe(7);
    // A total that restarted from zero (its owner reset it): all of it counts as new.
    src.stats = { ...src.stats, rejectedConnections: 2 };
    expect((await scrape(m.url)).samples.get('sigil_agent_workload_api_rejected_connections_total')).toBe(9);
    expect(src.statsReads).toBe(4);
  });

  it('serves service times per method and quantile, and call counts per method', async () => {
    const src = new FakeSources();
    const m = await start(src);
    const s0 = await scrape(m.url);
    expect(labelSets(s0, 'sigil_agent_workload_api_service_time_seconds')).toEqual([]);
    expect(s0.types.get('sigil_agent_workload_api_service_time_seconds')).toBe('gauge');
    expect(s0.types.get('sigil_agent_workload_api_calls_total')).toBe('counter');

    src.times = { FetchX509SVID: { count: 5, p50Ms: 1.5, p99Ms: 20, maxMs: 30 } };
    const s1 = await scrape(m.url);
    expect(labelSets(s1, 'sigil_agent_workload_api_service_time_seconds')).toEqual(['method="FetchX509SVID",quantile="0.5"', 'method="FetchX509SVID",quantile="0.99"']);
    expect(labelSets(s1, 'sigil_agent_workload_api_service_time_max_seconds')).toEqual(['method="FetchX509SVID"']);
    expect(s1.samples.get('sigil_agent_workload_api_service_time_seconds{method="FetchX509SVID",quantile="0.5"}')).toBeCloseTo(0.0015, 9);
    expect(s1.samples.get('sigil_agent_workload_api_service_time_seconds{method="FetchX509SVID",quantile="0.99"}')).toBeCloseTo(0.02, 9);
    expect(s1.samples.get('sigil_agent_workload_api_service_time_max_seconds{method="FetchX509SVID"}')).toBeCloseTo(0.03, 9);
    expect(labelSets(s1, 'sigil_agent_workload_api_calls_total')).toEqual(['method="FetchX509SVID"']);
    expect(s1.samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBe(5);

    src.times = { FetchX509SVID: { count: 12, p50Ms: 1, p99Ms: 25, maxMs: 40 }, FetchJWTSVID: { count: 2, p50Ms: 3, p99Ms: 3, maxMs: 3 } };
    const s2 = await scrape(m.url);
    expect(s2.samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBe(12);
    expect(s2.samples.get('sigil_agent_workload_api_calls_total{method="FetchJWTSVID"}')).toBe(2);
    expect(s2.samples.get('sigil_agent_workload_api_service_time_max_seconds{method="FetchX509SVID"}')).toBeCloseTo(0.04, 9);
    expect(labelSets(s2, 'sigil_agent_workload_api_service_time_seconds')).toHaveLength(4);
    expect(labelSets(s2, 'sigil_agent_workload_api_service_time_max_seconds')).toHaveLength(2);
    expect((await scrape(m.url)).samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBe(12);

    // The histograms were reset (methods vanish): the counter keeps its value, the gauges go.
    src.times = {};
    const s3 = await scrape(m.url);
    expect(labelSets(s3, 'sigil_agent_workload_api_service_time_seconds')).toEqual([]);
    expect(s3.samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBe(12);
    src.times = { FetchX509SVID: { count: 3, p50Ms: 1, p99Ms: 1, maxMs: 1 } };
    expect((await scrape(m.url)).samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBe(15);
  });

  it('serves the SVID gauges and prefixed process metrics', async () => {
    const src = new FakeSources();
    const m = await start(src);
    const s0 = await scrape(m.url);
    expect(s0.samples.get('sigil_agent_node_svid_expiry_timestamp_seconds')).toBe(0);
    expect(s0.samples.get('sigil_agent_x509_svids')).toBe(0);
    const exp = new Date('2030-01-02T03:04:05.000Z');
    src.ids = { entries: 7, x509Svids: 5, jwtSvids: 11, nodeSvidExpiresAt: exp };
    const s1 = await scrape(m.url);
    expect(s1.samples.get('sigil_agent_node_svid_expiry_timestamp_seconds')).toBe(exp.getTime() / 1000);
    expect(s1.samples.get('sigil_agent_entries')).toBe(7);
    expect(s1.samples.get('sigil_agent_x509_svids')).toBe(5);
    expect(s1.samples.get('sigil_agent_jwt_svids_cached')).toBe(11);
    expect(s1.samples.get('sigil_agent_process_resident_memory_bytes')).toBeGreaterThan(1_000_000);
    expect(s1.types.get('sigil_agent_process_cpu_seconds_total')).toBe('counter');
    expect([...s1.samples.keys()].some((k) => k.startsWith('sigil_agent_nodejs_heap_size_used_bytes'))).toBe(true);
    // Its own registry: nothing unprefixed (the global registry's or the verifier's metrics).
    expect([...s1.types.keys()].filter((k) => !k.startsWith('sigil_agent_'))).toEqual([]);
  });

  it('shares one rendering among scrapes within the reuse window, and among concurrent scrapes', async () => {
    const src = new FakeSources();
    const m = await start(src, { scrapeReuseMs: 60_000 });
    const reads0 = src.statsReads;
    const [a, b, c] = await Promise.all([scrape(m.url), scrape(m.url), scrape(m.url)]);
    expect(src.statsReads - reads0).toBe(1);
    src.stats = { ...src.stats, connections: 99 };
    const d = await scrape(m.url);
    expect(src.statsReads - reads0).toBe(1);
    for (const x of [a, b, c, d]) expect(x.samples.get('sigil_agent_workload_api_connections')).toBe(a.samples.get('sigil_agent_workload_api_connections'));
    expect(d.samples.get('sigil_agent_workload_api_connections')).not.toBe(99);
  });

  it('answers /healthz and /readyz, 404 for other paths and 405 for other methods', async () => {
    const src = new FakeSources();
    const m = await start(src);
    expect(await get(`${m.url}/healthz`)).toMatchObject({ status: 200, body: 'ok\n' });
    expect((await get(`${m.url}/healthz?verbose=1`)).status).toBe(200);
    const notReady = await get(`${m.url}/readyz`);
    expect(notReady.status).toBe(503);
    expect(notReady.body).toBe('not ready: no valid node SVID (attestation in progress)\n');
    src.reason = 'first line\nsecond line';
    expect((await get(`${m.url}/readyz`)).body).toBe('not ready: first line second line\n');
    src.reason = undefined;
    expect(await get(`${m.url}/readyz`)).toMatchObject({ status: 200, body: 'ok\n' });

    for (const p of ['/', '/metricsx', '/metrics/', '/debug/pprof']) expect((await get(`${m.url}${p}`)).status, p).toBe(404);
    for (const method of ['POST', 'PUT', 'DELETE', 'HEAD']) {
      const r = await get(`${m.url}/metrics`, { method });
      expect(r.status, method).toBe(405);
      expect(r.headers.allow).toBe('GET');
    }
    expect((await get(`${m.url}/readyz`, { method: 'POST' })).status).toBe(405);
  });

  it('closes at once with an idle keep-alive connection open', async () => {
    const m = await start(new FakeSources(), { closeGraceMs: 30_000 });
    const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await get(`${m.url}/healthz`, { agent })).status).toBe(200);
      const idle = Object.values(agent.freeSockets).flat() as Socket[];
      expect(idle).toHaveLength(1);
      const socketClosed = new Promise<void>((r) => idle[0]!.once('close', () => r()));
      const t0 = Date.now();
      await m.close();
      await socketClosed;
      expect(Date.now() - t0).toBeLessThan(5000);
      await expect(get(`${m.url}/healthz`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      await m.close(); // idempotent
    } finally {
      agent.destroy();
    }
  });

  it('cuts a connection stuck in a request after the grace period', async () => {
    const m = await start(new FakeSources(), { closeGraceMs: 200 });
    const sock = connect(m.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n'); // headers never finished
    const closedSock = new Promise<void>((r) => sock.once('close', () => r()));
    sock.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await m.close();
    await closedSock;
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(150);
    expect(took).toBeLessThan(3000);
  });

  it('fails with agent.metrics_listen_failed when the port is taken', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as { port: number }).port;
    try {
      const err = await startMetricsServer({ host: '127.0.0.1', port, sources: new FakeSources(), logger: silent }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SigilError);
      expect((err as SigilError).code).toBe('agent.metrics_listen_failed');
      expect((err as SigilError).message).toBe(`cannot listen on metrics.listen 127.0.0.1:${port}: address already in use (EADDRINUSE)`);
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  it('warns when listening on a non-loopback address, not on loopback', async () => {
    const a = captureLogger();
    await start(new FakeSources(), { logger: a.logger });
    expect(a.lines.map((l) => l.msg)).toEqual(['metrics endpoint listening']);
    const b = captureLogger();
    const m = await start(new FakeSources(), { host: '0.0.0.0', logger: b.logger });
    expect(b.lines.filter((l) => l.level === 40).map((l) => l.msg)).toEqual([expect.stringMatching(/not on a loopback address.*no authentication/)]);
    expect((await get(`http://127.0.0.1:${m.port}/healthz`)).status).toBe(200);
  });

  it.skipIf(!hasIpv6)('listens on an IPv6 address', async () => {
    const m = await start(new FakeSources(), { host: '::1' });
    expect(m.url).toBe(`http://[::1]:${m.port}`);
    expect((await get(`${m.url}/healthz`)).status).toBe(200);
  });
});

describe('prom-client loading', () => {
  it('is not loaded by the agent modules, only when the endpoint starts', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-metrics-lazy-'));
    try {
      const script = join(dir, 'probe.mjs');
      const agentUrl = new URL('../../src/agent/agent.ts', import.meta.url).href;
      const metricsUrl = new URL('../../src/agent/metrics.ts', import.meta.url).href;
      // prom-client is CommonJS: once imported, its files are in the CommonJS module cache.
      writeFileSync(
        script,
        [
          "import { createRequire } from 'node:module';",
          'const cache = createRequire(import.meta.url).cache;',
          "const prom = () => Object.keys(cache).filter((k) => k.includes('/node_modules/prom-client/')).length;",
          `await import(${JSON.stringify(agentUrl)});`,
          `const { startMetricsServer } = await import(${JSON.stringify(metricsUrl)});`,
          'const before = prom();',
          'const logger = { info() {}, warn() {}, error() {} };',
          'const src = { workloadApiStats: () => ({}), serviceTimes: () => ({}), identities: () => ({}), notReadyReason: () => undefined };',
          "const m = await startMetricsServer({ host: '127.0.0.1', port: 0, sources: src, logger });",
          'const after = prom();',
          'await m.close();',
          'console.log(JSON.stringify({ before, after }));',
        ].join('\n'),
      );
      const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: fileURLToPath(new URL('../..', import.meta.url)), encoding: 'utf8', timeout: 30_000 });
      expect(r.stderr).toBe('');
      const out = JSON.parse(r.stdout.trim()) as { before: number; after: number };
      expect(out.before).toBe(0);
      expect(out.after).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);
});

describe('metrics endpoint of a real agent', () => {
  let dir: string;
  let port: number;
  let tv: TestVerifier;
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-agent-metrics-'));
    port = await freePort();
    tv = await startTestVerifier({ listen: { address: '127.0.0.1', port } }, { dir: join(dir, 'verifier') });
  }, 30_000);

  afterAll(async () => {
    for (const c of cleanups.reverse()) await c();
    await tv?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function agentIn(sub: string, verifierPort: number, metricsPort: number): Promise<{ run: () => Promise<RunningAgent>; socket: string }> {
    const d = join(dir, sub);
    mkdirSync(d, { recursive: true });
    const t = await joinToken(tv.adminSocket);
    const env = await agentEnv(d, tv.adminSocket, verifierPort, { join_token: { token: t.token } }, { metrics: { listen: `127.0.0.1:${metricsPort}` } });
    return {
      socket: env.socket,
      run: async () => {
        const a = await runAgent(env);
        cleanups.push(() => a.close());
        return a;
      },
    };
  }

  it('is scraped once the agent is ready, reflects the Workload API, and stops with the agent', async () => {
    const t = await joinToken(tv.adminSocket);
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/metrics-web', parentId: t.agentId, selectors: [`unix:uid:${UID}`] });
    const metricsPort = await freePort();
    const d = join(dir, 'ready');
    mkdirSync(d, { recursive: true });
    const env = await agentEnv(d, tv.adminSocket, port, { join_token: { token: t.token } }, { metrics: { listen: `127.0.0.1:${metricsPort}` } });
    const agent = await runAgent(env);
    cleanups.push(() => agent.close());
    const url = `http://127.0.0.1:${metricsPort}`;
    expect(agent.metricsAddress).toBe(url);
    expect((await get(`${url}/healthz`)).status).toBe(200);
    await agent.whenAttested();
    await waitFor(async () => (await get(`${url}/readyz`)).status === 200, 10_000, '/readyz 200');
    await waitFor(() => agent.status().x509Svids === 1, 10_000, 'the workload SVID');

    const wl = new WorkloadClient(env.socket);
    cleanups.push(() => wl.close());
    const stream = await wl.streamWhen((m) => m.svids.some((s) => s.spiffe_id === 'spiffe://example.org/metrics-web'), 10_000, 'the SVID over the Workload API');
    const s = await scrape(url);
    expect(s.samples.get('sigil_agent_entries')).toBe(agent.status().entries);
    expect(s.samples.get('sigil_agent_x509_svids')).toBe(1);
    expect(s.samples.get('sigil_agent_node_svid_expiry_timestamp_seconds')).toBe(Date.parse(agent.status().nodeSvidExpiresAt!) / 1000);
    expect(s.samples.get('sigil_agent_workload_api_connections')).toBeGreaterThanOrEqual(1);
    expect(s.samples.get('sigil_agent_workload_api_watching_streams')).toBeGreaterThanOrEqual(1);
    expect(s.samples.get('sigil_agent_workload_api_calls_total{method="FetchX509SVID"}')).toBeGreaterThanOrEqual(1);
    expect(labelSets(s, 'sigil_agent_workload_api_service_time_seconds')).toContain('method="FetchX509SVID",quantile="0.99"');
    expect(s.samples.get('sigil_agent_workload_api_service_time_max_seconds{method="FetchX509SVID"}')).toBeGreaterThan(0);
    stream.cancel();

    await agent.close();
    await expect(get(`${url}/healthz`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  }, 40_000);

  it('is not ready while the verifier is unreachable', async () => {
    const metricsPort = await freePort();
    const a = await agentIn('unreachable', await freePort(), metricsPort);
    await a.run();
    const url = `http://127.0.0.1:${metricsPort}`;
    const r = await waitFor(
      async () => {
        const x = await get(`${url}/readyz`);
        return x.body.includes('agent.verifier_unreachable') ? x : undefined;
      },
      15_000,
      '/readyz naming the unreachable verifier',
    );
    expect(r.status).toBe(503);
    expect(r.body).toBe('not ready: no valid node SVID (last error: agent.verifier_unreachable)\n');
    expect((await scrape(url)).samples.get('sigil_agent_node_svid_expiry_timestamp_seconds')).toBe(0);
  }, 30_000);

  it('fails to start with agent.metrics_listen_failed when the metrics port is taken, and cleans up', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const taken = (blocker.address() as { port: number }).port;
    try {
      const a = await agentIn('taken', port, taken);
      const err = await a.run().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SigilError);
      expect((err as SigilError).code).toBe('agent.metrics_listen_failed');
      expect((err as SigilError).message).toMatch(/address already in use/);
      // The Workload API it had started was closed again.
      expect(existsSync(a.socket)).toBe(false);
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  }, 30_000);
});
