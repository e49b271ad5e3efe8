/**
 * Bad input and bad clients: the server stays up, bounded, and keeps serving well-behaved clients.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../../src/workload/client.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { frame, rawGrpc } from './h2.js';
import { FakeSource, TD, makePki, startTestServer } from './support.js';

const ME = `unix:uid:${process.getuid!()}`;
const HDR = { 'workload.spiffe.io': 'true' };

function pbString(field: number, s: string): Buffer {
  const b = Buffer.from(s);
  const len: number[] = [];
  let n = b.length;
  do {
    len.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>>= 7;
  } while (n > 0);
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), b]);
}

async function servedPromptly(socket: string, ms = 3000): Promise<number> {
  const t0 = performance.now();
  const c = new WorkloadApiClient(socket);
  try {
    const ctx = await c.fetchX509Context(ms);
    expect(ctx.svids[0]!.spiffeId).toBe(`spiffe://${TD}/wl`);
  } finally {
    c.close();
  }
  return performance.now() - t0;
}

function closedByServer(sock: net.Socket, withinMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve(true);
    const t = setTimeout(() => resolve(false), withinMs);
    sock.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    sock.on('error', () => undefined);
    sock.resume();
  });
}

function connect(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

describe('Workload API under bad input', () => {
  const source = new FakeSource(makePki());
  let t: Awaited<ReturnType<typeof startTestServer>>;
  beforeAll(async () => {
    source.addEntry({ id: 'wl', spiffeId: `spiffe://${TD}/wl`, selectors: [ME] });
    t = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]), { requestTimeoutMs: 500 });
  });
  afterAll(async () => {
    await t.cleanup();
  });

  it('garbage bytes and HTTP/1.1 on the socket: the connection is dropped, the server keeps serving', async () => {
    const a = await connect(t.socket);
    a.write(randomBytes(64 * 1024));
    const b = await connect(t.socket);
    b.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const c = await connect(t.socket);
    c.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + 'x'.repeat(100)); // valid preface, garbage frames
    expect(await closedByServer(a, 3000)).toBe(true);
    expect(await closedByServer(b, 3000)).toBe(true);
    expect(await closedByServer(c, 3000)).toBe(true);
    expect(await servedPromptly(t.socket)).toBeLessThan(3000);
  });

  it('gRPC framing violations get proper statuses', async () => {
    const call = (body: Buffer, headers: Record<string, string> = HDR, path = '/SpiffeWorkloadAPI/FetchJWTSVID') =>
      rawGrpc({ socket: t.socket, path, headers, body });
    const aud = pbString(1, 'x');
    expect((await call(frame(aud, 1))).grpcStatus).toBe('13'); // compressed flag without encoding
    expect((await call(frame(aud, 7))).grpcStatus).toBe('13'); // invalid flag byte
    expect((await call(Buffer.concat([frame(aud), frame(aud)]))).grpcStatus).toBe('13'); // two messages
    expect((await call(frame(aud).subarray(0, 6))).grpcStatus).toBe('13'); // truncated
    expect((await call(Buffer.alloc(0))).grpcStatus).toBe('13'); // no message
    expect((await call(frame(aud), { ...HDR, 'grpc-encoding': 'gzip' })).grpcStatus).toBe('12');
    expect((await call(frame(Buffer.from([0x0a, 0x50, 0x61])))).grpcStatus).toBe('3'); // length past the end
    expect((await call(frame(Buffer.from([0x0a, 0x02, 0xc3, 0x28])))).grpcStatus).toBe('3'); // invalid UTF-8
    expect((await call(frame(Buffer.from([0x0b])))).grpcStatus).toBe('3'); // group wire type
    const ok = await call(frame(Buffer.concat([aud, Buffer.from([0x18, 0x01])]))); // unknown varint field 3 is skipped
    expect(ok.grpcStatus).toBe('0');
    const ct = await rawGrpc({ socket: t.socket, path: '/SpiffeWorkloadAPI/FetchJWTSVID', headers: { ...HDR, 'content-type': 'text/plain' }, body: frame(aud) });
    expect(ct.httpStatus).toBe(415);
    expect((await call(frame(aud), { ...HDR, 'grpc-timeout': 'soon' })).grpcStatus).toBe('3');
  });

  it('a stream with a grpc-timeout ends with DeadlineExceeded when it passes, and one beyond 2^31-1 ms is honoured', async () => {
    /** Open FetchX509Bundles with `timeout`; resolves with its status (or 'open' if none came within `watchMs`). */
    const watch = (timeout: string, watchMs: number): Promise<{ status: string; messages: number }> =>
      new Promise((resolve) => {
        const session = http2.connect('http://localhost', { createConnection: () => net.connect(t.socket) });
        session.on('error', () => undefined);
        let messages = 0;
        const done = (status: string): void => {
          clearTimeout(timer);
          session.destroy();
          resolve({ status, messages });
        };
        const timer = setTimeout(() => done('open'), watchMs);
        const req = session.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509Bundles', 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': timeout, ...HDR });
        req.on('data', () => messages++);
        req.on('trailers', (tr) => done(String(tr['grpc-status'])));
        req.on('response', (h) => {
          if (h['grpc-status'] !== undefined) done(String(h['grpc-status']));
        });
        req.end(frame(Buffer.alloc(0)));
      });
    const [short, long] = await Promise.all([watch('300m', 5000), watch('99999999H', 1500)]);
    expect(short).toEqual({ status: '4', messages: 1 }); // DEADLINE_EXCEEDED after the bundle was sent
    expect(long).toEqual({ status: 'open', messages: 1 }); // still streaming (a Node timer would have clamped it to 1 ms)
  });

  it('a request whose body never completes times out without holding the server', async () => {
    const session = http2.connect('http://localhost', { createConnection: () => net.connect(t.socket) });
    const req = session.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchJWTSVID', 'content-type': 'application/grpc', ...HDR });
    req.write(frame(pbString(1, 'x')).subarray(0, 3));
    const status = await new Promise<string | undefined>((resolve) => {
      req.on('response', (h) => h['grpc-status'] !== undefined && resolve(String(h['grpc-status'])));
      req.on('trailers', (h) => resolve(String(h['grpc-status'])));
      req.on('error', () => resolve(undefined));
      req.resume();
    });
    session.destroy();
    expect(status).toBe('4'); // DEADLINE_EXCEEDED
  });

  it('a FetchJWTSVID with 10,000 audiences is refused with InvalidArgument, promptly', async () => {
    const msg = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => pbString(1, `a${i}`))); // about 70 KB, under maxRequestBytes
    const t0 = performance.now();
    const r = await rawGrpc({ socket: t.socket, path: '/SpiffeWorkloadAPI/FetchJWTSVID', headers: HDR, body: frame(msg) });
    expect(r.grpcStatus).toBe('3');
    expect(r.grpcMessage).toContain('too many audiences');
    expect(performance.now() - t0).toBeLessThan(2000);
    const jwtBefore = source.jwtCalls;
    // also through grpc-js
    const c = new WorkloadApiClient(t.socket);
    try {
      await expect(c.fetchJwtSvids(Array.from({ length: 10_000 }, (_, i) => `a${i}`))).rejects.toMatchObject({ code: 'workload_client.invalid_argument' });
    } finally {
      c.close();
    }
    expect(source.jwtCalls).toBe(jwtBefore);
    expect(await servedPromptly(t.socket)).toBeLessThan(3000);
  });

  it('a message larger than the limit is refused from its length prefix alone', async () => {
    const small = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]), { maxRequestBytes: 1024 });
    try {
      const body = Buffer.alloc(5);
      body.writeUInt32BE(5 * 1024 * 1024, 1); // announces 5 MiB, sends none of it
      const r = await rawGrpc({ socket: small.socket, path: '/SpiffeWorkloadAPI/FetchJWTSVID', headers: HDR, body });
      expect(r.grpcStatus).toBe('8'); // RESOURCE_EXHAUSTED
      expect(await servedPromptly(small.socket)).toBeLessThan(3000);
    } finally {
      await small.cleanup();
    }
  });

  it('a 5 MiB request sent in full is refused and the connection stays usable', async () => {
    const { WorkloadApiClient: C } = await import('../../src/workload/client.js');
    const c = new C(t.socket);
    try {
      await expect(c.validateJwtSvid('x'.repeat(5 * 1024 * 1024), 'aud')).rejects.toMatchObject({ message: expect.stringContaining('RESOURCE_EXHAUSTED') });
      // same client, same connection
      expect((await c.fetchX509Context()).svids).toHaveLength(1);
    } finally {
      c.close();
    }
  });

  it('300 connections that never read: output stays bounded, others are served promptly', async () => {
    const big = new FakeSource(makePki());
    big.addEntry({ id: 'wl', spiffeId: `spiffe://${TD}/wl`, selectors: [ME] });
    // ~25 KB per X509SVIDResponse, so unbounded queueing would be obvious.
    for (let i = 0; i < 40; i++) big.federated.set(`fed${i}.org`, [makePki(`fed${i}.org`).rootDer]);
    const fdsBefore = readdirSync('/proc/self/fd').length;
    // The 150 silent connections must outlive the test, however long a loaded machine takes
    // (each of the 150 streaming connections re-attests about 1.3 times a second).
    const s = await startTestServer(big, new Map([['unix', createUnixAttestor({ hashBinaries: false })]]), { handshakeTimeoutMs: 120_000 });
    const idle: net.Socket[] = [];
    const sessions: http2.ClientHttp2Session[] = [];
    try {
      for (let i = 0; i < 150; i++) idle.push(await connect(s.socket)); // connect, send nothing
      const firstData: Promise<number>[] = [];
      for (let i = 0; i < 150; i++) {
        const sess = http2.connect('http://localhost', { createConnection: () => net.connect(s.socket) });
        sess.on('error', () => undefined);
        sessions.push(sess);
        const req = sess.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509SVID', 'content-type': 'application/grpc', te: 'trailers', ...HDR });
        req.on('error', () => undefined);
        req.end(frame(Buffer.alloc(0)));
        firstData.push(
          new Promise((resolve) => {
            req.once('data', (c: Buffer) => {
              req.pause(); // never read again
              resolve(c.length);
            });
          }),
        );
      }
      await Promise.all(firstData);
      const msgSize = 25 * 1024;
      for (let i = 0; i < 30; i++) {
        big.rotate('wl');
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, 200));
      const st = s.server.stats();
      expect(st.connections).toBeGreaterThanOrEqual(300);
      // Without coalescing this grows to ~150 × 30 messages (≈ 100 MB); with it, about one message per stream.
      expect(st.bufferedOutputBytes).toBeLessThan(150 * (16 * 1024 + 2 * msgSize));
      expect(await servedPromptly(s.socket)).toBeLessThan(3000);
      const c = new WorkloadApiClient(s.socket);
      try {
        expect((await c.fetchJwtSvids(['x'])).length).toBe(1);
      } finally {
        c.close();
      }
    } finally {
      for (const x of idle) x.destroy();
      for (const x of sessions) x.destroy();
      await s.cleanup();
    }
    // every connection's socket and pidfd were released
    await new Promise((r) => setTimeout(r, 200));
    expect(readdirSync('/proc/self/fd').length).toBeLessThanOrEqual(fdsBefore + 5);
  });

  it('caps connections and drops connections that never send the HTTP/2 preface', async () => {
    const s = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]), { maxConnections: 10, handshakeTimeoutMs: 300 });
    try {
      const socks: net.Socket[] = [];
      for (let i = 0; i < 15; i++) socks.push(await connect(s.socket));
      const closed = await Promise.all(socks.map((x) => closedByServer(x, 150)));
      expect(closed.filter(Boolean).length).toBeGreaterThanOrEqual(5);
      expect(s.server.stats().rejectedConnections).toBeGreaterThanOrEqual(5);
      // the silent ones are dropped after the handshake timeout
      const later = await Promise.all(socks.map((x) => closedByServer(x, 2000)));
      expect(later.every(Boolean)).toBe(true);
      expect(await servedPromptly(s.socket)).toBeLessThan(3000);
    } finally {
      await s.cleanup();
    }
  });

  it('refuses to start on a path that is not a stale socket, and replaces a stale socket', async () => {
    const { startWorkloadApi } = await import('../../src/agent/workload-api/server.js');
    const { silentLogger, socketDir } = await import('./support.js');
    const { writeFileSync, statSync } = await import('node:fs');
    const d = socketDir();
    try {
      writeFileSync(d.socket, 'not a socket');
      await expect(startWorkloadApi({ socketPath: d.socket, trustDomain: TD, source, attestors: new Map(), logger: silentLogger })).rejects.toMatchObject({
        code: 'workload_api.socket_path_in_use',
      });
      const { unlinkSync } = await import('node:fs');
      unlinkSync(d.socket);
      // a stale socket: bound, then its server closed without unlinking
      const stale = net.createServer();
      await new Promise<void>((r) => stale.listen(d.socket, r));
      await expect(startWorkloadApi({ socketPath: d.socket, trustDomain: TD, source, attestors: new Map(), logger: silentLogger })).rejects.toMatchObject({
        code: 'workload_api.socket_path_in_use',
      });
      await new Promise<void>((r) => stale.close(() => r()));
      // net.Server.close() unlinks; make a stale one the way a crashed process leaves it
      const { spawnSync } = await import('node:child_process');
      const py = spawnSync('/usr/bin/python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()', d.socket]);
      expect(py.status).toBe(0);
      expect(statSync(d.socket).isSocket()).toBe(true);
      const srv = await startWorkloadApi({ socketPath: `${d.dir}/sub/agent.sock`, trustDomain: TD, source, attestors: new Map(), logger: silentLogger });
      expect(statSync(`${d.dir}/sub/agent.sock`).mode & 0o777).toBe(0o777);
      expect(statSync(`${d.dir}/sub`).mode & 0o777).toBe(0o755);
      await srv.close();
      const srv2 = await startWorkloadApi({ socketPath: d.socket, trustDomain: TD, source, attestors: new Map(), logger: silentLogger });
      expect(srv2.address).toBe(`unix://${d.socket}`);
      await srv2.close();
    } finally {
      d.cleanup();
    }
  });
});
