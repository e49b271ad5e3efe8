/**
 * The parts of the gRPC-over-HTTP/2 wire protocol (grpc/grpc doc/PROTOCOL-HTTP2.md) that the
 * Workload API server needs, written by hand on top of node:http2 so that the server owns each
 * accepted Unix connection (and thus knows its peer credentials). Only identity encoding is
 * supported: a compressed message is refused.
 *
 * Length-Prefixed-Message = Compressed-Flag (1 byte) ‖ Message-Length (4 bytes, big endian) ‖ Message
 */
import type { ServerHttp2Stream } from 'node:http2';
import { timerDeadline, type CancelDeadline, type ScheduleDeadline } from './deadlines.js';
import type { ByteBudget } from './limits.js';

export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;
export type GrpcStatusCode = (typeof GrpcStatus)[keyof typeof GrpcStatus];

export const STATUS_NAMES: Record<number, string> = Object.fromEntries(Object.entries(GrpcStatus).map(([k, v]) => [v, k]));

/** An error that becomes a gRPC status. */
export class GrpcError extends Error {
  constructor(
    readonly code: GrpcStatusCode,
    message: string,
  ) {
    super(message);
    this.name = 'GrpcError';
  }
}

export function frameMessage(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + msg.length);
  out[0] = 0;
  out.writeUInt32BE(msg.length, 1);
  out.set(msg, 5);
  return out;
}

/**
 * grpc-message is percent-encoded: bytes outside 0x20–0x7E and '%' itself become %XX (of the
 * UTF-8 encoding). Messages are clipped to keep trailers small.
 */
export function encodeGrpcMessage(s: string): string {
  const clipped = s.length > 512 ? `${s.slice(0, 509)}...` : s;
  let out = '';
  for (const b of Buffer.from(clipped, 'utf8')) {
    if (b >= 0x20 && b <= 0x7e && b !== 0x25) out += String.fromCharCode(b);
    else out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

const TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };

/** grpc-timeout → milliseconds; undefined when absent; GrpcError when malformed. */
export function parseGrpcTimeout(v: string | string[] | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (Array.isArray(v)) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'grpc-timeout given twice');
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'malformed grpc-timeout header');
  return Number(m[1]) * TIMEOUT_UNITS[m[2]!]!;
}

/** Request bytes being received, per connection, per uid and in total (./limits.ts). */
export { ByteBudget } from './limits.js';

/** A message split over chunks grows its buffer by doubling from this size (HTTP/2's default largest frame). */
const FIRST_PARTIAL_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);

/**
 * Read exactly one length-prefixed message from a request stream (unary and server-streaming
 * calls carry one). The 5-byte prefix is checked as soon as it arrives, so an oversized
 * declaration is refused before its body is buffered; nothing beyond `maxBytes` is ever held.
 *
 * The body's bytes are taken from `budget` as they arrive, never from the declared length: a
 * message that arrives whole takes its length; one split over chunks grows its buffer by doubling
 * (from 16 KiB, never beyond the declared length) and takes each growth, so it holds at most twice
 * what arrived or 16 KiB, whichever is more. A growth that does not fit the connection's, its uid's or the server's
 * share ends this call with ResourceExhausted naming the limit. A message begun and not complete
 * that receives no byte for `budget.stallMs` ends with DeadlineExceeded. All is given back when
 * the call's read ends, however it ends.
 */
