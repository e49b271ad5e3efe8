/**
 * `container` workload attestor (DESIGN §4): container ID, runtime and Kubernetes pod UID of the
 * caller, read from /proc/<pid>/cgroup only (never from mountinfo, which a process can shape
 * with its own mounts). The cgroup path is set by the container runtime and can only be changed
 * by whoever may write the cgroup tree.
 *
 *   container:id:<64 hex>  container:runtime:<docker|containerd|crio|podman>  container:pod_uid:<uuid>
 *
 * Recognised path forms (cgroup v1 lines `N:controllers:/path` and the v2 line `0::/path`):
 *   docker      /docker/<id>                          (cgroupfs driver)
 *               .../docker-<id>.scope                 (systemd driver)
 *   containerd  .../cri-containerd-<id>.scope         (systemd driver)
 *               /kubepods/<qos>/pod<uid>/<id>          (cgroupfs driver; a bare ID under kubepods)
 *   cri-o       .../crio-<id>.scope, .../crio-<id>
 *   podman      .../libpod-<id>.scope, /libpod_parent/libpod-<id>
 *   containerd  /<namespace>/<id>                      (containerd's own clients, cgroupfs: `0::/default/<id>`;
 *                                                      only for namespaces listed in `containerd.namespaces`)
 *   pod UID     kubepods-<qos>-pod<uid with _>.slice (systemd) or pod<uid> (cgroupfs) below kubepods;
 *               kubelet-kubepods-<qos>-pod<uid with _>.slice below kubelet-kubepods.slice (a kubelet
 *               with --cgroup-root=/kubelet and the systemd driver, as in kind's nodes)
 * Monitor processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not containers and match nothing.
 *
 * Nested containers: the OUTERMOST match on a line wins, and nothing below it counts (neither a
 * container nor a pod UID nor a user delegation named there). Below the cgroup the runtime made,
 * names are chosen by the container itself: a container that can write its own cgroup (podman
 * --systemd, sysbox, Docker-in-Docker, a read-write cgroupfs) can create
 * `docker-<another container's id>.scope` inside it and move there; the innermost match would
 * then name the other container. An agent in the host's cgroup namespace therefore sees a nested
 * runtime's containers as the outer container (which holds them all), and an agent inside the
 * outer container (its own cgroup namespace) sees them relative to its root, as its own runtime
 * made them. Lines that disagree on the container ID or pod UID make the attestation fail rather
 * than guess.
 *
 * Under a systemd user delegation (`user@<uid>.service`) above the container, that user chooses
 * cgroup names and could name a cgroup after another container; such paths give no selectors
 * unless the config sets `allowUserDelegated: true` (rootless podman/docker).
 *
 * Whoever can create cgroups outside any container (an LXC/Incus system container, a service
 * with systemd's Delegate=, a user delegation) can still name one after a container. With a
 * runtime configured, the attestor therefore also checks that the caller is where the runtime
 * runs that container: the runtime reports the container's process (Docker/podman `State.Pid`,
 * containerd's task), and that process's cgroups, read from /proc, must be the caller's, up to
 * and including the segment that names the container (`container.cgroup_mismatch` otherwise).
 *
 * The agent must see the cgroup namespace of the runtime whose containers it identifies (the
 * host's for the host's runtime): inside a private cgroup namespace the kernel shows paths
 * relative to the agent's own cgroup.
 *
 * The /proc/<pid>/cgroup format is parsed by hand (kernel text format).
 *
 * With a runtime configured (`docker`, `podman`, `containerd`, `kubelet`), the container the
 * cgroup names is then described by that runtime (./runtime/): image ID and digests, image
 * reference, labels, name, and the Kubernetes pod (`k8s:*` selectors).
 */
import type { Logger } from 'pino';
import { SigilError } from '../errors.js';
import { validatePluginConfig } from '../plugins/validate.js';
import type { AgentPluginDeps, JsonSchema, Selector, WorkloadAttestor, WorkloadAttestorPlugin, WorkloadCaller } from '../plugins/types.js';
import { DEFAULT_PROC_ROOT, procPath, readBoundedFile, readBoundedFileSync, type CallerProcFiles, type HeldFilesAttestor } from './proc.js';
import { durationSchema, parseDuration } from '../util/duration.js';
import { SELECTOR_GROUPS, type SelectorGroup } from './runtime/details.js';
import { RuntimeLookup, type ContainerRef } from './runtime/lookup.js';

