/**
 * One accepted Workload API connection: who is calling (./caller.ts, fixed at accept), its open
 * calls and FetchX509SVID streams, and its attestation cache.
 *
 * The caller's selectors are attested at most once per `selectorCacheMs` per connection (each
 * result is kept for a random 50–100 % of it, so connections opened together do not re-attest
 * together; a result with failed attestors is not kept). Concurrent calls share one attestation.
 * A call served from the cache first checks that the caller still runs the program it ran at
 * accept (one stat) and still has the credentials the attestation saw (one read of the held
 * /proc/<pid>/status): effective uid/gid other than at connect poison the connection, any other
 * change of the Uid, Gid or Groups line (supplementary groups, real or saved ids) has the caller
 * attested anew before it is answered. A result whose attestation saw those lines change is not
 * kept. A caller that changed (exec, uid/gid, exit) poisons the connection: its calls end
 * `Unavailable` and the connection is closed.
 */
import { randomUUID } from 'node:crypto';
import type { ServerHttp2Session } from 'node:http2';
import type { Logger } from 'pino';
import type { Selector, WorkloadAttestor } from '../../plugins/types.js';
import { attestCaller, type CallerAttestation } from './attest.js';
import type { Call } from './call.js';
import type { CallerConnection } from './caller.js';
import type { CancelDeadline, ScheduleDeadline } from './deadlines.js';
import { GrpcError, GrpcStatus, type GrpcStatusCode } from './grpc.js';
import { LinkedList, type ListEntry } from './linked-list.js';
import { errorMessage } from '../../errors.js';
import { parseStatus } from '../../workload/proc.js';

export const CALLER_CHANGED = 'caller process changed since it connected; reconnect';
const CLOSING = 'connection is closing; reconnect';

/** What every connection's attestation follows (shared by all connections of a server). */
export interface AttestationPolicy {
  attestors: Map<string, WorkloadAttestor>;
  logger: Logger;
  /** Deadline for all workload attestors of one caller. */
  attestTimeoutMs: number;
  /** Longest time a connection's selectors are reused. */
  selectorCacheMs: number;
  schedule: ScheduleDeadline;
  /** Called once for each connection whose caller changed since it connected. */
  onCallerChanged(): void;
}

/** A connection's attestation result, with the response-cache key of its X.509 response. */
export interface ConnAttestation extends CallerAttestation {
  x509Key: string;
  until: number;
}

const NO_FAILURES: string[] = Object.freeze([]) as unknown as string[];

/** Response-cache key of the X.509 response for a selector set. */
export function x509KeyOf(selectors: readonly Selector[]): string {
  // Length-prefixed, so no selector value (a NUL in a plugin's label, say) can make two selector
  // sets share one key.
  let key = 'x509\0';
  for (const s of selectors) key += `${s.length}:${s}`;
  return key;
}

