/**
 * Asks the caller's container runtime (and, for pods, the kubelet) about the container that the
 * caller's cgroup names, and turns the answer into selectors. The cgroup stays the only source of
 * *which* container the caller is in; the runtime describes that container and says which process
 * of it runs, whose cgroups must be the caller's (a cgroup merely named after the container, made
 * by whoever can create cgroups elsewhere, is refused: `container.cgroup_mismatch`). Answers are
 * cached per container (bounded LRU with a TTL). A lookup that fails or times out fails the
 * container attestor for that caller only (the Workload API then answers UNAVAILABLE, retry);
 * callers outside containers never wait for a runtime.
 */
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { SigilError } from '../../errors.js';
import type { Selector } from '../../plugins/types.js';
import { RuntimeCache } from './cache.js';
import { ContainerdClient } from './containerd.js';
import { runtimeSelectors, type ContainerDetails, type PodDetails, type SelectorGroup } from './details.js';
import { DockerApiClient } from './docker.js';
import { KubeletClient } from './kubelet.js';

export interface RuntimeLookupConfig {
  docker?: { socket: string };
  podman?: { socket: string };
  containerd?: { socket: string; namespaces: string[] };
  kubelet?: { url: string; tokenFile?: string; caFile?: string };
  selectors: SelectorGroup[];
  lookupTimeoutMs: number;
  cacheSize: number;
  cacheTtlMs: number;
  /**
   * The container cgroups (ContainerRef.cgroups) that the runtime's process `pid` of container
   * `ref` is in, read from /proc (../container.ts); throws when it is in no cgroup of that container.
   */
  cgroupsOf(pid: number, ref: ContainerRef): string;
}

export interface ContainerRef {
  id: string;
  runtime?: string;
  podUid?: string;
  /** containerd namespace, when the cgroup path names it. */
  namespace?: string;
  /** The container's cgroups as the caller's cgroup file shows them (../container.ts ContainerPlacement). */
  cgroups: string;
}

/** A runtime's answer about a container, with the cgroups its process was found in. */
interface Located {
  details: ContainerDetails;
  cgroups: string;
}

interface Inspector {
  inspect(id: string, namespace: string | undefined, signal?: AbortSignal): Promise<ContainerDetails | null>;
  socket: string;
}

export class RuntimeLookup {
  private readonly inspectors = new Map<string, Inspector>();
  private readonly kubelet: KubeletClient | undefined;
  private readonly cache: RuntimeCache<Located>;
  /** Selectors already made from a cached answer (containers whose selectors need no kubelet). */
  private readonly made: RuntimeCache<Selector[]>;
  private readonly groups: ReadonlySet<SelectorGroup>;
  private readonly containerd: ContainerdClient | undefined;
  private readonly cgroupsOf: RuntimeLookupConfig['cgroupsOf'];

