/**
 * Connection limits (issue 11 item 3): uids holding idle streams must not lock other workloads
 * or root out, and a refused client is told which limit it hit. Peer uids are assigned per
 * connection by a peerCred stand-in (the kernel's values otherwise); the calls used are
 * FetchX509Bundles streams, which need no attestation.
 */
import { closeSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { admit, connectionLimits } from '../../src/agent/workload-api/limits.js';
import { loadSys } from '../../src/native/sys.js';
import { WorkloadApiClient } from '../../src/workload/client.js';
import { FakeSource, makePki, startTestServer } from './support.js';

interface Opened {
  served: boolean;
  status: string | undefined;
  message: string | undefined;
  close(): void;
}

/** Open a connection and a FetchX509Bundles stream on it; kept open when served. */
function openStream(socket: string): Promise<Opened> {
  return new Promise((resolve) => {
    const conn = net.connect(socket);
    const session = http2.connect('http://localhost', { createConnection: () => conn });
    const r: Opened = { served: false, status: undefined, message: undefined, close: () => session.destroy() };
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!r.served) session.destroy();
      resolve(r);
    };
    const timer = setTimeout(finish, 5000);
    session.on('error', finish);
    session.on('close', finish);
    const req = session.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509Bundles', 'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true' });
    const take = (h: http2.IncomingHttpHeaders): void => {
      if (h['grpc-status'] !== undefined) r.status = String(h['grpc-status']);
      if (h['grpc-message'] !== undefined) r.message = decodeURIComponent(String(h['grpc-message']));
    };
    req.on('response', (h) => {
      take(h);
      if (r.status !== undefined) finish();
    });
    req.on('trailers', (h) => {
      take(h);
      finish();
    });
    req.on('data', () => {
      r.served = true;
      finish();
    });
    req.on('error', finish);
    req.on('close', finish);
    req.end(Buffer.alloc(5));
  });
}

/** A server whose connections get the peer uids pushed on `uids`, in connection order. */
async function serverWithUids(extra: Record<string, number>): Promise<{ t: Awaited<ReturnType<typeof startTestServer>>; uids: number[] }> {
  const sys = loadSys();
  const uids: number[] = [];
  const t = await startTestServer(new FakeSource(makePki()), new Map(), {
    ...extra,
    peerCred: (fd) => {
      const c = sys.peerCred(fd);
      if (c.pidfd !== undefined) closeSync(c.pidfd);
      return { pid: c.pid, uid: uids.shift() ?? 0, gid: 0 };
    },
  });
  return { t, uids };
}

const open: Opened[] = [];
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

async function as(t: { socket: string }, uids: number[], uid: number): Promise<Opened> {
  uids.push(uid);
  const o = await openStream(t.socket);
  open.push(o);
  return o;
}

describe('connection limits', () => {
  it('two uids holding idle streams do not lock out a third uid or root', async () => {
    const { t, uids } = await serverWithUids({ maxConnections: 24 });
    try {
      for (const uid of [1000, 1001]) for (let i = 0; i < 12; i++) await as(t, uids, uid);
      const third = await as(t, uids, 1002);
      expect(third.served).toBe(true);
      const root = await as(t, uids, 0);
      expect(root.served).toBe(true);
    } finally {
      await t.cleanup();
    }
  });

  it('each refusal names the limit it hit, and closes', async () => {
    // 24 in all; 3 per uid; 3 kept for root; the other uids' last 3 kept for uids holding < 1
    const { t, uids } = await serverWithUids({ maxConnections: 24, maxConnectionsPerUid: 3, reservedConnections: 3 });
    try {
      for (let i = 0; i < 3; i++) expect((await as(t, uids, 1000)).served).toBe(true);
      const perUid = await as(t, uids, 1000);
      expect(perUid).toMatchObject({ served: false, status: '8' }); // RESOURCE_EXHAUSTED
      expect(perUid.message).toMatch(/^workload_api\.uid_connection_limit: uid 1000 holds 3 .*maxConnectionsPerUid 3/);
      for (const uid of [1001, 1002, 1003, 1004, 1005]) for (let i = 0; i < 3; i++) expect((await as(t, uids, uid)).served).toBe(true);
      // 18 held by other uids: a uid that already holds one may not take the last 3 of their share…
      expect((await as(t, uids, 1006)).served).toBe(true);
      const heavy = await as(t, uids, 1006);
      expect(heavy.status).toBe('8');
      expect(heavy.message).toMatch(/^workload_api\.connections_reserved: uid 1006 holds 1 .*fewer than 1/);
      // …but uids without connections may
      expect((await as(t, uids, 1007)).served).toBe(true);
      expect((await as(t, uids, 1008)).served).toBe(true);
      // 21 held by other uids: the rest is root's
      const kept = await as(t, uids, 1009);
      expect(kept.message).toMatch(/^workload_api\.connections_reserved: .*kept for root/);
      for (let i = 0; i < 3; i++) expect((await as(t, uids, 0)).served).toBe(true);
      const full = await as(t, uids, 0);
      expect(full.message).toMatch(/^workload_api\.connection_limit: the agent holds 24 .*maxConnections 24/);
      // the library's own (grpc-js) client shows the reason too
      const c = new WorkloadApiClient(t.socket);
      try {
        await expect(c.fetchJwtBundles(5000)).rejects.toMatchObject({ message: expect.stringContaining('workload_api.connection_limit') });
      } finally {
        c.close();
      }
      expect(t.server.stats().connections).toBe(24);
      expect(t.server.stats().rejectedConnections).toBeGreaterThanOrEqual(5); // grpc-js may retry
      // a refused connection is closed: only the 24 admitted remain after a while
      await new Promise((r) => setTimeout(r, 300));
      expect(t.server.stats().connections).toBe(24);
    } finally {
      await t.cleanup();
    }
  });

  it('root cannot take the other uids\' share either', () => {
    const l = connectionLimits({ maxConnections: 1024 });
    expect(l).toMatchObject({ total: 1024, perUid: 128, root: 896, nonRoot: 896, shared: 768, small: 32 });
    expect(admit(l, 0, 895, 0, 895)).toBeUndefined();
    expect(admit(l, 0, 896, 0, 896)).toMatchObject({ code: 'workload_api.uid_connection_limit' });
    // with root at its limit, other uids still have 128
    expect(admit(l, 1000, 0, 0, 896)).toBeUndefined();
    expect(admit(l, 1000, 0, 127, 1023)).toBeUndefined();
    expect(admit(l, 1000, 0, 128, 1024)).toMatchObject({ code: 'workload_api.connection_limit' });
  });

  it('refuses limits that leave no room', () => {
    expect(() => connectionLimits({ maxConnections: 2 })).toThrow(expect.objectContaining({ code: 'workload_api.bad_connection_limits' }));
    expect(() => connectionLimits({ maxConnections: 30, reservedConnections: 11 })).toThrow(expect.objectContaining({ code: 'workload_api.bad_connection_limits' }));
    expect(() => connectionLimits({ maxConnections: 30, reservedConnections: 10, maxConnectionsPerUid: 11 })).toThrow(
      expect.objectContaining({ code: 'workload_api.bad_connection_limits', message: expect.stringContaining('maxConnectionsPerUid') }),
    );
    expect(() => connectionLimits({ maxConnections: 30, maxConnectionsPerUid: 0.5 })).toThrow(expect.objectContaining({ code: 'workload_api.bad_connection_limits' }));
  });
});
