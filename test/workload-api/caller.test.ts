/**
 * Caller identification: real kernel peer credentials (the native addon's SO_PEERCRED and
 * SO_PEERPIDFD), a real process under another uid, and the PID-recycling defence.
 */
import { execFile, fork, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';
import { loadSys } from '../../src/native/sys.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { frame, rawGrpc } from './h2.js';
import { FakeSource, TD, makePki, startTestServer } from './support.js';

const run = promisify(execFile);
const PY = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('../support/python/fetch_svid.py', import.meta.url));

/** A copy of the client script that uid 65534 can read (the checkout may live in a 0700 directory). */
function readableScript(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-py-'));
  chmodSync(dir, 0o755);
  const copy = join(dir, 'fetch_svid.py');
  copyFileSync(SCRIPT, copy);
  chmodSync(copy, 0o644);
  return copy;
}
const PASS_FIXTURE = fileURLToPath(new URL('./fixtures/connect-and-pass.mjs', import.meta.url));

function have(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}
const canSwitchUid = process.getuid!() === 0 && have('setpriv', ['--version']);
const hasPyGrpc = have(PY, ['-c', 'import grpc, google.protobuf']);
if (!hasPyGrpc && process.env.CI === 'true') throw new Error('CI must run the Python grpcio interop tests: install python3-grpcio python3-protobuf (scripts/setup.sh does)');
if (process.env.CI === 'true' && !hasPyGrpc) throw new Error('CI needs Debian python3-grpcio and python3-protobuf at /usr/bin/python3');

function statLine(pid: number, comm: string, start: bigint): string {
  const fields = ['S', '1', String(pid), String(pid), '0', '-1', '4194560', '0', '0', '0', '0', '0', '0', '0', '0', '20', '0', '1', '0', String(start), '0'];
  return `${pid} (${comm}) ${fields.join(' ')}\n`;
}
function statusText(uid: number, gid: number): string {
  return `Name:\tx\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\nGid:\t${gid}\t${gid}\t${gid}\t${gid}\nGroups:\t\n`;
}

