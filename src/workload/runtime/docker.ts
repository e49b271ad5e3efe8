/**
 * Docker Engine API client (also podman's, served by `podman system service`): GET
 * /containers/<id>/json and /images/<id>/json over the runtime's Unix socket. Only the fields
 * Sigil turns into selectors, and the container's process (`State.Pid`), are read, each checked
 * for type; anything else in the answer is ignored. API version 1.41 is spoken by Docker 20.10
 * and later and by podman 3 and later.
 */
import { SigilError } from '../../errors.js';
import type { ContainerDetails } from './details.js';
import { getJson } from './http-unix.js';

export const DOCKER_API_VERSION = 'v1.41';
const MAX_ANSWER_BYTES = 2 * 1024 * 1024;

export interface DockerClientOptions {
  socketPath: string;
  timeoutMs: number;
  /** "docker" or "podman", for messages. */
  runtime: string;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function bad(what: string, field: string): SigilError {
  return new SigilError('container.runtime_bad_answer', `${what}: field ${field} has the wrong type`, { status: 502 });
}

function stringMap(v: unknown, what: string, field: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  const o = obj(v);
  if (!o) throw bad(what, field);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(o)) {
    if (typeof val !== 'string') throw bad(what, `${field}.${k.slice(0, 64)}`);
    out[k] = val;
  }
  return out;
}

function optString(v: unknown, what: string, field: string): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw bad(what, field);
  return v;
}

export class DockerApiClient {
  private readonly what: string;
  constructor(private readonly o: DockerClientOptions) {
    this.what = `${o.runtime} API at ${o.socketPath}`;
  }

  /** The container's details, or null when the runtime does not know the ID. */
  async inspect(id: string, signal?: AbortSignal): Promise<ContainerDetails | null> {
    const c = await getJson({ socketPath: this.o.socketPath, path: `/${DOCKER_API_VERSION}/containers/${encodeURIComponent(id)}/json`, timeoutMs: this.o.timeoutMs, maxBytes: MAX_ANSWER_BYTES, signal, what: this.what });
    if (c.status === 404) return null;
    const body = obj(c.body);
    if (!body) throw bad(this.what, '(container)');
    const rid = optString(body.Id, this.what, 'Id');
    if (rid !== id) throw new SigilError('container.runtime_bad_answer', `${this.what} answered for another container`, { status: 502 });
    const config = obj(body.Config) ?? {};
    const imageId = optString(body.Image, this.what, 'Image');
    const name = optString(body.Name, this.what, 'Name');
    const details: ContainerDetails = { repoDigests: [], labels: stringMap(config.Labels, this.what, 'Config.Labels') };
    const imageRef = optString(config.Image, this.what, 'Config.Image');
    if (imageRef !== undefined) details.imageRef = imageRef;
    if (name !== undefined) details.name = name.startsWith('/') ? name.slice(1) : name;
    const pid = obj(body.State)?.Pid;
    if (pid !== undefined && pid !== null && (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid < 0)) throw bad(this.what, 'State.Pid');
    if (typeof pid === 'number' && pid > 0) details.pid = pid; // 0: not running
    if (imageId !== undefined) {
      details.imageId = imageId;
      details.repoDigests = await this.repoDigests(imageId, signal);
    }
    return details;
  }

  private async repoDigests(imageId: string, signal?: AbortSignal): Promise<string[]> {
    const r = await getJson({ socketPath: this.o.socketPath, path: `/${DOCKER_API_VERSION}/images/${encodeURIComponent(imageId)}/json`, timeoutMs: this.o.timeoutMs, maxBytes: MAX_ANSWER_BYTES, signal, what: this.what });
    // The image may have been removed while the container runs (docker rmi -f): no digests then.
    if (r.status === 404) return [];
    const body = obj(r.body);
    if (!body) throw bad(this.what, '(image)');
    const rd = body.RepoDigests;
    if (rd === undefined || rd === null) return [];
    if (!Array.isArray(rd) || !rd.every((x) => typeof x === 'string')) throw bad(this.what, 'RepoDigests');
    return [...new Set(rd as string[])].sort();
  }
}
