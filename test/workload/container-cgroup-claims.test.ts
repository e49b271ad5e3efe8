/**
 * A cgroup named after another container is no claim to be that container
 * (src/workload/container.ts):
 *   - a container that can write its own cgroup creates `docker-<victim>.scope` (or a pod slice
 *     and `cri-containerd-<victim>.scope`, `crio-…`, `libpod-…`) inside it and moves there: the
 *     outermost container on the path is the caller's, and nothing named below it counts — not
 *     the inner container, not a pod UID, not a user delegation;
 *   - whoever can create cgroups outside any container (an LXC/Incus system container, a service
 *     with Delegate=) names one after a container: with a runtime configured, the caller must be
 *     in the cgroups where the runtime runs that container (`container.cgroup_mismatch`).
 * Paths are shaped after the real ones of each runtime; the runtime is a stand-in for the Docker
 * Engine API, /proc a file tree.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerAttestor, locateContainer, matchCgroupPath, parseCgroupFile } from '../../src/workload/container.js';
import { codeOfAsync } from '../support/codes.js';

const ME = 'a3f5c0d1e2b4968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d';
const VICTIM = 'b'.repeat(64);
const MY_POD = '99999999-8888-7777-6666-555555555555';
const VICTIM_POD = '11111111-2222-3333-4444-555555555555';
const sys = (uid: string): string => uid.replaceAll('-', '_');

describe('a cgroup named after another container, made inside the caller\'s own container', () => {
  const nested: { name: string; text: string; expect: ReturnType<typeof parseCgroupFile>; namespaces?: string[] }[] = [
    // The reviewer's three paths.
    { name: 'docker (systemd driver) inside docker', text: `0::/system.slice/docker-${ME}.scope/docker-${VICTIM}.scope\n`, expect: { id: ME, runtime: 'docker' } },
    { name: 'docker inside podman --systemd', text: `0::/system.slice/libpod-${ME}.scope/container/docker-${VICTIM}.scope\n`, expect: { id: ME, runtime: 'podman' } },
    {
      name: 'a k8s pod slice and cri-containerd scope inside a pod\'s container (systemd driver)',
      text: `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${sys(MY_POD)}.slice/cri-containerd-${ME}.scope/kubepods-pod${sys(VICTIM_POD)}.slice/cri-containerd-${VICTIM}.scope\n`,
      expect: { id: ME, runtime: 'containerd', podUid: MY_POD },
    },
    {
      name: 'the same with the cgroupfs driver, every cgroup v1 hierarchy',
      text: [12, 11, 4, 1].map((n) => `${n}:x:/kubepods/besteffort/pod${MY_POD}/${ME}/kubepods/besteffort/pod${VICTIM_POD}/${VICTIM}\n`).join(''),
      expect: { id: ME, runtime: 'containerd', podUid: MY_POD },
    },
    {
      name: 'cri-o: a pod slice and crio scope inside a cri-o container',
      text: `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sys(MY_POD)}.slice/crio-${ME}.scope/kubepods-pod${sys(VICTIM_POD)}.slice/crio-${VICTIM}.scope\n`,
      expect: { id: ME, runtime: 'crio', podUid: MY_POD },
    },
    { name: 'cri-o cgroupfs: crio-<id> inside crio-<id>', text: `5:memory:/kubepods/besteffort/pod${MY_POD}/crio-${ME}/crio-${VICTIM}\n`, expect: { id: ME, runtime: 'crio', podUid: MY_POD } },
    { name: 'podman (systemd): libpod scope inside a libpod scope', text: `0::/machine.slice/libpod-${ME}.scope/container/libpod-${VICTIM}.scope\n`, expect: { id: ME, runtime: 'podman' } },
    {
      name: 'podman (cgroupfs, cgroup v1 and v2 lines): libpod_parent/libpod-<id> inside one',
      text: `9:name=systemd:/libpod_parent/libpod-${ME}/libpod_parent/libpod-${VICTIM}\n4:memory:/libpod_parent/libpod-${ME}/libpod_parent/libpod-${VICTIM}\n0::/libpod_parent/libpod-${ME}/libpod_parent/libpod-${VICTIM}\n`,
      expect: { id: ME, runtime: 'podman' },
    },
    { name: 'docker cgroupfs: /docker/<id> inside /docker/<id> (Docker-in-Docker)', text: `4:memory:/docker/${ME}/docker/${VICTIM}\n1:name=systemd:/docker/${ME}/docker/${VICTIM}\n`, expect: { id: ME, runtime: 'docker' } },
    { name: 'docker systemd scope holding a cgroupfs /docker/<id>', text: `0::/system.slice/docker-${ME}.scope/docker/${VICTIM}\n`, expect: { id: ME, runtime: 'docker' } },
    {
      name: 'a plain docker container gets no pod UID from a pod slice it made',
      text: `0::/system.slice/docker-${ME}.scope/kubepods.slice/kubepods-pod${sys(VICTIM_POD)}.slice/cri-containerd-${VICTIM}.scope\n`,
      expect: { id: ME, runtime: 'docker' },
    },
    {
      name: 'containerd\'s own /<namespace>/<id> with a scope made inside it',
      text: `0::/default/${ME}/docker-${VICTIM}.scope\n`,
      namespaces: ['k8s.io', 'default'],
      expect: { id: ME, runtime: 'containerd', namespace: 'default' },
    },
    {
      name: 'a user delegation inside the container (systemd in podman) neither hides nor replaces it',
      text: `0::/machine.slice/libpod-${ME}.scope/container/user.slice/user-1000.slice/user@1000.service/app.slice/docker-${VICTIM}.scope\n`,
      expect: { id: ME, runtime: 'podman' },
    },
    {
      name: 'a kind node seen from the host: the node container, not its pods',
      text: `0::/system.slice/docker-${ME}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${sys(VICTIM_POD)}.slice/cri-containerd-${VICTIM}.scope\n`,
      expect: { id: ME, runtime: 'docker' },
    },
  ];
  for (const c of nested) {
    it(`${c.name}: the outer container`, () => {
      expect(parseCgroupFile(c.text, c.namespaces ? { containerdNamespaces: c.namespaces } : {})).toEqual(c.expect);
    });
  }

  it('an agent inside the outer container (its own cgroup namespace) sees the inner container as its runtime made it', () => {
    expect(parseCgroupFile(`0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${sys(VICTIM_POD)}.slice/cri-containerd-${VICTIM}.scope\n`)).toEqual({
      id: VICTIM,
      runtime: 'containerd',
      podUid: VICTIM_POD,
    });
  });

  it('a pod UID on a line that names no container does not count', () => {
    // A hierarchy the runtime left alone (cgroup v1 hybrid) where the container could write.
    expect(parseCgroupFile(`4:memory:/docker/${ME}\n0::/system.slice/containerd.service/kubepods-pod${sys(VICTIM_POD)}.slice\n`)).toEqual({ id: ME, runtime: 'docker' });
  });

  it('the container\'s cgroup is the path through the segment that names it, whatever lies below', () => {
    expect(matchCgroupPath(`/system.slice/docker-${ME}.scope/docker-${VICTIM}.scope`)).toMatchObject({ id: ME, scope: `/system.slice/docker-${ME}.scope` });
    const inner = locateContainer(`9:name=systemd:/libpod_parent/libpod-${ME}/x\n0::/libpod_parent/libpod-${ME}/libpod_parent/libpod-${VICTIM}\n`);
    const outer = locateContainer(`9:name=systemd:/libpod_parent/libpod-${ME}\n0::/libpod_parent/libpod-${ME}\n`);
    expect(inner?.cgroups).toBe(`0:/libpod_parent/libpod-${ME}\n9:/libpod_parent/libpod-${ME}`);
    expect(inner?.cgroups).toBe(outer?.cgroups);
  });
});

describe('a cgroup named after a container outside it, with the runtime asked', () => {
  let dir: string;
  let proc: string;
  let socket: string;
  let server: http.Server;
  let asked = 0;
  /** Container ID → the pid the stand-in reports for it (0: not running). */
  const pids: Record<string, number> = {};
  const labels: Record<string, Record<string, string>> = { [ME]: { who: 'me' }, [VICTIM]: { who: 'victim', tier: 'payments' } };

  const cgroup = (pid: number, text: string): void => {
    mkdirSync(join(proc, String(pid)), { recursive: true });
    writeFileSync(join(proc, String(pid), 'cgroup'), text);
  };
  const attest = (a: ContainerAttestor, pid: number): Promise<string[]> => a.attest({ pid, uid: 0, gid: 0 }, new AbortController().signal);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-cgroup-claims-'));
    proc = join(dir, 'proc');
    socket = join(dir, 'docker.sock');
    server = http.createServer((req, res) => {
      asked++;
      const m = /\/containers\/([0-9a-f]{64})\/json$/.exec(req.url ?? '');
      if (m && labels[m[1]!]) {
        const id = m[1]!;
        res.end(JSON.stringify({ Id: id, Name: `/${labels[id]!.who}`, Image: `sha256:${id === VICTIM ? 'cd'.repeat(32) : 'ef'.repeat(32)}`, Config: { Image: `${labels[id]!.who}:1`, Labels: labels[id] }, State: { Pid: pids[id] ?? 0 } }));
      } else if (req.url?.includes('/images/')) res.end(JSON.stringify({ RepoDigests: [] }));
      else res.writeHead(404).end('{}');
    });
    await new Promise<void>((r) => server.listen(socket, r));
    // Each container's process, where the runtime put it.
    pids[ME] = 100;
    pids[VICTIM] = 200;
    cgroup(100, `0::/system.slice/docker-${ME}.scope\n`);
    cgroup(200, `0::/system.slice/docker-${VICTIM}.scope\n`);
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('the victim\'s own processes, in sub-cgroups of its own too, get its selectors', async () => {
    cgroup(201, `0::/system.slice/docker-${VICTIM}.scope\n`);
    cgroup(202, `0::/system.slice/docker-${VICTIM}.scope/init.scope\n`);
    const a = new ContainerAttestor({ docker: { socket } }, { procRoot: proc });
    for (const pid of [201, 202]) expect(await attest(a, pid)).toContain('container:label:tier:payments');
  });

  it('a nested claim gives the caller its own container\'s selectors, never the victim\'s', async () => {
    cgroup(101, `0::/system.slice/docker-${ME}.scope/docker-${VICTIM}.scope\n`);
    const sel = await attest(new ContainerAttestor({ docker: { socket } }, { procRoot: proc }), 101);
    expect(sel).toContain(`container:id:${ME}`);
    expect(sel).toContain('container:label:who:me');
    expect(sel.filter((s) => s.includes(VICTIM) || s.includes('victim') || s.includes('payments'))).toEqual([]);
  });

  it('a cgroup named after the victim outside any container (LXC, Delegate=) is container.cgroup_mismatch, before and after the victim was looked up', async () => {
    cgroup(300, `0::/lxc.payload.c1/system.slice/docker-${VICTIM}.scope\n`);
    cgroup(301, `0::/system.slice/ci-runner.service/docker-${VICTIM}.scope\n`);
    const fresh = new ContainerAttestor({ docker: { socket } }, { procRoot: proc });
    expect(await codeOfAsync(attest(fresh, 300))).toBe('container.cgroup_mismatch');
    // The victim's answer is now cached (and its selectors made): still refused.
    expect(await attest(fresh, 200)).toContain('container:label:tier:payments');
    const n = asked;
    expect(await codeOfAsync(attest(fresh, 300))).toBe('container.cgroup_mismatch');
    expect(await codeOfAsync(attest(fresh, 301))).toBe('container.cgroup_mismatch');
    expect(asked).toBe(n);
  });

  it('a container the runtime reports as not running, or whose process this agent cannot see, gives nothing', async () => {
    const other = 'c'.repeat(64);
    labels[other] = { who: 'stopped' };
    cgroup(400, `0::/system.slice/docker-${other}.scope\n`);
    const a = new ContainerAttestor({ docker: { socket } }, { procRoot: proc });
    expect(await codeOfAsync(attest(a, 400))).toBe('container.not_running');
    // A pid in another pid namespace: /proc here has no such process, or another one.
    pids[other] = 999;
    expect(await codeOfAsync(attest(a, 400))).toBe('container.cgroup_mismatch');
    pids[other] = 100; // the pid of a process in another container
    expect(await codeOfAsync(attest(a, 400))).toBe('container.cgroup_mismatch');
    pids[other] = 400;
    expect(await attest(a, 400)).toContain('container:label:who:stopped');
  });
});