function sameSelectors(a: readonly Selector[], b: readonly Selector[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The Uid:, Gid: and Groups: lines of a /proc/<pid>/status text as an attestation saw them, each
 * with its newline ('' for a line that was missing).
 */
export interface CredentialLines {
  uid: string;
  gid: string;
  groups: string;
}

/**
 * Where the line `name` (e.g. 'Uid:') starts in a status text, searching from `from`, or -1;
 * `nlName` is '\n' + name.
 */
function lineStart(text: string, name: string, nlName: string, from: number): number {
  if (from === 0 && text.startsWith(name)) return 0;
  const i = text.indexOf(nlName, from);
  return i < 0 ? -1 : i + 1;
}

function lineOf(text: string, name: string, nlName: string): string {
  const at = lineStart(text, name, nlName, 0);
  if (at < 0) return '';
  const end = text.indexOf('\n', at);
  return end < 0 ? text.slice(at) : text.slice(at, end + 1);
}

export function credentialLines(status: string): CredentialLines {
  return { uid: lineOf(status, 'Uid:', '\nUid:'), gid: lineOf(status, 'Gid:', '\nGid:'), groups: lineOf(status, 'Groups:', '\nGroups:') };
}

/**
 * The position after the line `line` (as lineOf took it) where `status` has its `name` line,
 * searching from `from`; -1 when it differs. Allocates nothing.
 */
function afterLine(status: string, name: string, nlName: string, line: string, from: number): number {
  let at = lineStart(status, name, nlName, from);
  // The kernel writes Uid, Gid, Groups in this order; should it not, search the whole text.
  if (at < 0 && from > 0) at = lineStart(status, name, nlName, 0);
  if (line === '') return at < 0 ? from : -1;
  if (at < 0 || !status.startsWith(line, at)) return -1;
  // A line taken without a newline was the text's last: it must still end the text.
  return line.endsWith('\n') || at + line.length === status.length ? at + line.length - 1 : -1;
}

/** Whether `status` has the credential lines `c` (about a microsecond on a 1.4-KB status). */
export function sameCredentials(status: string, c: CredentialLines): boolean {
  const u = afterLine(status, 'Uid:', '\nUid:', c.uid, 0);
  const g = u < 0 ? -1 : afterLine(status, 'Gid:', '\nGid:', c.gid, u);
  return g >= 0 && afterLine(status, 'Groups:', '\nGroups:', c.groups, g) >= 0;
}

/** A FetchX509SVID stream (or a bundles stream of a federating node), told when the connection's selectors are due again. */
export interface SelectorWatcher {
  wake(): void;
}

export class WorkloadConnection {
  readonly id = randomUUID().slice(0, 8);
  /** The last complete attestation and until when (performance.now(), a monotonic clock) it may be reused. */
  private cache: ConnAttestation | undefined;
  /** The caller's credential lines that `cache`'s attestation saw (before and after it ran). */
  private cacheCredentials: CredentialLines | undefined;
  private inflight: Promise<ConnAttestation> | undefined;
  /** Attestations started on this connection; `inflight` is number `started`. */
  private started = 0;
  /** Open FetchX509SVID streams, each told to re-check when the selectors are due again. */
  private readonly x509Streams = new LinkedList<SelectorWatcher>();
  /**
   * The timer that wakes the streams when the cached selectors expire. It is left running when
   * the last stream ends (a stream usually lives a millisecond; arming and cancelling a deadline
   * per call cost more than one that fires with nobody to wake), and cancelled when the
   * connection closes.
   */
  private reattest: CancelDeadline | undefined;
  /** Open calls (a list, not a Set: see linked-list.ts). */
  readonly calls = new LinkedList<Call>();
  poisoned = false;

  constructor(
    readonly peer: CallerConnection,
    readonly session: ServerHttp2Session,
    private readonly policy: AttestationPolicy,
  ) {}

  /** Track `call` until it ends. */
  addCall(call: Call): void {
    call.trackIn(this.calls);
  }

  /** Logs an error of one of the connection's streams (one listener for all of them). */
  readonly onStreamError = (e: Error): void => {
    this.policy.logger.debug({ conn: this.id, err: e.message }, 'stream error');
  };

  /** The connection is closed: stop its timer. */
  closed(): void {
    this.reattest?.();
    this.reattest = undefined;
  }

  /** End every open call with `code`. */
  finishCalls(code: GrpcStatusCode, message: string): void {
    for (const c of this.calls.values()) c.finish(code, message);
  }

  /** Close the connection because its caller changed; its calls end Unavailable. */
  poison(reason: string): void {
    if (this.poisoned) return;
    this.poisoned = true;
    this.policy.onCallerChanged();
    this.policy.logger.warn({ conn: this.id, pid: this.peer.caller.pid, uid: this.peer.caller.uid, reason }, 'caller changed since it connected; closing connection');
    this.reattest?.();
    this.reattest = undefined;
    this.finishCalls(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
    try {
      this.session.close();
    } catch {
      // already closing
    }
    setTimeout(() => this.session.destroy(), 1000).unref();
  }

  /**
   * The caller's selectors (see the header). `fresh`: an attestation that starts after this call
   * (before a stream push).
   */
  async attest(fresh = false): Promise<ConnAttestation> {
    const need = fresh ? this.started + 1 : 0;
    for (;;) {
      if (!fresh) {
        const c = this.cachedAttestation();
        if (c !== undefined) return c;
      } else if (this.poisoned) throw new GrpcError(GrpcStatus.UNAVAILABLE, CLOSING);
      const running = this.inflight;
      if (running === undefined) break;
      if (this.started >= need) return running;
      // An attestation that began before a fresh one was asked for: let it end, then start anew.
      await running.catch(() => undefined);
    }
    this.started++;
    const p = this.attestNow();
    this.inflight = p;
    try {
      return await p;
    } finally {
      if (this.inflight === p) this.inflight = undefined;
    }
  }

  /**
   * The cached selectors when they may still be used, without waiting: the same as `attest()`
   * when that would answer from the cache (the exe and the credentials checked first; a caller
   * that changed poisons the connection and this throws Unavailable), else undefined — then call
   * `attest()`.
   */
  cachedAttestation(): ConnAttestation | undefined {
    if (this.poisoned) throw new GrpcError(GrpcStatus.UNAVAILABLE, CLOSING);
    const c = this.cache;
    if (c === undefined || performance.now() >= c.until) return undefined;
    let status: string;
    try {
      this.peer.checkImage();
      // The held file, read again from its start: it cannot describe a process that took the pid over.
      status = this.peer.statusText();
    } catch (e) {
      this.poison((e as Error).message);
      throw new GrpcError(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
    }
    if (this.cacheCredentials !== undefined && sameCredentials(status, this.cacheCredentials)) return c;
    // The ids changed since the attestation (setuid, setgid, setgroups). Effective ids other than
    // at connect: what the next attestation's check would find, found now. Anything else (groups
    // dropped, say): the selectors may differ, so they are attested anew.
    let reason: string | undefined;
    try {
      const now = parseStatus(status);
      const { uid, gid } = this.peer.caller;
      if (now.uids[1] !== uid || now.gids[1] !== gid) reason = `pid ${this.peer.caller.pid} credentials changed since connect (uid ${uid}→${now.uids[1]}, gid ${gid}→${now.gids[1]})`;
    } catch (e) {
      reason = (e as Error).message;
    }
    if (reason !== undefined) {
      this.poison(reason);
      throw new GrpcError(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
    }
    this.cache = undefined;
    this.cacheCredentials = undefined;
    return undefined;
  }

  private async attestNow(): Promise<ConnAttestation> {
    const { attestors, logger, attestTimeoutMs, selectorCacheMs, schedule } = this.policy;
    try {
      await this.peer.ready;
      const before = this.peer.statusText();
      // The lines last seen, when they are still these (the usual case): nothing new to keep.
      const last = this.cacheCredentials;
      const seen = last !== undefined && sameCredentials(before, last) ? last : credentialLines(before);
      // The built-in attestors read status as `before` (see CallerConnection.attestationFiles):
      // their selectors describe the very lines `seen` records.
      const r = await attestCaller(this.peer.caller, attestors, logger, attestTimeoutMs, schedule, this.peer.attestationFiles(before));
      // The check's own status read, after every attestor had finished, is the one compared with
      // `seen` (a further read would add nothing: any change after it is what the next cached
      // call's credential check sees).
      const after = this.peer.checkUnchanged();
      // Credentials that changed while the attestors ran (within what checkUnchanged allows:
      // groups, real or saved ids): the selectors may describe either; answer this call, keep nothing.
      const steady = sameCredentials(after, seen);
      logger.debug({ conn: this.id, pid: this.peer.caller.pid, selectors: r.selectors, failed: r.failed }, 'workload attested');
      if (r.failed.length > 0 || !steady) return { selectors: r.selectors, failed: r.failed.length > 0 ? r.failed : NO_FAILURES, x509Key: x509KeyOf(r.selectors), until: 0 };
      const until = performance.now() + selectorCacheMs * (0.5 + Math.random() / 2);
      const prev = this.cache;
      this.cacheCredentials = seen;
      // The same selectors as last time (the usual case): keep the old object and only extend
      // it, so that re-attesting a steady caller leaves nothing new behind to outlive the
      // young generation (connections re-attest about once a second).
      if (prev && sameSelectors(prev.selectors, r.selectors)) {
        prev.until = until;
        return prev;
      }
      this.cache = { selectors: r.selectors, failed: NO_FAILURES, x509Key: x509KeyOf(r.selectors), until };
      return this.cache;
    } catch (e) {
      this.poison(errorMessage(e));
      throw new GrpcError(GrpcStatus.UNAVAILABLE, CALLER_CHANGED);
    }
  }

  /**
   * Have `w` woken whenever the connection's cached selectors expire, so that a FetchX509SVID
   * stream re-attests on the same schedule as unary calls even when nothing is pushed. Returns
   * the entry that unwatchSelectors() removes.
   */
  watchSelectors(w: SelectorWatcher): ListEntry<SelectorWatcher> {
    const entry = this.x509Streams.add(w);
    this.armReattest();
    return entry;
  }

  /** Stop waking a watcher added by watchSelectors(). */
  unwatchSelectors(entry: ListEntry<SelectorWatcher>): void {
    this.x509Streams.remove(entry);
  }

  /** Arm the timer that wakes the selector watchers (no-op when armed, poisoned or unwatched). */
  armReattest(): void {
    if (this.reattest !== undefined || this.poisoned || this.x509Streams.size === 0) return;
    const c = this.cache;
    const now = performance.now();
    const delay = c && c.until > now ? c.until - now : this.policy.selectorCacheMs / 2;
    this.reattest = this.policy.schedule(delay, () => {
      this.reattest = undefined;
      for (const w of this.x509Streams.values()) w.wake();
    });
  }
}
