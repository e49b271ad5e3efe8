/**
 * Refused connections. A connection refused for a limit is told which one: its first call is
 * answered `ResourceExhausted` with the reason, if it sends the HTTP/2 preface within
 * REFUSAL_PREFACE_MS. At most MAX_REFUSING such connections are open at once; the rest, and every
 * connection refused during shutdown, are closed without a word. Refusals are logged at most once
 * every 10 s (with the count so far), so that a flood of connections cannot flood the log.
 */
import http2, { type ServerHttp2Session } from 'node:http2';
import type net from 'node:net';
import type { Logger } from 'pino';
import type { SigilError } from '../../errors.js';
import { GrpcStatus, encodeGrpcMessage } from './grpc.js';

/** Refused connections answered at once (the rest are closed without a word). */
export const MAX_REFUSING = 32;
/** A refused connection must send the HTTP/2 preface within this time… */
export const REFUSAL_PREFACE_MS = 100;
/** …and is closed after this time at the latest. */
export const REFUSAL_LINGER_MS = 2000;
const LOG_EVERY_MS = 10_000;

export class Refusals {
  /** Connections refused since the server started. */
  count = 0;
  /** Refused connections kept open to tell the client why (at most MAX_REFUSING). */
  private answering = 0;
  private lastLog = 0;

  constructor(private readonly logger: Logger) {}

  /** Refuse `socket`: with a reason (a limit), tell the client; without one (shutdown), just close it. */
  refuse(socket: net.Socket, why: SigilError | undefined): void {
    this.count++;
    // A monotonic clock: after a step back of the wall clock, Date.now() would keep the window
    // "open" until the clock caught up, and refusals would go unlogged meanwhile.
    const now = performance.now();
    if (this.count === 1 || now - this.lastLog > LOG_EVERY_MS) {
      this.lastLog = now;
      this.logger.warn({ code: why?.code, why: why?.message ?? 'agent is shutting down', rejected: this.count }, 'Workload API connection refused');
    }
    if (why === undefined || this.answering >= MAX_REFUSING) {
      socket.destroy();
      return;
    }
    let session: ServerHttp2Session;
    try {
      session = http2.performServerHandshake(socket, { settings: { maxConcurrentStreams: 1, enablePush: false }, maxSessionMemory: 1 });
    } catch {
      socket.destroy();
      return;
    }
    this.answering++;
    let answered = false;
    const preface = setTimeout(() => session.destroy(), REFUSAL_PREFACE_MS);
    const end = setTimeout(() => session.destroy(), REFUSAL_LINGER_MS);
    session.once('remoteSettings', () => clearTimeout(preface));
    session.on('error', () => undefined);
    session.on('stream', (stream) => {
      stream.on('error', () => undefined);
      if (answered) {
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      answered = true;
      try {
        stream.respond(
          { ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-status': String(GrpcStatus.RESOURCE_EXHAUSTED), 'grpc-message': encodeGrpcMessage(`${why.code}: ${why.message}`) },
          { endStream: true },
        );
      } catch {
        // stream went away
      }
      stream.resume();
      session.close();
    });
    session.once('close', () => {
      this.answering--;
      clearTimeout(preface);
      clearTimeout(end);
      if (!socket.destroyed) socket.destroy();
    });
  }
}
