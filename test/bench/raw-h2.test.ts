/**
 * The benchmarks' raw HTTP/2 gRPC load client (bench/support/raw-h2.ts) against a real node:http2
 * server on a Unix socket (and, for protocol corners node:http2 will not produce, a hand-written
 * server speaking raw frames).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSvidFields, rawH2Client, type RawH2Client } from '../../bench/support/raw-h2.js';
import { workloadCodecs } from '../../src/agent/workload-api/proto.js';

const codecs = workloadCodecs();
const X509_PATH = '/SpiffeWorkloadAPI/FetchX509SVID';
const JWT_PATH = '/SpiffeWorkloadAPI/FetchJWTSVID';
const MAX_STREAMS = 100;

let dir: string;
let seq = 0;
const sockPath = (name: string): string => join(dir, `${name}-${seq++}.sock`);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-raw-h2-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function grpcFrame(msg: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + msg.length);
  out.writeUInt32BE(msg.length, 1);
  out.set(msg, 5);
  return out;
}

function x509Response(n: number, svidBytes: number): Uint8Array {
  return codecs.X509SVIDResponse.encode({
    svids: Array.from({ length: n }, (_, i) => ({
      spiffe_id: `spiffe://example.org/w${i}`,
      x509_svid: Buffer.alloc(svidBytes, i + 1),
      x509_svid_key: Buffer.alloc(121, 7),
      bundle: Buffer.alloc(300, 9),
      hint: `h${i}`,
    })),
    // Other top-level fields the svids count must skip.
    crl: [Buffer.from('crl-bytes')],
    federated_bundles: { 'spiffe://other.org': Buffer.from('bundle') },
  }).finish();
}

function jwtResponse(n: number, tokenChars: number): Uint8Array {
  return codecs.JWTSVIDResponse.encode({
    svids: Array.from({ length: n }, (_, i) => ({ spiffe_id: `spiffe://example.org/w${i}`, svid: 'eyJ'.padEnd(tokenChars, String(i)), hint: `h${i}` })),
  }).finish();
}

type Mode = 'ok' | 'two' | 'trailersOnly' | 'hang' | 'rst' | 'garbage' | 'twoMessages' | 'bigHeaders';

interface TestServer {
  path: string;
  mode: Mode;
  /** Size of each x509_svid / JWT token in responses. */
  size: number;
  problems: string[];
  requests: number;
  hung: http2.ServerHttp2Stream[];
  sessions: Set<http2.ServerHttp2Session>;
  /** The raw connections, to drop them without HTTP/2 goodbyes. */
  sockets: Set<net.Socket>;
  close(): Promise<void>;
}

/** Checks one request the way the Workload API server would see it; returns what was wrong. */
function checkRequest(headers: http2.IncomingHttpHeaders, body: Buffer): string[] {
  const problems: string[] = [];
  const want: Record<string, string> = {
    ':method': 'POST',
    ':scheme': 'http',
    ':authority': 'localhost',
    'content-type': 'application/grpc',
    te: 'trailers',
    'workload.spiffe.io': 'true',
  };
  for (const [k, v] of Object.entries(want)) if (headers[k] !== v) problems.push(`header ${k}=${String(headers[k])}`);
  if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5) {
    problems.push(`bad gRPC framing (${body.length} bytes)`);
    return problems;
  }
  const msg = body.subarray(5);
  if (headers[':path'] === X509_PATH) {
    codecs.X509SVIDRequest.decode(msg);
    if (msg.length !== 0) problems.push('X509SVIDRequest not empty');
  } else if (headers[':path'] === JWT_PATH) {
    const r = codecs.JWTSVIDRequest.decode(msg) as unknown as { audience: string[]; spiffe_id: string };
    if (JSON.stringify(r.audience) !== '["bench"]' || r.spiffe_id !== '') problems.push(`JWTSVIDRequest ${JSON.stringify(r)}`);
  } else problems.push(`path ${String(headers[':path'])}`);
  return problems;
}

