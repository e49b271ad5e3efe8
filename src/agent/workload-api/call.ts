/**
 * One gRPC call on one HTTP/2 stream: response headers sent once, messages written as shared
 * pre-framed buffers, the status as trailers (or trailers-only when nothing was sent), cleanups
 * run once when the call ends, and the call's service time (stream in → first message or status
 * out) reported once.
 */
import http2, { type ServerHttp2Stream } from 'node:http2';
import { encodeGrpcMessage, frameMessage, type GrpcStatusCode } from './grpc.js';
import type { LinkedList, ListEntry } from './linked-list.js';

/** The trailers of a call that ended OK without a message (sent as they are, never changed). */
const OK_TRAILERS: Record<string, string> = Object.freeze({ 'grpc-status': '0' }) as Record<string, string>;

/** The response headers of every call that sends a message (never changed). */
const RESPONSE_HEADERS = Object.freeze({ ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-accept-encoding': 'identity' });
const WAIT_FOR_TRAILERS = Object.freeze({ waitForTrailers: true });

/** Where a call's service time goes (./service-time.ts ServiceTimeHistogram). */
export interface ServiceTimeRecorder {
  record(ms: number): void;
}

/**
 * The 'wantTrailers' listener of a call that ended OK: one shared function (the stream is
 * `this`), so that a unary answer allocates no closure for its trailers.
 */
function sendOkTrailers(this: ServerHttp2Stream): void {
  try {
    this.sendTrailers(OK_TRAILERS);
  } catch {
    // stream went away
  }
}

export class Call {
  private headersSent = false;
  done = false;
  /** The request message has been read completely. */
  requestRead = false;
  /** Cleanups to run when the call ends (most calls have one or two). */
  private cleanups: (() => void)[] | undefined;
  /** The list of open calls that holds this call until it ends (its connection's), and its entry there. */
  private tracking: LinkedList<Call> | undefined;
  private trackEntry: ListEntry<Call> | undefined;

  private readonly startedAt = performance.now();
  private answered = false;

  constructor(
    readonly stream: ServerHttp2Stream,
    private readonly times: ServiceTimeRecorder,
  ) {
    stream.on('close', () => this.markDone());
  }

  /** The first response message or status is going out: the call's service time ends here. */
  private answer(): void {
    if (this.answered) return;
    this.answered = true;
    this.times.record(performance.now() - this.startedAt);
  }

  /** Be a member of `list` (a connection's open calls) until the call ends. */
  trackIn(list: LinkedList<Call>): void {
    if (this.done) return;
    this.tracking = list;
    this.trackEntry = list.add(this);
  }

  onDone(fn: () => void): void {
    if (this.done) fn();
    else (this.cleanups ??= []).push(fn);
  }

  private markDone(): void {
    if (this.done) return;
    this.done = true;
    if (this.tracking !== undefined) {
      this.tracking.remove(this.trackEntry!);
      this.tracking = undefined;
      this.trackEntry = undefined;
    }
    const fns = this.cleanups;
    if (fns === undefined) return;
    this.cleanups = undefined;
    for (const fn of fns) {
      try {
        fn();
      } catch {
        // cleanup must not throw
      }
    }
  }

  /**
   * Response headers, once. The trailers are sent when the stream ends (see endWith()); a stream
   * the client cancels (the usual end of FetchX509SVID) never asks for them.
   */
  private sendHeaders(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.stream.respond(RESPONSE_HEADERS, WAIT_FOR_TRAILERS);
  }

  /** End the stream after the headers went out; `trailers` follow the last DATA frame. */
  private endWith(trailers: Record<string, string>, framed?: Buffer): void {
    if (trailers === OK_TRAILERS) this.stream.on('wantTrailers', sendOkTrailers);
    else {
      this.stream.on('wantTrailers', () => {
        try {
          this.stream.sendTrailers(trailers);
        } catch {
          // stream went away
        }
      });
    }
    if (framed === undefined) this.stream.end();
    else this.stream.end(framed);
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

  /**
   * Answer a unary call: one already framed message (shared, never mutated) and status OK, in a
   * single write that also ends the stream (the trailers follow it), instead of a write and then
   * an end. Returns false when the stream is closed.
   */
  reply(framed: Buffer): boolean {
    if (this.done || this.stream.destroyed || this.stream.closed) {
      this.markDone();
      return false;
    }
    this.answer();
    this.sendHeaders();
    try {
      this.endWith(OK_TRAILERS, framed);
    } catch {
      // stream went away
    }
    this.markDone();
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
    const t: Record<string, string> = code === 0 && (message === undefined || message.length === 0) ? OK_TRAILERS : { 'grpc-status': String(code) };
    if (message !== undefined && message.length > 0) t['grpc-message'] = encodeGrpcMessage(message);
    try {
      if (!this.headersSent) {
        this.headersSent = true;
        this.stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto', ...t }, { endStream: true });
        if (!this.stream.writableEnded) this.stream.end();
      } else {
        this.endWith(t);
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
