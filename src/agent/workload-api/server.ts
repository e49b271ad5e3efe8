/**
 * The SPIFFE Workload API server (DESIGN §6; SPIFFE Workload Endpoint and Workload API standards).
 *
 * The server owns the Unix listener: every accepted connection's peer credentials are read from
 * the kernel (SO_PEERCRED, plus SO_PEERPIDFD when available) before the connection is handed to
 * an HTTP/2 session (node:http2 performServerHandshake), on which the five gRPC methods of
 * `SpiffeWorkloadAPI` are served with a hand-written gRPC framing layer (./grpc.ts). This is what
 * lets each call know exactly which process is on the other end of its connection; grpc-js does
 * not expose the peer socket.
 *
 * This file only puts the parts together (see docs/workload-api.md, "How the server is built"):
 *   ./listener.ts     the Unix socket: path checks, accepting connections, removal on close
 *   ./limits.ts       admission: connections in total and per uid, with reserves
 *   ./refusal.ts      telling a refused client which limit it hit
 *   ./connection.ts   one connection: its caller (./caller.ts), open calls, attestation cache
 *   ./router.ts       stream → checks → request message → handler; service times
 *   ./handlers.ts     the five methods
 *   ./streams.ts      server-streaming calls and identity-change fan-out
 *   ./responses.ts    encoded, framed responses shared by callers with the same selectors
 *   ./call.ts         one gRPC call on one HTTP/2 stream
 *
 * Callers are fixed at accept (./caller.ts): a connection whose peer exec'd another program,
 * changed uid/gid or exited is refused and closed. FetchX509SVID streams re-attest on the
 * selector-cache schedule and from scratch before every push.
 *
 * Bounds: connections (total, per uid, reserves for root and for uids with few connections; see
 * connectionLimits()), concurrent streams per connection, request message size, request bytes
 * being received per connection, per uid and across the server (counted as they arrive; see
 * requestLimits()), HTTP/2 session memory, time to send the preface and the request, time a
 * begun request message may go without a byte, audiences per JWT request. A streaming response
 * to a client that does not read is coalesced: at most one pending (latest) message is kept per
 * stream.
 */
import { closeSync } from 'node:fs';
import http2, { type ServerHttp2Session } from 'node:http2';
import type net from 'node:net';
import type { Logger } from 'pino';
import type { WorkloadAttestor } from '../../plugins/types.js';
import type { WorkloadIdentitySource } from '../identity-source.js';
import { DEFAULT_ATTEST_TIMEOUT_MS } from './attest.js';
import { CallerConnection, type PeerCredentials } from './caller.js';
import { WorkloadConnection, type AttestationPolicy } from './connection.js';
import { Deadlines } from './deadlines.js';
import { GrpcStatus } from './grpc.js';
import { workloadHandlers } from './handlers.js';
import { Admission, ByteBudget, connectionLimits, requestLimits, type ConnectionLimitOptions, type RequestLimitOptions } from './limits.js';
import { listenWorkloadSocket } from './listener.js';
import { Refusals } from './refusal.js';
import { ResponseCache } from './responses.js';
import { CallRouter } from './router.js';
import type { ServiceTimeSummary } from './service-time.js';
import { Streams } from './streams.js';
import { errorFields } from '../../errors.js';

