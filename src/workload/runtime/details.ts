/**
 * What a container runtime (or the kubelet) says about one container, and the selectors made
 * from it. Every selector here comes from data the runtime returned for the container that the
 * caller's cgroup names; nothing is guessed or filled in.
 *
 *   container:image_id:sha256:<hex>          image config digest (what `docker images --digests` calls IMAGE ID)
 *   container:image_digest:<repo>@sha256:<hex> each repository digest the runtime knows for that image
 *   container:image:<reference as run>        the reference the container was created from (a tag is mutable)
 *   container:label:<key>:<value>             one per container label
 *   container:name:<name>                     the runtime's name for the container
 *   k8s:ns:<ns> k8s:pod_name:<n> k8s:pod_uid:<uid> k8s:container_name:<n>   from io.kubernetes.* labels
 *   k8s:sa:<name> k8s:pod_label:<k>:<v> k8s:node_name:<n>                    from the kubelet's /pods
 */
import { SigilError } from '../../errors.js';
import type { Selector } from '../../plugins/types.js';

export interface PodDetails {
  namespace?: string;
  name?: string;
  uid?: string;
  serviceAccount?: string;
  nodeName?: string;
  labels?: Record<string, string>;
}

export interface ContainerDetails {
  /** `sha256:<64 hex>` image config digest. */
  imageId?: string;
  /** `<repo>@sha256:<64 hex>` digests the runtime knows for the image. */
  repoDigests: string[];
  /** The image reference the container was created from. */
  imageRef?: string;
  labels: Record<string, string>;
  name?: string;
  /**
   * The container's process as the runtime reports it (Docker/podman `State.Pid`, containerd's
   * task), in the runtime's pid namespace; absent when the runtime reports none running. Never a
   * selector: it locates the container's cgroups (./lookup.ts).
   */
  pid?: number;
}

export type SelectorGroup = 'image' | 'labels' | 'name' | 'k8s';
export const SELECTOR_GROUPS: readonly SelectorGroup[] = ['image', 'labels', 'name', 'k8s'];

/** Labels a container may carry before its attestation is refused (not truncated). */
export const MAX_LABELS = 256;
/** Longest label key or value, name or image reference that is turned into a selector. */
export const MAX_VALUE_LENGTH = 1024;

const IMAGE_ID = /^sha256:[0-9a-f]{64}$/;
const REPO_DIGEST = /^[^\s@]{1,512}@sha256:[0-9a-f]{64}$/;
// Printable, no control characters (a newline would split a selector list in every tool).
const PRINTABLE = /^[\x20-\x7e\u00a0-\uffff]*$/u;

const K8S_LABELS = {
  ns: 'io.kubernetes.pod.namespace',
  pod_name: 'io.kubernetes.pod.name',
  pod_uid: 'io.kubernetes.pod.uid',
  container_name: 'io.kubernetes.container.name',
} as const;

/** Why a label gives no selector, or undefined when it does. */
export function labelProblem(key: string, value: string): string | undefined {
  if (key.length === 0 || key.length > MAX_VALUE_LENGTH) return 'key is empty or too long';
  if (key.includes(':')) return 'key contains ":" (the selector would be ambiguous)';
  if (value.length > MAX_VALUE_LENGTH) return 'value is too long';
  if (!PRINTABLE.test(key) || !PRINTABLE.test(value)) return 'key or value contains control characters';
  return undefined;
}

function plain(v: string | undefined): v is string {
  return v !== undefined && v.length > 0 && v.length <= MAX_VALUE_LENGTH && PRINTABLE.test(v);
}

/**
 * Selectors from a runtime's details (and the kubelet's pod, when there is one). `cgroupPodUid`
 * is the pod UID read from the cgroup: a runtime or kubelet that names another pod is refused.
 */
