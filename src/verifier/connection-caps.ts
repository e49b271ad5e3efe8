/**
 * Connection caps of the verifier's HTTPS listener: at most `maxConnections` open TCP
 * connections in all and `maxConnectionsPerAddress` from one source (IPv6 counted per /64, as the
 * attestation session limits do). A connection over a cap is closed at accept, before its TLS
 * handshake, and counted as the refusal `http.connection_limit` / `http.address_connection_limit`.
 * Without caps, idle sockets (up to the 30-s connection timeout) from one host could use up the
 * verifier's file descriptors and lock every agent out. The federation bundle endpoint installs
 * the same caps with its own refusal codes (src/federation/endpoint.ts).
 */
import type { Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { addressBucket } from './attestation.js';

export interface ConnectionCaps {
  /** Defaults: 16,384 and 1,024 (the config's defaults), for callers that build a config by hand. */
  maxConnections?: number;
  maxConnectionsPerAddress?: number;
}

/** How a listener names its refusals: the codes counted in `sigil_refusals_total` and the log line. */
export interface CapRefusals {
  /** Over maxConnections / over maxConnectionsPerAddress. */
  connectionLimit: string;
  addressConnectionLimit: string;
  /** Names the listener in the log line. */
  listener: string;
}

/** Where refusals are counted: `VerifierMetrics` (sigil_refusals_total) or a stand-in. */
export interface RefusalCounter {
  refusals: { inc(labels: { code: string }): void };
}

/** The agent-facing HTTPS listener's refusals. */
export const HTTPS_LISTENER_REFUSALS: CapRefusals = { connectionLimit: 'http.connection_limit', addressConnectionLimit: 'http.address_connection_limit', listener: 'HTTPS' };

export function installConnectionCaps(server: Server, caps: ConnectionCaps, metrics: RefusalCounter, logger: Logger, refusals: CapRefusals = HTTPS_LISTENER_REFUSALS): { open: () => number } {
  const perAddress = new Map<string, number>();
  let open = 0;
  let lastLog = 0;
  const refuse = (socket: Socket, code: string, bucket: string): void => {
    metrics.refusals.inc({ code });
    const t = performance.now();
    if (t - lastLog > 10_000) {
      lastLog = t;
      logger.warn({ code, address: bucket.slice(0, 64), open }, `${refusals.listener} connection refused: connection limit reached (logged at most every 10 s)`);
    }
    socket.destroy();
  };
  server.on('connection', (socket: Socket) => {
    const bucket = addressBucket(socket.remoteAddress ?? 'unknown');
    if (open >= (caps.maxConnections ?? 16384)) return refuse(socket, refusals.connectionLimit, bucket);
    const n = perAddress.get(bucket) ?? 0;
    if (n >= (caps.maxConnectionsPerAddress ?? 1024)) return refuse(socket, refusals.addressConnectionLimit, bucket);
    perAddress.set(bucket, n + 1);
    open++;
    socket.once('close', () => {
      open--;
      const m = (perAddress.get(bucket) ?? 1) - 1;
      if (m <= 0) perAddress.delete(bucket);
      else perAddress.set(bucket, m);
    });
  });
  return { open: () => open };
}