/** Options; the connection and request limits are described in ./limits.ts. */
export interface WorkloadApiOptions extends ConnectionLimitOptions, RequestLimitOptions {
  socketPath: string;
  /** The agent's trust domain: its bundle goes to every caller; foreign ones only to callers whose entries federate with them. */
  trustDomain: string;
  source: WorkloadIdentitySource;
  attestors: Map<string, WorkloadAttestor>;
  logger: Logger;
  /** Deadline for all workload attestors of one caller (default 5000 ms). */
  attestTimeoutMs?: number;
  /** Concurrent streams per connection (default 64). */
  maxConcurrentStreams?: number;
  /** Audiences in one FetchJWTSVID request (default 64), each at most 256 characters. */
  maxAudiences?: number;
  /**
   * Longest time a connection's selectors are reused (default 1000 ms). Each attestation is kept
   * for a random 50–100 % of it, so connections opened together do not all re-attest together.
   */
  selectorCacheMs?: number;
  /** Time for a new connection to send the HTTP/2 preface and SETTINGS (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Time for a call's request message to arrive (default 10 s). */
  requestTimeoutMs?: number;
  /** Upper bound for a unary call when the client sets no deadline (default 30 s). */
  unaryTimeoutMs?: number;
  /** A connection without open streams and without traffic for this long is closed (default 5 min). */
  idleTimeoutMs?: number;
  /** Root of the proc file system for caller checks (default /proc). */
  procRoot?: string;
  /** Reads peer credentials of an accepted fd (default: the native addon's SO_PEERCRED). */
  peerCred?: (fd: number) => PeerCredentials;
}

export interface WorkloadApiStats {
  connections: number;
  rejectedConnections: number;
  activeCalls: number;
  /** Streaming calls open and waiting to send a new message when identities change. */
  watchingStreams: number;
  callerChanged: number;
  /** Response bytes queued in the server's stream buffers (not yet handed to HTTP/2). */
  bufferedOutputBytes: number;
}

export interface WorkloadApiServer {
  close(): Promise<void>;
  /** `unix://<socketPath>` */
  address: string;
  stats(): WorkloadApiStats;
  /**
   * Service time per method since the last reset: from a call's stream reaching the server to its
   * first response message or status (what the agent itself adds to a call's latency).
   */
  serviceTimes(reset?: boolean): Record<string, ServiceTimeSummary>;
}

/** HTTP/2 settings and bounds of an admitted connection's session. */
function sessionOptions(maxConcurrentStreams: number): http2.ServerOptions {
  return {
    settings: { maxConcurrentStreams, maxHeaderListSize: 16 * 1024, enablePush: false },
    maxSessionMemory: 8,
    maxHeaderListPairs: 64,
    maxOutstandingPings: 8,
    maxSettings: 32,
    maxSessionInvalidFrames: 100,
    maxSessionRejectedStreams: 100,
  };
}

