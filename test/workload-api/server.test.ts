import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workloadProtoPath } from '../../src/agent/workload-api/proto.js';
import type { WorkloadApiServer } from '../../src/agent/workload-api/server.js';
import { WorkloadApiClient } from '../../src/workload/client.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { FakeSource, TD, makePki, startTestServer } from './support.js';

const ME = `unix:uid:${process.getuid!()}`;

type Stub = grpc.Client & Record<string, (...a: unknown[]) => unknown>;
function rawStub(socket: string): Stub {
  const def = protoLoader.loadSync(workloadProtoPath(), { keepCase: true, defaults: true, oneofs: true });
  const Ctor = grpc.loadPackageDefinition(def).SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
  return new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as Stub;
}

function unaryRaw(stub: Stub, method: string, req: object, md: grpc.Metadata): Promise<{ err: grpc.ServiceError | null; value: unknown }> {
  return new Promise((resolve) => {
    (stub[method] as (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: unknown) => void) => void).call(
      stub,
      req,
      md,
      { deadline: Date.now() + 10_000 },
      (err, value) => resolve({ err, value }),
    );
  });
}

function streamFirst(stub: Stub, method: string, md: grpc.Metadata): Promise<{ err: grpc.ServiceError | null; value: unknown }> {
  return new Promise((resolve) => {
    const call = (stub[method] as (r: object, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<unknown>).call(stub, {}, md, {
      deadline: Date.now() + 10_000,
    });
    call.on('data', (v) => {
      resolve({ err: null, value: v });
      call.cancel();
    });
    call.on('error', (e: grpc.ServiceError) => resolve({ err: e, value: undefined }));
  });
}

const withHeader = (): grpc.Metadata => {
  const m = new grpc.Metadata();
  m.set('workload.spiffe.io', 'true');
  return m;
};

describe('Workload API server with grpc-js clients', () => {
  const source = new FakeSource(makePki());
  let socket = '';
  let cleanup: () => Promise<void>;
  let attestors: Map<string, WorkloadAttestor>;
  let server: WorkloadApiServer;

  beforeAll(async () => {
    source.addEntry({ id: 'e1', spiffeId: `spiffe://${TD}/me`, selectors: [ME], hint: 'internal' });
    source.addEntry({ id: 'e2', spiffeId: `spiffe://${TD}/me-too`, selectors: [ME, 'unix:gid:0'] });
    source.addEntry({ id: 'e3', spiffeId: `spiffe://${TD}/someone-else`, selectors: ['unix:uid:4242'] });
    source.federated.set('spiffe://other.org', [makePki('other.org').rootDer]);
    attestors = new Map([['unix', createUnixAttestor({ hashBinaries: true })]]);
    const t = await startTestServer(source, attestors);
    socket = t.socket;
    cleanup = t.cleanup;
    server = t.server;
  });
  afterAll(async () => {
    await cleanup();
  });

  it('serves the caller its X.509-SVIDs with chain, key, bundle and federated bundles', async () => {
    const client = new WorkloadApiClient(socket);
    try {
      const ctx = await client.fetchX509Context();
      expect(ctx.svids.map((s) => s.spiffeId).sort()).toEqual([`spiffe://${TD}/me`, `spiffe://${TD}/me-too`]);
      const me = ctx.svids.find((s) => s.spiffeId.endsWith('/me'))!;
      expect(me.hint).toBe('internal');
      expect(me.chain).toHaveLength(2);
      expect(me.bundle).toHaveLength(1);
      expect(me.bundle[0]!.equals(source.pki.rootDer)).toBe(true);
      const leaf = new X509Certificate(me.chain[0]!);
      expect(leaf.subjectAltName).toBe(`URI:spiffe://${TD}/me`);
      expect(leaf.verify(new X509Certificate(me.chain[1]!).publicKey)).toBe(true);
      const pub = createPublicKey(createPrivateKey({ key: me.keyPkcs8Der, format: 'der', type: 'pkcs8' }));
      expect(pub.export({ format: 'der', type: 'spki' }).equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
      expect([...ctx.federatedBundles.keys()]).toEqual(['spiffe://other.org']);
    } finally {
      client.close();
    }
  });

  it('records each call\'s service time per method, errors included, and resets on request', async () => {
    server.serviceTimes(true);
    const client = new WorkloadApiClient(socket);
    const stub = rawStub(socket);
    try {
      await client.fetchX509Context();
      await client.fetchX509Context();
      const r = await streamFirst(stub, 'FetchX509SVID', new grpc.Metadata()); // no security header: an error status
      expect(r.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const t = server.serviceTimes(true);
      expect(Object.keys(t)).toEqual(['FetchX509SVID']);
      const x = t.FetchX509SVID!;
      expect(x.count).toBe(3);
      expect(x.p50Ms).toBeGreaterThan(0);
      expect(x.p50Ms).toBeLessThanOrEqual(x.p99Ms);
      expect(x.p99Ms).toBeLessThanOrEqual(x.maxMs);
      expect(server.serviceTimes()).toEqual({});
    } finally {
      stub.close();
      client.close();
    }
  });

  it('rejects calls without the security header with InvalidArgument', async () => {
    const stub = rawStub(socket);
    try {
      const r1 = await streamFirst(stub, 'FetchX509SVID', new grpc.Metadata());
      expect(r1.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r1.err?.details).toBe('security header missing from request');
      const bad = new grpc.Metadata();
      bad.set('workload.spiffe.io', 'TRUE');
      const r2 = await unaryRaw(stub, 'FetchJWTSVID', { audience: ['a'] }, bad);
      expect(r2.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    } finally {
      stub.close();
    }
  });

  it('answers PermissionDenied "no identity issued" to a caller without entries', async () => {
    const t = await startTestServer(source, new Map([['none', { attest: async () => ['none:x'] }]]));
    const client = new WorkloadApiClient(t.socket);
    try {
      await expect(client.fetchX509Context()).rejects.toMatchObject({ code: 'workload_client.permission_denied', message: expect.stringContaining('no identity issued') });
      await expect(client.fetchJwtSvids(['aud'])).rejects.toMatchObject({ code: 'workload_client.permission_denied' });
      // bundles are public
      const b = await client.fetchX509Bundles();
      expect([...b.keys()].sort()).toEqual(['spiffe://example.org', 'spiffe://other.org']);
    } finally {
      client.close();
      await t.cleanup();
    }
  });

  it('answers Unavailable (retry) instead of PermissionDenied when an attestor failed', async () => {
    const failing = new Map<string, WorkloadAttestor>([
      ['broken', { attest: async () => Promise.reject(new Error('boom')) }],
      ['slow', { attest: (_c, signal) => new Promise((_r, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')))) }],
    ]);
    const t = await startTestServer(source, failing, { attestTimeoutMs: 200 });
    const client = new WorkloadApiClient(t.socket);
    try {
      const err = await client.fetchX509Context().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'workload_client.unavailable' });
      expect((err as Error).message).toContain('broken, slow failed');
    } finally {
      client.close();
      await t.cleanup();
    }
  });

  it('a failing attestor does not hide the selectors of the others', async () => {
    const mixed = new Map<string, WorkloadAttestor>([...attestors, ['broken', { attest: async () => Promise.reject(new Error('boom')) }], ['rogue', { attest: async () => ['unix:uid:4242'] }]]);
    const t = await startTestServer(source, mixed);
    const client = new WorkloadApiClient(t.socket);
    try {
      const ctx = await client.fetchX509Context();
      // rogue's selector outside its namespace is dropped: no someone-else SVID
      expect(ctx.svids.map((s) => s.spiffeId).sort()).toEqual([`spiffe://${TD}/me`, `spiffe://${TD}/me-too`]);
    } finally {
      client.close();
      await t.cleanup();
    }
  });

  it('streams a new full message when an SVID rotates, and ends with PermissionDenied when the entries go', async () => {
    const src = new FakeSource(makePki());
    src.addEntry({ id: 'r1', spiffeId: `spiffe://${TD}/rot`, selectors: [ME] });
    const t = await startTestServer(src, attestors);
    const baseListeners = src.listenerCount;
    const stub = rawStub(t.socket);
    try {
      const call = (stub.FetchX509SVID as (r: object, m: grpc.Metadata) => grpc.ClientReadableStream<{ svids: { x509_svid: Buffer }[] }>).call(
        stub,
        {},
        withHeader(),
      );
      const seen: Buffer[] = [];
      const ended = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
      const got = (n: number): Promise<void> =>
        new Promise((resolve) => {
          const check = (): void => {
            if (seen.length >= n) resolve();
            else setTimeout(check, 10);
          };
          check();
        });
      call.on('data', (m) => seen.push(Buffer.from(m.svids[0]!.x509_svid)));
      await got(1);
      // One subscription to the source for the whole server; the stream is one of its watchers.
      expect(src.listenerCount).toBe(baseListeners);
      expect(t.server.stats().watchingStreams).toBe(1);
      src.fire(); // no change → no message
      const rotated = src.rotate('r1');
      await got(2);
      expect(seen[1]!.subarray(0, rotated.chainDer[0]!.length).equals(rotated.chainDer[0]!)).toBe(true);
      expect(seen[0]!.equals(seen[1]!)).toBe(false);
      await new Promise((r) => setTimeout(r, 50));
      expect(seen).toHaveLength(2);
      src.removeEntry('r1');
      const err = await ended;
      expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
      await new Promise((r) => setTimeout(r, 20));
      expect(src.listenerCount).toBe(baseListeners);
      expect(t.server.stats().watchingStreams).toBe(0);
      expect(t.server.stats().activeCalls).toBe(0);
    } finally {
      stub.close();
      await t.cleanup();
    }
  });

  it('close() ends open streams with Unavailable and removes the socket', async () => {
    const { existsSync } = await import('node:fs');
    const t = await startTestServer(source, attestors);
    const stub = rawStub(t.socket);
    try {
      const call = (stub.FetchX509SVID as (r: object, m: grpc.Metadata) => grpc.ClientReadableStream<unknown>).call(stub, {}, withHeader());
      const first = new Promise((resolve) => call.once('data', resolve));
      const ended = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
      await first;
      await t.server.close();
      expect((await ended).code).toBe(grpc.status.UNAVAILABLE);
      expect(existsSync(t.socket)).toBe(false);
    } finally {
      stub.close();
      await t.cleanup();
    }
  });

  it('FetchJWTSVID returns verifiable tokens and validates its inputs', async () => {
    const client = new WorkloadApiClient(socket);
    const stub = rawStub(socket);
    try {
      const svids = await client.fetchJwtSvids(['svc-a', 'svc-b']);
      expect(svids.map((s) => s.spiffeId).sort()).toEqual([`spiffe://${TD}/me`, `spiffe://${TD}/me-too`]);
      const only = await client.fetchJwtSvids(['svc-a'], `spiffe://${TD}/me-too`);
      expect(only).toHaveLength(1);
      await expect(client.fetchJwtSvids(['svc-a'], `spiffe://${TD}/someone-else`)).rejects.toMatchObject({ code: 'workload_client.permission_denied' });
      const v = await client.validateJwtSvid(svids[0]!.token, 'svc-b');
      expect(v.spiffeId).toBe(svids[0]!.spiffeId);
      expect(v.claims.sub).toBe(svids[0]!.spiffeId);
      expect(v.claims.aud).toEqual(['svc-a', 'svc-b']);
      expect(typeof v.claims.exp).toBe('number');
      await expect(client.validateJwtSvid(svids[0]!.token, 'svc-c')).rejects.toMatchObject({ code: 'workload_client.invalid_argument' });

      const noAud = await unaryRaw(stub, 'FetchJWTSVID', { audience: [] }, withHeader());
      expect(noAud.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const emptyAud = await unaryRaw(stub, 'FetchJWTSVID', { audience: ['ok', ''] }, withHeader());
      expect(emptyAud.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const longAud = await unaryRaw(stub, 'FetchJWTSVID', { audience: ['x'.repeat(257)] }, withHeader());
      expect(longAud.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const badId = await unaryRaw(stub, 'FetchJWTSVID', { audience: ['a'], spiffe_id: 'http://x/y' }, withHeader());
      expect(badId.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      const noSvid = await unaryRaw(stub, 'ValidateJWTSVID', { audience: 'a', svid: '' }, withHeader());
      expect(noSvid.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(noSvid.err?.details).toBe('svid must be specified');
      const noAud2 = await unaryRaw(stub, 'ValidateJWTSVID', { audience: '', svid: 'x' }, withHeader());
      expect(noAud2.err?.details).toBe('audience must be specified');
      const garbage = await unaryRaw(stub, 'ValidateJWTSVID', { audience: 'a', svid: 'not.a.jwt' }, withHeader());
      expect(garbage.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    } finally {
      client.close();
      stub.close();
    }
  });

  it('FetchX509Bundles and FetchJWTBundles stream the bundles', async () => {
    const client = new WorkloadApiClient(socket);
    try {
      const x = await client.fetchX509Bundles();
      expect(x.get(`spiffe://${TD}`)![0]!.equals(source.pki.rootDer)).toBe(true);
      const j = await client.fetchJwtBundles();
      const jwks = JSON.parse(j.get(`spiffe://${TD}`)!.toString()) as { keys: { kid: string }[] };
      expect(jwks.keys[0]!.kid).toBe('test-kid-1');
    } finally {
      client.close();
    }
  });

  it('answers Unimplemented for unknown methods', async () => {
    const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
    try {
      const r = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest(
          '/SpiffeWorkloadAPI/FetchWITSVID',
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.alloc(0),
          withHeader(),
          { deadline: Date.now() + 5000 },
          (e) => resolve(e),
        ),
      );
      expect(r?.code).toBe(grpc.status.UNIMPLEMENTED);
      const r2 = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest('/spiffe.workload.SpiffeWorkloadAPI/FetchJWTSVID', (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), withHeader(), (e) =>
          resolve(e),
        ),
      );
      expect(r2?.code).toBe(grpc.status.UNIMPLEMENTED);
    } finally {
      client.close();
    }
  });

  it('refuses a malformed request message with InvalidArgument', async () => {
    const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
    try {
      const r = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.makeUnaryRequest(
          '/SpiffeWorkloadAPI/FetchJWTSVID',
          (x: Buffer) => x,
          (x: Buffer) => x,
          Buffer.from([0x0a, 0x50, 0x61]), // field 1, length 80, only 1 byte follows
          withHeader(),
          (e) => resolve(e),
        ),
      );
      expect(r?.code).toBe(grpc.status.INVALID_ARGUMENT);
    } finally {
      client.close();
    }
  });
});
