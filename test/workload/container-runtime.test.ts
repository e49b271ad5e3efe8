/**
 * Container runtime lookups against stand-ins that misbehave the ways a real runtime socket can:
 * missing, refusing, hanging, answering malformed JSON, answering for another container,
 * oversized, a container that vanished; labels that cannot be selectors; a kubelet stand-in over
 * HTTPS serving a PodList shaped like the Kubernetes v1 Pod resource. Each case: a clear code
 * for that caller and no selectors guessed.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { attestCaller, selectorPrefixes } from '../../src/agent/workload-api/attest.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { ContainerAttestor, matchCgroupPath, parseCgroupFile } from '../../src/workload/container.js';
import { RuntimeCache } from '../../src/workload/runtime/cache.js';
import { MAX_LABELS, runtimeSelectors, SELECTOR_GROUPS } from '../../src/workload/runtime/details.js';
import { DockerApiClient } from '../../src/workload/runtime/docker.js';
import { KubeletClient, parsePodList } from '../../src/workload/runtime/kubelet.js';
import { ContainerdClient, repositoryOf } from '../../src/workload/runtime/containerd.js';

const ID = 'ab'.repeat(32);
const IMAGE = `sha256:${'cd'.repeat(32)}`;
const ALL = new Set(SELECTOR_GROUPS);

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof SigilError ? e.code : `not a SigilError: ${String(e)}`;
  }
  return 'no error';
}

function syncCode(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof SigilError ? e.code : `not a SigilError: ${String(e)}`;
  }
  return 'no error';
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-runtime-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;
async function dockerStandIn(name: string, handler: Handler): Promise<{ socket: string; close: () => Promise<void> }> {
  const socket = join(dir, `${name}.sock`);
  const server = http.createServer(handler);
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(socket, r));
  return {
    socket,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const goodContainer = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
  Id: ID,
  Name: '/web-1',
  Image: IMAGE,
  Config: { Image: 'registry.example/web:1.2', Labels: { tier: 'web', 'com.example.team': 'pay' } },
  ...over,
});

describe('Docker Engine API client against misbehaving sockets', () => {
  it('reads image ID, repo digests, reference, labels and name', async () => {
    const s = await dockerStandIn('good', (req, res) => {
      if (req.url === `/v1.41/containers/${ID}/json`) res.end(JSON.stringify(goodContainer()));
      else if (req.url === `/v1.41/images/${encodeURIComponent(IMAGE)}/json`) res.end(JSON.stringify({ Id: IMAGE, RepoDigests: [`registry.example/web@sha256:${'ef'.repeat(32)}`] }));
      else res.writeHead(404).end('{}');
    });
    const d = await new DockerApiClient({ socketPath: s.socket, timeoutMs: 2000, runtime: 'docker' }).inspect(ID);
    expect(d).toEqual({ imageId: IMAGE, repoDigests: [`registry.example/web@sha256:${'ef'.repeat(32)}`], imageRef: 'registry.example/web:1.2', labels: { tier: 'web', 'com.example.team': 'pay' }, name: 'web-1' });
    await s.close();
  });

  it('a missing socket is container.runtime_unavailable', async () => {
    expect(await codeOf(new DockerApiClient({ socketPath: join(dir, 'nope.sock'), timeoutMs: 500, runtime: 'docker' }).inspect(ID))).toBe('container.runtime_unavailable');
  });

  it('a hanging runtime is container.runtime_timeout after the lookup timeout', async () => {
    const s = await dockerStandIn('hang', () => undefined);
    const t0 = Date.now();
    expect(await codeOf(new DockerApiClient({ socketPath: s.socket, timeoutMs: 300, runtime: 'docker' }).inspect(ID))).toBe('container.runtime_timeout');
    expect(Date.now() - t0).toBeLessThan(3000);
    await s.close();
  });

  it('malformed JSON, wrong types, another container, oversized answers and HTTP errors are refused', async () => {
    const cases: [string, Handler, string][] = [
      ['malformed', (_q, r) => r.end('{"Id": '), 'container.runtime_bad_answer'],
      ['not-object', (_q, r) => r.end('[1,2]'), 'container.runtime_bad_answer'],
      ['labels-type', (_q, r) => r.end(JSON.stringify(goodContainer({ Config: { Labels: { a: 1 } } }))), 'container.runtime_bad_answer'],
      ['other-id', (_q, r) => r.end(JSON.stringify(goodContainer({ Id: 'ff'.repeat(32) }))), 'container.runtime_bad_answer'],
      ['huge', (_q, r) => r.end(JSON.stringify(goodContainer({ Pad: 'x'.repeat(3 * 1024 * 1024) }))), 'container.runtime_bad_answer'],
      ['http-500', (_q, r) => r.writeHead(500).end('{"message":"boom"}'), 'container.runtime_error'],
    ];
    for (const [name, h, code] of cases) {
      const s = await dockerStandIn(name, h);
      expect(await codeOf(new DockerApiClient({ socketPath: s.socket, timeoutMs: 2000, runtime: 'docker' }).inspect(ID)), name).toBe(code);
      await s.close();
    }
  });

  it('a container the runtime does not know (vanished) is null, and the attestor says container.not_found', async () => {
    const s = await dockerStandIn('gone', (_q, r) => r.writeHead(404).end('{"message":"no such container"}'));
    expect(await new DockerApiClient({ socketPath: s.socket, timeoutMs: 2000, runtime: 'docker' }).inspect(ID)).toBeNull();
    const proc = join(dir, 'proc-gone');
    execFileSync('mkdir', ['-p', join(proc, '42')]);
    writeFileSync(join(proc, '42', 'cgroup'), `0::/system.slice/docker-${ID}.scope\n`);
    const a = new ContainerAttestor({ docker: { socket: s.socket } }, { procRoot: proc });
    expect(await codeOf(a.attest({ pid: 42, uid: 0, gid: 0 }, new AbortController().signal))).toBe('container.not_found');
    await s.close();
  });

  it('a hung runtime fails container callers only; a caller outside containers is answered at once', async () => {
    const s = await dockerStandIn('hang2', () => undefined);
    const proc = join(dir, 'proc-hang');
    execFileSync('mkdir', ['-p', join(proc, '7'), join(proc, '8')]);
    writeFileSync(join(proc, '7', 'cgroup'), `0::/system.slice/docker-${ID}.scope\n`);
    writeFileSync(join(proc, '8', 'cgroup'), '0::/user.slice/user-1000.slice/session-1.scope\n');
    const a = new ContainerAttestor({ docker: { socket: s.socket }, lookupTimeout: '300ms' }, { procRoot: proc });
    const attestors = new Map<string, WorkloadAttestor>([['container', a]]);
    const logger = pino({ level: 'silent' });
    const t0 = performance.now();
    const outside = await attestCaller({ pid: 8, uid: 1000, gid: 1000 }, attestors, logger);
    expect(performance.now() - t0).toBeLessThan(100);
    expect(outside).toEqual({ selectors: [], failed: [] });
    const inside = await attestCaller({ pid: 7, uid: 0, gid: 0 }, attestors, logger);
    expect(inside.failed).toEqual(['container']);
    expect(inside.selectors).toEqual([]);
    await s.close();
  });

  it('answers are cached per container: the second lookup asks nothing', async () => {
    let calls = 0;
    const s = await dockerStandIn('count', (req, res) => {
      calls++;
      if (req.url?.includes('/containers/')) res.end(JSON.stringify(goodContainer({ State: { Pid: 9 } })));
      else res.end(JSON.stringify({ RepoDigests: [] }));
    });
    const proc = join(dir, 'proc-cache');
    execFileSync('mkdir', ['-p', join(proc, '9')]);
    writeFileSync(join(proc, '9', 'cgroup'), `0::/system.slice/docker-${ID}.scope\n`);
    const a = new ContainerAttestor({ docker: { socket: s.socket } }, { procRoot: proc });
    const first = await a.attest({ pid: 9, uid: 0, gid: 0 }, new AbortController().signal);
    const n = calls;
    const second = await a.attest({ pid: 9, uid: 0, gid: 0 }, new AbortController().signal);
    expect(second).toEqual(first);
    expect(calls).toBe(n);
    expect(first).toContain(`container:image_id:${IMAGE}`);
    await s.close();
  });
});

describe('selectors from runtime details', () => {
  it('labels whose key has ":" or whose text has control characters give no selector; the rest do', () => {
    const r = runtimeSelectors({ repoDigests: [], labels: { 'a:b': 'x', ok: 'v:with:colons', nl: 'line\nbreak', tab: 'a\tb' } }, undefined, ALL, undefined);
    expect(r.selectors).toEqual(['container:label:ok:v:with:colons']);
    expect(r.skippedLabels.sort()).toEqual(['a:b', 'nl', 'tab']);
  });

  it('a huge label set is refused, not truncated', () => {
    const labels: Record<string, string> = {};
    for (let i = 0; i <= MAX_LABELS; i++) labels[`k${i}`] = 'v';
    expect(syncCode(() => runtimeSelectors({ repoDigests: [], labels }, undefined, ALL, undefined))).toBe('container.too_many_labels');
  });

  it('an image ID or repo digest of the wrong shape is refused', () => {
    expect(syncCode(() => runtimeSelectors({ imageId: 'sha256:xyz', repoDigests: [], labels: {} }, undefined, ALL, undefined))).toBe('container.runtime_bad_answer');
    expect(syncCode(() => runtimeSelectors({ repoDigests: ['repo@md5:00'], labels: {} }, undefined, ALL, undefined))).toBe('container.runtime_bad_answer');
  });

  it('k8s selectors from io.kubernetes.* labels; a pod UID that disagrees with the cgroup is refused', () => {
    const uid = '11111111-2222-3333-4444-555555555555';
    const labels = { 'io.kubernetes.pod.namespace': 'shop', 'io.kubernetes.pod.name': 'cart-1', 'io.kubernetes.pod.uid': uid, 'io.kubernetes.container.name': 'cart' };
    const r = runtimeSelectors({ repoDigests: [], labels }, undefined, new Set(['k8s'] as const), uid);
    expect(r.selectors).toEqual(['k8s:ns:shop', 'k8s:pod_name:cart-1', `k8s:pod_uid:${uid}`, 'k8s:container_name:cart']);
    expect(syncCode(() => runtimeSelectors({ repoDigests: [], labels }, undefined, ALL, '99999999-2222-3333-4444-555555555555'))).toBe('container.pod_mismatch');
    expect(syncCode(() => runtimeSelectors({ repoDigests: [], labels }, { uid, namespace: 'other' }, ALL, uid))).toBe('container.pod_mismatch');
  });

  it('selector groups can be turned off', () => {
    const r = runtimeSelectors({ imageId: IMAGE, repoDigests: [], imageRef: 'x:1', labels: { a: 'b' }, name: 'n' }, undefined, new Set(['image'] as const), undefined);
    expect(r.selectors).toEqual([`container:image_id:${IMAGE}`, 'container:image:x:1']);
  });

  it('repository of a reference drops the tag but not a registry port', () => {
    expect(repositoryOf('localhost:5000/app:1')).toBe('localhost:5000/app');
    expect(repositoryOf('localhost:5000/app')).toBe('localhost:5000/app');
    expect(repositoryOf(`app@sha256:${'a'.repeat(64)}`)).toBe('app');
  });
});

describe('cgroup forms and selector namespaces', () => {
  it('containerd /<namespace>/<id> is recognised only for configured namespaces', () => {
    expect(matchCgroupPath(`/default/${ID}`, ['k8s.io', 'default'])).toMatchObject({ id: ID, runtime: 'containerd', namespace: 'default' });
    expect(matchCgroupPath(`/default/${ID}`).id).toBeUndefined();
    // A CI runner's /actions_job/<64 hex> is not a container.
    expect(parseCgroupFile(`0::/actions_job/${ID}\n`, { containerdNamespaces: ['default'] })).toBeNull();
    expect(parseCgroupFile(`0::/kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/${ID}\n`)).toMatchObject({ id: ID, runtime: 'containerd' });
    expect(parseCgroupFile(`0::/docker/${ID}\n`)).toEqual({ id: ID, runtime: 'docker' });
    expect(parseCgroupFile(`0::/a/b/${ID}\n`)).toBeNull();
  });

  it('an attestor speaks for a declared extra type only while nobody else has it', () => {
    const mk = (types?: string[]): WorkloadAttestor => ({ attest: async () => [], ...(types ? { selectorTypes: types } : {}) });
    expect(selectorPrefixes(new Map([['container', mk(['container', 'k8s'])], ['unix', mk()]])).get('container')).toEqual(['container:', 'k8s:']);
    // A plugin named k8s takes the type back; two claimants cancel each other; nobody may claim unix.
    expect(selectorPrefixes(new Map([['container', mk(['k8s'])], ['k8s', mk()]])).get('container')).toEqual(['container:']);
    expect(selectorPrefixes(new Map([['container', mk(['k8s'])], ['evil', mk(['k8s', 'unix'])], ['unix', mk()]])).get('evil')).toEqual(['evil:']);
  });
});

describe('kubelet /pods stand-in (HTTPS, bearer token)', () => {
  const uid = '0d8a5a4c-4d2b-4b8e-9a55-3f0c7f9e2a11';
  // Shaped after the Kubernetes v1 PodList (metadata.uid/name/namespace/labels, spec.serviceAccountName/nodeName).
  const podList = {
    kind: 'PodList',
    apiVersion: 'v1',
    metadata: {},
    items: [
      {
        metadata: { name: 'api-7d9f', namespace: 'payments', uid, labels: { app: 'api', 'pod-template-hash': '7d9f' } },
        spec: { serviceAccountName: 'payments-api', nodeName: 'node-a', containers: [{ name: 'api', image: 'x' }] },
        status: { phase: 'Running' },
      },
    ],
  };
  let server: https.Server;
  let url: URL;
  let ca: Buffer;
  let seenAuth: string | undefined;
  let body = JSON.stringify(podList);

  beforeAll(async () => {
    const key = join(dir, 'kubelet.key');
    const crt = join(dir, 'kubelet.crt');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    ca = readFileSync(crt);
    server = https.createServer({ key: readFileSync(key), cert: ca }, (req, res) => {
      seenAuth = req.headers.authorization;
      if (req.url !== '/pods') res.writeHead(404).end();
      else if (req.headers.authorization !== 'Bearer kubelet-token') res.writeHead(401).end('Unauthorized');
      else res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = new URL(`https://127.0.0.1:${(server.address() as AddressInfo).port}`);
    writeFileSync(join(dir, 'token'), 'kubelet-token\n');
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('finds the pod by UID: service account, node, labels', async () => {
    const k = new KubeletClient({ url, ca, tokenFile: join(dir, 'token'), timeoutMs: 2000, listTtlMs: 10_000, minRefetchMs: 0 });
    const pod = await k.pod(uid);
    expect(seenAuth).toBe('Bearer kubelet-token');
    expect(pod).toEqual({ uid, name: 'api-7d9f', namespace: 'payments', serviceAccount: 'payments-api', nodeName: 'node-a', labels: { app: 'api', 'pod-template-hash': '7d9f' } });
    const r = runtimeSelectors({ repoDigests: [], labels: { 'io.kubernetes.pod.uid': uid, 'io.kubernetes.container.name': 'api' } }, pod, new Set(['k8s'] as const), uid);
    expect(r.selectors).toEqual(['k8s:ns:payments', 'k8s:pod_name:api-7d9f', `k8s:pod_uid:${uid}`, 'k8s:container_name:api', 'k8s:sa:payments-api', 'k8s:node_name:node-a', 'k8s:pod_label:app:api', 'k8s:pod_label:pod-template-hash:7d9f']);
    expect(await k.pod('ffffffff-2222-3333-4444-555555555555')).toBeUndefined();
  });

  it('a wrong token, an untrusted certificate, malformed lists and http URLs are refused with codes', async () => {
    writeFileSync(join(dir, 'bad-token'), 'nope');
    expect(await codeOf(new KubeletClient({ url, ca, tokenFile: join(dir, 'bad-token'), timeoutMs: 2000, listTtlMs: 0, minRefetchMs: 0 }).pod(uid))).toBe('container.kubelet_error');
    expect(await codeOf(new KubeletClient({ url, tokenFile: join(dir, 'token'), timeoutMs: 2000, listTtlMs: 0, minRefetchMs: 0 }).pod(uid))).toBe('container.kubelet_unavailable');
    body = '{"items": [{"metadata": {}}]}';
    expect(await codeOf(new KubeletClient({ url, ca, tokenFile: join(dir, 'token'), timeoutMs: 2000, listTtlMs: 0, minRefetchMs: 0 }).pod(uid))).toBe('container.kubelet_bad_answer');
    body = JSON.stringify(podList);
    expect(syncCode(() => new KubeletClient({ url: new URL('http://127.0.0.1:10255'), timeoutMs: 1, listTtlMs: 0, minRefetchMs: 0 }))).toBe('container.config_invalid');
    expect(syncCode(() => parsePodList({ items: [{ metadata: { uid, labels: { a: 1 } } }] }, 'k'))).toBe('container.kubelet_bad_answer');
    expect(syncCode(() => parsePodList({ items: [{ metadata: { uid } }, { metadata: { uid } }] }, 'k'))).toBe('container.kubelet_bad_answer');
  });
});

describe('runtime cache', () => {
  it('is bounded (least recently used goes), expires, and shares concurrent loads', async () => {
    let t = 0;
    const c = new RuntimeCache<number>(2, 1000, () => t);
    c.set('a', 1);
    c.set('b', 2);
    expect(c.peek('a')).toBe(1);
    c.set('c', 3);
    expect(c.peek('b')).toBeUndefined();
    expect(c.peek('a')).toBe(1);
    t = 2000;
    expect(c.peek('a')).toBeUndefined();
    let loads = 0;
    const load = async (): Promise<number> => {
      loads++;
      await new Promise((r) => setTimeout(r, 10));
      return 7;
    };
    expect(await Promise.all([c.get('x', load), c.get('x', load)])).toEqual([7, 7]);
    expect(loads).toBe(1);
    c.forget('x');
    expect(c.peek('x')).toBeUndefined();
  });
});

describe('containerd client against a stand-in gRPC server', () => {
  const cdDir = (): string => join(dir, 'cd');
  const protoDir = join(dirname(fileURLToPath(import.meta.url)), '../../proto/containerd');
  type Impl = { container?: Record<string, unknown> | null; image?: Record<string, unknown> | null; blobs?: Record<string, Buffer>; pid?: number };

  async function standIn(name: string, impl: Impl): Promise<{ socket: string; close: () => Promise<void> }> {
    const def = protoLoader.loadSync(['containers.proto', 'images.proto', 'content.proto', 'tasks.proto'], { includeDirs: [protoDir], keepCase: true, longs: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { containerd: { services: Record<string, { v1: Record<string, { service: grpc.ServiceDefinition }> }> } };
    const server = new grpc.Server();
    const notFound = { code: grpc.status.NOT_FOUND, details: 'not found' };
    server.addService(pkg.containerd.services.containers!.v1.Containers!.service, {
      Get: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => (impl.container ? cb(null, { container: impl.container }) : cb(notFound)),
    });
    server.addService(pkg.containerd.services.images!.v1.Images!.service, {
      Get: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => (impl.image ? cb(null, { image: impl.image }) : cb(notFound)),
    });
    server.addService(pkg.containerd.services.tasks!.v1.Tasks!.service, {
      Get: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => (impl.pid !== undefined ? cb(null, { process: { container_id: ID, id: ID, pid: impl.pid } }) : cb(notFound)),
    });
    server.addService(pkg.containerd.services.content!.v1.Content!.service, {
      Read: (call: grpc.ServerWritableStream<{ digest: string }, unknown>) => {
        const b = impl.blobs?.[call.request.digest];
        if (!b) {
          call.emit('error', notFound);
          return;
        }
        call.write({ offset: 0, data: b });
        call.end();
      },
    });
    execFileSync('mkdir', ['-p', cdDir()]);
    const socket = join(cdDir(), `${name}.sock`);
    await new Promise<void>((r, j) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? j(e) : r())));
    return { socket, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
  }

  const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length }, layers: [] }));
  const target = { media_type: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length };

  it('follows image → manifest → config in the content store', async () => {
    const s = await standIn('good', { container: { id: ID, image: 'registry.example/app:1', labels: { tier: 'web' } }, image: { name: 'registry.example/app:1', target }, blobs: { [sha(manifest)]: manifest }, pid: 4242 });
    const c = new ContainerdClient({ socketPath: s.socket, timeoutMs: 2000, namespaces: ['default'] });
    expect(await c.inspect(ID, undefined)).toEqual({ imageId: sha(config), imageRef: 'registry.example/app:1', repoDigests: [`registry.example/app@${sha(manifest)}`], labels: { tier: 'web' }, pid: 4242 });
    c.close();
    await s.close();
  });

  it('an answer about another container, a blob that does not hash to its digest, and a missing config digest are refused', async () => {
    const cases: [string, Impl][] = [
      ['other-id', { container: { id: 'ff'.repeat(32), image: '' } }],
      ['bad-blob', { container: { id: ID, image: 'app:1' }, image: { name: 'app:1', target }, blobs: { [sha(manifest)]: Buffer.from('{"tampered":true}') } }],
      ['no-config', { container: { id: ID, image: 'app:1' }, image: { name: 'app:1', target: { ...target, digest: sha(Buffer.from('{}')) } }, blobs: { [sha(Buffer.from('{}'))]: Buffer.from('{}') } }],
      ['blob-missing', { container: { id: ID, image: 'app:1' }, image: { name: 'app:1', target }, blobs: {} }],
      ['odd-media-type', { container: { id: ID, image: 'app:1' }, image: { name: 'app:1', target: { ...target, media_type: 'text/plain' } } }],
    ];
    for (const [name, impl] of cases) {
      const s = await standIn(name, impl);
      const c = new ContainerdClient({ socketPath: s.socket, timeoutMs: 2000, namespaces: ['default'] });
      expect(await codeOf(c.inspect(ID, undefined)), name).toBe('container.runtime_bad_answer');
      c.close();
      await s.close();
    }
  });

  it('an unknown container is null; a socket that is not gRPC or not there is a clear code', async () => {
    const s = await standIn('empty', { container: null });
    const c = new ContainerdClient({ socketPath: s.socket, timeoutMs: 2000, namespaces: ['k8s.io', 'default'] });
    expect(await c.inspect(ID, undefined)).toBeNull();
    c.close();
    await s.close();
    const garbage = await dockerStandIn('not-grpc', (_q, r) => r.end('hello'));
    const g = new ContainerdClient({ socketPath: garbage.socket, timeoutMs: 1000, namespaces: ['default'] });
    expect(await codeOf(g.inspect(ID, undefined))).toMatch(/^container\.runtime_(unavailable|error|timeout)$/);
    g.close();
    await garbage.close();
    const none = new ContainerdClient({ socketPath: join(dir, 'no-containerd.sock'), timeoutMs: 1000, namespaces: ['default'] });
    expect(await codeOf(none.inspect(ID, undefined))).toMatch(/^container\.runtime_(unavailable|timeout)$/);
    none.close();
  });
});