async function startServer(options: http2.ServerOptions = {}): Promise<TestServer> {
  const server = http2.createServer({ settings: { maxConcurrentStreams: MAX_STREAMS }, ...options });
  const ts: TestServer = {
    path: sockPath('h2'),
    mode: 'ok',
    size: 600,
    problems: [],
    requests: 0,
    hung: [],
    sessions: new Set(),
    sockets: new Set(),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of ts.sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (sock: net.Socket) => {
    ts.sockets.add(sock);
    sock.on('close', () => ts.sockets.delete(sock));
  });
  server.on('session', (s) => {
    ts.sessions.add(s);
    s.on('error', () => undefined);
    s.on('close', () => ts.sessions.delete(s));
  });
  server.on('stream', (st, headers) => {
    st.on('error', () => undefined);
    const chunks: Buffer[] = [];
    st.on('data', (c: Buffer) => chunks.push(c));
    st.on('end', () => {
      ts.requests++;
      ts.problems.push(...checkRequest(headers, Buffer.concat(chunks)));
      const x509 = headers[':path'] === X509_PATH;
      const svids = ts.mode === 'two' ? 2 : 3;
      const msg = grpcFrame(x509 ? x509Response(svids, ts.size) : jwtResponse(svids, ts.size));
      const big = ts.mode === 'bigHeaders' ? { 'x-pad': 'Zq'.repeat(15_000) } : {};
      switch (ts.mode) {
        case 'hang':
          ts.hung.push(st);
          return;
        case 'rst':
          st.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return;
        case 'trailersOnly':
          st.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '7', 'grpc-message': 'denied' }, { endStream: true });
          return;
        default:
      }
      const body = ts.mode === 'garbage' ? grpcFrame(Uint8Array.from([0x0a, 0x10, 0x01])) : ts.mode === 'twoMessages' ? Buffer.concat([msg, msg]) : msg;
      if (x509) {
        st.respond({ ':status': 200, 'content-type': 'application/grpc', ...big });
        st.write(body); // a stream: stays open until the client cancels
      } else {
        st.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        st.once('wantTrailers', () => st.sendTrailers({ 'grpc-status': '0', ...big }));
        st.end(body);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(ts.path, resolve));
  return ts;
}

interface SeenFrame {
  type: number;
  flags: number;
  length: number;
  stream: number;
  payload: Buffer;
}

/** Splits a byte stream into frames (for observing traffic in tests). */
class FrameRecorder {
  private buf = Buffer.alloc(0);
  readonly frames: SeenFrame[] = [];
  constructor(private skip = 0) {}
  push(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d]);
    if (this.skip > 0) {
      const k = Math.min(this.skip, this.buf.length);
      this.buf = this.buf.subarray(k);
      this.skip -= k;
    }
    while (this.buf.length >= 9) {
      const length = this.buf.readUIntBE(0, 3);
      if (this.buf.length < 9 + length) break;
      this.frames.push({ type: this.buf[3]!, flags: this.buf[4]!, length, stream: this.buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(this.buf.subarray(9, 9 + length)) });
      this.buf = this.buf.subarray(9 + length);
    }
  }
}

/**
 * A proxy in front of `target` that forwards the server's bytes to the client in tiny pieces
 * (1–13 bytes, one per event-loop turn), so frames and frame headers arrive split across many
 * socket reads. Records the server's frames.
 */
async function startChoppingProxy(target: string): Promise<{ path: string; seen: FrameRecorder; pieces: () => number; close: () => Promise<void> }> {
  const path = sockPath('proxy');
  const seen = new FrameRecorder();
  let pieces = 0;
  let rnd = 12345;
  const socks = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const up = net.connect(target);
    socks.add(client).add(up);
    client.on('error', () => undefined);
    up.on('error', () => undefined);
    client.on('data', (d) => up.write(d));
    const queue: Buffer[] = [];
    let pumping = false;
    const pump = async (): Promise<void> => {
      pumping = true;
      while (queue.length > 0) {
        let d = queue.shift()!;
        while (d.length > 0) {
          rnd = (rnd * 1103515245 + 12345) % 2147483648;
          const k = Math.min(d.length, 1 + (rnd % 13));
          if (client.destroyed) return;
          client.write(d.subarray(0, k));
          pieces++;
          d = d.subarray(k);
          await new Promise((r) => setImmediate(r));
        }
      }
      pumping = false;
    };
    up.on('data', (d: Buffer) => {
      seen.push(d);
      queue.push(d);
      if (!pumping) void pump();
    });
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    seen,
    pieces: () => pieces,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of socks) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function waitFor(pred: () => boolean, what: string, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** `rounds` rounds of `pairs` concurrent FetchX509SVID + `pairs` concurrent FetchJWTSVID calls. */
async function batches(c: RawH2Client, rounds: number, pairs: number): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    const calls: Promise<void>[] = [];
    for (let i = 0; i < pairs; i++) calls.push(c.x509(), c.jwt());
    await Promise.all(calls);
  }
}

