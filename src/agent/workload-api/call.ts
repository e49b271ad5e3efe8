/**
 * One gRPC call on one HTTP/2 stream: response headers sent once, messages written as shared
 * pre-framed buffers, the status as trailers (or trailers-only when nothing was sent), cleanups
 * run once when the call ends, and the call's service time (stream in → first message or status
 * out) reported once.
 */
import http2, { type ServerHttp2Stream } from 'node:http2';
import { encodeGrpcMessage, frameMessage, type GrpcStatusCode } from './grpc.js';

/** The trailers of a call that ended OK without a message (sent as they are, never changed). */
const OK_TRAILERS: Record<string, string> = Object.freeze({ 'grpc-status': '0' }) as Record<string, string>;

export class Call {
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
    this.trailers = OK_TRAILERS;
    this.sendHeaders();
    try {
      this.stream.end(framed);
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
