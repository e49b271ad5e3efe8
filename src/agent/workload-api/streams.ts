/**
 * Server-streaming calls (FetchX509SVID, FetchX509Bundles, FetchJWTBundles): the first message at
 * once, then a new one (full state) whenever the identity source changes what it would be. The
 * server holds one subscription to the source and tells every open stream through `changed()`
 * (streams come and go with every call; see linked-list.ts for why they are not each a listener of
 * the source). A stream whose client does not read is coalesced: while its buffer waits to drain,
 * changes only mark it, and one message with the latest state goes out after the drain.
 */
import type { Logger } from 'pino';
import type { Call } from './call.js';
import type { ConnAttestation, WorkloadConnection } from './connection.js';
import { GrpcStatus } from './grpc.js';
import { LinkedList } from './linked-list.js';
import type { ResponseCache } from './responses.js';
import { grpcStatusForError, noIdentity, type StatusAndMessage } from './status.js';
import { errorMessage, errorFields } from '../../errors.js';

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

  /**
   * Serve a stream whose message does not depend on the caller: `build` returns a framed message
   * (from the response cache) or null, which ends the call with `empty`.
   */
  serve(call: Call, build: () => Buffer | null, empty: StatusAndMessage): void {
    const first = build();
    if (first === null) {
      call.finish(empty.code, empty.message);
      return;
    }
    let last = first;
    call.sendFramed(first);
    const flush = (): void => {
      let next: Buffer | null;
      try {
        next = build();
      } catch (e) {
        this.logger.error(errorFields(e), 'building a Workload API update failed');
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
    const schedule = this.pacer(call, flush);
    const node = this.watchers.add(schedule);
    call.onDone(() => this.watchers.remove(node));
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
  serveX509(conn: WorkloadConnection, call: Call, first: ConnAttestation): void {
    let a = first;
    const msg = this.responses.x509For(a);
    if (msg === null) {
      const n = noIdentity(a);
      call.finish(n.code, n.message);
      return;
    }
    let last = msg;
    call.sendFramed(msg);
    const update = async (): Promise<void> => {
      a = await conn.attest();
      conn.armReattest();
      let next = this.responses.x509For(a);
      if (next !== null && next !== last && !next.equals(last)) {
        // A push: attest again first, so that nothing goes out on selectors older than the push.
        a = await conn.attest(true);
        conn.armReattest();
        next = this.responses.x509For(a);
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
