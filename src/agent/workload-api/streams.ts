/**
 * Server-streaming calls (FetchX509SVID, FetchX509Bundles, FetchJWTBundles), all per caller: the
 * first message at once, then a new one (full state) whenever the identity source or the caller's
 * selectors change what it would be. The
 * server holds one subscription to the source and tells every open stream through `changed()`
 * (streams come and go with every call; see linked-list.ts for why they are not each a listener of
 * the source). A stream whose client does not read is coalesced: while its buffer waits to drain,
 * changes only mark it, and one message with the latest state goes out after the drain.
 */
import type { Logger } from 'pino';
import type { Call } from './call.js';
import type { ConnAttestation, SelectorWatcher, WorkloadConnection } from './connection.js';
import { LinkedList, type ListEntry } from './linked-list.js';
import type { ResponseCache } from './responses.js';
import { NO_BUNDLE, grpcStatusForError, noIdentity, type StatusAndMessage } from './status.js';
import { errorMessage } from '../../errors.js';

/** What a stream serves: the caller's X.509-SVIDs, or its X.509 or JWT bundles. */
export type StreamKind = 'x509' | 'x509-bundles' | 'jwt-bundles';

export class Streams {
  /** Open streaming calls, each waiting to send a new message when the identity source changes. */
  private readonly watchers = new LinkedList<SelectorWatcher>();

  constructor(
    readonly responses: ResponseCache,
    readonly logger: Logger,
  ) {}

  /** Streams open and waiting for changes. */
  get size(): number {
    return this.watchers.size;
  }

  /** The identity source changed: every open stream checks whether its message did. */
  changed(): void {
    for (const w of this.watchers.values()) w.wake();
  }

  /** Serve FetchX509SVID (see CallerStream). */
  serveX509(conn: WorkloadConnection, call: Call, first: ConnAttestation): void {
    this.serve(conn, call, 'x509', first);
  }

  /**
   * Serve FetchX509Bundles or FetchJWTBundles: the caller's bundles (its own trust domain's and
   * the foreign ones its entries federate with), pushed again when that set or a bundle in it
   * changes (see CallerStream). While the node holds no foreign bundle every caller gets the same
   * answer (the own bundle), and the stream does not attest (`first` is undefined).
   */
  serveBundles(conn: WorkloadConnection, call: Call, first: ConnAttestation | undefined, kind: 'x509-bundles' | 'jwt-bundles'): void {
    this.serve(conn, call, kind, first);
  }

  private serve(conn: WorkloadConnection, call: Call, kind: StreamKind, first: ConnAttestation | undefined): void {
    const s = new CallerStream(this, conn, call, kind, first);
    if (!s.start()) return;
    const entry = this.watchers.add(s);
    s.watching(entry);
  }

  /** Stop telling a stream about changes. */
  unwatch(entry: ListEntry<SelectorWatcher>): void {
    this.watchers.remove(entry);
  }
}

function runFlush(s: CallerStream): void {
  s.flush();
}

/**
 * One stream whose message depends on the caller: `build` gives the framed message for an
 * attestation (from the response cache), or null, which ends the call with `empty(a)`. The
 * first message now, then a new one whenever it changes. Every update first takes the
 * connection's selectors through `attest(false)`, as a unary call would (cached for at most
 * `selectorCacheMs`, the exe checked on a cache hit; the connection's re-attestation timer
 * wakes the stream when they are due), and before a new message is pushed the caller is
 * attested again from scratch (`attest(true)`): a caller whose selectors changed gets the
 * message for its new selectors, or `empty` and the end of the stream; a caller that changed
 * (exec, uid, pid) gets Unavailable and its connection is closed.
 *
 * Updates run on the next turn of the event loop after a wake (many wakes in one turn run one
 * update), one at a time, and not while the stream waits to drain: then once after the drain.
 * One object per stream, with no closures: most streams (a client that wants one message) end
 * within a millisecond, before anything wakes them.
 */
class CallerStream implements SelectorWatcher {
  private a: ConnAttestation | undefined;
  private last: Buffer | undefined;
  private scheduled = false;
  private waitingDrain = false;
  private running = false;
  private again = false;
  private sourceEntry: ListEntry<SelectorWatcher> | undefined;
  private connEntry: ListEntry<SelectorWatcher> | undefined;

  constructor(
    private readonly owner: Streams,
    private readonly conn: WorkloadConnection,
    private readonly call: Call,
    private readonly kind: StreamKind,
    first: ConnAttestation | undefined,
  ) {
    this.a = first;
  }

  /** Send the first message (or end the call); true when the stream stays open for updates. */
  start(): boolean {
    const msg = this.build(this.a);
    if (msg === null) {
      this.end();
      return false;
    }
    this.last = msg;
    this.call.sendFramed(msg);
    return true;
  }

  /** Registered with the server's watchers as `entry`: also watch the connection's selectors, until the call ends. */
  watching(entry: ListEntry<SelectorWatcher>): void {
    this.sourceEntry = entry;
    this.connEntry = this.conn.watchSelectors(this);
    this.call.onDone(() => this.unwatch());
  }

  private unwatch(): void {
    if (this.sourceEntry !== undefined) this.owner.unwatch(this.sourceEntry);
    if (this.connEntry !== undefined) this.conn.unwatchSelectors(this.connEntry);
    this.sourceEntry = undefined;
    this.connEntry = undefined;
  }

  /** Something changed (the source, or the selectors are due): check on the next turn. */
  wake(): void {
    if (this.scheduled || this.call.done) return;
    this.scheduled = true;
    setImmediate(runFlush, this);
  }

  flush(): void {
    this.scheduled = false;
    if (this.call.done) return;
    if (this.call.needsDrain) {
      if (!this.waitingDrain) {
        this.waitingDrain = true;
        this.call.stream.once('drain', () => {
          this.waitingDrain = false;
          this.wake();
        });
      }
      return;
    }
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.update()
      .catch((e: unknown) => {
        const m = grpcStatusForError(e);
        if (m.internal) this.owner.logger.error({ conn: this.conn.id, err: errorMessage(e) }, 'building a Workload API update failed');
        this.call.finish(m.code, m.message);
      })
      .finally(() => {
        this.running = false;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  private async update(): Promise<void> {
    const last = this.last!;
    this.a = await this.attest(false);
    let next = this.build(this.a);
    if (next !== null && next !== last && !next.equals(last)) {
      // A push: attest again first, so that nothing goes out on selectors older than the push.
      this.a = await this.attest(true);
      next = this.build(this.a);
    }
    if (this.call.done) return;
    if (next === null) {
      this.end();
      return;
    }
    if (next === last || next.equals(last)) return;
    this.last = next;
    this.call.sendFramed(next);
  }

  /** The connection's selectors (bundle streams of a node without foreign bundles do not attest). */
  private async attest(fresh: boolean): Promise<ConnAttestation | undefined> {
    if (this.kind !== 'x509' && !this.owner.responses.federating()) return undefined;
    const a = await this.conn.attest(fresh);
    this.conn.armReattest();
    return a;
  }

  private build(a: ConnAttestation | undefined): Buffer | null {
    const r = this.owner.responses;
    switch (this.kind) {
      case 'x509':
        return r.x509For(a!);
      case 'x509-bundles':
        return r.x509Bundles(a);
      case 'jwt-bundles':
        return r.jwtBundles(a);
    }
  }

  /** End the call for an empty message: no identity, or no bundle yet. */
  private end(): void {
    const n: StatusAndMessage = this.kind === 'x509' ? noIdentity(this.a!) : NO_BUNDLE;
    this.call.finish(n.code, n.message);
  }
}