  constructor(
    cfg: RuntimeLookupConfig,
    private readonly logger?: Logger,
  ) {
    this.cgroupsOf = cfg.cgroupsOf;
    this.groups = new Set(cfg.selectors);
    this.cache = new RuntimeCache(cfg.cacheSize, cfg.cacheTtlMs);
    this.made = new RuntimeCache(cfg.cacheSize, cfg.cacheTtlMs);
    const timeoutMs = cfg.lookupTimeoutMs;
    for (const rt of ['docker', 'podman'] as const) {
      const c = cfg[rt];
      if (!c) continue;
      const client = new DockerApiClient({ socketPath: c.socket, timeoutMs, runtime: rt });
      this.inspectors.set(rt, { socket: c.socket, inspect: (id, _ns, signal) => client.inspect(id, signal) });
    }
    if (cfg.containerd) {
      const cd = new ContainerdClient({ socketPath: cfg.containerd.socket, timeoutMs, namespaces: cfg.containerd.namespaces });
      this.containerd = cd;
      this.inspectors.set('containerd', { socket: cfg.containerd.socket, inspect: (id, ns, signal) => cd.inspect(id, ns, signal) });
    }
    if (cfg.kubelet) {
      let ca: Buffer | undefined;
      if (cfg.kubelet.caFile !== undefined) {
        try {
          ca = readFileSync(cfg.kubelet.caFile);
        } catch (e) {
          throw new SigilError('container.config_invalid', `cannot read kubelet.caFile ${cfg.kubelet.caFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
        }
      }
      let url: URL;
      try {
        url = new URL(cfg.kubelet.url);
      } catch {
        throw new SigilError('container.config_invalid', `kubelet.url ${cfg.kubelet.url} is not a URL`);
      }
      const k: ConstructorParameters<typeof KubeletClient>[0] = { url, timeoutMs, listTtlMs: 10_000, minRefetchMs: 1000 };
      if (ca !== undefined) k.ca = ca;
      if (cfg.kubelet.tokenFile !== undefined) k.tokenFile = cfg.kubelet.tokenFile;
      this.kubelet = new KubeletClient(k);
    }
  }

  /** True when some runtime or the kubelet is configured (otherwise the attestor does what it did before). */
  get enabled(): boolean {
    return this.inspectors.size > 0 || this.kubelet !== undefined;
  }

  /** Warn (never fail) about runtime sockets that do not accept a connection now. */
  probe(): void {
    for (const [rt, i] of this.inspectors) {
      const s = connect({ path: i.socket });
      s.setTimeout(2000);
      s.once('connect', () => s.destroy());
      s.once('timeout', () => {
        s.destroy();
        this.logger?.warn({ runtime: rt, socket: i.socket }, 'container runtime socket does not answer yet; container callers get UNAVAILABLE until it does');
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        this.logger?.warn({ runtime: rt, socket: i.socket, code: e.code }, 'container runtime socket is not reachable; container callers get UNAVAILABLE until it is');
      });
    }
  }

  close(): void {
    this.containerd?.close();
  }

  async selectorsFor(ref: ContainerRef, signal?: AbortSignal): Promise<Selector[]> {
    const inspector = ref.runtime !== undefined ? this.inspectors.get(ref.runtime) : undefined;
    const key = `${ref.runtime}/${ref.namespace ?? ''}/${ref.id}/${ref.podUid ?? ''}`;
    const needsKubelet = this.kubelet !== undefined && ref.podUid !== undefined && this.groups.has('k8s');
    // Selectors made for a caller in these very cgroups (so made after the cgroup check below).
    const madeKey = `${key}\n${ref.cgroups}`;
    if (!needsKubelet) {
      const made = this.made.peek(madeKey);
      if (made !== undefined) return made;
    }
    let details: ContainerDetails = { repoDigests: [], labels: {} };
    if (inspector) {
      const found = await this.cache.get(key, async () => {
        const d = await inspector.inspect(ref.id, ref.namespace, signal);
        if (d === null) throw new SigilError('container.not_found', `the ${ref.runtime} runtime does not know container ${ref.id.slice(0, 12)}… (gone, or not its container)`, { status: 503 });
        if (d.pid === undefined) throw new SigilError('container.not_running', `the ${ref.runtime} runtime reports no running process for container ${ref.id.slice(0, 12)}…`, { status: 503 });
        // Where the runtime runs the container: the same for the container's life (a restart
        // keeps the cgroup, not the pid), so it is kept with the answer; the pid is not used again.
        return { details: d, cgroups: this.cgroupsOf(d.pid, ref) };
      });
      if (found.cgroups !== ref.cgroups) {
        throw new SigilError('container.cgroup_mismatch', `the caller is not in the cgroup where the ${ref.runtime} runtime runs container ${ref.id.slice(0, 12)}… (a cgroup named after it elsewhere)`);
      }
      details = found.details;
    }
    let pod: PodDetails | undefined;
    if (this.kubelet && ref.podUid !== undefined && this.groups.has('k8s')) {
      pod = await this.kubelet.pod(ref.podUid, signal);
      if (pod === undefined) throw new SigilError('container.pod_unknown', `the kubelet lists no pod ${ref.podUid} on this node`, { status: 503 });
    }
    const { selectors, skippedLabels } = runtimeSelectors(details, pod, this.groups, ref.podUid);
    if (skippedLabels.length > 0) this.logger?.debug({ container: ref.id.slice(0, 12), labels: skippedLabels }, 'labels that cannot be selectors were left out');
    if (!needsKubelet && inspector) this.made.set(madeKey, selectors);
    return selectors;
  }
}
