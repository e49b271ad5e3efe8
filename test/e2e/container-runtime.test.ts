/**
 * End to end on real container runtimes: a real verifier, a real agent on the host, and workload
 * processes inside real containers (podman through its Docker Engine API, containerd through its
 * native gRPC API) calling the Workload API over a bind-mounted socket with `sigil svid fetch`.
 * An entry on `container:image_id` + a label is served to a container of that image only; not to
 * a container of another image, not to a process outside containers; a new container of the same
 * image gets the same SPIFFE ID.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningAgent } from '../../src/agent/agent.js';
import { ContainerAttestor } from '../../src/workload/container.js';
import { agentEnv, createEntry, freePort, joinToken, runAgent, waitFor, type AgentEnv } from '../agent/harness.js';
import { containerToolsMissing, CriClient, startContainerd, startPodman, type Containerd, type Podman } from '../support/containers.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const missing = containerToolsMissing();
if (missing && process.env.CI === 'true') throw new Error(`container runtime tests cannot run: ${missing}`);

const HOST_MOUNTS = ['/usr:/usr:ro', '/lib:/lib:ro', '/lib64:/lib64:ro', `${REPO}:${REPO}:ro`];
const SOCK_IN = '/sock/agent.sock';

describe.skipIf(missing !== null)('container attestation on real runtimes', () => {
  let dir: string;
  let sockDir: string;
  let tv: TestVerifier;
  let env: AgentEnv;
  let agent: RunningAgent;
  let podman: Podman;
  let containerd: Containerd;
  let cri: CriClient;
  let agentId: string;
  let imageA: string;
  let imageB: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-containers-'));
    sockDir = join(dir, 'sock');
    mkdirSync(sockDir, { mode: 0o755 });
    podman = await startPodman(dir);
    imageA = podman.importImage('localhost/sigil-app:1', 'app');
    imageB = podman.importImage('localhost/sigil-other:1', 'other');
    podman.cli(['save', '--format', 'oci-archive', '-o', join(dir, 'app.tar'), 'localhost/sigil-app:1']);
    containerd = await startContainerd(dir, { cri: { sandboxImage: 'localhost/sigil-app:1' } });
    cri = new CriClient(containerd.socket);
    containerd.importArchive('default', join(dir, 'app.tar'));
    containerd.importArchive('k8s.io', join(dir, 'app.tar'));

    const port = await freePort();
    tv = await startTestVerifier({ listen: { address: '127.0.0.1', port } }, { dir: join(dir, 'verifier') });
    const t = await joinToken(tv.adminSocket);
    agentId = t.agentId;
    env = await agentEnv(dir, tv.adminSocket, port, { join_token: { token: t.token } }, {
      workloadApiSocket: join(sockDir, 'agent.sock'),
      workloadAttestors: {
        unix: { hashBinaries: false },
        container: { podman: { socket: podman.socket }, containerd: { socket: containerd.socket, namespaces: ['k8s.io', 'default'] } },
      },
    });
    agent = await runAgent(env);
    await agent.whenAttested();
    chmodSync(join(sockDir, 'agent.sock'), 0o777);
    await createEntry(tv.adminSocket, { spiffeId: 'spiffe://example.org/app', parentId: agentId, selectors: [`container:image_id:${imageA}`, 'container:label:tier:web'] });
    await createEntry(tv.adminSocket, {
      spiffeId: 'spiffe://example.org/k8s/payments',
      parentId: agentId,
      selectors: ['k8s:ns:payments', 'k8s:container_name:api', `container:image_id:${imageA}`],
    });
  }, 240_000);

  afterAll(async () => {
    cri?.close();
    await agent?.close();
    await tv?.stop();
    await containerd?.stop();
    await podman?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  }, 60_000);

  /**
   * `sigil svid fetch --json` run inside the container (asynchronously: the agent runs in this
   * process and must keep answering); the SPIFFE IDs it got, or the error code.
   */
  async function fetchInside(exec: (cmd: string[]) => Promise<string>): Promise<{ ids?: string[]; error?: string }> {
    const cmd = ['/usr/bin/node', join(REPO, 'bin/sigil'), 'svid', 'fetch', '--socket', `unix://${SOCK_IN}`, '--json', '--timeout', '5'];
    let out: string;
    try {
      out = await exec(cmd);
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? '');
    }
    const j = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { ok?: boolean; svids?: { spiffeId: string }[]; error?: { code: string } };
    if (j.ok === false || j.error) return { error: j.error?.code ?? 'unknown' };
    return { ids: (j.svids ?? []).map((s) => s.spiffeId).sort() };
  }

  const run = async (file: string, args: string[]): Promise<string> => (await promisify(execFile)(file, args, { encoding: 'utf8', timeout: 30_000 })).stdout;
  const podmanExec = (name: string) => (cmd: string[]) => run('podman', [...podman.flags, 'exec', name, ...cmd]);
  let execSeq = 0;
  const ctrExec = (ns: string, id: string) => (cmd: string[]) => run('ctr', ['--address', containerd.socket, '--namespace', ns, 'tasks', 'exec', '--exec-id', `sigil-test-${++execSeq}`, id, ...cmd]);
  const onHost = (cmd: string[]): Promise<string> => run(cmd[0]!, cmd.slice(1).map((a) => (a === `unix://${SOCK_IN}` ? `unix://${join(sockDir, 'agent.sock')}` : a)));

  it('podman (Docker Engine API): the entry on image_id + label is served inside the container', async () => {
    const c = podman.run({ name: 'app1', image: 'localhost/sigil-app:1', labels: { tier: 'web' }, mounts: [...HOST_MOUNTS, `${sockDir}:/sock`], cmd: ['/bin/sleep', '600'] });
    const sel = await new ContainerAttestor({ podman: { socket: podman.socket } }).attest({ pid: c.pid, uid: 0, gid: 0 }, new AbortController().signal);
    expect(sel).toContain(`container:id:${c.id}`);
    expect(sel).toContain('container:runtime:podman');
    expect(sel).toContain(`container:image_id:${imageA}`);
    expect(sel).toContain('container:image:localhost/sigil-app:1');
    expect(sel).toContain('container:label:tier:web');
    expect(sel).toContain('container:name:app1');
    expect(sel.some((s) => s.startsWith('container:image_digest:localhost/sigil-app@sha256:'))).toBe(true);
    const r = await waitFor(async () => {
      const x = await fetchInside(podmanExec('app1'));
      return x.ids?.includes('spiffe://example.org/app') ? x : undefined;
    }, 20_000, 'SVID inside the podman container');
    expect(r.ids).toEqual(['spiffe://example.org/app']);
  }, 60_000);

  it('podman: a container of another image with the same label gets nothing; neither does a host process', async () => {
    const c = podman.run({ name: 'other1', image: 'localhost/sigil-other:1', labels: { tier: 'web' }, mounts: [...HOST_MOUNTS, `${sockDir}:/sock`], cmd: ['/bin/sleep', '600'] });
    const sel = await new ContainerAttestor({ podman: { socket: podman.socket } }).attest({ pid: c.pid, uid: 0, gid: 0 }, new AbortController().signal);
    expect(sel).toContain(`container:image_id:${imageB}`);
    expect(sel).toContain('container:label:tier:web');
    expect((await fetchInside(podmanExec('other1'))).error).toBe('workload_client.permission_denied');
    expect((await fetchInside(onHost)).error).toBe('workload_client.permission_denied');
  }, 60_000);

  it('podman: a new container of the same image, after the first is removed, gets the same SPIFFE ID', async () => {
    podman.remove('app1');
    podman.run({ name: 'app2', image: 'localhost/sigil-app:1', labels: { tier: 'web' }, mounts: [...HOST_MOUNTS, `${sockDir}:/sock`], cmd: ['/bin/sleep', '600'] });
    const r = await waitFor(async () => {
      const x = await fetchInside(podmanExec('app2'));
      return x.ids?.includes('spiffe://example.org/app') ? x : undefined;
    }, 20_000, 'SVID inside the second podman container');
    expect(r.ids).toEqual(['spiffe://example.org/app']);
  }, 60_000);

  it('containerd (native API, namespace default, /<ns>/<id> cgroup): served on image_id + label', async () => {
    const id = 'c'.repeat(64);
    containerd.run({ ns: 'default', id, image: 'localhost/sigil-app:1', labels: { tier: 'web' }, mounts: [...HOST_MOUNTS, `${sockDir}:/sock:rw`], cmd: ['/bin/sleep', '600'] });
    const r = await waitFor(async () => {
      const x = await fetchInside(ctrExec('default', id));
      return x.ids?.includes('spiffe://example.org/app') ? x : undefined;
    }, 20_000, 'SVID inside the containerd container');
    expect(r.ids).toEqual(['spiffe://example.org/app']);
    const other = 'd'.repeat(64);
    containerd.run({ ns: 'default', id: other, image: 'localhost/sigil-app:1', labels: { tier: 'db' }, mounts: [...HOST_MOUNTS, `${sockDir}:/sock:rw`], cmd: ['/bin/sleep', '600'] });
    expect((await fetchInside(ctrExec('default', other))).error).toBe('workload_client.permission_denied');
  }, 60_000);

  it('containerd through CRI, as a kubelet creates pods (k8s.io namespace, io.kubernetes.* labels, kubepods cgroup): k8s selectors', async () => {
    const podUid = '0d8a5a4c-4d2b-4b8e-9a55-3f0c7f9e2a11';
    mkdirSync(join(dir, 'pod-logs'), { recursive: true });
    const pod = await cri.runPod({ name: 'api-7d9f', namespace: 'payments', uid: podUid, logDir: join(dir, 'pod-logs') });
    const mounts = [...HOST_MOUNTS, `${sockDir}:/sock:rw`].map((m) => {
      const [host, container, mode] = m.split(':') as [string, string, string];
      return { host, container, readonly: mode === 'ro' };
    });
    const id = await cri.startContainer({ podId: pod.podId, podConfig: pod.config, name: 'api', image: 'localhost/sigil-app:1', command: ['/bin/sleep', '600'], mounts });
    const r = await waitFor(async () => {
      const x = await fetchInside(ctrExec('k8s.io', id));
      return x.ids?.includes('spiffe://example.org/k8s/payments') ? x : undefined;
    }, 30_000, 'SVID inside the CRI-created container');
    expect(r.ids).toEqual(['spiffe://example.org/k8s/payments']);
    await cri.removePod(pod.podId);
  }, 90_000);
}, 300_000);
