import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { containerAttestorPlugin, createContainerAttestor, parseCgroupFile } from '../../src/workload/container.js';
import { validateAgainstSchema } from '../../src/plugins/validate.js';

const ID = 'a3f5c0d1e2b4968778695a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d';
const ID2 = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef';
const POD = '1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d';
const POD_ = POD.replaceAll('-', '_');

const samples: { name: string; text: string; expect: ReturnType<typeof parseCgroupFile> }[] = [
  {
    name: 'docker, cgroup v1, cgroupfs driver',
    text: `12:pids:/docker/${ID}\n11:memory:/docker/${ID}\n4:cpu,cpuacct:/docker/${ID}\n1:name=systemd:/docker/${ID}\n0::/system.slice/containerd.service\n`,
    expect: { id: ID, runtime: 'docker' },
  },
  { name: 'docker, cgroup v2, systemd driver', text: `0::/system.slice/docker-${ID}.scope\n`, expect: { id: ID, runtime: 'docker' } },
  {
    name: 'containerd in Kubernetes, cgroup v2, systemd driver',
    text: `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${POD_}.slice/cri-containerd-${ID}.scope\n`,
    expect: { id: ID, runtime: 'containerd', podUid: POD },
  },
  {
    name: 'containerd in Kubernetes, cgroup v1, cgroupfs driver',
    text: `11:memory:/kubepods/burstable/pod${POD}/${ID}\n10:cpuset:/kubepods/burstable/pod${POD}/${ID}\n`,
    expect: { id: ID, runtime: 'containerd', podUid: POD },
  },
  {
    name: 'guaranteed QoS pod (no QoS slice), systemd driver',
    text: `0::/kubepods.slice/kubepods-pod${POD_}.slice/cri-containerd-${ID}.scope\n`,
    expect: { id: ID, runtime: 'containerd', podUid: POD },
  },
  {
    name: 'containerd in a kind node (kubelet --cgroup-root=/kubelet, systemd driver), seen from inside the node',
    text: `0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${POD_}.slice/cri-containerd-${ID}.scope\n`,
    expect: { id: ID, runtime: 'containerd', podUid: POD },
  },
  {
    name: 'a guaranteed pod in a kind node',
    text: `0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod${POD_}.slice/cri-containerd-${ID}.scope\n`,
    expect: { id: ID, runtime: 'containerd', podUid: POD },
  },
  {
    name: 'cri-o, cgroup v2, systemd driver',
    text: `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${POD_}.slice/crio-${ID}.scope\n`,
    expect: { id: ID, runtime: 'crio', podUid: POD },
  },
  { name: 'cri-o, cgroup v1, cgroupfs driver', text: `5:memory:/kubepods/besteffort/pod${POD}/crio-${ID}\n`, expect: { id: ID, runtime: 'crio', podUid: POD } },
  { name: 'podman, cgroup v2, systemd', text: `0::/machine.slice/libpod-${ID}.scope/container\n`, expect: { id: ID, runtime: 'podman' } },
  { name: 'podman, cgroup v1, cgroupfs', text: `3:memory:/libpod_parent/libpod-${ID}\n1:name=systemd:/libpod_parent/libpod-${ID}\n`, expect: { id: ID, runtime: 'podman' } },
  { name: 'docker in docker: the outer container (the one the host runtime made) wins', text: `0::/docker/${ID2}/docker/${ID}\n`, expect: { id: ID2, runtime: 'docker' } },
  { name: 'host process', text: '0::/user.slice/user-0.slice/session-3.scope\n', expect: null },
  { name: 'init', text: '0::/init.scope\n', expect: null },
  { name: 'inside a private cgroup namespace', text: '0::/\n', expect: null },
  { name: 'cri-o conmon is not a container', text: `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${POD_}.slice/crio-conmon-${ID}.scope\n`, expect: null },
  { name: 'podman conmon is not a container', text: `0::/machine.slice/libpod-conmon-${ID}.scope\n`, expect: null },
  { name: 'uppercase hex is not an id', text: `0::/system.slice/docker-${ID.toUpperCase()}.scope\n`, expect: null },
  { name: 'bare 64-hex outside any known runtime is ignored', text: `0::/actions_job/${ID}\n`, expect: null },
  { name: 'a user-delegated cgroup named like a container is ignored', text: `0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-${ID}.scope\n`, expect: null },
];