export async function startWorkloadApi(opts: WorkloadApiOptions): Promise<WorkloadApiServer> {
  const logger = opts.logger.child({ component: 'workload-api' });
  const admission = new Admission(connectionLimits(opts));
  const requests = requestLimits(opts);
  const budget = new ByteBudget(requests);
  const maxConcurrentStreams = opts.maxConcurrentStreams ?? 64;
  const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000;
  const idleTimeoutMs = opts.idleTimeoutMs ?? 300_000;
  const procRoot = opts.procRoot ?? '/proc';
  const source = opts.source;
  let peerCred = opts.peerCred;
  if (!peerCred) {
    const { loadSys } = await import('../../native/sys.js');
    const sys = loadSys();
    peerCred = (fd: number) => sys.peerCred(fd);
  }
  const readPeer = peerCred;

  const conns = new Set<WorkloadConnection>();
  /** Request, call and attestation timeouts (see deadlines.ts; they fire up to 100 ms late). */
  const deadlines = new Deadlines(100);
  const refusals = new Refusals(logger);
  let callerChanged = 0;
  let closing = false;
  const policy: AttestationPolicy = {
    attestors: opts.attestors,
    logger,
    attestTimeoutMs: opts.attestTimeoutMs ?? DEFAULT_ATTEST_TIMEOUT_MS,
    selectorCacheMs: opts.selectorCacheMs ?? 1000,
    schedule: deadlines.schedule,
    onCallerChanged: () => callerChanged++,
  };
  const responses = new ResponseCache(source, logger, opts.trustDomain);
  const streams = new Streams(responses, logger);
  const router = new CallRouter({
    handlers: workloadHandlers({ source, responses, streams, schedule: deadlines.schedule, maxAudiences: opts.maxAudiences ?? 64, unaryTimeoutMs: opts.unaryTimeoutMs ?? 30_000 }),
    logger,
    schedule: deadlines.schedule,
    maxRequestBytes: requests.message,
    requestTimeoutMs: opts.requestTimeoutMs ?? 10_000,
    budget,
    closing: () => closing,
  });

  function onConnection(socket: net.Socket, fd: number): void {
    if (closing) {
      refusals.refuse(socket, undefined);
      return;
    }
    const full = admission.roomForAny();
    if (full !== undefined) {
      refusals.refuse(socket, full);
      return;
    }
    let peer: PeerCredentials;
    try {
      peer = readPeer(fd);
    } catch (e) {
      logger.warn(errorFields(e), 'cannot read peer credentials; connection refused');
      socket.destroy();
      return;
    }
    const refused = admission.take(peer.uid);
    if (refused !== undefined) {
      if (peer.pidfd !== undefined) closeQuietly(peer.pidfd);
      refusals.refuse(socket, refused);
      return;
    }
    const caller = new CallerConnection(peer, procRoot);
    let session: ServerHttp2Session;
    try {
      session = http2.performServerHandshake(socket, sessionOptions(maxConcurrentStreams));
    } catch (e) {
      admission.release(peer.uid);
      logger.warn(errorFields(e), 'HTTP/2 handshake setup failed');
      caller.close();
      socket.destroy();
      return;
    }
    const conn = new WorkloadConnection(caller, session, policy);
    conns.add(conn);
    const releaseRequestBytes = budget.addConnection(session, peer.uid);
    let gotSettings = false;
    const hsTimer = setTimeout(() => {
      if (!gotSettings) session.destroy();
    }, handshakeTimeoutMs);
    hsTimer.unref();
    session.once('remoteSettings', () => {
      gotSettings = true;
      clearTimeout(hsTimer);
    });
    session.on('stream', (stream, headers) => router.handleStream(conn, stream, headers));
    session.on('error', (e) => logger.debug({ conn: conn.id, err: e.message }, 'HTTP/2 session error'));
    session.setTimeout(idleTimeoutMs, () => {
      if (conn.calls.size === 0) session.close();
    });
    session.once('close', () => {
      clearTimeout(hsTimer);
      conn.finishCalls(GrpcStatus.CANCELLED, 'connection closed');
      conn.closed();
      conns.delete(conn);
      releaseRequestBytes();
      admission.release(peer.uid);
      caller.close();
      if (!socket.destroyed) socket.destroy();
    });
    logger.debug({ conn: conn.id, pid: peer.pid, uid: peer.uid, gid: peer.gid, pidfd: peer.pidfd !== undefined }, 'Workload API connection');
  }

  const listener = await listenWorkloadSocket(opts.socketPath, logger, onConnection);
  // One subscription for the whole server: the response cache is emptied, then every open stream
  // is told.
  const unsubscribe = source.onChange(() => {
    responses.clear();
    streams.changed();
  });
  logger.info({ socket: opts.socketPath }, 'Workload API listening');

  return {
    address: `unix://${opts.socketPath}`,
    serviceTimes: (reset = false) => router.serviceTimes(reset),
    stats: () => ({
      connections: conns.size,
      rejectedConnections: refusals.count,
      activeCalls: [...conns].reduce((a, s) => a + s.calls.size, 0),
      watchingStreams: streams.size,
      callerChanged,
      bufferedOutputBytes: [...conns].reduce((a, st) => a + st.calls.values().reduce((b, c) => b + c.stream.writableLength, 0), 0),
    }),
    async close(): Promise<void> {
      if (closing) return;
      closing = true;
      unsubscribe();
      const closed = listener.close();
      for (const s of [...conns]) {
        s.finishCalls(GrpcStatus.UNAVAILABLE, 'agent is shutting down');
        try {
          s.session.close();
        } catch {
          // already closing
        }
      }
      const grace = setTimeout(() => {
        for (const s of [...conns]) s.session.destroy();
      }, 1000);
      await closed;
      clearTimeout(grace);
    },
  };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