export type ContainerRuntime = 'docker' | 'containerd' | 'crio' | 'podman';

export interface ContainerInfo {
  id: string;
  runtime?: ContainerRuntime;
  podUid?: string;
  /** containerd namespace, when the path names it (`/<ns>/<id>`); otherwise every configured one is searched. */
  namespace?: string;
}

export interface ContainerAttestorConfig {
  allowUserDelegated?: boolean;
  docker?: { socket: string };
  podman?: { socket: string };
  containerd?: { socket: string; namespaces: string[] };
  kubelet?: { url: string; tokenFile?: string; caFile?: string };
  selectors?: SelectorGroup[];
  lookupTimeout?: string | number;
  cacheSize?: number;
  cacheTtl?: string | number;
}

export interface ContainerAttestorOptions {
  procRoot?: string;
  logger?: Logger;
}

export const containerConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    allowUserDelegated: { type: 'boolean', default: false },
    docker: { type: 'object', additionalProperties: false, properties: { socket: { type: 'string', minLength: 1, default: '/var/run/docker.sock' } } },
    podman: { type: 'object', additionalProperties: false, properties: { socket: { type: 'string', minLength: 1, default: '/run/podman/podman.sock' } } },
    containerd: {
      type: 'object',
      additionalProperties: false,
      properties: {
        socket: { type: 'string', minLength: 1, default: '/run/containerd/containerd.sock' },
        namespaces: { type: 'array', minItems: 1, maxItems: 16, uniqueItems: true, items: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,75}$' }, default: ['k8s.io', 'default'] },
      },
    },
    kubelet: {
      type: 'object',
      additionalProperties: false,
      properties: { url: { type: 'string', pattern: '^https://', default: 'https://127.0.0.1:10250' }, tokenFile: { type: 'string', minLength: 1 }, caFile: { type: 'string', minLength: 1 } },
    },
    selectors: { type: 'array', uniqueItems: true, items: { enum: [...SELECTOR_GROUPS] }, default: [...SELECTOR_GROUPS] },
    lookupTimeout: { ...durationSchema, default: '2s' },
    cacheSize: { type: 'integer', minimum: 1, maximum: 1_000_000, default: 4096 },
    cacheTtl: { ...durationSchema, default: '10m' },
  },
};

const ID = '[0-9a-f]{64}';
const EXPLICIT: { re: RegExp; runtime: ContainerRuntime }[] = [
  { re: new RegExp(`^docker-(${ID})\\.scope$`), runtime: 'docker' },
  { re: new RegExp(`^cri-containerd-(${ID})\\.scope$`), runtime: 'containerd' },
  { re: new RegExp(`^crio-(${ID})(?:\\.scope)?$`), runtime: 'crio' },
  { re: new RegExp(`^libpod-(${ID})(?:\\.scope)?$`), runtime: 'podman' },
];
const BARE_ID = new RegExp(`^${ID}$`);
// `kubelet-` is the prefix systemd gives the slices below a kubelet started with
// `--cgroup-root=/kubelet` (kind's nodes): kubelet.slice/kubelet-kubepods.slice/….
const POD_SYSTEMD = /^(?:kubelet-)?kubepods(?:-[a-z]+)*-pod([0-9a-f_]{36})\.slice$/;
const POD_CGROUPFS = /^pod([0-9a-f-]{36})$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const USER_DELEGATION = /^user@\d+\.service$/;

const MAX_LINES = 256;

interface LineMatch {
  id?: string;
  runtime?: ContainerRuntime;
  namespace?: string;
  /** Runtime derived from the pattern itself (true) or inferred from the surroundings (false). */
  explicit: boolean;
  podUid?: string;
  delegated: boolean;
  /** The container's cgroup: the path up to and including the segment that names the container. */
  scope?: string;
}

