/** A raw HTTP/2 gRPC request for tests that need to send what a well-behaved client would not. */
import http2, { type IncomingHttpHeaders } from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';

export interface RawResult {
  httpStatus: number;
  grpcStatus: string | undefined;
  grpcMessage: string | undefined;
  data: Buffer;
  /** True when the stream was reset or the session failed before a status arrived. */
  reset: boolean;
}

export function frame(msg: Uint8Array, compressed = 0): Buffer {
  const b = Buffer.alloc(5 + msg.length);
  b[0] = compressed;
  b.writeUInt32BE(msg.length, 1);
  b.set(msg, 5);
  return b;
}

export function rawGrpc(opts: {
  socket?: string;
  connection?: Duplex;
  path: string;
  headers?: Record<string, string>;
  body: Buffer;
  timeoutMs?: number;
  /** Keep the session open after the first message (for streams); resolves at first data. */
  untilFirstData?: boolean;
}): Promise<RawResult> {
  return new Promise((resolve) => {
    const conn = opts.connection ?? net.connect(opts.socket!);
    const session = http2.connect('http://localhost', { createConnection: () => conn });
    let resolved = false;
    const result: RawResult = { httpStatus: 0, grpcStatus: undefined, grpcMessage: undefined, data: Buffer.alloc(0), reset: false };
    const done = (): void => {
      if (resolved) return;
      resolved = true;
      clearTimeout(timer);
      session.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      result.reset = true;
      done();
    }, opts.timeoutMs ?? 10_000);
    session.on('error', () => {
      result.reset = true;
      done();
    });
    session.on('close', () => {
      if (!resolved) result.reset = result.grpcStatus === undefined;
      done();
    });
    const req = session.request({
      ':method': 'POST',
      ':path': opts.path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...(opts.headers ?? {}),
    });
    const take = (h: IncomingHttpHeaders): void => {
      if (h['grpc-status'] !== undefined) result.grpcStatus = String(h['grpc-status']);
      if (h['grpc-message'] !== undefined) result.grpcMessage = decodeURIComponent(String(h['grpc-message']));
    };
    req.on('response', (h) => {
      result.httpStatus = Number(h[':status']);
      take(h);
    });
    req.on('trailers', take);
    req.on('data', (c: Buffer) => {
      result.data = Buffer.concat([result.data, c]);
      if (opts.untilFirstData) done();
    });
    req.on('error', () => {
      result.reset = result.grpcStatus === undefined;
      done();
    });
    req.on('close', () => done());
    req.end(opts.body);
  });
}