export function runtimeSelectors(
  d: ContainerDetails,
  pod: PodDetails | undefined,
  groups: ReadonlySet<SelectorGroup>,
  cgroupPodUid: string | undefined,
): { selectors: Selector[]; skippedLabels: string[] } {
  const out: Selector[] = [];
  const skippedLabels: string[] = [];
  const labelKeys = Object.keys(d.labels);
  if (labelKeys.length > MAX_LABELS) {
    throw new SigilError('container.too_many_labels', `the runtime reports ${labelKeys.length} labels on the container (at most ${MAX_LABELS})`);
  }
  if (groups.has('image')) {
    if (d.imageId !== undefined) {
      if (!IMAGE_ID.test(d.imageId)) throw new SigilError('container.runtime_bad_answer', 'the runtime gave an image ID that is not sha256:<64 hex>');
      out.push(`container:image_id:${d.imageId}`);
    }
    for (const rd of d.repoDigests) {
      if (!REPO_DIGEST.test(rd) || !PRINTABLE.test(rd)) throw new SigilError('container.runtime_bad_answer', 'the runtime gave a repository digest that is not <repo>@sha256:<64 hex>');
      out.push(`container:image_digest:${rd}`);
    }
    if (plain(d.imageRef)) out.push(`container:image:${d.imageRef}`);
  }
  if (groups.has('labels')) {
    for (const k of labelKeys.sort()) {
      const v = d.labels[k] as string;
      if (labelProblem(k, v) === undefined) out.push(`container:label:${k}:${v}`);
      else skippedLabels.push(k.slice(0, 64));
    }
  }
  if (groups.has('name') && plain(d.name)) out.push(`container:name:${d.name}`);
  if (groups.has('k8s')) {
    const fromLabels: PodDetails = {};
    const ns = d.labels[K8S_LABELS.ns];
    const podName = d.labels[K8S_LABELS.pod_name];
    const podUid = d.labels[K8S_LABELS.pod_uid];
    if (ns !== undefined) fromLabels.namespace = ns;
    if (podName !== undefined) fromLabels.name = podName;
    if (podUid !== undefined) fromLabels.uid = podUid;
    for (const [what, uid] of [['runtime labels', fromLabels.uid], ['kubelet', pod?.uid]] as const) {
      if (uid !== undefined && cgroupPodUid !== undefined && uid !== cgroupPodUid) {
        throw new SigilError('container.pod_mismatch', `the ${what} name pod ${uid.slice(0, 36)}, the cgroup names pod ${cgroupPodUid}`);
      }
    }
    if (pod && fromLabels.uid !== undefined && pod.uid !== undefined && pod.uid !== fromLabels.uid) {
      throw new SigilError('container.pod_mismatch', 'the runtime labels and the kubelet name different pods');
    }
    const nsOut = pod?.namespace ?? fromLabels.namespace;
    const nameOut = pod?.name ?? fromLabels.name;
    const uidOut = pod?.uid ?? fromLabels.uid;
    if (pod && fromLabels.namespace !== undefined && pod.namespace !== undefined && pod.namespace !== fromLabels.namespace) {
      throw new SigilError('container.pod_mismatch', 'the runtime labels and the kubelet name different namespaces');
    }
    if (plain(nsOut)) out.push(`k8s:ns:${nsOut}`);
    if (plain(nameOut)) out.push(`k8s:pod_name:${nameOut}`);
    if (plain(uidOut)) out.push(`k8s:pod_uid:${uidOut}`);
    const cname = d.labels[K8S_LABELS.container_name];
    if (plain(cname)) out.push(`k8s:container_name:${cname}`);
    if (pod) {
      if (plain(pod.serviceAccount)) out.push(`k8s:sa:${pod.serviceAccount}`);
      if (plain(pod.nodeName)) out.push(`k8s:node_name:${pod.nodeName}`);
      const pl = pod.labels ?? {};
      const keys = Object.keys(pl);
      if (keys.length > MAX_LABELS) throw new SigilError('container.too_many_labels', `the kubelet reports ${keys.length} labels on the pod (at most ${MAX_LABELS})`);
      for (const k of keys.sort()) {
        const v = pl[k] as string;
        if (labelProblem(k, v) === undefined) out.push(`k8s:pod_label:${k}:${v}`);
        else skippedLabels.push(`pod:${k.slice(0, 64)}`);
      }
    }
  }
  return { selectors: out, skippedLabels };
}