/** The container that segment `i` of a path names (from the segments before it), if any. */
function containerAt(segs: readonly string[], i: number, underKubepods: boolean, containerdNamespaces: readonly string[]): Pick<LineMatch, 'id' | 'runtime' | 'explicit' | 'namespace'> | undefined {
  const seg = segs[i]!;
  for (const { re, runtime } of EXPLICIT) {
    const r = re.exec(seg);
    if (r) return { id: r[1]!, runtime, explicit: true };
  }
  if (!BARE_ID.test(seg)) return undefined;
  const parent = i > 0 ? segs[i - 1] : undefined;
  if (parent === 'docker') return { id: seg, runtime: 'docker', explicit: true };
  if (underKubepods) return { id: seg, runtime: 'containerd', explicit: false };
  // containerd's own clients (ctr, nerdctl) with the cgroupfs driver: /<namespace>/<id>, and
  // whatever the container made below it.
  if (i === 1 && parent !== undefined && containerdNamespaces.includes(parent)) return { id: seg, runtime: 'containerd', explicit: false, namespace: parent };
  return undefined;
}

/**
 * Examine one cgroup path: the outermost container it names, the pod UID and user delegation
 * above that container (see the header: nothing below the container's own cgroup counts).
 */
export function matchCgroupPath(path: string, containerdNamespaces: readonly string[] = []): LineMatch {
  const segs = path.split('/').filter((s) => s.length > 0);
  const m: LineMatch = { explicit: false, delegated: false };
  let underKubepods = false;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    if (USER_DELEGATION.test(seg)) m.delegated = true;
    if (seg === 'kubepods' || seg.startsWith('kubepods-') || seg === 'kubepods.slice' || seg.startsWith('kubelet-kubepods-') || seg === 'kubelet-kubepods.slice') underKubepods = true;
    if (underKubepods && m.podUid === undefined) {
      const ps = POD_SYSTEMD.exec(seg);
      const pc = ps ? null : POD_CGROUPFS.exec(seg);
      const raw = ps ? ps[1]!.replaceAll('_', '-') : pc?.[1];
      if (raw !== undefined && UUID.test(raw)) m.podUid = raw;
    }
    const c = containerAt(segs, i, underKubepods, containerdNamespaces);
    if (c === undefined) continue;
    Object.assign(m, c);
    m.scope = `/${segs.slice(0, i + 1).join('/')}`;
    break;
  }
  return m;
}

/** A caller's container and the cgroups it is in (see locateContainer). */
export interface ContainerPlacement {
  info: ContainerInfo;
  /**
   * The container's cgroups as the caller's file shows them: `<hierarchy id>:<path up to and
   * including the segment naming the container>` for each line that names it, sorted, one per
   * line. Every process of one container has the same, whatever sub-cgroups it moved to inside.
   */
  cgroups: string;
}

/**
 * Container facts from the text of /proc/<pid>/cgroup; null when the process is not in a
 * recognised container. Throws `workload.container_ambiguous` when lines disagree.
 */
export function parseCgroupFile(text: string, opts: { allowUserDelegated?: boolean; containerdNamespaces?: readonly string[] } = {}): ContainerInfo | null {
  return locateContainer(text, opts)?.info ?? null;
}

