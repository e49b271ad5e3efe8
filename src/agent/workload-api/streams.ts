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
import type { ConnAttestation, WorkloadConnection } from './connection.js';
import { LinkedList } from './linked-list.js';
import type { ResponseCache } from './responses.js';
import { NO_BUNDLE, grpcStatusForError, noIdentity, type StatusAndMessage } from './status.js';
import { errorMessage } from '../../errors.js';

export class Streams {
  /** Open streaming calls, each waiting to send a new message when the identity source changes. */
  private readonly watchers = new LinkedList<() => void>();

  constructor(
    private readonly responses: ResponseCache,
    private readonly logger: Logger,
  ) {}

  /** Streams open and waiting for changes. */
  get size(): number {
    return this.watchers.size;
  }

  /** The identity source changed: every open stream checks whether its message did. */
  changed(): void {
    for (const schedule of this.watchers.values()) schedule();
  }

  /** Serve FetchX509SVID (see serveCaller). */
  serveX509(conn: WorkloadConnection, call: Call, first: ConnAttestation): void {
    const attest = async (fresh: boolean): Promise<ConnAttestation> => {
      const a = await conn.attest(fresh);
      conn.armReattest();
      return a;
    };
    this.serveCaller(conn, call, first, attest, (a) => this.responses.x509For(a), noIdentity);
  }

  /**
   * Serve FetchX509Bundles or FetchJWTBundles: the caller's bundles (its own trust domain's and
   * the foreign ones its entries federate with), pushed again when that set or a bundle in it
   * changes (see serveCaller). While the node holds no foreign bundle every caller gets the same
   * answer (the own bundle), and the stream does not attest (`first` is undefined).
   */
  serveBundles(conn: WorkloadConnection, call: Call, first: ConnAttestation | undefined, build: (a: ConnAttestation | undefined) => Buffer | null): void {
    const attest = async (fresh: boolean): Promise<ConnAttestation | undefined> => {
      if (!this.responses.federating()) return undefined;
      const a = await conn.attest(fresh);
      conn.armReattest();
      return a;
    };
    this.serveCaller(conn, call, first, attest, build, () => NO_BUNDLE);
  }

  /**
   * Serve a stream whose message depends on the caller: `build` gives the framed message for an
   * attestation (from the response cache), or null, which ends the call with `empty(a)`. The
   * first message now, then a new one whenever it changes. Every update first takes the
   * connection's selectors through `attest(false)`, as a unary call would (cached for at most
   * `selectorCacheMs`, the exe checked on a cache hit; the connection's re-attestation timer
   * wakes the stream when they are due), and before a new message is pushed the caller is
   * attested again from scratch (`attest(true)`): a caller whose selectors changed gets the
   * message for its new selectors, or `empty` and the end of the stream; a caller that changed
   * (exec, uid, pid) gets Unavailable and its connection is closed.
   */
  private serveCaller<A>(
    conn: WorkloadConnection,
    call: Call,
    first: A,
    attest: (fresh: boolean) => Promise<A>,
    build: (a: A) => Buffer | null,
    empty: (a: A) => StatusAndMessage,
  ): void {
    let a = first;
    const msg = build(a);
    if (msg === null) {
      const n = empty(a);
      call.finish(n.code, n.message);
      return;
    }
    let last = msg;
    call.sendFramed(msg);
    const update = async (): Promise<void> => {
      a = await attest(false);
      let next = build(a);
      if (next !== null && next !== last && !next.equals(last)) {
        // A push: attest again first, so that nothing goes out on selectors older than the push.
        a = await attest(true);
        next = build(a);
      }
      if (call.done) return;
      if (next === null) {
        const n = empty(a);
        call.finish(n.code, n.message);
        return;
      }
      if (next === last || next.equals(last)) return;
      last = next;
      call.sendFramed(next);
    };
    let running = false;
    let again = false;
    const flush = (): void => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      update()
        .catch((e: unknown) => {
          const m = grpcStatusForError(e);
          if (m.internal) this.logger.error({ conn: conn.id, err: errorMessage(e) }, 'building a Workload API update failed');
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
    const schedule = this.pacer(call, flush);
    const node = this.watchers.add(schedule);
    const unwatch = conn.watchSelectors(schedule);
    call.onDone(() => {
      this.watchers.remove(node);
      unwatch();
    });
  }

  /**
   * The stream's `schedule`: runs `update` on the next turn of the event loop (many changes in
   * one turn run it once), and not while the stream waits to drain — then once after the drain.
   */
  private pacer(call: Call, update: () => void): () => void {
    let scheduled = false;
    let waitingDrain = false;
    const flush = (): void => {
      scheduled = false;
      if (call.done) return;
      if (call.needsDrain) {
        waitingDrain = true;
        return;
      }
      update();
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
    call.onDone(() => call.stream.off('drain', onDrain));
    return schedule;
  }
}