describe('rawH2Client against node:http2', () => {
  let ts: TestServer;
  beforeAll(async () => {
    ts = await startServer();
  });
  afterAll(async () => {
    await ts.close();
  });

  it('runs 500 FetchX509SVID + 500 FetchJWTSVID concurrently on one connection with the right requests', async () => {
    ts.mode = 'ok';
    ts.problems = [];
    ts.requests = 0;
    const c = await rawH2Client(ts.path);
    try {
      await batches(c, 25, 20);
      // Finished and cancelled streams are closed on both sides: rounds of exactly the server's
      // limit keep fitting.
      await batches(c, 3, MAX_STREAMS / 2);
      expect(ts.problems).toEqual([]);
      expect(ts.requests).toBe(1000 + 3 * MAX_STREAMS);
      expect(c.stats().streamsOpened).toBe(1000 + 3 * MAX_STREAMS);
    } finally {
      c.close();
    }
  });

  it('rejects responses with the wrong number of SVIDs, and accepts them when told to expect that many', async () => {
    ts.mode = 'two';
    const c = await rawH2Client(ts.path);
    const c2 = await rawH2Client(ts.path, { expectSvids: 2 });
    try {
      await expect(c.x509()).rejects.toThrow('FetchX509SVID: expected 3 SVIDs, got 2');
      await expect(c.jwt()).rejects.toThrow('FetchJWTSVID: expected 3 SVIDs, got 2');
      await c2.x509();
      await c2.jwt();
      // The connection stays usable after failed calls.
      ts.mode = 'ok';
      await c.x509();
      await c.jwt();
    } finally {
      c.close();
      c2.close();
    }
  });

  it('rejects a trailers-only error response (grpc-status 7), a server reset, malformed and extra messages', async () => {
    const c = await rawH2Client(ts.path);
    try {
      ts.mode = 'trailersOnly';
      await expect(c.x509()).rejects.toThrow('FetchX509SVID ended without a response message (non-OK gRPC status?)');
      await expect(c.jwt()).rejects.toThrow('FetchJWTSVID ended without a response message (non-OK gRPC status?)');
      ts.mode = 'rst';
      await expect(c.jwt()).rejects.toThrow('stream reset by the server (RST_STREAM error code 7)');
      ts.mode = 'garbage';
      await expect(c.x509()).rejects.toThrow(/FetchX509SVID: malformed response message: field 1 length 16 exceeds/);
      ts.mode = 'twoMessages';
      await expect(c.jwt()).rejects.toThrow('FetchJWTSVID: more than one response message');
      await c.x509(); // the first message is all FetchX509SVID waits for
      ts.mode = 'ok';
      await c.jwt();
    } finally {
      c.close();
    }
  });

  it('fails outstanding calls when the server closes the connection, and calls after that', async () => {
    ts.mode = 'hang';
    ts.hung = [];
    const c = await rawH2Client(ts.path);
    const calls = Array.from({ length: MAX_STREAMS }, (_, i) => (i % 2 ? c.jwt() : c.x509()).then(() => 'ok', (e: Error) => e.message));
    await waitFor(() => ts.hung.length === MAX_STREAMS, 'the server to see all streams');
    await expect(c.x509()).rejects.toThrow(`call would exceed the server's SETTINGS_MAX_CONCURRENT_STREAMS (${MAX_STREAMS})`);
    for (const s of ts.sockets) s.destroy();
    const results = await Promise.all(calls);
    for (const r of results) expect(r).toMatch(/^Fetch(X509|JWT)SVID: connection closed by the server$/);
    await expect(c.jwt()).rejects.toThrow('connection is gone: connection closed by the server');
    ts.mode = 'ok';
  });

  it('on GOAWAY fails the calls above the last stream id and refuses new ones', async () => {
    ts.mode = 'hang';
    ts.hung = [];
    const c = await rawH2Client(ts.path);
    const calls = [c.x509(), c.jwt(), c.x509()].map((p) => p.then(() => 'ok', (e: Error) => e.message));
    await waitFor(() => ts.hung.length === 3, 'the server to see 3 streams');
    const session = ts.hung[0]!.session!;
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, 3);
    expect(await calls[2]).toMatch(/^FetchX509SVID: not processed: server sent GOAWAY \(error code 0, last stream 3\)/);
    await expect(c.jwt()).rejects.toThrow('connection is going away');
    // Streams 1 and 3 are still in flight until the connection goes.
    for (const s of ts.sockets) s.destroy();
    expect(await calls[0]).toBe('FetchX509SVID: connection closed by the server');
    expect(await calls[1]).toBe('FetchJWTSVID: connection closed by the server');
    ts.mode = 'ok';
  });

  it('keeps long-running calls apart from many later ones (stream-id slot collisions)', async () => {
    ts.mode = 'hang';
    ts.hung = [];
    const c = await rawH2Client(ts.path);
    try {
      const early = [c.x509(), c.jwt()];
      await waitFor(() => ts.hung.length === 2, 'the server to see 2 streams');
      ts.mode = 'ok';
      // Ids 5..1203: every slot of a small table is reused many times while streams 1 and 3 wait.
      for (let i = 0; i < 150; i++) await Promise.all([c.x509(), c.jwt(), c.x509(), c.jwt()]);
      const [x, j] = ts.hung as [http2.ServerHttp2Stream, http2.ServerHttp2Stream];
      x.respond({ ':status': 200, 'content-type': 'application/grpc' });
      x.write(grpcFrame(x509Response(3, 600)));
      j.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      j.once('wantTrailers', () => j.sendTrailers({ 'grpc-status': '0' }));
      j.end(grpcFrame(jwtResponse(3, 600)));
      await Promise.all(early);
      expect(c.stats().streamsOpened).toBe(602);
    } finally {
      c.close();
      ts.mode = 'ok';
    }
  });

  it('keeps the connection receive window open with WINDOW_UPDATEs past the threshold', async () => {
    ts.mode = 'ok';
    ts.size = 5000; // ~16 KB per FetchX509SVID response
    ts.problems = [];
    // No initial raise: without WINDOW_UPDATEs the server would stall after 64 KiB.
    const c = await rawH2Client(ts.path, { connectionWindow: 65535, windowUpdateThreshold: 16384 });
    try {
      await batches(c, 6, 10);
      const st = c.stats();
      expect(st.dataBytesReceived).toBeGreaterThan(20 * 65535);
      // Each update returns at least the threshold and less than threshold + one frame.
      expect(st.windowUpdatesSent).toBeGreaterThanOrEqual(Math.floor((st.dataBytesReceived - 65535) / (16384 + 16384)));
      expect(ts.problems).toEqual([]);
    } finally {
      c.close();
      ts.size = 600;
    }
  });

  it('reassembles messages spanning several DATA frames and header blocks with CONTINUATION', async () => {
    const c = await rawH2Client(ts.path);
    try {
      ts.mode = 'ok';
      ts.size = 20_000; // ~62 KB x509 messages, ~60 KB JWT messages: four DATA frames each
      await batches(c, 2, 10);
      ts.mode = 'bigHeaders'; // response headers (x509) and trailers with END_STREAM (jwt) over 16 KiB
      await batches(c, 2, 10);
      ts.mode = 'ok';
      ts.size = 600;
      await c.jwt();
    } finally {
      c.close();
      ts.mode = 'ok';
      ts.size = 600;
    }
  });

  it('parses frames split across many tiny socket reads (through a chopping proxy)', async () => {
    const proxy = await startChoppingProxy(ts.path);
    const c = await rawH2Client(proxy.path);
    try {
      ts.mode = 'ok';
      ts.size = 20_000;
      await batches(c, 1, 2);
      ts.size = 600;
      await batches(c, 2, 5);
      ts.mode = 'bigHeaders';
      await batches(c, 1, 2);
      ts.mode = 'trailersOnly';
      await expect(c.jwt()).rejects.toThrow('ended without a response message');
      ts.mode = 'ok';
      await c.jwt();
      const types = new Set(proxy.seen.frames.map((f) => f.type));
      expect(types).toContain(0x9); // CONTINUATION went through
      expect(proxy.seen.frames.filter((f) => f.type === 0x0 && f.length === 16384).length).toBeGreaterThan(0);
      expect(proxy.pieces()).toBeGreaterThan(10_000);
    } finally {
      c.close();
      ts.mode = 'ok';
      ts.size = 600;
      await proxy.close();
    }
  });

  it('strips padding from DATA and HEADERS frames', async () => {
    const padded = await startServer({ paddingStrategy: http2.constants.PADDING_STRATEGY_MAX });
    const proxy = await startChoppingProxy(padded.path);
    const c = await rawH2Client(proxy.path);
    try {
      await batches(c, 2, 5);
      padded.mode = 'trailersOnly';
      await expect(c.x509()).rejects.toThrow('ended without a response message');
      expect(padded.problems).toEqual([]);
      const paddedData = proxy.seen.frames.filter((f) => f.type === 0x0 && (f.flags & 0x8) !== 0);
      const paddedHeaders = proxy.seen.frames.filter((f) => f.type === 0x1 && (f.flags & 0x8) !== 0);
      expect(paddedData.length).toBeGreaterThan(0);
      expect(paddedHeaders.length).toBeGreaterThan(0);
    } finally {
      c.close();
      await proxy.close();
      await padded.close();
    }
  });

  it('close() sends GOAWAY and the server sees the connection end; later calls are refused', async () => {
    ts.mode = 'ok';
    const c = await rawH2Client(ts.path);
    await c.x509();
    const before = ts.sessions.size;
    expect(before).toBeGreaterThan(0);
    c.close();
    await waitFor(() => ts.sessions.size === before - 1, 'the server to close the session');
    await expect(c.x509()).rejects.toThrow('connection is gone: client closed the connection');
  });
});

