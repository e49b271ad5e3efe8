/**
 * container-cgroup-claims.test.ts on real runtimes, end to end: podman (Docker Engine API) and
 * containerd (native API, its task's pid), a real Workload API server with the `container`
 * attestor, and a real caller process that is moved — as a container that can write its cgroup,
 * or whoever can create cgroups elsewhere, moves itself — into a cgroup named after a victim
 * container:
 *   - inside the attacker's own container (`<its cgroup>/libpod-<victim>`): the caller gets the
 *     attacker container's SVID, not the victim's;
 *   - outside any container (`/<lxc.payload-like>/libpod-<victim>`): no SVID at all, the runtime
 *     runs the victim elsewhere (`container.cgroup_mismatch`);
 *   - the same two with containerd (`/default/<attacker>/cri-containerd-<victim>.scope`, and a
 *     forged `/…/kubepods/besteffort/pod<uid>/<victim>`), through the attestor;
 *   - a restarted container (same ID, new process) keeps its identity while the runtime's answer
 *     (with where the container runs) is cached.
 * The cgroups are made and the process moved by this (root) test process, in every hierarchy the
 * caller is in (cgroup v1 and v2), and removed afterwards.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { ContainerAttestor } from '../../src/workload/container.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { codeOfAsync } from '../support/codes.js';
import { containerToolsMissing, startContainerd, startPodman, type Containerd, type Podman } from '../support/containers.js';
import { FakeSource, TD, makePki, startTestServer } from '../workload-api/support.js';

const FIXTURE = fileURLToPath(new URL('../agent/fixtures/fetch-then-setuid.mjs', import.meta.url));
const PROTO = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
const missing = containerToolsMissing();
const isRoot = process.getuid!() === 0;

/** Mount point of the hierarchy of each controllers column of /proc/<pid>/cgroup ('' is cgroup v2). */
function cgroupMounts(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const [fstype, , superOpts] = right.split(' ');
    const mountPoint = left.split(' ')[4]!;
    if (fstype === 'cgroup2') out.set('', mountPoint);
    else if (fstype === 'cgroup') out.set(superOpts!.split(',').filter((o) => o !== 'rw' && o !== 'ro').join(','), mountPoint);
  }
  return out;
}

/** Each hierarchy id of /proc/<pid>/cgroup with its path. */
function cgroupPaths(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const m = /^(\d+):[^:]*:(.*)$/.exec(line);
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

/** Cgroups made by a test, removed (deepest first) once their processes have exited. */
const made: string[] = [];

/**
 * Put `pid` into the cgroup `path(hierarchy id)` in every hierarchy it is in, making the cgroups
 * on the way (cgroup v1 cpuset: with the parent's cpus and mems, or nothing may join).
 */
function moveInto(pid: number, path: (hierarchy: string) => string): void {
  const mounts = cgroupMounts();
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const mount = mounts.get(m[2]!);
    if (mount === undefined) throw new Error(`no mount for cgroup hierarchy "${m[2]}"`);
    let dir = mount;
    for (const seg of path(m[1]!).split('/').filter((s) => s.length > 0)) {
      const parent = dir;
      dir = join(dir, seg);
      if (existsSync(dir)) continue;
      mkdirSync(dir);
      made.push(dir);
      for (const f of ['cpuset.cpus', 'cpuset.mems']) if (existsSync(join(parent, f))) writeFileSync(join(dir, f), readFileSync(join(parent, f)));
    }
    writeFileSync(join(dir, 'cgroup.procs'), String(pid));
  }
}

async function removeMade(): Promise<void> {
  for (const dir of made.splice(0).reverse()) {
    for (let i = 0; ; i++) {
      try {
        rmdirSync(dir);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') break;
        if (i >= 50) throw e;
        await new Promise((r) => setTimeout(r, 100)); // a process that just exited leaves it a moment later
      }
    }
  }
}

const children: ChildProcessWithoutNullStreams[] = [];

