/**
 * The agent's optional Prometheus metrics and health endpoint (`metrics.listen` in the agent
 * config): plain, unauthenticated HTTP on node:http with `GET /metrics`, `GET /healthz` and
 * `GET /readyz`.
 *
 * prom-client is imported only when the endpoint is started, so an agent without `metrics` never
 * loads it (agent memory is a tracked benchmark). Every value is read at scrape time from the
 * `MetricsSources` the agent passes in; nothing is added to the Workload API's call path.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { SigilError, errorFields } from '../errors.js';
import { isLoopbackHost } from './config.js';
import type { WorkloadApiStats } from './workload-api/server.js';
import type { ServiceTimeSummary } from './workload-api/service-time.js';

/** What the agent holds, for the SVID gauges. */
export interface AgentIdentityCounts {
  /** Authorized registration entries held. */
  entries: number;
  /** X.509-SVIDs held (one per entry that has been issued one). */
  x509Svids: number;
  /** JWT-SVIDs in the cache. */
  jwtSvids: number;
  /** Expiry of the node SVID; undefined when no valid (unexpired) node SVID is held. */
  nodeSvidExpiresAt: Date | undefined;
}

/** Everything the endpoint reads, as functions called at scrape (or probe) time. */
export interface MetricsSources {
  /** `WorkloadApiServer.stats()`. */
  workloadApiStats(): WorkloadApiStats;
  /** `WorkloadApiServer.serviceTimes()` without reset: cumulative since the agent started. */
  serviceTimes(): Record<string, ServiceTimeSummary>;
  identities(): AgentIdentityCounts;
  /** Undefined when the agent is ready; otherwise why not (one line, no secrets: it is served unauthenticated). */
  notReadyReason(): string | undefined;
}

export interface MetricsServerOptions {
  /** Host name, IPv4 address or IPv6 address (without brackets). */
  host: string;
  /** TCP port; 0 picks a free one (tests). */
  port: number;
  sources: MetricsSources;
  logger: Logger;
  /** On close, how long an in-flight request may take before its connection is cut (default 2000 ms). */
  closeGraceMs?: number;
  /** Scrapes within this long of a rendering get that rendering (default 1000 ms; 0 renders every scrape). */
  scrapeReuseMs?: number;
}

export interface MetricsServer {
  /** `http://<host>:<port>` with the port actually bound (IPv6 hosts in brackets). */
  url: string;
  port: number;
  /** Stop listening and close every connection (idle keep-alive ones at once). Idempotent. */
  close(): Promise<void>;
}

/** Connections the endpoint accepts at once: scrapers and probes need few; it is unauthenticated. */
const MAX_CONNECTIONS = 64;
const PREFIX = 'sigil_agent_';
/** Scrapes within this long of a rendering are served that rendering. */
const SCRAPE_REUSE_MS = 1000;

interface Snapshot {
  stats: WorkloadApiStats;
  serviceTimes: Record<string, ServiceTimeSummary>;
  identities: AgentIdentityCounts;
}

/**
 * Moves one Counter (one follower per Counter, one total per label set) along a cumulative total
 * kept elsewhere: each scrape adds what the total grew by since the previous scrape, so the
 * exposed counter never goes down. A total that went down was restarted from zero by its owner
 * (e.g. a `serviceTimes(true)` reset); then all of it is new.
 */
class TotalFollower {
  private readonly last = new Map<string, number>();

  advance(counter: Counter<string>, total: number, labels?: Record<string, string>): void {
    const key = labels ? TotalFollower.key(labels) : '';
    const prev = this.last.get(key) ?? 0;
    const delta = total >= prev ? total - prev : total;
    this.last.set(key, total);
    if (labels) counter.inc(labels, delta);
    else counter.inc(delta);
  }

  /** Totals that disappeared (their owner reset them) start again from zero. */
  forgetExcept(keep: ReadonlySet<string>): void {
    for (const k of this.last.keys()) if (!keep.has(k)) this.last.set(k, 0);
  }

  static key(labels: Record<string, string>): string {
    return JSON.stringify(labels);
  }
}

