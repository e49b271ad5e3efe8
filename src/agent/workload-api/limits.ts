/**
 * Admission: how many Workload API connections the agent holds, per uid and in total, and whether
 * a new one may be opened (DESIGN §6). Root keeps `reserved` connections the other uids cannot
 * take, the other uids keep `reserved` root cannot take, and the last `reserved` of the other
 * uids' share stay open to uids that hold few connections, so that one uid opening idle streams
 * locks neither root nor small workloads out. A refusal names the limit that was hit.
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