describe('CallerConnection PID-recycling defence (fake /proc)', () => {
  const root = mkdtempSync(join(tmpdir(), 'sigil-proc-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const pid = 4321;
  const binA = join(root, 'bin-a');
  const binB = join(root, 'bin-b');
  writeFileSync(binA, 'program a');
  writeFileSync(binB, 'program b');
  /** Point the fake /proc/<pid>/exe at `target`. */
  const exec = (target: string): void => {
    const link = join(root, String(pid), 'exe');
    if (existsSync(link)) unlinkSync(link);
    symlinkSync(target, link);
  };
  const put = (start: bigint, uid = 1000, gid = 1000, comm = 'evil) 0 0 (x'): void => {
    mkdirSync(join(root, String(pid)), { recursive: true });
    writeFileSync(join(root, String(pid), 'stat'), statLine(pid, comm, start));
    writeFileSync(join(root, String(pid), 'status'), statusText(uid, gid));
    exec(binA);
  };

  it('accepts an unchanged process, even with ")" and spaces in comm', async () => {
    put(777n);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await c.ready;
    expect(c.startTime).toBe(777n);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
  });

  it('refuses when the pid now belongs to a process started later', async () => {
    put(777n);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await c.ready;
    put(778n);
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
  });

  it('refuses when the effective uid or gid changed, or the process is gone', async () => {
    put(777n);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await c.ready;
    put(777n, 0, 1000);
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
    put(777n, 1000, 0);
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
    rmSync(join(root, String(pid)), { recursive: true });
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
  });

  /** A ready connection of `pid` (start time 777) holding pidfd number `fd`, whose fdinfo names `pid`. */
  const pidfdConnection = async (fd: number): Promise<{ c: CallerConnection; fdinfo: string }> => {
    put(777n);
    const fdinfo = join(root, 'fdinfo');
    mkdirSync(fdinfo, { recursive: true });
    writeFileSync(join(fdinfo, String(fd)), `pos:\t0\nflags:\t02000002\nPid:\t${pid}\n`);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000, pidfd: fd }, root, fdinfo);
    await c.ready;
    return { c, fdinfo };
  };

  it('refuses when the pidfd says the process was reaped', async () => {
    const { c, fdinfo } = await pidfdConnection(99);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
    writeFileSync(join(fdinfo, '99'), 'pos:\t0\nflags:\t02000002\nPid:\t-1\n');
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
  });

  it('with a pidfd, the start time and uid/gid are still checked as well', async () => {
    const { c } = await pidfdConnection(98);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
    put(778n);
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
    put(777n, 0, 1000);
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
    put(777n);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
  });

  it('a closed connection never passes the pidfd check (its fd number may be reused)', async () => {
    // An fd number no process holds: close() then fails quietly instead of closing a real fd.
    const { c } = await pidfdConnection(999999);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
    c.close();
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
  });

  it('records the program at accept and refuses a caller that executed another one since', async () => {
    put(777n);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await c.ready;
    expect(c.image?.path).toBe(binA);
    c.checkImage();
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
    exec(binB); // same pid, start time and credentials: exec changes none of them
    expect(() => c.checkImage()).toThrow(expect.objectContaining({ code: 'workload_api.caller_changed' }));
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed', message: expect.stringContaining('executed another program') });
    exec(binA);
    await expect(c.verifyUnchanged()).resolves.toBeUndefined();
  });

  it('a program replaced at the same path is another program; a hard link to the same file is caught by the link check', async () => {
    put(777n);
    const c = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await c.ready;
    // same path, another file (new inode)
    const tmp = join(root, 'bin-a.new');
    writeFileSync(tmp, 'program a, rebuilt');
    renameSync(tmp, binA);
    expect(() => c.checkImage()).toThrow(expect.objectContaining({ code: 'workload_api.caller_changed' }));
    await expect(c.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
    // the same file under another name: the per-call stat cannot tell, the attestation's readlink can
    // (linking changes the file's ctime, so the link is made before the connection)
    const linked = join(root, 'bin-a-link');
    if (existsSync(linked)) unlinkSync(linked);
    const { linkSync } = await import('node:fs');
    linkSync(binA, linked);
    put(777n);
    const d = new CallerConnection({ pid, uid: 1000, gid: 1000 }, root);
    await d.ready;
    exec(linked);
    expect(() => d.checkImage()).not.toThrow();
    await expect(d.verifyUnchanged()).rejects.toMatchObject({ code: 'workload_api.caller_changed' });
  });

  it('a connection from a process that is already gone never becomes ready', async () => {
    const c = new CallerConnection({ pid: 999999, uid: 0, gid: 0 }, root);
    await expect(c.ready).rejects.toMatchObject({ code: 'workload.process_gone' });
  });
});

describe('caller identification with real processes', () => {
  const source = new FakeSource(makePki());
  let t: Awaited<ReturnType<typeof startTestServer>>;
  let t2: Awaited<ReturnType<typeof startTestServer>>;
  beforeAll(async () => {
    source.addEntry({ id: 'root', spiffeId: `spiffe://${TD}/root-workload`, selectors: ['unix:uid:0'] });
    source.addEntry({ id: 'nobody', spiffeId: `spiffe://${TD}/nobody-workload`, selectors: ['unix:uid:65534', 'unix:gid:65534'] });
    const attestors = new Map([['unix', createUnixAttestor({ hashBinaries: true })]]);
    t = await startTestServer(source, attestors);
    // Same server, but peer credentials without the pidfd: exercises the start-time path.
    const sys = loadSys();
    t2 = await startTestServer(source, attestors, {
      peerCred: (fd) => {
        const c = sys.peerCred(fd);
        if (c.pidfd !== undefined) closeSync(c.pidfd);
        return { pid: c.pid, uid: c.uid, gid: c.gid };
      },
    });
  });
  afterAll(async () => {
    await t.cleanup();
    await t2.cleanup();
  });

  it.skipIf(!canSwitchUid || !hasPyGrpc)('a process running as uid 65534 gets the nobody SVID, root gets the root SVID', async () => {
    const nobodyScript = readableScript();
    const asNobody = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', PY, nobodyScript, '--socket', t.socket]);
    const n = JSON.parse(asNobody.stdout) as { ok: boolean; uid: number; svids: { spiffe_id: string }[] };
    expect(n.ok).toBe(true);
    expect(n.uid).toBe(65534);
    expect(n.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/nobody-workload`]);
    const asRoot = JSON.parse((await run(PY, [SCRIPT, '--socket', t.socket])).stdout) as { svids: { spiffe_id: string }[] };
    expect(asRoot.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/root-workload`]);
    // uid 65534 but another gid: the nobody entry needs both selectors
    const otherGid = JSON.parse((await run('setpriv', ['--reuid=65534', '--regid=100', '--clear-groups', PY, nobodyScript, '--socket', t.socket])).stdout) as {
      ok: boolean;
      code: string;
    };
    expect(otherGid).toMatchObject({ ok: false, code: 'PERMISSION_DENIED' });
  });

  for (const variant of ['with pidfd', 'start time only'] as const) {
    it(`a connection whose connecting process has exited is refused (${variant})`, async () => {
      const server = variant === 'with pidfd' ? t : t2;
      const child = fork(PASS_FIXTURE, [server.socket], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        child.once('message', (_m, handle) => resolve(handle as net.Socket));
        child.once('error', reject);
      });
      await new Promise<void>((resolve) => {
        if (child.exitCode !== null) resolve();
        else child.once('exit', () => resolve());
      });
      const r = await rawGrpc({
        connection: sock,
        path: '/SpiffeWorkloadAPI/FetchX509SVID',
        headers: { 'workload.spiffe.io': 'true' },
        body: frame(Buffer.alloc(0)),
      });
      expect(r.grpcStatus).toBe('14'); // UNAVAILABLE
      expect(r.grpcMessage).toContain('caller process changed');
      expect(r.data.length).toBe(0);
      expect(server.server.stats().callerChanged).toBeGreaterThan(0);
    });
  }
});