/** Build the endpoint's own registry (never the global one) and return its scrape function. */
async function createAgentRegistry(sources: MetricsSources, reuseMs: number): Promise<{ scrape: () => Promise<string>; contentType: string }> {
  const { Counter, Gauge, Registry } = await import('prom-client');
  const { registerProcessMetrics } = await import('../util/process-metrics.js');
  const register = new Registry();
  // Process metrics (CPU, memory, heap, event loop lag, GC), prefixed sigil_agent_.
  // The event-loop-lag monitor samples every 100 ms, not every 10 ms (prom-client's default),
  // which made an idle agent use about ten times the CPU.
  registerProcessMetrics(register, PREFIX, { eventLoopMonitoringPrecision: 100 });

  const read = (): Snapshot => ({ stats: sources.workloadApiStats(), serviceTimes: sources.serviceTimes(), identities: sources.identities() });
  // One read of the sources per scrape, shared by every collect() of that scrape (stats() walks
  // every connection). Outside a scrape, collect() reads the sources itself.
  let snapshot: Snapshot | undefined;
  const current = (): Snapshot => snapshot ?? read();

  const gauge = (name: string, help: string, value: (s: Snapshot) => number): void => {
    new Gauge({
      name: PREFIX + name,
      help,
      registers: [register],
      collect() {
        this.set(value(current()));
      },
    });
  };
  // Monotonic totals of the Workload API server are Counters (rate()/increase() work on them and
  // tolerate resets); instantaneous levels are Gauges.
  const counter = (name: string, help: string, value: (s: Snapshot) => number): void => {
    const totals = new TotalFollower();
    new Counter({
      name: PREFIX + name,
      help,
      registers: [register],
      collect() {
        totals.advance(this, value(current()));
      },
    });
  };

  gauge('workload_api_connections', 'Open Workload API connections', (s) => s.stats.connections);
  gauge('workload_api_active_calls', 'Workload API calls in progress (streaming calls included)', (s) => s.stats.activeCalls);
  gauge('workload_api_watching_streams', 'Streaming Workload API calls waiting to send the next update', (s) => s.stats.watchingStreams);
  gauge('workload_api_buffered_output_bytes', 'Response bytes queued in Workload API stream buffers, not yet handed to HTTP/2', (s) => s.stats.bufferedOutputBytes);
  counter('workload_api_rejected_connections_total', 'Workload API connections refused by the connection limits (total, per uid) or while shutting down', (s) => s.stats.rejectedConnections);
  counter('workload_api_caller_changed_total', 'Workload API connections closed because the calling process changed since it connected: it exited or its PID was reused, its uid/gid changed, or it runs another program (exec) than when it connected; found during attestation or by the per-call check of its program', (s) => s.stats.callerChanged);

  new Gauge({
    name: `${PREFIX}workload_api_service_time_seconds`,
    help: 'Time the agent takes to answer a Workload API call (stream reaches the server → first response or status), over all calls since the agent started; quantiles are histogram bucket bounds (within 10 %)',
    labelNames: ['method', 'quantile'],
    registers: [register],
    collect() {
      this.reset();
      for (const [method, t] of Object.entries(current().serviceTimes)) {
        this.set({ method, quantile: '0.5' }, t.p50Ms / 1000);
        this.set({ method, quantile: '0.99' }, t.p99Ms / 1000);
      }
    },
  });
  new Gauge({
    name: `${PREFIX}workload_api_service_time_max_seconds`,
    help: 'Longest time the agent took to answer one Workload API call, since the agent started',
    labelNames: ['method'],
    registers: [register],
    collect() {
      this.reset();
      for (const [method, t] of Object.entries(current().serviceTimes)) this.set({ method }, t.maxMs / 1000);
    },
  });
  const calls = new TotalFollower();
  new Counter({
    name: `${PREFIX}workload_api_calls_total`,
    help: 'Workload API calls answered, per method ("other" = unknown methods)',
    labelNames: ['method'],
    registers: [register],
    collect() {
      const seen = new Set<string>();
      for (const [method, t] of Object.entries(current().serviceTimes)) {
        seen.add(TotalFollower.key({ method }));
        calls.advance(this, t.count, { method });
      }
      calls.forgetExcept(seen);
    },
  });

  gauge('x509_svids', 'X.509-SVIDs held for workloads', (s) => s.identities.x509Svids);
  gauge('jwt_svids_cached', 'JWT-SVIDs in the cache', (s) => s.identities.jwtSvids);
  gauge('entries', 'Authorized registration entries held', (s) => s.identities.entries);
  gauge('node_svid_expiry_timestamp_seconds', 'Expiry of the node SVID as a Unix timestamp; 0 when the agent holds no valid node SVID', (s) => {
    const at = s.identities.nodeSvidExpiresAt;
    return at ? at.getTime() / 1000 : 0;
  });

  // A rendering costs about a millisecond of the agent's one thread; the endpoint is
  // unauthenticated, so a flood of scrapes must not turn into a flood of renderings (which would
  // delay the Workload API). Scrapes within a second share one rendering, and concurrent scrapes
  // wait for the same one.
  let cached: { body: string; at: number } | undefined;
  let rendering: Promise<string> | undefined;
  const render = async (): Promise<string> => {
    snapshot = read();
    try {
      return await register.metrics();
    } finally {
      snapshot = undefined;
    }
  };
  return {
    contentType: register.contentType,
    scrape: async () => {
      const now = performance.now();
      if (cached && now - cached.at < reuseMs) return cached.body;
      rendering ??= render()
        .then((body) => {
          cached = { body, at: performance.now() };
          return body;
        })
        .finally(() => {
          rendering = undefined;
        });
      return rendering;
    },
  };
}

