/**
 * containerd client over its native gRPC API (Containers.Get, Images.Get, Content.Read, Tasks.Get) with
 * @grpc/grpc-js. The native API, not CRI, because it sees containers in every namespace —
 * those a kubelet created through CRI (namespace `k8s.io`, carrying the `io.kubernetes.*`
 * labels) and those created with containerd's own clients (`default`) — and because it is what
 * containerd itself documents as its stable client API. The image config digest (the image ID)
 * is read from the content store: index → manifest for this node's platform → config, each blob
 * checked against its digest before it is parsed. The container's task gives the pid of its
 * process (./lookup.ts checks that the caller is in that process's container cgroups).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { SigilError } from '../../errors.js';
import type { ContainerDetails } from './details.js';

const MAX_BLOB_BYTES = 1024 * 1024;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
const MANIFEST_TYPES = new Set(['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);

export interface ContainerdClientOptions {
  socketPath: string;
  timeoutMs: number;
  namespaces: string[];
  /** Platform to pick from a multi-platform image (defaults to this process's). */
  platform?: { os: string; architecture: string };
}

type Unary = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: unknown) => void) => grpc.ClientUnaryCall;
type Stream = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
interface Clients {
  containers: grpc.Client & { Get: Unary };
  images: grpc.Client & { Get: Unary };
  content: grpc.Client & { Read: Stream };
  tasks: grpc.Client & { Get: Unary };
}

function protoDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'proto', 'containerd');
    if (existsSync(join(candidate, 'containers.proto'))) return candidate;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new SigilError('container.proto_missing', 'proto/containerd/*.proto is not next to the installed package');
}

