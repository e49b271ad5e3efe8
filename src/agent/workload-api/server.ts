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
 * Callers are fixed at accept (./caller.ts): a connection whose peer exec'd another program,
 * changed uid/gid or exited is refused and closed. FetchX509SVID streams re-attest on the
 * selector-cache schedule and from scratch before every push.
 *
 * Bounds: connections (total, per uid, reserves for root and for uids with few connections; see
 * connectionLimits()), concurrent streams per connection, request message
 * size, request bytes buffered across the server, HTTP/2 session memory, time to send the
 * preface and the request, audiences per JWT request. A streaming response to a client that does
 * not read is coalesced: at most one pending (latest) message is kept per stream.
 */
import { randomUUID } from 'node:crypto';
import { closeSync } from 'node:fs';
import { chmod, lstat, mkdir, stat, unlink } from 'node:fs/promises';
import http2, { type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import net from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, isSigilError } from '../../errors.js';
import type { Selector, WorkloadAttestor } from '../../plugins/types.js';
import { SpiffeId, parseTrustDomain } from '../../spiffe/id.js';
import { checkSocketDir } from '../../util/socket-dir.js';
import type { CachedX509Svid, JwtSvidResult, WorkloadIdentitySource } from '../identity-source.js';
import { attestCaller, DEFAULT_ATTEST_TIMEOUT_MS, type CallerAttestation } from './attest.js';
import { CallerConnection, type PeerCredentials } from './caller.js';
import { ByteBudget, GrpcError, GrpcStatus, encodeGrpcMessage, frameMessage, parseGrpcTimeout, readSingleMessage, type GrpcStatusCode } from './grpc.js';
import { SERVICE_NAME, encodeMessage, toStruct, workloadCodecs, type X509SvidMsg } from './proto.js';
import { Deadlines, type CancelDeadline } from './deadlines.js';
import { NodeList } from './node-list.js';
import { ServiceTimeHistogram, type ServiceTimeSummary } from './service-time.js';
import { decodeEmptyRequest, decodeJwtSvidRequest, decodeValidateJwtSvidRequest } from './wire.js';

export interface WorkloadApiOptions {
  socketPath: string;
  source: WorkloadIdentitySource;
  attestors: Map<string, WorkloadAttestor>;
  logger: Logger;
  /** Deadline for all workload attestors of one caller (default 5000 ms). */
  attestTimeoutMs?: number;
  /** Open connections in total (default 1024). */
  maxConnections?: number;
  /**
   * Open connections per peer uid (default: an eighth of maxConnections). uid 0 is instead held
   * to maxConnections − reservedConnections, so that it cannot take the others' share either.
   */
  maxConnectionsPerUid?: number;
  /**
   * Connections kept for root and, separately, for uids that hold few connections (default: an
   * eighth of maxConnections each; see connectionLimits()).
   */
  reservedConnections?: number;
  /** Concurrent streams per connection (default 64). */
  maxConcurrentStreams?: number;
  /** Largest request message (default 4 MiB, gRPC's default). */
  maxRequestBytes?: number;
  /** Request bytes buffered across all streams (default 64 MiB). */
  maxBufferedRequestBytes?: number;
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

const MAX_AUDIENCE_LENGTH = 256;
const MAX_VALIDATE_TOKEN_BYTES = 64 * 1024;

/** The fd of an accepted Unix socket (net.Socket keeps it on its libuv pipe handle). */
export function socketFd(socket: net.Socket): number {
  const handle: unknown = Reflect.get(socket, '_handle');
  const fd: unknown = typeof handle === 'object' && handle !== null ? Reflect.get(handle, 'fd') : undefined;
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) {
    throw new SigilError('workload_api.no_socket_fd', 'accepted connection has no file descriptor', { status: 500 });
  }
  return fd;
}

/** Map errors from the identity source to gRPC status codes by their HTTP-like status. */
export function grpcStatusForError(e: unknown): { code: GrpcStatusCode; message: string; internal: boolean } {
  if (e instanceof GrpcError) return { code: e.code, message: e.message, internal: false };
  if (isSigilError(e)) {
    const s = e.status;
    if (s === 401 || s === 403 || s === 404) return { code: GrpcStatus.PERMISSION_DENIED, message: e.message, internal: false };
    if (s === 400 || s === 422) return { code: GrpcStatus.INVALID_ARGUMENT, message: e.message, internal: false };
    if (s === 429) return { code: GrpcStatus.RESOURCE_EXHAUSTED, message: e.message, internal: false };
    if (s === 502 || s === 503 || s === 504) return { code: GrpcStatus.UNAVAILABLE, message: e.message, internal: false };
  }
  return { code: GrpcStatus.INTERNAL, message: 'internal error', internal: true };
}

function tdKey(td: string): string {
  return `spiffe://${parseTrustDomain(td)}`;
}

function concat(ders: readonly Uint8Array[]): Buffer {
  return Buffer.concat(ders);
}

/** A connection's attestation result, with the response-cache key of its X.509 response. */
interface ConnAttestation extends CallerAttestation {
  x509Key: string;
  until: number;
}

const NO_FAILURES: string[] = Object.freeze([]) as unknown as string[];

