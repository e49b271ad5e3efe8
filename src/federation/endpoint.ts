/**
 * The bundle endpoint server (SPIFFE Federation standard): an optional HTTPS listener of the
 * verifier that answers `GET /` with the trust domain's SPIFFE bundle (JWKS with
 * `spiffe_sequence` and `spiffe_refresh_hint`). Two profiles:
 * - `https_web`: a Web PKI certificate and key from files the operator names (read again when their
 *   modification time changes, so an ACME renewal is picked up within 30 s);
 * - `https_spiffe`: the verifier's own X.509-SVID (`spiffe://<td>/sigil/verifier`), renewed with the
 *   verifier's server certificate; peers authenticate it with this trust domain's bundle.
 * No client certificate is asked for: the bundle is public. Any network peer can connect, so the
 * listener has connection caps like the agent-facing one (src/verifier/connection-caps.ts: a total
 * and a per-address cap, checked at accept, before the TLS handshake; refusals
 * `federation.endpoint_connection_limit` / `federation.endpoint_address_connection_limit`), a
 * handshake timeout and an idle timeout, so idle sockets cannot pile up to EMFILE.
 */
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { SigilError, errorFields, errorMessage } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { readSecretFile } from '../spiffe/keys.js';
import { installConnectionCaps, type CapRefusals, type RefusalCounter } from '../verifier/connection-caps.js';

/**
 * Connection caps of the bundle endpoint (config `federation.bundleEndpoint.maxConnections`,
 * `maxConnectionsPerAddress`). A public endpoint with little traffic: a foreign verifier fetches
 * once per refresh hint on a fresh or briefly kept-alive connection, so 16 per address leaves room
 * for several verifiers behind one NAT, and 256 in all bounds the descriptors an attacker can pin.
 */
export const BUNDLE_ENDPOINT_CAPS = { maxConnections: 256, maxConnectionsPerAddress: 16 } as const;

/** A TCP connection must finish its TLS handshake within this, and is closed when idle this long. */
export const BUNDLE_ENDPOINT_TIMEOUT_MS = 10_000;

const REFUSALS: CapRefusals = {
  connectionLimit: 'federation.endpoint_connection_limit',
  addressConnectionLimit: 'federation.endpoint_address_connection_limit',
  listener: 'bundle endpoint',
};

export interface BundleEndpointConfig {
  address: string;
  port: number;
  profile: 'https_web' | 'https_spiffe';
  /** https_web: PEM certificate chain and key files. */
  certFile?: string;
  keyFile?: string;
  /** Connection caps; defaults BUNDLE_ENDPOINT_CAPS. */
  maxConnections?: number;
  maxConnectionsPerAddress?: number;
}

export interface BundleEndpointOptions {
  config: BundleEndpointConfig;
  bundle: () => SpiffeBundle;
  /** https_spiffe: the verifier's current SVID (PEM chain and key). */
  svid?: () => { cert: string; key: string };
  logger: Logger;
  /** https_web: how often the certificate files are checked for a change (default 30 s). */
  watchMs?: number;
  /** Where connection refusals are counted (the verifier's metrics: sigil_refusals_total). */
  metrics?: RefusalCounter;
  /** TLS handshake deadline and idle timeout of a connection (default BUNDLE_ENDPOINT_TIMEOUT_MS; tests shorten them). */
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
}

export interface RunningBundleEndpoint {
  port: number;
  address: string;
  /** Take a new certificate into use (https_spiffe: after the verifier's SVID was renewed). */
  refreshTls(): void;
  close(): Promise<void>;
}

