/**
 * `sigil agent`: wires the node identity (attest / renew / re-attest), the entry sync, the SVID
 * cache and the Workload API server. Only configuration problems fail the start; an unreachable
 * or refusing verifier is retried in the background with backoff while the Workload API serves
 * whatever is cached.
 */
import { pino, type Logger } from 'pino';
import { SigilError, errorFields } from '../errors.js';
import { preparePrivateDir } from '../util/private-dir.js';
import { loadNodeAttestorAgents, loadWorkloadAttestors } from '../catalog.js';
import type { AgentPluginDeps, NodeAttestorAgent } from '../plugins/types.js';
import type { BackoffOptions } from './backoff.js';
import type { AgentConfig } from './config.js';
import { EntrySync } from './entry-sync.js';
import type { WorkloadIdentitySource } from './identity-source.js';
import { startMetricsServer, type MetricsSources } from './metrics.js';
import { NodeIdentity, REATTEST_CODES } from './node-attestation.js';
import { FederatedBundles, fetchFederatedFromVerifier } from '../federation/agent-bundles.js';
import { SvidCache } from './svid-cache.js';
import { TrustStore } from './trust.js';
import { VerifierClient } from './verifier-client.js';
import { startWorkloadApi, type WorkloadApiOptions } from './workload-api/server.js';

export interface AgentOptions {
  logger?: Logger;
  now?: () => Date;
  /** Retry pacing for attestation and sync (default base 1 s, cap 60 s, full jitter). */
  backoff?: BackoffOptions;
  /** Per-request deadline towards the verifier (default 10 s). */
  requestTimeoutMs?: number;
  /** Extra Workload API server options (tests: peer credential reader, limits). */
  workloadApi?: Partial<Omit<WorkloadApiOptions, 'socketPath' | 'source' | 'attestors' | 'logger'>>;
}

export interface AgentStatus {
  agentId: string | undefined;
  nodeSvidExpiresAt: string | undefined;
  entries: number;
  x509Svids: number;
  lastSync: string | undefined;
  lastError: { code: string; message: string } | undefined;
}

export interface RunningAgent {
  /** The agent's SPIFFE ID once attested. */
  agentId(): string | undefined;
  /** Resolves with the agent ID once a node SVID is held. */
  whenAttested(): Promise<string>;
  /** The cache the Workload API serves from. */
  source: WorkloadIdentitySource;
  /** `unix://…` address of the Workload API. */
  workloadApiAddress: string;
  /** `http://<host>:<port>` of the metrics endpoint, when `metrics.listen` is configured. */
  metricsAddress: string | undefined;
  /** Run one entry-sync cycle now and wait for it (errors propagate). */
  syncNow(): Promise<void>;
  status(): AgentStatus;
  close(): Promise<void>;
}