/** A caller on the host (../agent/fixtures/fetch-then-setuid.mjs), waiting for its commands. */
function caller(socket: string): { pid: number; run(cmd: string): Promise<{ svids?: string[]; code?: number; message?: string }> } {
  const child = spawn(process.execPath, [FIXTURE, socket, PROTO]);
  children.push(child);
  const waiting: ((a: { svids?: string[]; code?: number }) => void)[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => {
    const { cmd: _cmd, ...answer } = JSON.parse(l) as { cmd: string; svids?: string[]; code?: number };
    waiting.shift()?.(answer);
  });
  return {
    pid: child.pid!,
    run: (cmd) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no answer to ${cmd}`)), 20_000);
        waiting.push((a) => {
          clearTimeout(t);
          resolve(a);
        });
        child.stdin.write(`${cmd}\n`);
      }),
  };
}

/** A process that does nothing, for the attestor to describe. */
function idle(): ChildProcessWithoutNullStreams {
  const child = spawn('/usr/bin/sleep', ['600']);
  children.push(child);
  return child;
}

afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode === null && c.signalCode === null) {
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await gone;
    }
  }
  await removeMade();
});

describe.skipIf(missing !== null || !isRoot)('cgroups named after a victim container, on real runtimes', () => {
  let dir: string;
  let podman: Podman;
  let containerd: Containerd;
  let imageVictim: string;
  let imageAttacker: string;
  const tag = randomBytes(4).toString('hex');
  const signal = new AbortController().signal;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-cgroup-claims-'));
    podman = await startPodman(dir);
    imageVictim = podman.importImage('localhost/sigil-victim:1', 'victim');
    imageAttacker = podman.importImage('localhost/sigil-attacker:1', 'attacker');
    podman.cli(['save', '--format', 'oci-archive', '-o', join(dir, 'victim.tar'), 'localhost/sigil-victim:1']);
    containerd = await startContainerd(dir);
    containerd.importArchive('default', join(dir, 'victim.tar'));
  }, 240_000);

  afterAll(async () => {
    await containerd?.stop();
    await podman?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  }, 60_000);

  /** A Workload API server with entries on the victim's image + label and on the attacker's image. */
  async function server(): Promise<Awaited<ReturnType<typeof startTestServer>>> {
    const source = new FakeSource(makePki());
    source.addEntry({ id: 'victim', spiffeId: `spiffe://${TD}/payments`, selectors: [`container:image_id:${imageVictim}`, 'container:label:tier:payments'] });
    source.addEntry({ id: 'attacker', spiffeId: `spiffe://${TD}/attacker`, selectors: [`container:image_id:${imageAttacker}`] });
    const attestors = new Map<string, WorkloadAttestor>([
      ['unix', createUnixAttestor({ hashBinaries: false })],
      ['container', new ContainerAttestor({ podman: { socket: podman.socket } })],
    ]);
    return startTestServer(source, attestors);
  }

  it('podman: a caller in a cgroup named after the victim inside the attacker\'s container gets the attacker container\'s SVID', async () => {
    const victim = podman.run({ name: `victim-${tag}`, image: 'localhost/sigil-victim:1', labels: { tier: 'payments' }, cmd: ['/bin/sleep', '600'] });
    const attacker = podman.run({ name: `attacker-${tag}`, image: 'localhost/sigil-attacker:1', cmd: ['/bin/sleep', '600'] });
    const t = await server();
    try {
      const c = caller(t.socket);
      const own = cgroupPaths(attacker.pid);
      moveInto(c.pid, (h) => `${own.get(h)!}/libpod-${victim.id}`);
      expect(readFileSync(`/proc/${c.pid}/cgroup`, 'utf8')).toContain(`/libpod-${attacker.id}/libpod-${victim.id}\n`);
      // The victim's own process is served the victim's SVID (the entry is right).
      const v = caller(t.socket);
      moveInto(v.pid, (h) => cgroupPaths(victim.pid).get(h)!);
      expect(await v.run('x509')).toEqual({ svids: [`spiffe://${TD}/payments`] });
      expect(await c.run('x509')).toEqual({ svids: [`spiffe://${TD}/attacker`] });
    } finally {
      await t.cleanup();
    }
  }, 60_000);

  it('podman: a caller in a cgroup named after the victim outside any container gets no SVID', async () => {
    const victim = podman.run({ name: `victim2-${tag}`, image: 'localhost/sigil-victim:1', labels: { tier: 'payments' }, cmd: ['/bin/sleep', '600'] });
    const t = await server();
    try {
      const c = caller(t.socket);
      // As an LXC/Incus system container (or a service with Delegate=) could name its own cgroups.
      moveInto(c.pid, () => `/sigil-test-lxc.payload.${tag}/libpod-${victim.id}`);
      const r = await c.run('x509');
      expect(r.svids).toBeUndefined();
      expect(r.code).toBe(14); // UNAVAILABLE: the container attestor failed and no identity was left
      expect(await codeOfAsync(new ContainerAttestor({ podman: { socket: podman.socket } }).attest({ pid: c.pid, uid: 0, gid: 0 }, signal))).toBe('container.cgroup_mismatch');
    } finally {
      await t.cleanup();
    }
  }, 60_000);

  it('podman: a restarted container (same ID, new process) keeps its identity with the answer cached', async () => {
    const c = podman.run({ name: `restarted-${tag}`, image: 'localhost/sigil-victim:1', labels: { tier: 'payments' }, cmd: ['/bin/sleep', '600'] });
    const a = new ContainerAttestor({ podman: { socket: podman.socket } });
    expect(await a.attest({ pid: c.pid, uid: 0, gid: 0 }, signal)).toContain('container:label:tier:payments');
    podman.cli(['restart', '-t', '0', `restarted-${tag}`]);
    const pid = Number(podman.cli(['inspect', '-f', '{{.State.Pid}}', c.id]));
    expect(pid).not.toBe(c.pid);
    expect(await a.attest({ pid, uid: 0, gid: 0 }, signal)).toContain('container:label:tier:payments');
  }, 60_000);

  it('containerd: a process in a cgroup named after the victim inside another container, or outside any, is never the victim', async () => {
    const victim = 'e'.repeat(64);
    const attacker = 'f'.repeat(64);
    const victimPid = containerd.run({ ns: 'default', id: victim, image: 'localhost/sigil-victim:1', labels: { tier: 'payments' }, cmd: ['/bin/sleep', '600'] });
    const attackerPid = containerd.run({ ns: 'default', id: attacker, image: 'localhost/sigil-victim:1', labels: { tier: 'none' }, cmd: ['/bin/sleep', '600'] });
    try {
      const a = new ContainerAttestor({ containerd: { socket: containerd.socket, namespaces: ['k8s.io', 'default'] } });
      const attest = (pid: number): Promise<string[] | string> => a.attest({ pid, uid: 0, gid: 0 }, signal).catch((e: { code: string }) => e.code);
      // The task's pid locates each container (containerd's Tasks.Get): its own processes pass.
      expect(await attest(victimPid)).toContain('container:label:tier:payments');
      expect(await attest(attackerPid)).toContain('container:label:tier:none');
      // Inside the attacker's container (containerd's own /<namespace>/<id> cgroup).
      const nested = idle();
      const own = cgroupPaths(attackerPid);
      moveInto(nested.pid!, (h) => `${own.get(h)!}/cri-containerd-${victim}.scope`);
      const inside = await attest(nested.pid!);
      expect(inside).toContain(`container:id:${attacker}`);
      expect(inside).toContain('container:label:tier:none');
      expect(inside).not.toContain('container:label:tier:payments');
      // Outside any container, shaped as a kubelet's cgroupfs path.
      const forged = idle();
      moveInto(forged.pid!, () => `/sigil-test-lxc.payload.${tag}/kubepods/besteffort/pod0d8a5a4c-4d2b-4b8e-9a55-3f0c7f9e2a11/${victim}`);
      expect(await attest(forged.pid!)).toBe('container.cgroup_mismatch');
      a.close();
    } finally {
      containerd.remove('default', attacker);
      containerd.remove('default', victim);
    }
  }, 60_000);
});