function readWebCert(c: BundleEndpointConfig): { cert: string; key: string; stamp: string } {
  try {
    const stamp = `${statSync(c.certFile!).mtimeMs}:${statSync(c.keyFile!).mtimeMs}`;
    // The key file gets the check of every private key file (not accessible by group or others);
    // its PEM form is whatever TLS takes (PKCS#8, SEC1, PKCS#1).
    const key = readSecretFile(c.keyFile!, 'bundle endpoint key file').toString('utf8');
    return { cert: readFileSync(c.certFile!, 'utf8'), key, stamp };
  } catch (e) {
    if (e instanceof SigilError && e.code === 'keys.file_permissions') throw e;
    throw new SigilError('federation.endpoint_cert_unreadable', `bundle endpoint certificate ${c.certFile} / key ${c.keyFile}: ${errorMessage(e)}`, { status: 500, cause: e });
  }
}

export async function startBundleEndpoint(o: BundleEndpointOptions): Promise<RunningBundleEndpoint> {
  const { config, logger } = o;
  let stamp = '';
  const material = (): { cert: string; key: string } => {
    if (config.profile === 'https_spiffe') {
      if (!o.svid) throw new SigilError('federation.endpoint_no_svid', 'bundle endpoint profile https_spiffe needs the verifier SVID', { status: 500 });
      return o.svid();
    }
    const w = readWebCert(config);
    stamp = w.stamp;
    return { cert: w.cert, key: w.key };
  };
  let server: Server;
  const timeoutMs = o.idleTimeoutMs ?? BUNDLE_ENDPOINT_TIMEOUT_MS;
  try {
    server = createServer({
      ...material(),
      minVersion: 'TLSv1.2',
      // Node's default is 120 s: a silent TCP client would hold its descriptor that long.
      handshakeTimeout: o.handshakeTimeoutMs ?? BUNDLE_ENDPOINT_TIMEOUT_MS,
      // headersTimeout and requestTimeout are enforced by this sweep (default every 30 s).
      connectionsCheckingInterval: 1_000,
    }, (req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== '/') {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"code":"federation.not_found","message":"the bundle is served at /"}}');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'application/json' }).end('{"error":{"code":"http.method_not_allowed","message":"GET the bundle"}}');
        return;
      }
      const body = Buffer.from(JSON.stringify(o.bundle().toJwks()));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError('federation.endpoint_cert_invalid', `bundle endpoint certificate or key is unusable: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;
  // After the handshake: a connection with no traffic for this long is closed (no 'timeout'
  // listener on the server, so Node destroys the socket).
  server.setTimeout(timeoutMs);
  server.on('tlsClientError', () => undefined);
  installConnectionCaps(
    server,
    {
      maxConnections: config.maxConnections ?? BUNDLE_ENDPOINT_CAPS.maxConnections,
      maxConnectionsPerAddress: config.maxConnectionsPerAddress ?? BUNDLE_ENDPOINT_CAPS.maxConnectionsPerAddress,
    },
    o.metrics ?? { refusals: { inc: () => undefined } },
    logger,
    REFUSALS,
  );
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new SigilError('federation.endpoint_listen_failed', `bundle endpoint cannot listen on ${config.address}:${config.port}: ${e.message}`, { status: 500, cause: e })));
    server.listen(config.port, config.address, () => resolve());
  });
  const refreshTls = (): void => {
    try {
      server.setSecureContext({ ...material(), minVersion: 'TLSv1.2' });
    } catch (e) {
      logger.error(errorFields(e), 'bundle endpoint: new certificate not taken into use; keeping the old one');
    }
  };
  let watch: NodeJS.Timeout | undefined;
  if (config.profile === 'https_web') {
    watch = setInterval(() => {
      try {
        if (readWebCert(config).stamp !== stamp) {
          refreshTls();
          logger.info({ cert: config.certFile }, 'bundle endpoint certificate reloaded');
        }
      } catch (e) {
        logger.warn(errorFields(e), 'bundle endpoint certificate check failed');
      }
    }, o.watchMs ?? 30_000);
    watch.unref();
  }
  const addr = server.address() as AddressInfo;
  logger.info({ address: addr.address, port: addr.port, profile: config.profile }, 'bundle endpoint listening');
  return {
    port: addr.port,
    address: addr.address,
    refreshTls,
    close: () =>
      new Promise<void>((resolve) => {
        if (watch) clearInterval(watch);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