/** parseCgroupFile, with the cgroups the container's lines name. */
export function locateContainer(text: string, opts: { allowUserDelegated?: boolean; containerdNamespaces?: readonly string[] } = {}): ContainerPlacement | null {
  const lines = text.split('\n').filter((l) => l.trim().length > 0);
  if (lines.length > MAX_LINES) throw new SigilError('workload.bad_cgroup_file', `cgroup file has more than ${MAX_LINES} lines`);
  let id: string | undefined;
  let runtime: ContainerRuntime | undefined;
  let runtimeExplicit = false;
  let podUid: string | undefined;
  let namespace: string | undefined;
  let delegated = false;
  const scopes: string[] = [];
  for (const line of lines) {
    const a = line.indexOf(':');
    const b = a < 0 ? -1 : line.indexOf(':', a + 1);
    if (a < 0 || b < 0) throw new SigilError('workload.bad_cgroup_file', 'cgroup line is not "id:controllers:path"');
    if (!/^\d{1,10}$/.test(line.slice(0, a))) throw new SigilError('workload.bad_cgroup_file', 'cgroup line has a non-numeric hierarchy id');
    const path = line.slice(b + 1);
    const m = matchCgroupPath(path, opts.containerdNamespaces);
    delegated ||= m.delegated;
    // A pod UID counts only above a container on the same line: on a line naming no container
    // (a hierarchy the runtime left alone), a container with write access there could have made it.
    if (m.id === undefined) continue;
    if (id !== undefined && id !== m.id) {
      throw new SigilError('workload.container_ambiguous', `cgroup lines name two containers (${id.slice(0, 12)}…, ${m.id.slice(0, 12)}…)`);
    }
    id = m.id;
    scopes.push(`${line.slice(0, a)}:${m.scope!}`);
    if (m.namespace !== undefined) namespace ??= m.namespace;
    if (m.runtime !== undefined) {
      if (runtime === undefined || (!runtimeExplicit && m.explicit)) {
        runtime = m.runtime;
        runtimeExplicit = m.explicit;
      } else if (m.explicit && runtimeExplicit && runtime !== m.runtime) {
        throw new SigilError('workload.container_ambiguous', `cgroup lines name two runtimes (${runtime}, ${m.runtime})`);
      }
    }
    if (m.podUid !== undefined) {
      if (podUid !== undefined && podUid !== m.podUid) throw new SigilError('workload.container_ambiguous', 'cgroup lines name two pod UIDs');
      podUid = m.podUid;
    }
  }
  if (id === undefined) return null;
  if (delegated && opts.allowUserDelegated !== true) return null;
  const info: ContainerInfo = { id };
  if (runtime !== undefined) info.runtime = runtime;
  if (podUid !== undefined) info.podUid = podUid;
  if (namespace !== undefined && runtime === 'containerd') info.namespace = namespace;
  return { info, cgroups: scopes.sort().join('\n') };
}

export function containerSelectors(info: ContainerInfo | null): Selector[] {
  if (!info) return [];
  const out: Selector[] = [`container:id:${info.id}`];
  if (info.runtime) out.push(`container:runtime:${info.runtime}`);
  if (info.podUid) out.push(`container:pod_uid:${info.podUid}`);
  return out;
}

/** A cgroup file's text, parsed (see ContainerAttestor.parsed). */
interface ParsedCgroup {
  readonly info: ContainerInfo | null;
  /** containerSelectors(info); never handed out, only copies of it. */
  readonly selectors: readonly Selector[];
  /** What the runtime is asked about: the container and the cgroups the caller is in (null outside containers). */
  readonly ref: ContainerRef | null;
}

/**
 * Cgroup file texts whose parse is remembered (emptied when full; distinct texts are few: one per
 * cgroup callers run in), each of at most MAX_REMEMBERED_TEXT characters (a few hundred in
 * practice): at most 1 MiB of text.
 */
const MAX_REMEMBERED_PARSES = 256;
const MAX_REMEMBERED_TEXT = 4096;

export class ContainerAttestor implements WorkloadAttestor, HeldFilesAttestor {
  /** Besides `container:…`, this attestor speaks for the `k8s:…` selectors (pods). */
  readonly selectorTypes: readonly string[] = ['container', 'k8s'];
  private readonly procRoot: string;
  private readonly parses = new Map<string, ParsedCgroup>();
  private readonly lookup: RuntimeLookup | undefined;
  constructor(
    private readonly config: ContainerAttestorConfig = {},
    opts: ContainerAttestorOptions = {},
  ) {
    this.procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
    const lookup = new RuntimeLookup(
      {
        ...(config.docker ? { docker: config.docker } : {}),
        ...(config.podman ? { podman: config.podman } : {}),
        ...(config.containerd ? { containerd: config.containerd } : {}),
        ...(config.kubelet ? { kubelet: config.kubelet } : {}),
        selectors: config.selectors ?? [...SELECTOR_GROUPS],
        lookupTimeoutMs: parseDuration(config.lookupTimeout ?? '2s', 'container.lookupTimeout') * 1000,
        cacheSize: config.cacheSize ?? 4096,
        cacheTtlMs: parseDuration(config.cacheTtl ?? '10m', 'container.cacheTtl') * 1000,
        cgroupsOf: (pid, ref) => this.cgroupsOf(pid, ref),
      },
      opts.logger,
    );
    if (lookup.enabled) {
      this.lookup = lookup;
      lookup.probe();
    }
  }

