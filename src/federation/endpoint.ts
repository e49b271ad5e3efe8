/**
 * The bundle endpoint server (SPIFFE Federation standard): an optional HTTPS listener of the
 * verifier that answers `GET /` with the trust domain's SPIFFE bundle (JWKS with
 * `spiffe_sequence` and `spiffe_refresh_hint`). Two profiles:
 * - `https_web`: a Web PKI certificate and key from files the operator names (read again when their
 *   modification time changes, so an ACME renewal is picked up within 30 s);
 * - `https_spiffe`: the verifier's own X.509-SVID (`spiffe://<td>/sigil/verifier`), renewed with the
 *   verifier's server certificate; peers authenticate it with this trust domain's bundle.
 * No client certificate is asked for: the bundle is public.
 */
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { SigilError, errorFields, errorMessage } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';

export interface BundleEndpointConfig {
  address: string;
  port: number;
  profile: 'https_web' | 'https_spiffe';
  /** https_web: PEM certificate chain and key files. */
  certFile?: string;
  keyFile?: string;
}

export interface BundleEndpointOptions {
  config: BundleEndpointConfig;
  bundle: () => SpiffeBundle;
  /** https_spiffe: the verifier's current SVID (PEM chain and key). */
  svid?: () => { cert: string; key: string };
  logger: Logger;
  /** https_web: how often the certificate files are checked for a change (default 30 s). */
  watchMs?: number;
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
    return { cert: readFileSync(c.certFile!, 'utf8'), key: readFileSync(c.keyFile!, 'utf8'), stamp };
  } catch (e) {
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
  try {
    server = createServer({ ...material(), minVersion: 'TLSv1.2' }, (req, res) => {
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
  server.on('tlsClientError', () => undefined);
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