function oneLine(s: string): string {
  const flat = s.replace(/[\r\n\t]+/g, ' ').trim();
  return flat.length > 300 ? `${flat.slice(0, 297)}...` : flat;
}

function send(res: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function describeListenError(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'EADDRINUSE':
      return 'address already in use (EADDRINUSE)';
    case 'EACCES':
      return 'permission denied (EACCES; ports below 1024 need privileges)';
    case 'EADDRNOTAVAIL':
      return 'no such local address (EADDRNOTAVAIL)';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `host name not found (${e.code})`;
    default:
      return e.message;
  }
}

const ROUTES = new Set(['/metrics', '/healthz', '/readyz']);

/** Start the endpoint. Fails with `agent.metrics_listen_failed` when the address cannot be bound. */
export async function startMetricsServer(o: MetricsServerOptions): Promise<MetricsServer> {
  const { sources, logger } = o;
  const registry = await createAgentRegistry(sources, o.scrapeReuseMs ?? SCRAPE_REUSE_MS);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    if (!ROUTES.has(path)) return send(res, 404, 'not found\n');
    if (req.method !== 'GET') {
      res.setHeader('allow', 'GET');
      return send(res, 405, 'method not allowed\n');
    }
    if (path === '/healthz') return send(res, 200, 'ok\n');
    if (path === '/readyz') {
      let reason: string | undefined;
      try {
        reason = sources.notReadyReason();
      } catch (e) {
        logger.warn(errorFields(e), 'readiness check failed');
        reason = 'readiness check failed (see the agent log)';
      }
      return reason === undefined ? send(res, 200, 'ok\n') : send(res, 503, `not ready: ${oneLine(reason)}\n`);
    }
    let body: string;
    try {
      body = await registry.scrape();
    } catch (e) {
      logger.warn(errorFields(e), 'metrics collection failed');
      return send(res, 500, 'metrics collection failed\n');
    }
    send(res, 200, body, registry.contentType);
  };

  // Timeouts checked every second (Node's default check runs every 30 s, so 64 slow or idle
  // connections could hold the endpoint for half a minute at a time).
  const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000, connectionsCheckingInterval: 1_000 }, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      logger.warn(errorFields(e), 'metrics request failed');
      res.destroy();
    });
  });
  server.keepAliveTimeout = 5_000;
  server.maxConnections = MAX_CONNECTIONS;
  let dropped = 0;
  let lastDropLog = 0;
  server.on('drop', () => {
    dropped++;
    const now = Date.now();
    if (now - lastDropLog > 10_000) {
      lastDropLog = now;
      logger.warn({ dropped, maxConnections: MAX_CONNECTIONS }, 'metrics endpoint at its connection limit; connection refused');
    }
  });

  const shown = o.host.includes(':') ? `[${o.host}]` : o.host;
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      reject(new SigilError('agent.metrics_listen_failed', `cannot listen on metrics.listen ${shown}:${o.port}: ${describeListenError(e)}`, { status: 500, cause: e }));
    };
    server.once('error', onError);
    server.listen({ host: o.host, port: o.port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (e) => logger.error(errorFields(e), 'metrics listener error'));

  const port = (server.address() as AddressInfo).port;
  const url = `http://${shown}:${port}`;
  logger.info({ metrics: url }, 'metrics endpoint listening');
  if (!isLoopbackHost(o.host)) {
    logger.warn({ metrics: url }, 'the metrics endpoint is not on a loopback address; it has no authentication, so anyone who can reach it can read the agent metrics');
  }

  const grace = o.closeGraceMs ?? 2000;
  let closed: Promise<void> | undefined;
  return {
    url,
    port,
    close: () => {
      closed ??= new Promise<void>((resolve) => {
        // A request still running after the grace period loses its connection.
        const cut = setTimeout(() => server.closeAllConnections(), grace);
        server.close(() => {
          clearTimeout(cut);
          resolve();
        });
        // Idle keep-alive connections would otherwise hold close() until they time out.
        server.closeIdleConnections();
      });
      return closed;
    },
  };
}