  async attest(caller: WorkloadCaller, signal: AbortSignal): Promise<Selector[]> {
    const text = (await readBoundedFile(procPath(this.procRoot, caller.pid, 'cgroup'), 64 * 1024, signal)).toString('utf8');
    return this.selectorsOf(text, signal);
  }

  /** attest() through the files the caller's connection holds open (CallerProcFiles). */
  async attestWithFiles(_caller: WorkloadCaller, files: CallerProcFiles, signal: AbortSignal): Promise<Selector[]> {
    if (signal.aborted) throw new SigilError('workload.attestation_aborted', 'container attestation was aborted (timeout)');
    return this.selectorsOf(files.cgroupText(), signal);
  }

  private async selectorsOf(text: string, signal: AbortSignal): Promise<Selector[]> {
    const parsed = this.parsed(text);
    const base = parsed.selectors.slice();
    if (parsed.ref === null || this.lookup === undefined) return base;
    return base.concat(await this.lookup.selectorsFor(parsed.ref, signal));
  }

  /**
   * The cgroups of container `ref` as /proc/<pid>/cgroup of the runtime's process of it shows
   * them (see the header and RuntimeLookupConfig.cgroupsOf): `container.cgroup_mismatch` when
   * that process is not in a cgroup named after the container (the runtime's pid namespace is
   * not the agent's, or the pid was reused) or cannot be read.
   */
  private cgroupsOf(pid: number, ref: ContainerRef): string {
    const what = `the ${ref.runtime ?? 'container'} runtime's process ${pid} of container ${ref.id.slice(0, 12)}…`;
    let text: string;
    try {
      text = readBoundedFileSync(procPath(this.procRoot, pid, 'cgroup'), 64 * 1024).toString('utf8');
    } catch (e) {
      throw new SigilError('container.cgroup_mismatch', `${what} cannot be read here (gone, or in another pid namespace): ${(e as Error).message}`, { cause: e });
    }
    // Where the process is, whoever named the cgroups above it: the caller's own path was held
    // to the delegation rule before the runtime was asked.
    const p = locateContainer(text, { allowUserDelegated: true, containerdNamespaces: this.config.containerd?.namespaces ?? [] });
    if (p === null || p.info.id !== ref.id) throw new SigilError('container.cgroup_mismatch', `${what} is not in a cgroup named after it (another pid namespace, or the pid was reused)`);
    return p.cgroups;
  }

  /**
   * locateContainer and containerSelectors of a cgroup file's text, remembered by the text (the
   * parse is a pure function of it and of the config): a caller's cgroup file reads the same at
   * every attestation, and many callers share one. Texts that fail to parse are not remembered.
   */
  private parsed(text: string): ParsedCgroup {
    const hit = this.parses.get(text);
    if (hit !== undefined) return hit;
    const placed = locateContainer(text, { allowUserDelegated: this.config.allowUserDelegated === true, containerdNamespaces: this.config.containerd?.namespaces ?? [] });
    const info = placed?.info ?? null;
    const p: ParsedCgroup = { info, selectors: containerSelectors(info), ref: placed === null ? null : { ...placed.info, cgroups: placed.cgroups } };
    if (text.length <= MAX_REMEMBERED_TEXT) {
      if (this.parses.size >= MAX_REMEMBERED_PARSES) this.parses.clear();
      this.parses.set(text, p);
    }
    return p;
  }

  close(): void {
    this.lookup?.close();
  }
}

export function createContainerAttestor(config: unknown, opts: ContainerAttestorOptions = {}): ContainerAttestor {
  const cfg = validatePluginConfig<ContainerAttestorConfig>(containerConfigSchema, config, { namespace: 'container', what: 'plugin "container" config' });
  return new ContainerAttestor(cfg, opts);
}

export const containerAttestorPlugin: WorkloadAttestorPlugin = {
  name: 'container',
  configSchema: containerConfigSchema,
  create(config: unknown, deps: AgentPluginDeps): WorkloadAttestor {
    return createContainerAttestor(config, { logger: deps.logger });
  },
};