/** Response-cache key of the X.509 response for a selector set. */
function x509KeyOf(selectors: readonly Selector[]): string {
  return `x509\0${selectors.join('\0')}`;
}

function sameSelectors(a: readonly Selector[], b: readonly Selector[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

interface ConnState {
  id: string;
  conn: CallerConnection;
  session: ServerHttp2Session;
  /** The last complete attestation and until when (performance.now(), a monotonic clock) it may be reused. */
  cache: ConnAttestation | undefined;
  inflight: Promise<ConnAttestation> | undefined;
  /** Attestations started on this connection; `inflight` is number `started`. */
  started: number;
  /** Open FetchX509SVID streams, each told to re-check when the selectors are due again. */
  x509Streams: NodeList<() => void>;
  /** The timer that wakes the streams when the cached selectors expire. */
  reattest: CancelDeadline | undefined;
  /** Open calls (a list, not a Set: see node-list.ts). */
  calls: NodeList<Call>;
  poisoned: boolean;
}

/** One gRPC call on one HTTP/2 stream. */
class Call {
  private headersSent = false;
  done = false;
  /** The request message has been read completely. */
  requestRead = false;
  private trailers: Record<string, string> = {};
  private readonly cleanups: (() => void)[] = [];

  private readonly startedAt = performance.now();
  private answered = false;

  constructor(
    readonly stream: ServerHttp2Stream,
    private readonly onAnswer: (ms: number) => void,
  ) {
    stream.on('close', () => this.markDone());
  }

  /** The first response message or status is going out: the call's service time ends here. */
  private answer(): void {
    if (this.answered) return;
    this.answered = true;
    this.onAnswer(performance.now() - this.startedAt);
  }

  onDone(fn: () => void): void {
    if (this.done) fn();
    else this.cleanups.push(fn);
  }

  private markDone(): void {
    if (this.done) return;
    this.done = true;
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch {
        // cleanup must not throw
      }
    }
  }

  private sendHeaders(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.stream.respond(
      { ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-accept-encoding': 'identity' },
      { waitForTrailers: true },
    );
    this.stream.once('wantTrailers', () => {
      try {
        this.stream.sendTrailers(this.trailers);
      } catch {
        // stream went away
      }
    });
  }

  /** Write one message; returns false when the stream is closed. */
  send(msg: Uint8Array): boolean {
    return this.sendFramed(frameMessage(msg));
  }

  /** Write one already framed message (a shared, never mutated buffer); false when the stream is closed. */
  sendFramed(framed: Buffer): boolean {
    if (this.done || this.stream.destroyed || this.stream.closed) return false;
    this.answer();
    this.sendHeaders();
    this.stream.write(framed);
    return true;
  }

  get needsDrain(): boolean {
    return this.stream.writableNeedDrain;
  }

  finish(code: GrpcStatusCode, message?: string): void {
    if (this.done || this.stream.destroyed || this.stream.closed) {
      this.markDone();
      return;
    }
    this.answer();
    const t: Record<string, string> = { 'grpc-status': String(code) };
    if (message !== undefined && message.length > 0) t['grpc-message'] = encodeGrpcMessage(message);
    try {
      if (!this.headersSent) {
        this.headersSent = true;
        this.stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto', ...t }, { endStream: true });
        if (!this.stream.writableEnded) this.stream.end();
      } else {
        this.trailers = t;
        this.stream.end();
      }
    } catch {
      // stream went away
    }
    this.markDone();
    if (!this.requestRead) {
      // The client may still be sending a request nobody will read: after the complete response,
      // ask it to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1) and discard what is in flight.
      this.stream.resume();
      try {
        this.stream.close(http2.constants.NGHTTP2_NO_ERROR);
      } catch {
        // already closed
      }
    }
  }
}

type Handler = (state: ConnState, call: Call, body: Buffer, deadlineMs: number | undefined) => Promise<void>;

export async function startWorkloadApi(opts: WorkloadApiOptions): Promise<WorkloadApiServer> {
  const logger = opts.logger.child({ component: 'workload-api' });
  const codecs = workloadCodecs();
  const limits = connectionLimits(opts);
  const maxConcurrentStreams = opts.maxConcurrentStreams ?? 64;
  const maxRequestBytes = opts.maxRequestBytes ?? 4 * 1024 * 1024;
  const budget = new ByteBudget(opts.maxBufferedRequestBytes ?? 64 * 1024 * 1024);
  const maxAudiences = opts.maxAudiences ?? 64;
  const selectorCacheMs = opts.selectorCacheMs ?? 1000;
  const handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 10_000;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
  const unaryTimeoutMs = opts.unaryTimeoutMs ?? 30_000;
  const idleTimeoutMs = opts.idleTimeoutMs ?? 300_000;
  const attestTimeoutMs = opts.attestTimeoutMs ?? DEFAULT_ATTEST_TIMEOUT_MS;
  const procRoot = opts.procRoot ?? '/proc';
  const source = opts.source;
  let peerCred = opts.peerCred;
  if (!peerCred) {
    const { loadSys } = await import('../../native/sys.js');
    const sys = loadSys();
    peerCred = (fd: number) => sys.peerCred(fd);
  }
  const readPeer = peerCred;

  const conns = new Set<ConnState>();
  /** Request, call and attestation timeouts (see deadlines.ts; they fire up to 100 ms late). */
  const deadlines = new Deadlines(100);
  const perUid = new Map<number, number>();
  /** Open connections of uids other than 0. */
  let nonRoot = 0;
  /** Refused connections kept open briefly to tell the client why (at most MAX_REFUSING). */
  let refusing = 0;
  const counters = { rejectedConnections: 0, callerChanged: 0 };
  let closing = false;
  let lastRejectLog = 0;

  // ------------------------------------------------------------------ attestation per connection

  function poison(state: ConnState, reason: string): void {
    if (state.poisoned) return;
    state.poisoned = true;
    counters.callerChanged++;
    logger.warn({ conn: state.id, pid: state.conn.caller.pid, uid: state.conn.caller.uid, reason }, 'caller changed since it connected; closing connection');
    state.reattest?.();
    state.reattest = undefined;
    for (const c of state.calls.values()) c.finish(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
    try {
      state.session.close();
    } catch {
      // already closing
    }
    setTimeout(() => state.session.destroy(), 1000).unref();
  }

  const CALLER_CHANGED = 'caller process changed since it connected; reconnect';
  const NO_IDENTITY = { code: GrpcStatus.PERMISSION_DENIED, message: 'no identity issued' } as const;
  const NO_BUNDLE = { code: GrpcStatus.UNAVAILABLE, message: 'no trust bundle available yet' } as const;

  /**
   * The caller's selectors, attested at most once per `selectorCacheMs` per connection (a
   * result with failed attestors is not cached). Concurrent calls share one attestation. A call
   * served from the cache first checks (one stat) that the caller still runs the program it ran
   * at accept. `fresh`: an attestation that starts after this call (before a stream push).
   */
  async function attestConnection(state: ConnState, fresh = false): Promise<ConnAttestation> {
    const need = fresh ? state.started + 1 : 0;
    for (;;) {
      if (state.poisoned) throw new GrpcError(GrpcStatus.UNAVAILABLE, 'connection is closing; reconnect');
      const c = state.cache;
      if (!fresh && c && performance.now() < c.until) {
        try {
          state.conn.checkImage();
        } catch (e) {
          poison(state, (e as Error).message);
          throw new GrpcError(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
        }
        return c;
      }
      const running = state.inflight;
      if (running === undefined) break;
      if (state.started >= need) return running;
      // An attestation that began before a fresh one was asked for: let it end, then start anew.
      await running.catch(() => undefined);
    }
    state.started++;
    const p = (async (): Promise<ConnAttestation> => {
      try {
        await state.conn.ready;
        const r = await attestCaller(state.conn.caller, opts.attestors, logger, attestTimeoutMs, deadlines.schedule);
        await state.conn.verifyUnchanged();
        logger.debug({ conn: state.id, pid: state.conn.caller.pid, selectors: r.selectors, failed: r.failed }, 'workload attested');
        if (r.failed.length > 0) return { selectors: r.selectors, failed: r.failed, x509Key: x509KeyOf(r.selectors), until: 0 };
        const until = performance.now() + selectorCacheMs * (0.5 + Math.random() / 2);
        const prev = state.cache;
        // The same selectors as last time (the usual case): keep the old object and only extend
        // it, so that re-attesting a steady caller leaves nothing new behind to outlive the
        // young generation (connections re-attest about once a second).
        if (prev && sameSelectors(prev.selectors, r.selectors)) {
          prev.until = until;
          return prev;
        }
        state.cache = { selectors: r.selectors, failed: NO_FAILURES, x509Key: x509KeyOf(r.selectors), until };
        return state.cache;
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        poison(state, msg);
        throw new GrpcError(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
      }
    })();
    state.inflight = p;
    try {
      return await p;
    } finally {
      if (state.inflight === p) state.inflight = undefined;
    }
  }

  /**
   * Wake the connection's FetchX509SVID streams when its cached selectors expire, so that they
   * re-attest on the same schedule as unary calls even when nothing is pushed.
   */
  function armReattest(state: ConnState): void {
    if (state.reattest !== undefined || state.poisoned || state.x509Streams.size === 0) return;
    const c = state.cache;
    const now = performance.now();
    const delay = c && c.until > now ? c.until - now : selectorCacheMs / 2;
    state.reattest = deadlines.schedule(delay, () => {
      state.reattest = undefined;
      for (const wake of state.x509Streams.values()) wake();
    });
  }

  /** When nothing is issued: PermissionDenied, or Unavailable if an attestor failed (retry may help). */
  function noIdentity(a: CallerAttestation): { code: GrpcStatusCode; message: string } {
    if (a.failed.length > 0) return { code: GrpcStatus.UNAVAILABLE, message: `workload attestation incomplete (${a.failed.join(', ')} failed); retry` };
    return NO_IDENTITY;
  }

  // ------------------------------------------------------------------ responses

  /**
   * Encoded and gRPC-framed responses, keyed by what they depend on (the selector set, or the
   * bundle kind), so many clients with the same selectors share one buffer, written as is to
   * every stream (never mutated). Emptied on every source change.
   */
  const responseCache = new Map<string, Buffer | null>();
  /** Open streaming calls, each waiting to send a new message when the identity source changes. */
  const watchers = new NodeList<() => void>();
  function cachedResponse(key: string, build: () => Uint8Array | null): Buffer | null {
    const hit = responseCache.get(key);
    if (hit !== undefined || responseCache.has(key)) return hit ?? null;
    const msg = build();
    const v = msg === null ? null : frameMessage(msg);
    if (responseCache.size >= 4096) responseCache.clear();
    responseCache.set(key, v);
    return v;
  }

  function x509Response(svids: CachedX509Svid[]): Uint8Array | null {
    if (svids.length === 0) return null;
    const bundles = new Map<string, Buffer[]>();
    for (const [td, certs] of source.x509Bundles()) bundles.set(tdKey(td), certs);
    const own = new Set<string>();
    const hints = new Set<string>();
    const out: X509SvidMsg[] = [];
    for (const s of svids) {
      if (s.hint.length > 0) {
        if (hints.has(s.hint)) {
          logger.warn({ spiffeId: s.spiffeId, hint: s.hint }, 'two SVIDs with the same hint; only the first is served');
          continue;
        }
        hints.add(s.hint);
      }
      const td = `spiffe://${SpiffeId.parse(s.spiffeId).trustDomain}`;
      own.add(td);
      out.push({
        spiffe_id: s.spiffeId,
        x509_svid: concat(s.chainDer),
        x509_svid_key: s.privateKeyPkcs8Der,
        bundle: concat(bundles.get(td) ?? []),
        hint: s.hint,
      });
    }
    const federated: Record<string, Uint8Array> = {};
    for (const [td, certs] of bundles) if (!own.has(td)) federated[td] = concat(certs);
    return encodeMessage(codecs.X509SVIDResponse, { svids: out, crl: [], federated_bundles: federated });
  }

  /**
   * The framed FetchJWTSVID response for `results`. Cached tokens are the same objects on every
   * call until they are refreshed, so the encoding is kept with the first of them (a WeakMap: it
   * goes when the token does) and reused while the whole list is the same.
   */
  const jwtEncodings = new WeakMap<JwtSvidResult, { results: JwtSvidResult[]; framed: Buffer }>();
  function jwtResponse(results: JwtSvidResult[]): Buffer {
    const first = results[0]!;
    const hit = jwtEncodings.get(first);
    if (hit && hit.results.length === results.length && hit.results.every((r, i) => r === results[i])) return hit.framed;
    const hints = new Set<string>();
    const svids = [];
    for (const r of results) {
      if (r.hint.length > 0) {
        if (hints.has(r.hint)) continue;
        hints.add(r.hint);
      }
      svids.push({ spiffe_id: r.spiffeId, svid: r.token, hint: r.hint });
    }
    const framed = frameMessage(encodeMessage(codecs.JWTSVIDResponse, { svids }));
    jwtEncodings.set(first, { results: [...results], framed });
    return framed;
  }

  function x509BundlesResponse(): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, certs] of source.x509Bundles()) bundles[tdKey(td)] = concat(certs);
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(codecs.X509BundlesResponse, { crl: [], bundles });
  }

  function jwtBundlesResponse(): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, jwks] of source.jwtBundles()) bundles[tdKey(td)] = jwks;
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(codecs.JWTBundlesResponse, { bundles });
  }

  /**
   * Serve a server-streaming call: send the first message now and a new one (full state) on
   * every source change that alters it. `build` returns a framed message (from the response
   * cache) or null, which ends the call with `empty`.
   */
  function serveStream(call: Call, build: () => Buffer | null, empty: { code: GrpcStatusCode; message: string }): void {
    const first = build();
    if (first === null) {
      call.finish(empty.code, empty.message);
      return;
    }
    let last = first;
    call.sendFramed(first);
    let scheduled = false;
    let waitingDrain = false;
    const flush = (): void => {
      scheduled = false;
      if (call.done) return;
      if (call.needsDrain) {
        waitingDrain = true;
        return;
      }
      let next: Buffer | null;
      try {
        next = build();
      } catch (e) {
        logger.error({ err: (e as Error).message }, 'building a Workload API update failed');
        call.finish(GrpcStatus.INTERNAL, 'internal error');
        return;
      }
      if (next === null) {
        call.finish(empty.code, empty.message);
        return;
      }
      if (next === last || next.equals(last)) return;
      last = next;
      call.sendFramed(next);
    };
    const schedule = (): void => {
      if (scheduled || call.done) return;
      scheduled = true;
      setImmediate(flush);
    };
    const onDrain = (): void => {
      if (waitingDrain) {
        waitingDrain = false;
        schedule();
      }
    };
    call.stream.on('drain', onDrain);
    const node = watchers.add(schedule);
    call.onDone(() => {
      watchers.remove(node);
      call.stream.off('drain', onDrain);
    });
  }

  /** The framed FetchX509SVID response for an attestation (shared by callers with the same selectors). */
  function x509For(a: ConnAttestation): Buffer | null {
    return cachedResponse(a.x509Key, () => x509Response(source.x509SvidsFor(a.selectors)));
  }

  /**
   * Serve FetchX509SVID: the first message now, then a new one whenever it changes. Every update
   * first takes the connection's selectors as a unary call would (cached for at most
   * `selectorCacheMs`, the exe checked on a cache hit; the connection's re-attestation timer
   * wakes the stream when they are due), and before a new message is pushed the caller is
   * attested again from scratch: a caller whose selectors changed gets the message for its new
   * selectors, or PermissionDenied and the end of the stream; a caller that changed (exec, uid,
   * pid) gets Unavailable and its connection is closed.
   */
  function serveX509Stream(state: ConnState, call: Call, first: ConnAttestation): void {
    let a = first;
    const msg = x509For(a);
    if (msg === null) {
      const n = noIdentity(a);
      call.finish(n.code, n.message);
      return;
    }
    let last = msg;
    call.sendFramed(msg);
    let scheduled = false;
    let running = false;
    let again = false;
    let waitingDrain = false;
    const update = async (): Promise<void> => {
      if (call.done) return;
      if (call.needsDrain) {
        waitingDrain = true;
        return;
      }
      a = await attestConnection(state);
      armReattest(state);
      let next = x509For(a);
      if (next !== null && next !== last && !next.equals(last)) {
        // A push: attest again first, so that nothing goes out on selectors older than the push.
        a = await attestConnection(state, true);
        armReattest(state);
        next = x509For(a);
      }
      if (call.done) return;
      if (next === null) {
        const n = noIdentity(a);
        call.finish(n.code, n.message);
        return;
      }
      if (next === last || next.equals(last)) return;
      last = next;
      call.sendFramed(next);
    };
    const flush = (): void => {
      scheduled = false;
      if (running) {
        again = true;
        return;
      }
      running = true;
      update()
        .catch((e: unknown) => {
          const m = grpcStatusForError(e);
          if (m.internal) logger.error({ conn: state.id, err: e instanceof Error ? e.message : String(e) }, 'building a Workload API update failed');
          call.finish(m.code, m.message);
        })
        .finally(() => {
          running = false;
          if (again) {
            again = false;
            schedule();
          }
        });
    };
    const schedule = (): void => {
      if (scheduled || call.done) return;
      scheduled = true;
      setImmediate(flush);
    };
    const onDrain = (): void => {
      if (waitingDrain) {
        waitingDrain = false;
        schedule();
      }
    };
    call.stream.on('drain', onDrain);
    const node = watchers.add(schedule);
    const mine = state.x509Streams.add(schedule);
    armReattest(state);
    call.onDone(() => {
      watchers.remove(node);
      state.x509Streams.remove(mine);
      if (state.x509Streams.size === 0) {
        state.reattest?.();
        state.reattest = undefined;
      }
      call.stream.off('drain', onDrain);
    });
  }

  async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
    let cancel: () => void = () => undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          cancel = deadlines.schedule(ms, () => reject(new GrpcError(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded')));
        }),
      ]);
    } finally {
      cancel();
    }
  }


  const handlers: Record<string, Handler> = {
    async FetchX509SVID(state, call, body) {
      decodeEmptyRequest(body);
      serveX509Stream(state, call, await attestConnection(state));
    },
    async FetchX509Bundles(_state, call, body) {
      decodeEmptyRequest(body);
      serveStream(call, () => cachedResponse('x509-bundles', x509BundlesResponse), NO_BUNDLE);
    },
    async FetchJWTBundles(_state, call, body) {
      decodeEmptyRequest(body);
      serveStream(call, () => cachedResponse('jwt-bundles', jwtBundlesResponse), NO_BUNDLE);
    },
    async FetchJWTSVID(state, call, body, deadlineMs) {
      const req = decodeJwtSvidRequest(body, maxAudiences);
      if (req.audience.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified');
      for (const a of req.audience) {
        if (a.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must not be empty');
        if (a.length > MAX_AUDIENCE_LENGTH) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `audience longer than ${MAX_AUDIENCE_LENGTH} characters`);
      }
      const audience = [...new Set(req.audience)];
      let spiffeId: string | undefined;
      if (req.spiffeId.length > 0) {
        try {
          spiffeId = SpiffeId.parse(req.spiffeId).toString();
        } catch (e) {
          throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `spiffe_id: ${(e as Error).message}`);
        }
      }
      const a = await attestConnection(state);
      const results =
        source.jwtSvidsCached?.(a.selectors, audience, spiffeId) ?? (await withDeadline(source.jwtSvidsFor(a.selectors, audience, spiffeId), deadlineMs ?? unaryTimeoutMs));
      if (results.length === 0) {
        const n = noIdentity(a);
        throw new GrpcError(n.code, n.message);
      }
      call.sendFramed(jwtResponse(results));
      call.finish(GrpcStatus.OK);
    },
    async ValidateJWTSVID(_state, call, body, deadlineMs) {
      const req = decodeValidateJwtSvidRequest(body);
      if (req.audience.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified');
      if (req.svid.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'svid must be specified');
      if (req.audience.length > MAX_AUDIENCE_LENGTH) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `audience longer than ${MAX_AUDIENCE_LENGTH} characters`);
      if (req.svid.length > MAX_VALIDATE_TOKEN_BYTES) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'svid is too large');
      let r: { spiffeId: string; claims: Record<string, unknown> };
      try {
        r = await withDeadline(source.validateJwtSvid(req.svid, req.audience), deadlineMs ?? unaryTimeoutMs);
      } catch (e) {
        if (e instanceof GrpcError) throw e;
        if (isSigilError(e) && e.status < 500) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, e.message);
        throw e;
      }
      call.send(encodeMessage(codecs.ValidateJWTSVIDResponse, { spiffe_id: r.spiffeId, claims: toStruct(r.claims) }));
      call.finish(GrpcStatus.OK);
    },
  };
  const methodPrefix = `/${SERVICE_NAME}/`;
  const serviceTimes = new Map<string, ServiceTimeHistogram>();
  for (const m of Object.keys(handlers)) serviceTimes.set(m, new ServiceTimeHistogram());
  const otherCalls = new ServiceTimeHistogram();
  /** Where a call's service time goes: its method's histogram (unknown paths share one). */
  function serviceTimeRecorder(path: string | undefined): (ms: number) => void {
    const name = path?.startsWith(methodPrefix) ? path.slice(methodPrefix.length) : '';
    const h = serviceTimes.get(name) ?? otherCalls;
    return (ms) => h.record(ms);
  }

  // ------------------------------------------------------------------ streams

  function handleStream(state: ConnState, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', (e) => logger.debug({ conn: state.id, err: e.message }, 'stream error'));
    if (headers[':method'] !== 'POST') {
      stream.respond({ ':status': 405, allow: 'POST' }, { endStream: true });
      return;
    }
    const ct = headers['content-type'];
    if (typeof ct !== 'string' || !/^application\/grpc(?:\+proto)?(?:;.*)?$/.test(ct)) {
      stream.respond({ ':status': 415 }, { endStream: true });
      return;
    }
    const call = new Call(stream, serviceTimeRecorder(headers[':path']));
    const node = state.calls.add(call);
    call.onDone(() => state.calls.remove(node));
    void dispatch(state, call, headers).catch((e: unknown) => {
      const m = grpcStatusForError(e);
      if (m.internal) logger.error({ conn: state.id, err: e instanceof Error ? e.message : String(e) }, 'Workload API call failed');
      call.finish(m.code, m.message);
    });
  }

  async function dispatch(state: ConnState, call: Call, headers: IncomingHttpHeaders): Promise<void> {
    const path = headers[':path'] ?? '';
    const name = path.startsWith(methodPrefix) ? path.slice(methodPrefix.length) : '';
    const handler = Object.hasOwn(handlers, name) ? handlers[name] : undefined;
    if (!handler) throw new GrpcError(GrpcStatus.UNIMPLEMENTED, `unknown method ${path.slice(0, 200)}`);
    const enc = headers['grpc-encoding'];
    if (enc !== undefined && enc !== 'identity') throw new GrpcError(GrpcStatus.UNIMPLEMENTED, `grpc-encoding "${String(enc).slice(0, 40)}" is not supported (identity only)`);
    if (headers['workload.spiffe.io'] !== 'true') throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'security header missing from request');
    if (state.poisoned || closing) throw new GrpcError(GrpcStatus.UNAVAILABLE, 'connection is closing; reconnect');
    const timeout = parseGrpcTimeout(headers['grpc-timeout']);
    if (timeout !== undefined) call.onDone(deadlines.schedule(timeout, () => call.finish(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded')));
    const body = await readSingleMessage(call.stream, maxRequestBytes, Math.min(requestTimeoutMs, timeout ?? requestTimeoutMs), budget, deadlines.schedule);
    call.requestRead = true;
    if (call.done) return;
    await handler(state, call, body, timeout);
  }

  // ------------------------------------------------------------------ connections

  function onConnection(socket: net.Socket): void {
    socket.on('error', () => undefined);
    if (closing) {
      reject(socket, undefined);
      return;
    }
    if (conns.size >= limits.total) {
      reject(socket, new SigilError('workload_api.connection_limit', `the agent holds ${conns.size} Workload API connections, its limit (maxConnections ${limits.total})`, { status: 429 }));
      return;
    }
    let peer: PeerCredentials;
    try {
      peer = readPeer(socketFd(socket));
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'cannot read peer credentials; connection refused');
      socket.destroy();
      return;
    }
    const n = perUid.get(peer.uid) ?? 0;
    const refused = admit(limits, peer.uid, n, nonRoot, conns.size);
    if (refused !== undefined) {
      if (peer.pidfd !== undefined) closeQuietly(peer.pidfd);
      reject(socket, refused);
      return;
    }
    const conn = new CallerConnection(peer, procRoot);
    let session: ServerHttp2Session;
    try {
      session = http2.performServerHandshake(socket, {
        settings: { maxConcurrentStreams, maxHeaderListSize: 16 * 1024, enablePush: false },
        maxSessionMemory: 8,
        maxHeaderListPairs: 64,
        maxOutstandingPings: 8,
        maxSettings: 32,
        maxSessionInvalidFrames: 100,
        maxSessionRejectedStreams: 100,
      });
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'HTTP/2 handshake setup failed');
      conn.close();
      socket.destroy();
      return;
    }
    const state: ConnState = {
      id: randomUUID().slice(0, 8),
      conn,
      session,
      cache: undefined,
      inflight: undefined,
      started: 0,
      x509Streams: new NodeList(),
      reattest: undefined,
      calls: new NodeList(),
      poisoned: false,
    };
    conns.add(state);
    perUid.set(peer.uid, n + 1);
    if (peer.uid !== 0) nonRoot++;
    let gotSettings = false;
    const hsTimer = setTimeout(() => {
      if (!gotSettings) session.destroy();
    }, handshakeTimeoutMs);
    hsTimer.unref();
    session.once('remoteSettings', () => {
      gotSettings = true;
      clearTimeout(hsTimer);
    });
    session.on('stream', (stream, headers) => handleStream(state, stream, headers));
    session.on('error', (e) => logger.debug({ conn: state.id, err: e.message }, 'HTTP/2 session error'));
    session.setTimeout(idleTimeoutMs, () => {
      if (state.calls.size === 0) session.close();
    });
    session.once('close', () => {
      clearTimeout(hsTimer);
      for (const c of state.calls.values()) c.finish(GrpcStatus.CANCELLED, 'connection closed');
      conns.delete(state);
      if (peer.uid !== 0) nonRoot--;
      const left = (perUid.get(peer.uid) ?? 1) - 1;
      if (left <= 0) perUid.delete(peer.uid);
      else perUid.set(peer.uid, left);
      conn.close();
      if (!socket.destroyed) socket.destroy();
    });
    logger.debug({ conn: state.id, pid: peer.pid, uid: peer.uid, gid: peer.gid, pidfd: peer.pidfd !== undefined }, 'Workload API connection');
  }

  /**
   * Refuse a connection. With a reason (a limit), the client is told which limit it hit: its
   * first call is answered `ResourceExhausted` with the reason, if it sends the HTTP/2 preface
   * within REFUSAL_PREFACE_MS; at most MAX_REFUSING such connections are open at once, the rest
   * are closed at once, as is every connection during shutdown.
   */
  function reject(socket: net.Socket, why: SigilError | undefined): void {
    counters.rejectedConnections++;
    const now = Date.now();
    if (now - lastRejectLog > 10_000) {
      lastRejectLog = now;
      logger.warn({ code: why?.code, why: why?.message ?? 'agent is shutting down', rejected: counters.rejectedConnections }, 'Workload API connection refused');
    }
    if (why === undefined || refusing >= MAX_REFUSING) {
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
    refusing++;
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
      refusing--;
      clearTimeout(preface);
      clearTimeout(end);
      if (!socket.destroyed) socket.destroy();
    });
  }

  // ------------------------------------------------------------------ listener

  const socketPath = opts.socketPath;
  await prepareSocketPath(socketPath);
  // No other user may be able to replace the socket (and serve workloads their own SVIDs).
  checkSocketDir(dirname(socketPath), 'workload_api.socket_dir_insecure', 'workloadApiSocket');
  const server = net.createServer(onConnection);
  server.on('error', (e) => logger.error({ err: e.message }, 'Workload API listener error'));
  await new Promise<void>((resolve, rejectListen) => {
    const onErr = (e: Error): void => rejectListen(new SigilError('workload_api.listen_failed', `cannot listen on ${socketPath}: ${e.message}`, { status: 500, cause: e }));
    server.once('error', onErr);
    server.listen({ path: socketPath, backlog: 511 }, () => {
      server.off('error', onErr);
      resolve();
    });
  });
  await chmod(socketPath, 0o777);
  const ours = await lstat(socketPath);
  // One subscription for the whole server: the response cache is emptied, then every open stream
  // is told (streams come and go with every call; see node-list.ts for why they are not each a
  // listener of the source).
  const unsubscribeCache = source.onChange(() => {
    responseCache.clear();
    for (const schedule of watchers.values()) schedule();
  });
  logger.info({ socket: socketPath }, 'Workload API listening');

  return {
    address: `unix://${socketPath}`,
    serviceTimes(reset = false) {
      const out: Record<string, ServiceTimeSummary> = {};
      for (const [m, h] of [...serviceTimes, ['other', otherCalls] as const]) {
        const sum = h.summary();
        if (sum.count > 0) out[m] = sum;
        if (reset) h.reset();
      }
      return out;
    },
    stats: () => ({
      connections: conns.size,
      rejectedConnections: counters.rejectedConnections,
      activeCalls: [...conns].reduce((a, s) => a + s.calls.size, 0),
      watchingStreams: watchers.size,
      callerChanged: counters.callerChanged,
      bufferedOutputBytes: [...conns].reduce((a, st) => a + st.calls.values().reduce((b, c) => b + c.stream.writableLength, 0), 0),
    }),
    async close(): Promise<void> {
      if (closing) return;
      closing = true;
      unsubscribeCache();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of [...conns]) {
        for (const c of s.calls.values()) c.finish(GrpcStatus.UNAVAILABLE, 'agent is shutting down');
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
      try {
        const now = await lstat(socketPath);
        if (now.ino === ours.ino && now.dev === ours.dev) await unlink(socketPath);
      } catch {
        // already gone
      }
    },
  };
}