/** Node's process.arch in the OCI platform vocabulary (the Go names). */
export function ociArchitecture(arch: string = process.arch): string {
  const map: Record<string, string> = { x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64' };
  return map[arch] ?? arch;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** `name:tag` → `name`; a reference that already carries a digest keeps only its repository. */
export function repositoryOf(ref: string): string {
  const at = ref.indexOf('@');
  if (at >= 0) return ref.slice(0, at);
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  return colon > slash ? ref.slice(0, colon) : ref;
}

export class ContainerdClient {
  private clients: Clients | undefined;
  private readonly what: string;
  private readonly platform: { os: string; architecture: string };

  constructor(private readonly o: ContainerdClientOptions) {
    this.what = `containerd at ${o.socketPath}`;
    this.platform = o.platform ?? { os: 'linux', architecture: ociArchitecture() };
  }

  private get c(): Clients {
    if (this.clients) return this.clients;
    const dir = protoDir();
    const def = protoLoader.loadSync(['containers.proto', 'images.proto', 'content.proto', 'tasks.proto'], { includeDirs: [dir], keepCase: true, longs: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      containerd: {
        services: {
          containers: { v1: { Containers: grpc.ServiceClientConstructor } };
          images: { v1: { Images: grpc.ServiceClientConstructor } };
          content: { v1: { Content: grpc.ServiceClientConstructor } };
          tasks: { v1: { Tasks: grpc.ServiceClientConstructor } };
        };
      };
    };
    const target = `unix://${this.o.socketPath}`;
    const creds = grpc.credentials.createInsecure();
    // containerd speaks gRPC on a local socket; the :authority it sees is irrelevant.
    const opts = { 'grpc.default_authority': 'localhost', 'grpc.max_receive_message_length': 4 * 1024 * 1024 };
    const s = pkg.containerd.services;
    this.clients = {
      containers: new s.containers.v1.Containers(target, creds, opts) as unknown as Clients['containers'],
      images: new s.images.v1.Images(target, creds, opts) as unknown as Clients['images'],
      content: new s.content.v1.Content(target, creds, opts) as unknown as Clients['content'],
      tasks: new s.tasks.v1.Tasks(target, creds, opts) as unknown as Clients['tasks'],
    };
    return this.clients;
  }

  close(): void {
    if (!this.clients) return;
    for (const c of Object.values(this.clients)) (c as grpc.Client).close();
    this.clients = undefined;
  }

  private md(ns: string): grpc.Metadata {
    const m = new grpc.Metadata();
    m.set('containerd-namespace', ns);
    return m;
  }

  private deadline(): Date {
    return new Date(Date.now() + this.o.timeoutMs);
  }

  private mapError(e: grpc.ServiceError, op: string): SigilError {
    if (e.code === grpc.status.DEADLINE_EXCEEDED || e.code === grpc.status.CANCELLED) return new SigilError('container.runtime_timeout', `${this.what}: ${op} did not finish within ${this.o.timeoutMs} ms`, { status: 503 });
    if (e.code === grpc.status.UNAVAILABLE) return new SigilError('container.runtime_unavailable', `${this.what} is unreachable (${op})`, { status: 503 });
    return new SigilError('container.runtime_error', `${this.what}: ${op} failed with gRPC status ${e.code}`, { status: 502 });
  }

  private unary(fn: Unary, self: grpc.Client, req: unknown, ns: string, op: string, signal?: AbortSignal): Promise<unknown | null> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new SigilError('container.runtime_timeout', `${this.what}: lookup abandoned (attestation deadline)`, { status: 503 }));
        return;
      }
      const call = fn.call(self, req, this.md(ns), { deadline: this.deadline() }, (e, r) => {
        signal?.removeEventListener('abort', onAbort);
        if (e) {
          if (e.code === grpc.status.NOT_FOUND) resolve(null);
          else reject(this.mapError(e, op));
        } else resolve(r);
      });
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Read a whole content blob, refusing more than MAX_BLOB_BYTES and a blob that does not hash to its digest. */
  private readBlob(ns: string, digest: string, signal?: AbortSignal): Promise<Buffer> {
    if (!DIGEST.test(digest)) return Promise.reject(new SigilError('container.runtime_bad_answer', `${this.what}: a descriptor digest is not sha256:<64 hex>`, { status: 502 }));
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let settled = false;
      const done = (e: SigilError | null, b?: Buffer): void => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (e) {
          stream.cancel();
          reject(e);
        } else resolve(b as Buffer);
      };
      const stream = this.c.content.Read.call(this.c.content, { digest, offset: 0, size: 0 }, this.md(ns), { deadline: this.deadline() });
      const onAbort = (): void => done(new SigilError('container.runtime_timeout', `${this.what}: lookup abandoned (attestation deadline)`, { status: 503 }));
      signal?.addEventListener('abort', onAbort, { once: true });
      stream.on('data', (m: unknown) => {
        const data = obj(m)?.data;
        if (!Buffer.isBuffer(data)) return done(new SigilError('container.runtime_bad_answer', `${this.what}: content chunk without data`, { status: 502 }));
        size += data.length;
        if (size > MAX_BLOB_BYTES) return done(new SigilError('container.runtime_bad_answer', `${this.what}: blob ${digest.slice(0, 19)}… is larger than ${MAX_BLOB_BYTES} bytes`, { status: 502 }));
        chunks.push(data);
      });
      stream.on('error', (e: grpc.ServiceError) => done(e.code === grpc.status.NOT_FOUND ? new SigilError('container.runtime_bad_answer', `${this.what}: blob ${digest.slice(0, 19)}… is not in the content store`, { status: 502 }) : this.mapError(e, 'Content.Read')));
      stream.on('end', () => {
        const b = Buffer.concat(chunks);
        const got = `sha256:${createHash('sha256').update(b).digest('hex')}`;
        if (got !== digest) return done(new SigilError('container.runtime_bad_answer', `${this.what}: blob does not hash to its digest ${digest.slice(0, 19)}…`, { status: 502 }));
        done(null, b);
      });
    });
  }

  private async blobJson(ns: string, digest: string, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const b = await this.readBlob(ns, digest, signal);
    let v: unknown;
    try {
      v = JSON.parse(b.toString('utf8'));
    } catch {
      throw new SigilError('container.runtime_bad_answer', `${this.what}: blob ${digest.slice(0, 19)}… is not JSON`, { status: 502 });
    }
    const o = obj(v);
    if (!o) throw new SigilError('container.runtime_bad_answer', `${this.what}: blob ${digest.slice(0, 19)}… is not a JSON object`, { status: 502 });
    return o;
  }

  /** Follow an image's target to its config digest (the image ID). */
  private async configDigest(ns: string, target: { media_type: string; digest: string }, signal?: AbortSignal): Promise<string> {
    let desc = target;
    for (let depth = 0; depth < 2; depth++) {
      if (MANIFEST_TYPES.has(desc.media_type)) {
        const m = await this.blobJson(ns, desc.digest, signal);
        const cfg = obj(m.config);
        const d = cfg?.digest;
        if (typeof d !== 'string' || !DIGEST.test(d)) throw new SigilError('container.runtime_bad_answer', `${this.what}: manifest has no sha256 config digest`, { status: 502 });
        return d;
      }
      if (!INDEX_TYPES.has(desc.media_type)) break;
      const idx = await this.blobJson(ns, desc.digest, signal);
      const list = Array.isArray(idx.manifests) ? idx.manifests : [];
      const pick = list.map(obj).find((m) => {
        const p = obj(m?.platform);
        return p?.os === this.platform.os && p?.architecture === this.platform.architecture;
      });
      if (!pick || typeof pick.digest !== 'string' || typeof pick.mediaType !== 'string') {
        throw new SigilError('container.runtime_bad_answer', `${this.what}: image index has no manifest for ${this.platform.os}/${this.platform.architecture}`, { status: 502 });
      }
      desc = { media_type: pick.mediaType, digest: pick.digest };
    }
    throw new SigilError('container.runtime_bad_answer', `${this.what}: image target has unsupported media type ${desc.media_type.slice(0, 80)}`, { status: 502 });
  }

  /** The container's details (searched in `namespace`, or every configured namespace), or null. */
  async inspect(id: string, namespace: string | undefined, signal?: AbortSignal): Promise<ContainerDetails | null> {
    const namespaces = namespace !== undefined ? (this.o.namespaces.includes(namespace) ? [namespace] : []) : this.o.namespaces;
    for (const ns of namespaces) {
      const r = obj(await this.unary(this.c.containers.Get, this.c.containers, { id }, ns, 'Containers.Get', signal));
      if (!r) continue;
      const c = obj(r.container);
      if (!c || c.id !== id) throw new SigilError('container.runtime_bad_answer', `${this.what} answered for another container`, { status: 502 });
      const labels = obj(c.labels) ?? {};
      for (const v of Object.values(labels)) if (typeof v !== 'string') throw new SigilError('container.runtime_bad_answer', `${this.what}: a label value is not a string`, { status: 502 });
      const details: ContainerDetails = { repoDigests: [], labels: labels as Record<string, string> };
      const image = typeof c.image === 'string' && c.image.length > 0 ? c.image : undefined;
      if (image !== undefined) {
        details.imageRef = image;
        const ir = obj(await this.unary(this.c.images.Get, this.c.images, { name: image }, ns, 'Images.Get', signal));
        const target = obj(obj(ir?.image)?.target);
        if (target && typeof target.digest === 'string' && typeof target.media_type === 'string') {
          details.imageId = await this.configDigest(ns, { media_type: target.media_type, digest: target.digest }, signal);
          if (DIGEST.test(target.digest)) details.repoDigests = [`${repositoryOf(image)}@${target.digest}`];
        }
      }
      // The container's task (none: not running). Its id is the container's.
      const task = obj(obj(await this.unary(this.c.tasks.Get, this.c.tasks, { container_id: id, exec_id: '' }, ns, 'Tasks.Get', signal))?.process);
      if (task !== undefined) {
        const pid = task.pid;
        if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid < 0) throw new SigilError('container.runtime_bad_answer', `${this.what}: the task's pid is not a number`, { status: 502 });
        if (pid > 0) details.pid = pid;
      }
      return details;
    }
    return null;
  }
}
