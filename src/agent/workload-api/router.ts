/**
 * From an HTTP/2 stream to a handler: the request checks every call passes (POST, a gRPC
 * content type, a known method, identity encoding, the `workload.spiffe.io` security header, the
 * connection not closing), the client's deadline (`grpc-timeout`), reading the one request
 * message within its size, time and the server-wide buffer budget, and each call's service time
 * recorded per method.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { Logger } from 'pino';
import { Call } from './call.js';
import type { WorkloadConnection } from './connection.js';
import type { ScheduleDeadline } from './deadlines.js';
import { type ByteBudget, GrpcError, GrpcStatus, parseGrpcTimeout, readSingleMessage } from './grpc.js';
import type { Handler } from './handlers.js';
import { SERVICE_NAME } from './proto.js';
import { ServiceTimeHistogram, type ServiceTimeSummary } from './service-time.js';
import { grpcStatusForError } from './status.js';
import { errorMessage } from '../../errors.js';

const GRPC_CONTENT_TYPE = /^application\/grpc(?:\+proto)?(?:;.*)?$/;

export interface RouterOptions {
  handlers: Record<string, Handler>;
  logger: Logger;
  schedule: ScheduleDeadline;
  /** Largest request message. */
  maxRequestBytes: number;
  /** Time for a call's request message to arrive. */
  requestTimeoutMs: number;
  /** Request bytes buffered across all streams. */
  budget: ByteBudget;
  /** True once the server is shutting down: new calls are refused. */
  closing(): boolean;
}

/** A known method: its handler and its service times. */
interface Route {
  name: string;
  handler: Handler;
  times: ServiceTimeHistogram;
}

export class CallRouter {
  private readonly methodPrefix = `/${SERVICE_NAME}/`;
  /** The routes by method name, and by request path (`/SpiffeWorkloadAPI/<name>`). */
  private readonly times = new Map<string, ServiceTimeHistogram>();
  private readonly routes = new Map<string, Route>();
  /** Service times of calls to unknown paths (one histogram for all of them). */
  private readonly otherCalls = new ServiceTimeHistogram();

  constructor(private readonly o: RouterOptions) {
    for (const [name, handler] of Object.entries(o.handlers)) {
      const times = new ServiceTimeHistogram();
      this.times.set(name, times);
      this.routes.set(this.methodPrefix + name, { name, handler, times });
    }
  }

  /** A new stream on `conn`'s session. */
  handleStream(conn: WorkloadConnection, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    // A closure per stream, on purpose: handing every stream the connection's one shared
    // listener made Readable.prototype.on itself cost about 30 µs per call under load (Node 20,
    // measured in a CPU profile; cause not established).
    stream.on('error', (e) => conn.onStreamError(e));
    if (headers[':method'] !== 'POST') {
      stream.respond({ ':status': 405, allow: 'POST' }, { endStream: true });
      return;
    }
    const ct = headers['content-type'];
    if (typeof ct !== 'string' || !GRPC_CONTENT_TYPE.test(ct)) {
      stream.respond({ ':status': 415 }, { endStream: true });
      return;
    }
    const path = headers[':path'];
    const route = typeof path === 'string' ? this.routes.get(path) : undefined;
    const call = new Call(stream, route?.times ?? this.otherCalls);
    conn.addCall(call);
    void this.dispatch(conn, call, headers, route);
  }

  /**
   * Service time per method since the last reset: from a call's stream reaching the server to its
   * first response message or status. Calls to unknown paths are counted as `other`.
   */
  serviceTimes(reset: boolean): Record<string, ServiceTimeSummary> {
    const out: Record<string, ServiceTimeSummary> = {};
    for (const [m, h] of [...this.times, ['other', this.otherCalls] as const]) {
      const sum = h.summary();
      if (sum.count > 0) out[m] = sum;
      if (reset) h.reset();
    }
    return out;
  }

  /** Serve one call; every failure ends the call with its status (nothing is thrown). */
  private async dispatch(conn: WorkloadConnection, call: Call, headers: IncomingHttpHeaders, route: Route | undefined): Promise<void> {
    try {
      if (route === undefined) throw new GrpcError(GrpcStatus.UNIMPLEMENTED, `unknown method ${(headers[':path'] ?? '').slice(0, 200)}`);
      const enc = headers['grpc-encoding'];
      if (enc !== undefined && enc !== 'identity') throw new GrpcError(GrpcStatus.UNIMPLEMENTED, `grpc-encoding "${String(enc).slice(0, 40)}" is not supported (identity only)`);
      if (headers['workload.spiffe.io'] !== 'true') throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'security header missing from request');
      if (conn.poisoned || this.o.closing()) throw new GrpcError(GrpcStatus.UNAVAILABLE, 'connection is closing; reconnect');
      const timeout = parseGrpcTimeout(headers['grpc-timeout']);
      if (timeout !== undefined) call.onDone(this.o.schedule(timeout, () => call.finish(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded')));
      const { maxRequestBytes, requestTimeoutMs, budget, schedule } = this.o;
      const body = await readSingleMessage(call.stream, maxRequestBytes, Math.min(requestTimeoutMs, timeout ?? requestTimeoutMs), budget, schedule);
      call.requestRead = true;
      if (call.done) return;
      await route.handler(conn, call, body, timeout);
    } catch (e) {
      const m = grpcStatusForError(e);
      if (m.internal) this.o.logger.error({ conn: conn.id, err: errorMessage(e) }, 'Workload API call failed');
      call.finish(m.code, m.message);
    }
  }
}