/** Refused connections answered at once (the rest are closed without a word). */
const MAX_REFUSING = 32;
/** A refused connection must send the HTTP/2 preface within this time… */
const REFUSAL_PREFACE_MS = 100;
/** …and is closed after this time at the latest. */
const REFUSAL_LINGER_MS = 2000;

export interface ConnectionLimits {
  /** All connections. */
  total: number;
  /** Connections of one uid other than 0. */
  perUid: number;
  /** Connections of uid 0: total − reserved, so root leaves `reserved` to the others. */
  root: number;
  /** Connections of all uids but 0 together: total − reserved, so they leave `reserved` to root. */
  nonRoot: number;
  /**
   * Once the other uids hold `shared` connections, only a uid holding fewer than `small` may open
   * another: the last `reserved` slots of their pool stay open to uids with few connections.
   */
  shared: number;
  small: number;
}

/** The connection limits from the options (see WorkloadApiOptions); bad values are refused. */
export function connectionLimits(opts: Pick<WorkloadApiOptions, 'maxConnections' | 'maxConnectionsPerUid' | 'reservedConnections'>): ConnectionLimits {
  const total = opts.maxConnections ?? 1024;
  const bad = (what: string): never => {
    throw new SigilError('workload_api.bad_connection_limits', `Workload API connection limits: ${what}`);
  };
  if (!Number.isSafeInteger(total) || total < 4) bad(`maxConnections must be an integer ≥ 4, got ${String(total)}`);
  const reserved = opts.reservedConnections ?? Math.max(1, Math.floor(total / 8));
  if (!Number.isSafeInteger(reserved) || reserved < 1 || 3 * reserved > total) {
    bad(`reservedConnections must be an integer from 1 to a third of maxConnections (${Math.floor(total / 3)}), got ${String(reserved)}`);
  }
  const perUid = opts.maxConnectionsPerUid ?? Math.max(1, Math.floor(total / 8));
  if (!Number.isSafeInteger(perUid) || perUid < 1 || perUid > total - 2 * reserved) {
    bad(`maxConnectionsPerUid must be an integer from 1 to maxConnections − 2 × reservedConnections (${total - 2 * reserved}), got ${String(perUid)}`);
  }
  return { total, perUid, root: total - reserved, nonRoot: total - reserved, shared: total - 2 * reserved, small: Math.max(1, Math.floor(perUid / 4)) };
}

