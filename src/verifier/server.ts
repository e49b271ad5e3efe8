/**
 * `sigil verifier run`: wires the datastore, CA, node attestors, the agent-facing HTTPS API and the
 * admin API on a Unix socket. Time is injectable (`now`) so rotation can be tested with a fake clock.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { AddressInfo, Server as NetServer } from 'node:net';
import type { FastifyInstance, FastifyServerOptions } from 'fastify';
import type { Server as HttpsServer } from 'node:https';
import { pino, type Logger } from 'pino';
import { SigilError, errorMessage, errorFields } from '../errors.js';
import { loadNodeAttestorVerifiers } from '../catalog.js';
import { generateKey, spkiDer } from '../spiffe/keys.js';
import { certsToPem } from '../spiffe/x509svid.js';
import { PostgresStore } from '../store/postgres.js';
import { SqliteStore } from '../store/sqlite.js';
import type { FileSync } from '../store/wal-sync.js';
import { replaceFileAtomic } from '../util/atomic-file.js';
import { makeDirs, preparePrivateDir } from '../util/private-dir.js';
import { MAX_SOCKET_PATH_BYTES, bindPrivately, checkSocketDir, privateBindPathFits, removeStaleBindDirs, removeStaleSocket, unlinkIfSame } from '../util/socket-dir.js';
import type { DataStore } from '../store/types.js';
import { loadSys } from '../native/sys.js';
import { registerAdminRoutes } from './admin-api.js';
import { registerAgentRoutes, registerHealthRoutes } from './agent-api.js';
import { AttestationService } from './attestation.js';
import { installConnectionCaps } from './connection-caps.js';
import { connectionCapWarning, openFileLimit } from '../util/open-file-limit.js';
import { CertificateAuthority } from './ca.js';
import type { VerifierConfig } from './config.js';
import type { VerifierCore } from './core.js';
import { verifierId } from './entries.js';
import { Fastify, RefusalLog, baseOptions, installErrorHandling, installJsonParser, instrument } from './http-common.js';
import { applyMallocMmapThreshold } from '../native/malloc-tuning.js';
import { createMetrics } from './metrics.js';
import { joinTokenServices } from './tokens.js';
import { registerFederationAdminRoutes } from '../federation/admin-routes.js';
import { BUNDLE_ENDPOINT_CAPS, startBundleEndpoint } from '../federation/endpoint.js';
import { FederationService } from '../federation/service.js';

export interface StartOptions {
  now?: () => Date;
  logger?: Logger;
  /** Rotation check interval in ms (default 10 s). 0 disables the timer (tests call tick()). */
  tickMs?: number;
  /**
   * Replaces the flush of the SQLite write-ahead log (store/wal-sync.ts). For tests on a fake clock,
   * where a flush on the thread pool would end at an arbitrary fake time; never set in production.
   */
  sqliteSync?: FileSync;
}