describe('container id, runtime and pod UID from /proc/<pid>/cgroup', () => {
  for (const s of samples) {
    it(s.name, () => {
      expect(parseCgroupFile(s.text)).toEqual(s.expect);
    });
  }

  it('rootless podman is recognised only with allowUserDelegated', () => {
    const text = `0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-${ID}.scope\n`;
    expect(parseCgroupFile(text)).toBeNull();
    expect(parseCgroupFile(text, { allowUserDelegated: true })).toEqual({ id: ID, runtime: 'podman' });
  });

  it('lines naming different containers, runtimes or pods are refused', () => {
    expect(() => parseCgroupFile(`3:memory:/docker/${ID}\n2:cpu:/docker/${ID2}\n`)).toThrow(expect.objectContaining({ code: 'workload.container_ambiguous' }));
    expect(() => parseCgroupFile(`3:memory:/docker/${ID}\n0::/system.slice/crio-${ID}.scope\n`)).toThrow(expect.objectContaining({ code: 'workload.container_ambiguous' }));
    expect(() =>
      parseCgroupFile(`3:memory:/kubepods/burstable/pod${POD}/${ID}\n2:cpu:/kubepods/burstable/pod${POD.replace('1a', '2a')}/${ID}\n`),
    ).toThrow(expect.objectContaining({ code: 'workload.container_ambiguous' }));
  });

  it('an explicit runtime wins over one inferred from kubepods', () => {
    expect(parseCgroupFile(`3:memory:/kubepods/besteffort/pod${POD}/${ID}\n0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${POD_}.slice/docker-${ID}.scope\n`)).toEqual(
      { id: ID, runtime: 'docker', podUid: POD },
    );
  });

  it('malformed files are errors, not guesses', () => {
    expect(() => parseCgroupFile('garbage\n')).toThrow(expect.objectContaining({ code: 'workload.bad_cgroup_file' }));
    expect(() => parseCgroupFile(`x:memory:/docker/${ID}\n`)).toThrow(expect.objectContaining({ code: 'workload.bad_cgroup_file' }));
    expect(() => parseCgroupFile('0::/\n'.repeat(300))).toThrow(expect.objectContaining({ code: 'workload.bad_cgroup_file' }));
    // a path containing ':' is still one path
    expect(parseCgroupFile(`0::/weird:name/docker-${ID}.scope\n`)).toEqual({ id: ID, runtime: 'docker' });
  });
});

describe('container attestor (fake /proc tree)', () => {
  const root = mkdtempSync(join(tmpdir(), 'sigil-ctr-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const signal = new AbortController().signal;

  it('reads only /proc/<pid>/cgroup (never mountinfo) and emits the three selectors', async () => {
    mkdirSync(join(root, '77'), { recursive: true });
    writeFileSync(join(root, '77', 'cgroup'), samples[2]!.text);
    writeFileSync(join(root, '77', 'mountinfo'), `100 90 0:50 / /etc/hostname rw - ext4 /var/lib/docker/containers/${ID2}/hostname rw\n`);
    const a = createContainerAttestor({}, { procRoot: root });
    expect(await a.attest({ pid: 77, uid: 0, gid: 0 }, signal)).toEqual([`container:id:${ID}`, 'container:runtime:containerd', `container:pod_uid:${POD}`]);
  });

  it('a process outside containers gets no selectors; a vanished one is an error', async () => {
    mkdirSync(join(root, '78'), { recursive: true });
    writeFileSync(join(root, '78', 'cgroup'), '0::/init.scope\n');
    const a = createContainerAttestor({}, { procRoot: root });
    expect(await a.attest({ pid: 78, uid: 0, gid: 0 }, signal)).toEqual([]);
    await expect(a.attest({ pid: 79, uid: 0, gid: 0 }, signal)).rejects.toMatchObject({ code: 'workload.process_gone' });
  });

  it('config schema: {} is valid, unknown keys are not', () => {
    expect(validateAgainstSchema(containerAttestorPlugin.configSchema, {}, 'x')).toEqual({ allowUserDelegated: false, selectors: ['image', 'labels', 'name', 'k8s'], lookupTimeout: '2s', cacheSize: 4096, cacheTtl: '10m' });
    // A runtime block fills in its default socket; a kubelet URL must be https.
    expect(validateAgainstSchema(containerAttestorPlugin.configSchema, { docker: {} }, 'x')).toMatchObject({ docker: { socket: '/var/run/docker.sock' } });
    expect(() => createContainerAttestor({ kubelet: { url: 'http://127.0.0.1:10255' } })).toThrow(/kubelet\/url/);
    expect(() => createContainerAttestor({ procRoot: '/x' })).toThrow(/unknown key "procRoot"/);
  });

  it('describes this test process from the real /proc without failing', async () => {
    const sel = await createContainerAttestor({}).attest({ pid: process.pid, uid: 0, gid: 0 }, signal);
    expect(Array.isArray(sel)).toBe(true);
    for (const s of sel) expect(s).toMatch(/^container:(id:[0-9a-f]{64}|runtime:(docker|containerd|crio|podman)|pod_uid:[0-9a-f-]{36})$/);
  });
});