/**
 * Whether a new connection of `uid`, which holds `held` connections, may be opened while the uids
 * other than 0 hold `nonRoot` and everyone `total`; undefined if so, else the limit it hit.
 */
export function admit(l: ConnectionLimits, uid: number, held: number, nonRoot: number, total: number): SigilError | undefined {
  if (total >= l.total) {
    return new SigilError('workload_api.connection_limit', `the agent holds ${total} Workload API connections, its limit (maxConnections ${l.total})`, { status: 429 });
  }
  if (uid === 0) {
    if (held >= l.root) {
      return new SigilError('workload_api.uid_connection_limit', `uid 0 holds ${held} Workload API connections, its limit (maxConnections − reservedConnections = ${l.root}; the rest is kept for other uids)`, { status: 429 });
    }
    return undefined;
  }
  if (held >= l.perUid) {
    return new SigilError('workload_api.uid_connection_limit', `uid ${uid} holds ${held} Workload API connections, the limit per uid (maxConnectionsPerUid ${l.perUid})`, { status: 429 });
  }
  if (nonRoot >= l.nonRoot) {
    return new SigilError('workload_api.connections_reserved', `uids other than 0 hold ${nonRoot} Workload API connections; the remaining ${l.total - l.nonRoot} are kept for root (reservedConnections)`, { status: 429 });
  }
  if (nonRoot >= l.shared && held >= l.small) {
    return new SigilError(
      'workload_api.connections_reserved',
      `uid ${uid} holds ${held} Workload API connections and the last ${l.nonRoot - l.shared} of the other uids' share are kept for uids holding fewer than ${l.small} (reservedConnections)`,
      { status: 429 },
    );
  }
  return undefined;
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/** Create the socket's directory (0755) if needed and remove a stale socket file (only a socket). */
async function prepareSocketPath(socketPath: string): Promise<void> {
  if (!isAbsolute(socketPath)) throw new SigilError('workload_api.socket_path_invalid', `Workload API socket path "${socketPath}" must be absolute`);
  if (Buffer.byteLength(socketPath) > 107) {
    throw new SigilError('workload_api.socket_path_invalid', `Workload API socket path is longer than 107 bytes (sun_path limit): ${socketPath}`);
  }
  const dir = dirname(socketPath);
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new SigilError('workload_api.socket_path_invalid', `${dir} exists and is not a directory`);
  } catch (e) {
    if (isSigilError(e)) throw e;
    if ((e as { code?: string }).code !== 'ENOENT') throw new SigilError('workload_api.socket_path_invalid', `cannot inspect ${dir}: ${(e as Error).message}`);
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o755);
  }
  let st;
  try {
    st = await lstat(socketPath);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return;
    throw new SigilError('workload_api.socket_path_invalid', `cannot inspect ${socketPath}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new SigilError('workload_api.socket_path_in_use', `${socketPath} exists and is not a socket; refusing to remove it`);
  if (await socketIsLive(socketPath)) throw new SigilError('workload_api.socket_path_in_use', `another process is serving on ${socketPath}`);
  await unlink(socketPath);
}

function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    const done = (live: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(live);
    };
    const t = setTimeout(() => done(true), 1000);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}