export interface RunningVerifier {
  core: VerifierCore;
  /** SPIFFE Federation: relationships and foreign bundles (docs/federation.md). */
  federation: FederationService;
  /** Port of the bundle endpoint, when `federation.bundleEndpoint` is configured. */
  bundleEndpointPort?: number;
  /** Actual HTTPS port (useful with listen.port 0). */
  port: number;
  address: string;
  adminSocket: string;
  /** Run one rotation step now (CA, JWT keys, the verifier's own TLS certificate). */
  tick(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Create the admin socket's directory (0755) when missing, check that no other user can change it
 * (`verifier.admin_socket_dir_insecure`), and remove a stale socket left by a stopped verifier.
 */
async function prepareSocketPath(path: string): Promise<void> {
  if (!privateBindPathFits(path)) {
    throw new SigilError('verifier.admin_socket_path_too_long', `adminSocket ${path} is too long: it and ${join(dirname(path), '.sXXXXXX', 's')} (used while creating it) must fit in ${MAX_SOCKET_PATH_BYTES} bytes; choose a shorter path`, { status: 500 });
  }
  try {
    makeDirs(dirname(path), 0o755);
  } catch (e) {
    throw new SigilError('verifier.admin_socket_dir_insecure', `adminSocket directory ${dirname(path)} cannot be created: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  checkSocketDir(dirname(path), 'verifier.admin_socket_dir_insecure', 'adminSocket');
  removeStaleBindDirs(dirname(path), Date.now());
  await removeStaleSocket(path, 'adminSocket', { notSocket: 'verifier.admin_socket_exists', inUse: 'verifier.admin_socket_in_use', unusable: 'verifier.admin_socket_failed' });
}

/**
 * This verifier's instance id, kept in dataDir/instance-id: it names its CA journal when several
 * verifiers share one datastore (each has its own CA keys in its own dataDir).
 */
function instanceId(dataDir: string): string {
  const path = join(dataDir, 'instance-id');
  if (existsSync(path)) {
    const id = readFileSync(path, 'utf8').trim();
    if (/^[0-9a-f-]{36}$/.test(id)) return id;
    throw new SigilError('verifier.bad_instance_id', `${path} does not hold an instance id; restore it or remove it (the verifier then starts a new CA)`, { status: 500 });
  }
  const id = randomUUID();
  replaceFileAtomic(path, id + '\n', 0o600);
  return id;
}

export async function startVerifier(config: VerifierConfig, opts: StartOptions = {}): Promise<RunningVerifier> {
  const now = opts.now ?? (() => new Date());
  const logger = opts.logger ?? pino({ level: config.logLevel, base: { svc: 'sigil-verifier' } });
  for (const t of preparePrivateDir(config.dataDir, { area: 'verifier', privateSubdirs: ['keys'] }).tightened) logger.warn({ path: t.path, mode: t.mode.toString(8) }, 'dataDir was open to other users; made it 0700');
  const instance = instanceId(config.dataDir);
  const store: DataStore =
    config.datastore.kind === 'postgres'
      ? await PostgresStore.open(config.datastore.url, config.datastore.schema ? { schema: config.datastore.schema } : {})
      : new SqliteStore(join(config.dataDir, 'sigil.db'), {
          ...(opts.sqliteSync ? { sync: opts.sqliteSync } : {}),
          onWarning: (message) => logger.warn({ component: 'datastore' }, message),
        });
  const closers: (() => Promise<void>)[] = [() => store.close()];
  const closeAll = async () => {
    for (const c of closers.reverse()) await c().catch((e) => logger.warn(errorFields(e), 'error while closing'));
  };
  try {
    const metrics = createMetrics();
    const ca = new CertificateAuthority(store, {
      instance,
      trustDomain: config.trustDomain,
      dataDir: config.dataDir,
      keyType: config.ca.keyType,
      jwtKeyType: config.jwtKeyType,
      ttlSeconds: config.ca.ttlSeconds,
      ...(config.ca.upstream ? { upstream: config.ca.upstream } : {}),
      now,
      logger,
    });
    await ca.init();
    const services = joinTokenServices(store);
    const attestors = await loadNodeAttestorVerifiers(
      config.nodeAttestors,
      (name) => ({
        trustDomain: config.trustDomain,
        logger: logger.child({ plugin: name }),
        now,
        configDir: config.configDir,
        services,
        state: {
          get: (k) => store.getPluginState(name, k),
          put: (k, v) => store.putPluginState(name, k, v),
          compareAndSet: (k, expected, next) => store.compareAndSetPluginState(name, k, expected, next),
        },
      }),
      config.plugins,
      config.configDir,
    );
    const attestation = new AttestationService({
      store,
      ca,
      trustDomain: config.trustDomain,
      attestors,
      requireAttestors: config.requireAttestors,
      agentSvidTtlSeconds: config.agentSvidTtlSeconds,
      now,
      logger,
      metrics,
      limits: config.attestation,
    });
    const core: VerifierCore = { config, store, ca, attestation, metrics, logger, now };
    const federation = new FederationService({ store, trustDomain: config.trustDomain, logger: logger.child({ part: 'federation' }), registry: metrics.registry, now, refresh: config.federation.refresh });
    // Relationships declared in the config: created, or updated to the config's fields (docs/federation.md).
    await federation.declare(config.federation.relationships);

    // The verifier's own X.509-SVID for its HTTPS endpoint.
    const tlsKey = generateKey('ec-p256');
    let tlsNotAfter = 0;
    let tlsIssuedAt = 0;
    const tlsMaterial = () => {
      const ttl = Math.min(config.svid.x509TtlSeconds, 3600);
      const { chain, notAfter } = ca.signX509Svid(spkiDer(tlsKey.publicKey), verifierId(config.trustDomain), ttl);
      tlsNotAfter = notAfter.getTime();
      tlsIssuedAt = now().getTime();
      return {
        key: tlsKey.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
        cert: certsToPem(chain),
        ca: certsToPem(ca.x509Authorities()),
      };
    };
    // fastify's overloads pick the http2 typing for an `https` options object; the instance is HTTP/1.1 over TLS.
    const app = Fastify({
      ...baseOptions(),
      https: { ...tlsMaterial(), requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
    } as FastifyServerOptions) as unknown as FastifyInstance;
    // One refusal log for both listeners: its rate limit is per error code, whichever way it came.
    const refusals = new RefusalLog(logger, metrics, { burst: 5, intervalMs: 10_000, now: () => now().getTime() });
    installJsonParser(app);
    installErrorHandling(app, logger, refusals);
    instrument(app, metrics);
    registerHealthRoutes(app, core);
    registerAgentRoutes(app, core, federation);
    installConnectionCaps(app.server as unknown as NetServer, config.listen, metrics, logger);
    // Both public listeners' caps draw on one open-file budget.
    const endpointCap = config.federation.bundleEndpoint ? (config.federation.bundleEndpoint.maxConnections ?? BUNDLE_ENDPOINT_CAPS.maxConnections) : 0;
    const capWarning = connectionCapWarning(
      endpointCap > 0 ? 'listen.maxConnections + federation.bundleEndpoint.maxConnections' : 'listen.maxConnections',
      config.listen.maxConnections + endpointCap,
      openFileLimit(),
    );
    if (capWarning !== undefined) logger.warn({ code: 'verifier.open_file_limit_low' }, capWarning);
    // Before the first connection: each one's TLS read buffer is allocated on its first read.
    const mmap = applyMallocMmapThreshold(config.mallocMmapThreshold, process.env, loadSys);
    logger[mmap.level]({ mallocMmapThreshold: config.mallocMmapThreshold, applied: mmap.applied }, mmap.message);
    await app.listen({ host: config.listen.address, port: config.listen.port });
    closers.push(() => app.close());
    const httpsServer = app.server as unknown as HttpsServer;
    let bundleEndpoint: Awaited<ReturnType<typeof startBundleEndpoint>> | undefined;
    let endpointSvid: { key: string; cert: string } | undefined;
    const refreshTls = () => {
      const m = tlsMaterial();
      httpsServer.setSecureContext({ ...m, minVersion: 'TLSv1.2' });
      // The bundle endpoint (profile https_spiffe) serves the same SVID as the HTTPS listener.
      endpointSvid = { key: m.key, cert: m.cert };
      bundleEndpoint?.refreshTls();
    };
    ca.onChange(refreshTls);
    if (config.federation.bundleEndpoint) {
      const m = tlsMaterial();
      endpointSvid = { key: m.key, cert: m.cert };
      bundleEndpoint = await startBundleEndpoint({
        config: config.federation.bundleEndpoint,
        bundle: () => ca.bundle(),
        svid: () => endpointSvid as { key: string; cert: string },
        logger,
        metrics,
      });
      const endpoint = bundleEndpoint;
      closers.push(() => endpoint.close());
    }
    await federation.start();
    closers.push(async () => federation.stop());

    const admin = Fastify(baseOptions());
    installJsonParser(admin);
    installErrorHandling(admin, logger, refusals);
    instrument(admin, metrics);
    registerHealthRoutes(admin, core);
    registerAdminRoutes(admin, core);
    registerFederationAdminRoutes(admin, federation);
    await prepareSocketPath(config.adminSocket);
    // Never connectable by another user, whatever the umask: bound in a private directory, made
    // 0600 there, then linked into place (util/socket-dir.ts).
    let adminSocketId: { dev: number; ino: number };
    try {
      adminSocketId = await bindPrivately(config.adminSocket, 0o600, async (tmpPath) => {
        await admin.listen({ path: tmpPath });
      });
    } catch (e) {
      await admin.close();
      if (e instanceof SigilError) throw e;
      throw new SigilError('verifier.admin_socket_failed', `cannot create the admin socket ${config.adminSocket}: ${errorMessage(e)}`, { status: 500, cause: e });
    }
    closers.push(async () => {
      await admin.close();
      unlinkIfSame(config.adminSocket, adminSocketId);
    });

    const tick = async () => {
      const rotated = await ca.rotate();
      const peersChanged = await ca.refreshPeers();
      const changed = rotated || peersChanged;
      const t = now().getTime();
      if (!changed && t >= tlsIssuedAt + (tlsNotAfter - tlsIssuedAt) / 2) refreshTls();
      // Counted in the database: reading every record to count them stalled a 10,000-agent verifier
      // for tens of milliseconds every tick.
      metrics.agents.set(await store.countAgents());
    };
    const tickMs = opts.tickMs ?? 10_000;
    if (tickMs > 0) {
      // The step under way, if any: shutting down waits for it, so that it neither runs against a
      // closed datastore (an error logged at every clean stop) nor is cut off between its writes.
      let ticking: Promise<void> | undefined;
      const timer = setInterval(() => {
        if (ticking) return;
        ticking = tick()
          .catch((e) => logger.error(errorFields(e), 'rotation step failed'))
          .finally(() => (ticking = undefined));
      }, tickMs);
      timer.unref();
      closers.push(async () => {
        clearInterval(timer);
        await ticking;
      });
      // CA preparation/activation (and the server certificate's renewal) at their exact times.
      ca.start();
      closers.push(() => ca.stop());
    }
    const addr = app.server.address() as AddressInfo;
    logger.info({ trustDomain: config.trustDomain, port: addr.port, adminSocket: config.adminSocket, attestors: [...attestors.keys()] }, 'verifier running');
    return { core, federation, ...(bundleEndpoint ? { bundleEndpointPort: bundleEndpoint.port } : {}), port: addr.port, address: addr.address, adminSocket: config.adminSocket, tick, close: closeAll };
  } catch (e) {
    await closeAll();
    throw e;
  }
}
