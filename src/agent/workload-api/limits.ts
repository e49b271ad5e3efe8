/**
 * Admission and shares (DESIGN §6).
 *
 * Connections: how many Workload API connections the agent holds, per uid and in total, and
 * whether a new one may be opened. Root keeps `reserved` connections the other uids cannot take,
 * the other uids keep `reserved` root cannot take, and the last `reserved` of the other uids'
 * share stay open to uids that hold few connections, so that one uid opening idle streams locks
 * neither root nor small workloads out. A refusal names the limit that was hit.
 *
 * Request bytes (ByteBudget): the bytes of request messages still being received, counted as
 * they arrive — never from a message's declared length — against the connection's share, its
 * uid's share (all of that uid's connections together) and the server's total, so that neither
 * one connection nor one uid can take what the other callers' requests need. A call whose next
 * bytes do not fit ends `ResourceExhausted` naming the limit; other calls are not touched.
 */
import { SigilError } from '../../errors.js';

export interface ConnectionLimitOptions {
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
}

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

/** The connection limits from the options (see ConnectionLimitOptions); bad values are refused. */
export function connectionLimits(opts: ConnectionLimitOptions): ConnectionLimits {
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

/** The refusal when the agent already holds `total` connections, its overall limit. */
export function totalLimitHit(l: ConnectionLimits, total: number): SigilError {
  return new SigilError('workload_api.connection_limit', `the agent holds ${total} Workload API connections, its limit (maxConnections ${l.total})`, { status: 429 });
}

/**
 * Whether a new connection of `uid`, which holds `held` connections, may be opened while the uids
 * other than 0 hold `nonRoot` and everyone `total`; undefined if so, else the limit it hit.
 */
export function admit(l: ConnectionLimits, uid: number, held: number, nonRoot: number, total: number): SigilError | undefined {
  if (total >= l.total) return totalLimitHit(l, total);
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

/** The connections held, per uid and in total, checked against the limits on every accept. */
export class Admission {
  private readonly perUid = new Map<number, number>();
  /** Open connections of uids other than 0. */
  private nonRoot = 0;
  /** Open connections in total. */
  held = 0;

  constructor(readonly limits: ConnectionLimits) {}

  /** Undefined when the agent may take one more connection before the peer is known, else why not. */
  roomForAny(): SigilError | undefined {
    return this.held >= this.limits.total ? totalLimitHit(this.limits, this.held) : undefined;
  }

  /** Take a connection for `uid`; undefined when taken (give it back with release), else the limit it hit. */
  take(uid: number): SigilError | undefined {
    const n = this.perUid.get(uid) ?? 0;
    const refused = admit(this.limits, uid, n, this.nonRoot, this.held);
    if (refused !== undefined) return refused;
    this.perUid.set(uid, n + 1);
    if (uid !== 0) this.nonRoot++;
    this.held++;
    return undefined;
  }

  /** Give back a connection taken for `uid`. */
  release(uid: number): void {
    const left = (this.perUid.get(uid) ?? 1) - 1;
    if (left <= 0) this.perUid.delete(uid);
    else this.perUid.set(uid, left);
    if (uid !== 0) this.nonRoot--;
    this.held--;
  }
}

/** The largest request message by default; see RequestLimitOptions.maxRequestBytes. */
export const DEFAULT_MAX_REQUEST_BYTES = 128 * 1024;

export interface RequestLimitOptions {
  /**
   * Largest request message (default 128 KiB). The largest legitimate one is a FetchJWTSVID with
   * 64 audiences of 256 characters (at most 3 bytes each in UTF-8) and a SPIFFE ID (at most 2048
   * bytes), under 52 KiB; a ValidateJWTSVID carries a token of at most 16 KiB (handlers.ts
   * MAX_VALIDATE_TOKEN_BYTES, the JWT-SVID limit; a JWT is ASCII) and an audience of up to 256
   * characters. Refused from the length prefix alone.
   */
  maxRequestBytes?: number;
  /** Request bytes being received across all calls of the server (default 64 MiB). */
  maxBufferedRequestBytes?: number;
  /** Request bytes being received on all connections of one uid together (default an eighth of maxBufferedRequestBytes, 8 MiB). */
  maxBufferedRequestBytesPerUid?: number;
  /** Request bytes being received on one connection (default 8 × maxRequestBytes, 1 MiB, at most maxBufferedRequestBytesPerUid). */
  maxBufferedRequestBytesPerConnection?: number;
  /**
   * A request message begun (part of its prefix or body received) and not complete is refused
   * when no byte of it arrives for this long (default 2 s), so that a stalled sender does not
   * hold its share of the request bytes until the request timeout.
   */
  requestStallTimeoutMs?: number;
}

export interface RequestLimits {
  /** Largest request message. */
  message: number;
  /** Bytes being received across the server, per uid, per connection. */
  total: number;
  perUid: number;
  perConnection: number;
  /** How long a begun, incomplete message may go without a byte. */
  stallMs: number;
}

/**
 * The request limits from the options; bad values are refused. Each level of bytes must hold the
 * one below it: a message ≤ a connection's share ≤ a uid's share ≤ the total.
 */
export function requestLimits(opts: RequestLimitOptions): RequestLimits {
  const bad = (what: string): never => {
    throw new SigilError('workload_api.bad_request_limits', `Workload API request limits: ${what}`);
  };
  const integer = (name: string, v: number, min: number, minText: string): number => {
    if (!Number.isSafeInteger(v) || v < min) bad(`${name} must be an integer ≥ ${minText}, got ${String(v)}`);
    return v;
  };
  const message = integer('maxRequestBytes', opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES, 1, '1');
  const total = integer('maxBufferedRequestBytes', opts.maxBufferedRequestBytes ?? 64 * 1024 * 1024, message, `maxRequestBytes (${message})`);
  const perUid = integer('maxBufferedRequestBytesPerUid', opts.maxBufferedRequestBytesPerUid ?? Math.max(message, Math.floor(total / 8)), message, `maxRequestBytes (${message})`);
  if (perUid > total) bad(`maxBufferedRequestBytesPerUid (${perUid}) must not exceed maxBufferedRequestBytes (${total})`);
  const perConnection = integer(
    'maxBufferedRequestBytesPerConnection',
    opts.maxBufferedRequestBytesPerConnection ?? Math.min(perUid, 8 * message),
    message,
    `maxRequestBytes (${message})`,
  );
  if (perConnection > perUid) bad(`maxBufferedRequestBytesPerConnection (${perConnection}) must not exceed maxBufferedRequestBytesPerUid (${perUid})`);
  const stallMs = opts.requestStallTimeoutMs ?? 2000;
  if (!(stallMs > 0)) bad(`requestStallTimeoutMs must be > 0, got ${String(stallMs)}`);
  return { message, total, perUid, perConnection, stallMs };
}

/** The request bytes held by one uid's connections together. */
interface UidBytes {
  readonly uid: number;
  used: number;
  connections: number;
}

/** The request bytes held by one connection's calls. */
export interface ConnectionBytes {
  used: number;
  readonly uid: UidBytes;
}

/** The shares of a ByteBudget, and how long a message may stall (default: no limit but the call's request timeout). */
export type ByteBudgetTerms = Pick<RequestLimits, 'total' | 'perUid' | 'perConnection'> & { stallMs?: number };

/**
 * Request bytes being received, per connection, per uid and in total. A connection is registered
 * with addConnection() (the server does so for each admitted HTTP/2 session); a stream's bytes
 * count against the shares of the session it belongs to. Bytes of a stream on no registered
 * session count against the total only.
 */
export class ByteBudget {
  /** Bytes held across the server. */
  used = 0;
  readonly total: number;
  readonly perUid: number;
  readonly perConnection: number;
  readonly stallMs: number;
  private readonly uids = new Map<number, UidBytes>();
  private readonly sessions = new WeakMap<object, ConnectionBytes>();

  /** `terms`: the limits, or only a total. */
  constructor(terms: number | ByteBudgetTerms) {
    const t = typeof terms === 'number' ? { total: terms, perUid: terms, perConnection: terms } : terms;
    this.total = t.total;
    this.perUid = t.perUid;
    this.perConnection = t.perConnection;
    this.stallMs = (typeof terms === 'number' ? undefined : terms.stallMs) ?? Number.POSITIVE_INFINITY;
  }

  /** Count the request bytes of `session`'s streams, a connection of `uid`, against its shares; returns the release, for when the session closes. */
  addConnection(session: object, uid: number): () => void {
    let u = this.uids.get(uid);
    if (u === undefined) {
      u = { uid, used: 0, connections: 0 };
      this.uids.set(uid, u);
    }
    u.connections++;
    const account: ConnectionBytes = { used: 0, uid: u };
    this.sessions.set(session, account);
    const owner = u;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.sessions.delete(session);
      // Bytes still held by the connection's calls are given back to this same record when they
      // end; a new connection of the uid then starts a new one.
      if (--owner.connections === 0 && this.uids.get(uid) === owner) this.uids.delete(uid);
    };
  }

  /** The connection a stream's request bytes count against (undefined: the total only). */
  shareOf(stream: { readonly session?: object | undefined }): ConnectionBytes | undefined {
    const s = stream.session;
    return s === undefined ? undefined : this.sessions.get(s);
  }

  /**
   * Take `n` more bytes for a call on `conn`; undefined when taken (give them back with give()),
   * else why not, naming the limit: the connection's own share is checked first, then its uid's,
   * then the total.
   */
  take(n: number, conn?: ConnectionBytes): string | undefined {
    if (conn !== undefined) {
      if (conn.used + n > this.perConnection) {
        return `request bytes being received on this connection would exceed its share (maxBufferedRequestBytesPerConnection ${this.perConnection})`;
      }
      if (conn.uid.used + n > this.perUid) {
        return `request bytes being received from uid ${conn.uid.uid} would exceed its share (maxBufferedRequestBytesPerUid ${this.perUid})`;
      }
    }
    if (this.used + n > this.total) return `request bytes being received by the agent would exceed its limit (maxBufferedRequestBytes ${this.total}); retry`;
    this.used += n;
    if (conn !== undefined) {
      conn.used += n;
      conn.uid.used += n;
    }
    return undefined;
  }

  /** Give back `n` bytes taken for a call on `conn`. */
  give(n: number, conn?: ConnectionBytes): void {
    this.used = Math.max(0, this.used - n);
    if (conn !== undefined) {
      conn.used = Math.max(0, conn.used - n);
      conn.uid.used = Math.max(0, conn.uid.used - n);
    }
  }
}
