/**
 * The kubelet's authenticated `GET /pods` (port 10250), for what the container runtime does not
 * hold: a pod's service account, labels and node name. The answer is a v1 PodList
 * (items[].metadata.{uid,name,namespace,labels}, items[].spec.{serviceAccountName,nodeName}), the
 * shape the Kubernetes API documents for the Pod resource. The list is fetched at most once per
 * `minRefetchMs` and reused for `listTtlMs`; a pod UID missing from a fresh list means "no such
 * pod on this node". The bearer token is re-read from its file on every fetch (projected
 * service-account tokens rotate).
 */
import { readFileSync } from 'node:fs';
import { SigilError } from '../../errors.js';
import type { PodDetails } from './details.js';
import { getJson } from './http-unix.js';

const MAX_LIST_BYTES = 32 * 1024 * 1024;
const MAX_TOKEN_BYTES = 64 * 1024;

export interface KubeletClientOptions {
  url: URL;
  tokenFile?: string;
  ca?: Buffer;
  timeoutMs: number;
  listTtlMs: number;
  minRefetchMs: number;
  now?: () => number;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

/** Pods of a v1 PodList by UID; malformed items are refused, not skipped. */
export function parsePodList(body: unknown, what: string): Map<string, PodDetails> {
  const items = obj(body)?.items;
  if (!Array.isArray(items)) throw new SigilError('container.kubelet_bad_answer', `${what}: answer is not a PodList (no items array)`, { status: 502 });
  const out = new Map<string, PodDetails>();
  for (const it of items) {
    const meta = obj(obj(it)?.metadata);
    const spec = obj(obj(it)?.spec) ?? {};
    const uid = str(meta?.uid);
    if (!meta || uid === undefined) throw new SigilError('container.kubelet_bad_answer', `${what}: a pod has no metadata.uid`, { status: 502 });
    const labels: Record<string, string> = {};
    const rawLabels = meta.labels;
    if (rawLabels !== undefined && rawLabels !== null) {
      const lo = obj(rawLabels);
      if (!lo) throw new SigilError('container.kubelet_bad_answer', `${what}: pod ${uid.slice(0, 36)} has labels that are not a map`, { status: 502 });
      for (const [k, v] of Object.entries(lo)) {
        if (typeof v !== 'string') throw new SigilError('container.kubelet_bad_answer', `${what}: pod ${uid.slice(0, 36)} has a label value that is not a string`, { status: 502 });
        labels[k] = v;
      }
    }
    const pod: PodDetails = { uid, labels };
    const ns = str(meta.namespace);
    const name = str(meta.name);
    const sa = str(spec.serviceAccountName);
    const node = str(spec.nodeName);
    if (ns !== undefined) pod.namespace = ns;
    if (name !== undefined) pod.name = name;
    if (sa !== undefined) pod.serviceAccount = sa;
    if (node !== undefined) pod.nodeName = node;
    if (out.has(uid)) throw new SigilError('container.kubelet_bad_answer', `${what}: pod UID ${uid.slice(0, 36)} appears twice`, { status: 502 });
    out.set(uid, pod);
  }
  return out;
}

export class KubeletClient {
  private pods: Map<string, PodDetails> | undefined;
  private fetchedAt = Number.NEGATIVE_INFINITY;
  private inflight: Promise<Map<string, PodDetails>> | undefined;
  private readonly what: string;
  private readonly now: () => number;

  constructor(private readonly o: KubeletClientOptions) {
    if (o.url.protocol !== 'https:') throw new SigilError('container.config_invalid', `kubelet.url must be https (the kubelet's authenticated port), got ${o.url.protocol}`);
    this.what = `kubelet at ${o.url.origin}`;
    this.now = o.now ?? (() => performance.now());
  }

  private token(): string | undefined {
    if (this.o.tokenFile === undefined) return undefined;
    let t: Buffer;
    try {
      t = readFileSync(this.o.tokenFile);
    } catch (e) {
      throw new SigilError('container.kubelet_unavailable', `cannot read kubelet.tokenFile ${this.o.tokenFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`, { status: 503 });
    }
    if (t.length > MAX_TOKEN_BYTES) throw new SigilError('container.kubelet_unavailable', `kubelet.tokenFile ${this.o.tokenFile} is larger than ${MAX_TOKEN_BYTES} bytes`, { status: 503 });
    const s = t.toString('utf8').trim();
    if (!/^[\x21-\x7e]+$/.test(s)) throw new SigilError('container.kubelet_unavailable', `kubelet.tokenFile ${this.o.tokenFile} does not hold a bearer token`, { status: 503 });
    return s;
  }

  private async fetch(signal?: AbortSignal): Promise<Map<string, PodDetails>> {
    const token = this.token();
    const base = this.o.url.pathname.replace(/\/+$/, '');
    let r;
    try {
      r = await getJson({ baseUrl: this.o.url, path: `${base}/pods`, timeoutMs: this.o.timeoutMs, maxBytes: MAX_LIST_BYTES, signal, what: this.what, ca: this.o.ca, headers: token ? { authorization: `Bearer ${token}` } : {} });
    } catch (e) {
      // Same failure, kubelet wording: the runtime was fine, the kubelet was not.
      if (e instanceof SigilError) throw new SigilError(e.code.replace('container.runtime_', 'container.kubelet_'), e.message, { status: e.status });
      throw e;
    }
    if (r.status === 404) throw new SigilError('container.kubelet_error', `${this.what} has no /pods endpoint (HTTP 404)`, { status: 502 });
    return parsePodList(r.body, this.what);
  }

  /** The pod with this UID on this node, or undefined when a fresh list does not hold it. */
  async pod(uid: string, signal?: AbortSignal): Promise<PodDetails | undefined> {
    const age = this.now() - this.fetchedAt;
    if (this.pods && age < this.o.listTtlMs) {
      const hit = this.pods.get(uid);
      if (hit || age < this.o.minRefetchMs) return hit;
    }
    if (!this.inflight) {
      this.inflight = this.fetch(signal).finally(() => {
        this.inflight = undefined;
      });
      this.inflight.then(
        (pods) => {
          this.pods = pods;
          this.fetchedAt = this.now();
        },
        () => undefined,
      );
    }
    const pods = await this.inflight;
    return pods.get(uid);
  }
}
