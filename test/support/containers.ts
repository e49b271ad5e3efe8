/**
 * Real container runtimes for tests: podman (serving the Docker Engine API with `podman system
 * service`) and containerd (as a plain process), each with its own storage under a temp dir, and
 * a tiny image built locally from the static busybox (there is no registry here). Facts this
 * relies on, measured on this machine kind: crun fails on the hybrid cgroup layout, runc with the
 * cgroupfs manager works; containers must not ask for rlimits above the sandbox's hard limits.
 *
 * The helpers shell out to podman/ctr to *set up* containers; the product never does.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const BUSYBOX = '/usr/bin/busybox';
const RUNC = '/usr/sbin/runc';

export function containerToolsMissing(): string | null {
  for (const [tool, path] of [
    ['podman', '/usr/bin/podman'],
    ['containerd', '/usr/bin/containerd'],
    ['ctr', '/usr/bin/ctr'],
    ['runc', RUNC],
    ['busybox-static', BUSYBOX],
  ] as const) {
    if (!existsSync(path)) return `${tool} is not installed (${path}); scripts/setup.sh installs it`;
  }
  return null;
}

function waitForSocket(path: string, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tryOnce = (): void => {
      const s = connect({ path });
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > until) reject(new Error(`${what} did not start listening on ${path}`));
        else setTimeout(tryOnce, 100);
      });
    };
    tryOnce();
  });
}

/** A root filesystem with the static busybox and a marker file, as a tar archive. */
export function buildBusyboxRootfsTar(dir: string, marker: string): string {
  const root = join(dir, `rootfs-${marker}`);
  mkdirSync(join(root, 'bin'), { recursive: true });
  for (const d of ['etc', 'tmp', 'proc', 'sys', 'dev', 'sock']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync(BUSYBOX, join(root, 'bin', 'busybox'));
  chmodSync(join(root, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'sleep', 'cat', 'ls']) symlinkSync('busybox', join(root, 'bin', a));
  writeFileSync(join(root, 'etc', 'image-marker'), `${marker}\n`);
  const tar = join(dir, `rootfs-${marker}.tar`);
  execFileSync('tar', ['-C', root, '-cf', tar, '.']);
  return tar;
}

export interface Podman {
  socket: string;
  /** The storage/runtime flags every podman command of this instance takes. */
  flags: string[];
  /** podman with this instance's storage flags. */
  cli(args: string[]): string;
  /** Import a busybox image; returns its image ID (sha256:<hex>). */
  importImage(ref: string, marker: string): string;
  /** Start a detached container; returns its full ID and host PID. */
  run(opts: { name: string; image: string; labels?: Record<string, string>; mounts?: string[]; cmd: string[]; env?: Record<string, string> }): { id: string; pid: number };
  remove(name: string): void;
  stop(): Promise<void>;
}

export async function startPodman(dir: string): Promise<Podman> {
  const root = join(dir, 'podman-root');
  // podman refuses a runroot longer than 50 characters: keep it short, whatever `dir` is.
  const runroot = mkdtempSync('/tmp/sigil-prun-');
  const socket = join(dir, 'podman.sock');
  const base = ['--root', root, '--runroot', runroot, '--cgroup-manager', 'cgroupfs', '--runtime', RUNC, '--events-backend', 'file'];
  const cli = (args: string[]): string => execFileSync('podman', [...base, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 }).trim();
  const service: ChildProcess = spawn('podman', [...base, 'system', 'service', '--time=0', `unix://${socket}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let serviceErr = '';
  service.stderr?.on('data', (c: Buffer) => {
    serviceErr = (serviceErr + c.toString()).slice(-2000);
  });
  try {
    await waitForSocket(socket, 30_000, 'podman system service');
  } catch (e) {
    service.kill('SIGKILL');
    throw new Error(`${(e as Error).message}: ${serviceErr}`);
  }
  return {
    socket,
    flags: base,
    cli,
    importImage(ref, marker) {
      const tar = buildBusyboxRootfsTar(dir, marker);
      return `sha256:${cli(['import', '--change', 'CMD ["/bin/sleep","3600"]', tar, ref]).replace(/^sha256:/, '')}`;
    },
    run(o) {
      const args = ['run', '-d', '--name', o.name, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--network', 'host'];
      for (const [k, v] of Object.entries(o.labels ?? {})) args.push('--label', `${k}=${v}`);
      for (const [k, v] of Object.entries(o.env ?? {})) args.push('--env', `${k}=${v}`);
      for (const m of o.mounts ?? []) args.push('-v', m);
      const id = cli([...args, o.image, ...o.cmd]);
      const pid = Number(cli(['inspect', '-f', '{{.State.Pid}}', id]));
      return { id, pid };
    },
    remove(name) {
      cli(['rm', '-f', '-t', '0', name]);
    },
    async stop() {
      try {
        cli(['rm', '-a', '-f', '-t', '0']);
      } catch {
        // best effort
      }
      service.kill('SIGTERM');
      await new Promise<void>((r) => {
        if (service.exitCode !== null) r();
        else service.once('exit', () => r());
        setTimeout(r, 5000);
      });
      // conmon runs `podman container cleanup` after a container exits, with this instance's
      // --root; that mounts the storage again. Wait for those processes to finish first.
      for (let i = 0; i < 100; i++) {
        try {
          execFileSync('pgrep', ['-f', root], { stdio: 'ignore' });
        } catch {
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      try {
        // Unmounts and deletes this instance's storage, so the temp dir can be removed.
        cli(['system', 'reset', '--force']);
      } catch {
        // best effort
      }
      // The overlay driver bind-mounts its own directory; reset may leave that mount behind.
      // Lazily, since a container's conmon may still be letting go of it.
      try {
        execFileSync('umount', ['-l', join(root, 'overlay')], { stdio: 'ignore' });
      } catch {
        // not mounted
      }
      rmSync(runroot, { recursive: true, force: true, maxRetries: 3 });
    },
  };
}

export interface Containerd {
  socket: string;
  ctr(ns: string, args: string[]): string;
  /** Import an OCI archive made by podman; returns nothing (the ref is the archive's name). */
  importArchive(ns: string, archive: string): void;
  /** Start a detached container with runc; returns its host PID. */
  run(o: { ns: string; id: string; image: string; labels?: Record<string, string>; cgroup?: string; mounts?: string[]; cmd: string[] }): number;
  remove(ns: string, id: string): void;
  stop(): Promise<void>;
}

/**
 * A containerd of its own. With `cri`, its CRI plugin serves the kubelet's API on the same
 * socket (runc with cgroupfs, no CNI: pods use the node's network), with `sandboxImage` as the
 * pause image (it must be imported into namespace k8s.io before a pod is run).
 */
export async function startContainerd(dir: string, opts: { cri?: { sandboxImage: string } } = {}): Promise<Containerd> {
  const root = join(dir, 'containerd-root');
  const state = join(dir, 'containerd-state');
  const socket = join(dir, 'containerd.sock');
  const config = join(dir, 'containerd.toml');
  const common = `[grpc]\n  address = "${socket}"\n[ttrpc]\n  address = "${socket}.ttrpc"\n[debug]\n  address = ""\n[metrics]\n  address = ""\n`;
  const cri = opts.cri
    ? [
        '[plugins."io.containerd.grpc.v1.cri"]',
        `  sandbox_image = "${opts.cri.sandboxImage}"`,
        '  disable_apparmor = true',
        '  restrict_oom_score_adj = true',
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        '  [plugins."io.containerd.grpc.v1.cri".containerd]',
        '    default_runtime_name = "runc"',
        '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '      runtime_type = "io.containerd.runc.v2"',
        '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        `        BinaryName = "${RUNC}"`,
        '        SystemdCgroup = false',
        '  [plugins."io.containerd.grpc.v1.cri".cni]',
        `    bin_dir = "${join(dir, 'cni-bin')}"`,
        `    conf_dir = "${join(dir, 'cni-conf')}"`,
        '',
      ].join('\n')
    : 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n';
  writeFileSync(config, `version = 2\n${cri}${common}`);
  const proc = spawn('containerd', ['--config', config, '--root', root, '--state', state, '--address', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr?.on('data', (c: Buffer) => {
    err = (err + c.toString()).slice(-4000);
  });
  try {
    await waitForSocket(socket, 30_000, 'containerd');
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${(e as Error).message}: ${err}`);
  }
  const ctr = (ns: string, args: string[]): string => execFileSync('ctr', ['--address', socket, '--namespace', ns, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 }).trim();
  const running = new Set<string>();
  const handle: Containerd = {
    socket,
    ctr,
    importArchive(ns, archive) {
      ctr(ns, ['images', 'import', archive]);
    },
    run(o) {
      const args = ['run', '-d', '--runc-binary', RUNC];
      for (const [k, v] of Object.entries(o.labels ?? {})) args.push('--label', `${k}=${v}`);
      if (o.cgroup) args.push('--cgroup', o.cgroup);
      for (const m of o.mounts ?? []) {
        const [src, dst, mode] = m.split(':');
        args.push('--mount', `type=bind,src=${src},dst=${dst},options=rbind:${mode === 'ro' ? 'ro' : 'rw'}`);
      }
      ctr(o.ns, [...args, o.image, o.id, ...o.cmd]);
      running.add(`${o.ns}/${o.id}`);
      const tasks = ctr(o.ns, ['tasks', 'ls']);
      const line = tasks.split('\n').find((l) => l.startsWith(`${o.id} `));
      const pid = Number(line?.trim().split(/\s+/)[1]);
      if (!Number.isSafeInteger(pid) || pid <= 0) throw new Error(`no pid for containerd task ${o.id}: ${tasks}`);
      return pid;
    },
    remove(ns, id) {
      try {
        ctr(ns, ['tasks', 'kill', '-s', 'SIGKILL', id]);
      } catch {
        // may already be gone
      }
      for (let i = 0; i < 50; i++) {
        try {
          ctr(ns, ['tasks', 'delete', id]);
          break;
        } catch {
          execFileSync('sleep', ['0.1']);
        }
      }
      try {
        ctr(ns, ['containers', 'delete', id]);
      } catch {
        // gone
      }
      running.delete(`${ns}/${id}`);
    },
    async stop() {
      for (const key of [...running]) {
        const [ns, id] = key.split('/') as [string, string];
        handle.remove(ns, id);
      }
      proc.kill('SIGTERM');
      await new Promise<void>((r) => {
        if (proc.exitCode !== null) r();
        else proc.once('exit', () => r());
        setTimeout(r, 5000);
      });
    },
  };
  return handle;
}

type Unary = (req: unknown, cb: (e: Error | null, r?: Record<string, unknown>) => void) => void;

/**
 * A CRI client (runtime.v1) for tests: creates pods and containers through containerd's CRI
 * plugin exactly as a kubelet would — the kubelet's labels and cgroup parent are set by the
 * CRI implementation, not by the test.
 */
export class CriClient {
  private readonly rt: Record<string, Unary> & { close(): void };

  constructor(socket: string) {
    const def = protoLoader.loadSync(join(dirname(fileURLToPath(import.meta.url)), 'proto', 'cri-runtime.proto'), { keepCase: true, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
    this.rt = new pkg.runtime.v1.RuntimeService(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.default_authority': 'localhost' }) as unknown as Record<string, Unary> & { close(): void };
  }

  private call(method: string, req: unknown): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      (this.rt[method] as Unary).call(this.rt, req, (e, r) => (e ? reject(e) : resolve(r ?? {})));
    });
  }

  /** A pod in the node's network namespace, under the kubelet's cgroupfs layout for its QoS class. */
  async runPod(o: { name: string; namespace: string; uid: string; logDir: string }): Promise<{ podId: string; config: { metadata: { name: string; namespace: string; uid: string } } }> {
    const config = {
      metadata: { name: o.name, uid: o.uid, namespace: o.namespace, attempt: 0 },
      // A pod on the node's network has no hostname of its own (a private UTS namespace would be needed).
      log_directory: o.logDir,
      labels: { 'io.kubernetes.pod.name': o.name, 'io.kubernetes.pod.namespace': o.namespace, 'io.kubernetes.pod.uid': o.uid },
      linux: { cgroup_parent: `/kubepods/besteffort/pod${o.uid}`, security_context: { namespace_options: { network: 2, pid: 0, ipc: 0 } } },
    };
    const r = await this.call('RunPodSandbox', { config });
    return { podId: String(r.pod_sandbox_id), config };
  }

  /**
   * Create and start a container in the pod, with the labels a kubelet puts on every container it
   * creates (io.kubernetes.pod.name/namespace/uid, io.kubernetes.container.name).
   */
  async startContainer(o: { podId: string; podConfig: { metadata: { name: string; namespace: string; uid: string } }; name: string; image: string; command: string[]; mounts: { host: string; container: string; readonly: boolean }[] }): Promise<string> {
    const m = o.podConfig.metadata;
    const r = await this.call('CreateContainer', {
      pod_sandbox_id: o.podId,
      sandbox_config: o.podConfig,
      config: {
        metadata: { name: o.name, attempt: 0 },
        image: { image: o.image },
        command: o.command,
        mounts: o.mounts.map((m) => ({ host_path: m.host, container_path: m.container, readonly: m.readonly })),
        log_path: `${o.name}.log`,
        labels: { 'io.kubernetes.pod.name': m.name, 'io.kubernetes.pod.namespace': m.namespace, 'io.kubernetes.pod.uid': m.uid, 'io.kubernetes.container.name': o.name },
      },
    });
    const id = String(r.container_id);
    await this.call('StartContainer', { container_id: id });
    return id;
  }

  async removePod(podId: string): Promise<void> {
    await this.call('StopPodSandbox', { pod_sandbox_id: podId });
    await this.call('RemovePodSandbox', { pod_sandbox_id: podId });
  }

  close(): void {
    this.rt.close();
  }
}