/** A hand-written server: answers the preface with `settings`, records the client's frames, then runs `script`. */
async function rawServer(
  script: (sock: net.Socket) => void,
  settings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
): Promise<{ path: string; seen: FrameRecorder; prefaces: Buffer[]; close: () => Promise<void> }> {
  const path = sockPath('raw');
  const seen = new FrameRecorder(24);
  const prefaces: Buffer[] = [];
  const socks: net.Socket[] = [];
  const server = net.createServer((sock) => {
    socks.push(sock);
    sock.on('error', () => undefined);
    let first = true;
    sock.on('data', (d: Buffer) => {
      if (first) prefaces.push(Buffer.from(d.subarray(0, 24)));
      first = false;
      seen.push(d);
    });
    sock.write(settings);
    script(sock);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    seen,
    prefaces,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of socks) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('rawH2Client protocol handling (hand-written server)', () => {
  it('sends the preface, SETTINGS and WINDOW_UPDATE, acknowledges SETTINGS and answers PING', async () => {
    const ping = Buffer.from([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    const srv = await rawServer((sock) => sock.write(ping));
    const c = await rawH2Client(srv.path);
    try {
      await waitFor(() => srv.seen.frames.some((f) => f.type === 6), 'PING ACK');
      expect(srv.prefaces[0]!.toString('latin1')).toBe('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      const [settings, wu] = srv.seen.frames;
      expect(settings).toMatchObject({ type: 4, flags: 0, stream: 0, length: 12 });
      expect(settings!.payload.toString('hex')).toBe('000200000000' + '00047fffffff');
      expect(wu).toMatchObject({ type: 8, stream: 0, length: 4 });
      expect(wu!.payload.readUInt32BE(0)).toBe(2 ** 30);
      expect(srv.seen.frames.some((f) => f.type === 4 && f.flags === 1 && f.length === 0)).toBe(true);
      const pingAck = srv.seen.frames.find((f) => f.type === 6)!;
      expect(pingAck.flags).toBe(1);
      expect(pingAck.payload.toString('hex')).toBe('0102030405060708');
    } finally {
      c.close();
      await srv.close();
    }
  });

  it('treats a frame larger than SETTINGS_MAX_FRAME_SIZE as a connection error', async () => {
    const srv = await rawServer((sock) => {
      sock.once('data', () => {
        // Wait for the request, then answer with an oversized DATA frame on stream 1.
        setTimeout(() => {
          const big = Buffer.alloc(9 + 16385);
          big.writeUIntBE(16385, 0, 3);
          big[3] = 0;
          big.writeUInt32BE(1, 5);
          sock.write(big);
        }, 20);
      });
    });
    const c = await rawH2Client(srv.path);
    try {
      const call = c.x509();
      await expect(call).rejects.toThrow('FetchX509SVID: HTTP/2 connection error (code 6): frame of 16385 bytes exceeds SETTINGS_MAX_FRAME_SIZE 16384');
      await waitFor(() => srv.seen.frames.some((f) => f.type === 7), 'GOAWAY');
      const goaway = srv.seen.frames.find((f) => f.type === 7)!;
      expect(goaway.payload.readUInt32BE(4)).toBe(6);
      await expect(c.jwt()).rejects.toThrow('connection is gone');
    } finally {
      c.close();
      await srv.close();
    }
  });

  it('refuses a request that does not fit the server\'s windows', async () => {
    // SETTINGS_INITIAL_WINDOW_SIZE 8: the 12-byte FetchJWTSVID body does not fit, the 5-byte x509 one does.
    const settings = Buffer.from([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 8]);
    const srv = await rawServer(() => undefined, settings);
    const c = await rawH2Client(srv.path);
    try {
      await expect(c.jwt()).rejects.toThrow("request (12 bytes) does not fit the server's SETTINGS_INITIAL_WINDOW_SIZE (8)");
      void c.x509().catch(() => undefined);
      await waitFor(() => srv.seen.frames.some((f) => f.type === 0), 'the x509 request');
      const headers = srv.seen.frames.find((f) => f.type === 1)!;
      expect(headers).toMatchObject({ stream: 1, flags: 0x4 });
      const data = srv.seen.frames.find((f) => f.type === 0)!;
      expect(data).toMatchObject({ stream: 1, flags: 0x1, length: 5 });
    } finally {
      c.close();
      await srv.close();
    }
  });

  it('fails the connection on a padding length that exceeds the DATA payload', async () => {
    const srv = await rawServer((sock) => {
      sock.once('data', () =>
        setTimeout(() => {
          // DATA, PADDED, stream 1, payload 3 bytes with pad length 3.
          sock.write(Buffer.from([0, 0, 3, 0, 0x8, 0, 0, 0, 1, 3, 0, 0]));
        }, 20),
      );
    });
    const c = await rawH2Client(srv.path);
    try {
      await expect(c.jwt()).rejects.toThrow('DATA padding (3 bytes) not smaller than the 3-byte payload');
    } finally {
      c.close();
      await srv.close();
    }
  });
});

describe('rawH2Client setup', () => {
  it('rejects when nothing listens on the socket, and on bad options', async () => {
    await expect(rawH2Client(join(dir, 'nobody.sock'))).rejects.toThrow(/^connection error: connect ENOENT/);
    await expect(rawH2Client(join(dir, 'nobody.sock'), { windowUpdateThreshold: 70_000, connectionWindow: 65535 })).rejects.toThrow('windowUpdateThreshold must be an integer in [1, connectionWindow]');
    await expect(rawH2Client(join(dir, 'nobody.sock'), { connectionWindow: 2 ** 31 })).rejects.toThrow('connectionWindow must be an integer in [65535, 2^31-1]');
    await expect(rawH2Client(join(dir, 'nobody.sock'), { expectSvids: -1 })).rejects.toThrow('expectSvids must be a non-negative integer');
  });
});

describe('countSvidFields', () => {
  it('counts top-level field 1 and skips the other fields', () => {
    expect(countSvidFields(x509Response(3, 50))).toBe(3);
    expect(countSvidFields(x509Response(0, 50))).toBe(0);
    expect(countSvidFields(jwtResponse(5, 40))).toBe(5);
    // varint, fixed64 and fixed32 fields are skipped too
    expect(countSvidFields(Uint8Array.from([0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x0a, 0x00]))).toBe(1);
  });

  it('rejects malformed messages', () => {
    expect(() => countSvidFields(Uint8Array.from([0x0a, 0x05, 1, 2]))).toThrow('field 1 length 5 exceeds the 2 bytes left');
    expect(() => countSvidFields(Uint8Array.from([0x08, 0x01]))).toThrow('field 1 (svids) has wire type 0, expected 2');
    expect(() => countSvidFields(Uint8Array.from([0x0b]))).toThrow('unsupported wire type 3');
    expect(() => countSvidFields(Uint8Array.from([0x80]))).toThrow('truncated field tag');
    expect(() => countSvidFields(Uint8Array.from([0x02, 0x00]))).toThrow('field number 0');
    expect(() => countSvidFields(Uint8Array.from([0x19, 1, 2, 3]))).toThrow('truncated value of field 3');
    expect(() => countSvidFields(Uint8Array.from([0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]))).toThrow('varint longer than 10 bytes');
  });
});