export async function startAgent(config: AgentConfig, opts: AgentOptions = {}): Promise<RunningAgent> {
  const now = opts.now ?? (() => new Date());
  const logger = opts.logger ?? pino({ level: config.logLevel, base: { svc: 'sigil-agent' } });
  // 0700 and ours (tightened when ours and wider, refused when another user owns it), writable —
  // a pseudo filesystem such as /proc fails here, at once (util/private-dir.ts).
  for (const t of preparePrivateDir(config.dataDir, { area: 'agent' }).tightened) logger.warn({ path: t.path, mode: t.mode.toString(8) }, 'dataDir was open to other users; made it 0700');
  const closers: (() => Promise<void> | void)[] = [];
  /** Set as soon as the agent starts to stop (readiness turns false before anything closes). */
  let shuttingDown = false;
  const closeAll = async () => {
    shuttingDown = true;
    for (const c of closers.reverse()) {
      try {
        await c();
      } catch (e) {
        logger.warn(errorFields(e), 'error while closing');
      }
    }
    closers.length = 0;
  };
  try {
    const deps: AgentPluginDeps = { trustDomain: config.trustDomain, logger: logger.child({ component: 'plugins' }), dataDir: config.dataDir, configDir: config.configDir, now };
    const nodeAttestors = await loadNodeAttestorAgents(config.nodeAttestors, deps, config.plugins);
    closers.push(() => closePlugins(nodeAttestors));
    const workloadAttestors = await loadWorkloadAttestors(config.workloadAttestors, deps, config.plugins);

    const trust = TrustStore.load({ trustDomain: config.trustDomain, dataDir: config.dataDir, bootstrapPath: config.trustBundle, logger });
    const client = new VerifierClient({
      trustDomain: config.trustDomain,
      address: config.verifier.address,
      port: config.verifier.port,
      trust: trust.bundle().x509Authorities,
      ...(opts.requestTimeoutMs !== undefined ? { timeoutMs: opts.requestTimeoutMs } : {}),
    });
    closers.push(() => client.close());

    const node = new NodeIdentity({
      trustDomain: config.trustDomain,
      dataDir: config.dataDir,
      client,
      trust,
      attestors: nodeAttestors,
      logger: logger.child({ component: 'node' }),
      now,
      ...(opts.backoff ? { backoff: opts.backoff } : {}),
    });

    const federated = new FederatedBundles(config.trustDomain, config.dataDir, logger.child({ component: 'federation' }));
    const cache = new SvidCache({
      trustDomain: config.trustDomain,
      logger,
      now,
      rotationFraction: config.x509SvidRotation,
      bundle: () => trust.bundle(),
      federated,
      mintJwt: async (entryId, audience) => {
        const generation = node.generation();
        try {
          return await client.mintJwt(entryId, audience);
        } catch (e) {
          if (e instanceof SigilError && (REATTEST_CODES.has(e.code) || e.code === 'agent.verifier_untrusted')) {
            if (e.code === 'agent.verifier_untrusted') node.trustFailure(e);
            else node.invalidate(e, generation);
            throw new SigilError(e.code, `${e.message} (the agent is attesting again; retry shortly)`, { status: 503 });
          }
          throw e;
        }
      },
    });
    closers.push(() => cache.close());
    trust.onChange(() => cache.bundleUpdated());

    const sync = new EntrySync({
      trustDomain: config.trustDomain,
      client,
      cache,
      node,
      trust,
      logger: logger.child({ component: 'sync' }),
      now,
      intervalMs: Math.round(config.syncIntervalSeconds * 1000),
      ...(opts.backoff ? { backoff: opts.backoff } : {}),
      federation: async () => {
        const answer = await fetchFederatedFromVerifier({
          address: config.verifier.address,
          port: config.verifier.port,
          trustDomain: config.trustDomain,
          trust: () => trust.bundle().x509Authorities,
          identity: () => node.current(),
          ...(opts.requestTimeoutMs !== undefined ? { timeoutMs: opts.requestTimeoutMs } : {}),
        });
        if (federated.adopt(answer)) cache.bundleUpdated();
      },
    });

    const server = await startWorkloadApi({
      ...(opts.workloadApi ?? {}),
      socketPath: config.workloadApiSocket,
      trustDomain: config.trustDomain,
      source: cache,
      attestors: workloadAttestors,
      logger,
    });
    let workloadApiListening = true;
    closers.push(() => {
      workloadApiListening = false;
      return server.close();
    });

    let metricsAddress: string | undefined;
    if (config.metrics) {
      const sources: MetricsSources = {
        workloadApiStats: () => server.stats(),
        // Not reset: quantiles and counts cover the agent's whole run.
        serviceTimes: () => server.serviceTimes(),
        identities: () => ({ entries: cache.entryCount(), x509Svids: cache.svidCount(), jwtSvids: cache.jwtCount(), nodeSvidExpiresAt: node.current()?.notAfter }),
        notReadyReason: () => {
          if (shuttingDown) return 'the agent is shutting down';
          if (!workloadApiListening) return 'the Workload API is not listening';
          if (node.current()) return undefined;
          // Only the code: the endpoint is unauthenticated, the full message is in the log.
          const err = node.error();
          return err ? `no valid node SVID (last error: ${err.code})` : 'no valid node SVID (attestation in progress)';
        },
      };
      const metrics = await startMetricsServer({ host: config.metrics.host, port: config.metrics.port, sources, logger: logger.child({ component: 'metrics' }) });
      closers.push(() => metrics.close());
      metricsAddress = metrics.url;
    }

    node.start();
    sync.start();
    closers.push(async () => {
      // Stop both loops, then drop verifier connections so an in-flight request fails at once
      // instead of running into its 10 s deadline.
      const stopped = Promise.all([sync.close(), node.close()]);
      client.close();
      await stopped;
    });

    logger.info(
      {
        trustDomain: config.trustDomain,
        verifier: `${config.verifier.address}:${config.verifier.port}`,
        workloadApi: server.address,
        ...(metricsAddress ? { metrics: metricsAddress } : {}),
        nodeAttestors: [...nodeAttestors.keys()],
        workloadAttestors: [...workloadAttestors.keys()],
      },
      'agent running',
    );

    let closed: Promise<void> | undefined;
    return {
      agentId: () => node.agentId(),
      whenAttested: async () => (await node.whenReady()).agentId,
      source: cache,
      workloadApiAddress: server.address,
      metricsAddress,
      syncNow: () => sync.syncNow(),
      status: () => {
        const cur = node.current();
        const err = sync.error() ?? node.error();
        return {
          agentId: node.agentId(),
          nodeSvidExpiresAt: cur?.notAfter.toISOString(),
          entries: cache.entryCount(),
          x509Svids: cache.svidCount(),
          lastSync: sync.lastSuccess()?.toISOString(),
          lastError: err ? { code: err.code, message: err.message } : undefined,
        };
      },
      close: () => {
        closed ??= closeAll().then(() => logger.info('agent stopped'));
        return closed;
      },
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

async function closePlugins(m: Map<string, NodeAttestorAgent>): Promise<void> {
  for (const a of m.values()) await a.close?.();
}