export function readSingleMessage(
  stream: ServerHttp2Stream,
  maxBytes: number,
  timeoutMs: number,
  budget: ByteBudget,
  schedule: ScheduleDeadline = timerDeadline,
): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const share = budget.shareOf(stream);
    const stallMs = budget.stallMs;
    let header: Buffer | undefined;
    let headerFill = 0;
    /** Only for a prefix split over chunks (rare); a whole one is read where it arrived. */
    let headBuf: Buffer | undefined;
    /** Declared length of the message being read. */
    let len = 0;
    /** The buffer for its body, `bodyFill` bytes received; its length is what is taken from the budget. */
    let body: Buffer | undefined;
    let bodyFill = 0;
    let taken = 0;
    let messages = 0;
    let messageDone = false;
    let done = false;
    /** When a byte last arrived, while a message is incomplete (performance.now()). */
    let lastByteAt = 0;
    let cancelStall: CancelDeadline | undefined;

    const finish = (err: GrpcError | undefined, value?: Buffer): void => {
      if (done) return;
      done = true;
      cancelTimeout();
      cancelStall?.();
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onClose);
      budget.give(taken, share);
      taken = 0;
      if (err) reject(err);
      else resolve(value!);
    };
    const cancelTimeout = schedule(timeoutMs, () => finish(new GrpcError(GrpcStatus.DEADLINE_EXCEEDED, 'request message not received in time')));
    const onStall = (): void => {
      cancelStall = undefined;
      if (done) return;
      const quiet = performance.now() - lastByteAt;
      if (quiet >= stallMs) {
        finish(new GrpcError(GrpcStatus.DEADLINE_EXCEEDED, `request message stalled: no byte of it for ${stallMs} ms (requestStallTimeoutMs)`));
      } else {
        cancelStall = schedule(stallMs - quiet, onStall);
      }
    };

    /** Make room for `n` more body bytes; false when the budget refused (the call is finished). */
    const room = (n: number): boolean => {
      const need = bodyFill + n;
      if (body !== undefined && need <= body.length) return true;
      // Whole in this chunk: exactly its length; else double, from 16 KiB, up to the length.
      const size = body === undefined && n === len ? len : Math.min(len, Math.max(need, 2 * (body?.length ?? 0), FIRST_PARTIAL_BYTES));
      const refused = budget.take(size - taken, share);
      if (refused !== undefined) {
        finish(new GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, refused));
        return false;
      }
      taken = size;
      const grown = Buffer.allocUnsafe(size);
      if (body !== undefined) body.copy(grown, 0, 0, bodyFill);
      body = grown;
      return true;
    };

    const onData = (chunk: Buffer): void => {
      let off = 0;
      while (off < chunk.length && !done) {
        if (header === undefined) {
          if (headerFill === 0 && chunk.length - off >= 5) {
            header = chunk.subarray(off, off + 5);
            off += 5;
          } else {
            headBuf ??= Buffer.alloc(5);
            const n = Math.min(5 - headerFill, chunk.length - off);
            chunk.copy(headBuf, headerFill, off, off + n);
            headerFill += n;
            off += n;
            if (headerFill < 5) break;
            header = headBuf;
          }
          messages++;
          if (messages > 1) return finish(new GrpcError(GrpcStatus.INTERNAL, 'more than one request message on a unary or server-streaming call'));
          const flag = header[0]!;
          if (flag === 1) return finish(new GrpcError(GrpcStatus.INTERNAL, 'compressed request message, but no compression was negotiated'));
          if (flag !== 0) return finish(new GrpcError(GrpcStatus.INTERNAL, `invalid compressed-flag byte ${flag}`));
          len = header.readUInt32BE(1);
          if (len > maxBytes) {
            return finish(new GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, `request message of ${len} bytes is larger than the limit (maxRequestBytes ${maxBytes})`));
          }
          bodyFill = 0;
          if (len === 0) {
            // Message complete; any further byte starts a second message.
            body = EMPTY;
            header = undefined;
            headerFill = 0;
            messageDone = true;
          }
          continue;
        }
        const n = Math.min(len - bodyFill, chunk.length - off);
        if (!room(n)) return;
        chunk.copy(body!, bodyFill, off, off + n);
        bodyFill += n;
        off += n;
        if (bodyFill === len) {
          header = undefined;
          headerFill = 0;
          messageDone = true;
        }
      }
      // A message begun and not complete must keep coming.
      if (!done && (header !== undefined || headerFill !== 0) && stallMs !== Number.POSITIVE_INFINITY) {
        lastByteAt = performance.now();
        cancelStall ??= schedule(stallMs, onStall);
      } else if (cancelStall !== undefined) {
        cancelStall();
        cancelStall = undefined;
      }
    };
    const onEnd = (): void => {
      if (!messageDone || headerFill !== 0) {
        finish(new GrpcError(GrpcStatus.INTERNAL, messages === 0 ? 'request has no message' : 'request message is truncated'));
        return;
      }
      finish(undefined, body!);
    };
    const onClose = (): void => finish(new GrpcError(GrpcStatus.CANCELLED, 'stream closed by the client'));
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('close', onClose);
  });
}
