/**
 * The Workload API listener (src/agent/workload-api/listener.ts): connections accepted by the
 * native addon reach the server as net.Sockets with the fd their peer credentials are read from,
 * the socket file is 0777 and removed on close, and a failed accept pauses and resumes accepting.
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { listenWorkloadSocket } from '../../src/agent/workload-api/listener.js';
import { loadSys, type SysAddon, type UnixListener } from '../../src/native/sys.js';

const logger = pino({ level: 'silent' });
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

function tempSocket(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-listener-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'api.sock');
}

describe('Workload API listener', () => {
  it('hands over each connection with the fd whose peer credentials name the connecting process', async () => {
    const path = tempSocket();
    const sys = loadSys();
    const seen: { pid: number; uid: number; echoed: string }[] = [];
    let got: () => void = () => undefined;
    const arrived = new Promise<void>((r) => (got = r));
    const l = await listenWorkloadSocket(path, logger, (socket, fd) => {
      const c = sys.peerCred(fd);
      socket.once('data', (d) => {
        seen.push({ pid: c.pid, uid: c.uid, echoed: d.toString() });
        socket.end('bye');
        got();
      });
    });
    cleanup.push(() => l.close());
    expect(lstatSync(path).mode & 0o777).toBe(0o777);
    // Another process connects: the credentials must be its own, not this process's.
    const child = spawn(process.execPath, ['-e', `const s=require('net').connect(${JSON.stringify(path)},()=>s.write('hello'));s.on('data',()=>s.end());`], { stdio: 'ignore' });
    await arrived;
    await new Promise((r) => child.once('exit', r));
    expect(seen).toEqual([{ pid: child.pid, uid: process.getuid!(), echoed: 'hello' }]);
  });

  it('close() waits for the accepted connections to close, then removes its socket file', async () => {
    const path = tempSocket();
    const accepted: net.Socket[] = [];
    const l = await listenWorkloadSocket(path, logger, (socket) => accepted.push(socket));
    const client = net.connect(path);
    await new Promise((r) => client.once('connect', r));
    await expect.poll(() => accepted.length).toBe(1);
    let closed = false;
    const done = l.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(closed).toBe(false);
    expect(existsSync(path)).toBe(true);
    // No new connection is accepted once closing.
    const late = net.connect(path);
    const lateErr = await new Promise<string>((r) => late.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? '')));
    expect(lateErr).toBe('ECONNREFUSED');
    accepted[0]!.destroy();
    await done;
    expect(existsSync(path)).toBe(false);
    client.destroy();
  });

  it('refuses a path another process is serving on', async () => {
    const path = tempSocket();
    const other = net.createServer();
    await new Promise<void>((r) => other.listen(path, r));
    cleanup.push(() => new Promise((r) => other.close(r)));
    await expect(listenWorkloadSocket(path, logger, () => undefined)).rejects.toMatchObject({ code: 'workload_api.socket_path_in_use' });
  });

  it('after a failed accept, accepts again after a pause', async () => {
    const path = tempSocket();
    let onError: ((e: SigilError) => void) | undefined;
    const resumed: number[] = [];
    const fake: Pick<SysAddon, 'listenUnix'> = {
      listenUnix(p, backlog, onAccept, err): UnixListener {
        const real = loadSys().listenUnix(p, backlog, onAccept, err);
        onError = err;
        return { close: () => real.close(), resume: () => resumed.push(Date.now()) };
      },
    };
    const l = await listenWorkloadSocket(path, logger, () => undefined, fake);
    cleanup.push(() => l.close());
    const at = Date.now();
    onError!(new SigilError('native.accept_failed', 'accept4: EMFILE'));
    await expect.poll(() => resumed.length, { timeout: 2000 }).toBe(1);
    expect(resumed[0]! - at).toBeGreaterThanOrEqual(90);
  });
});

describe('sigil_sys listenUnix', () => {
  it('refuses bad arguments and an existing path with SigilErrors', async () => {
    const sys = loadSys();
    const path = tempSocket();
    expect(() => sys.listenUnix(path, 0, () => undefined, () => undefined)).toThrow(expect.objectContaining({ code: 'native.invalid_argument' }));
    expect(() => sys.listenUnix('x'.repeat(108), 1, () => undefined, () => undefined)).toThrow(expect.objectContaining({ code: 'native.invalid_argument' }));
    const l = sys.listenUnix(path, 8, () => undefined, () => undefined);
    try {
      expect(() => sys.listenUnix(path, 8, () => undefined, () => undefined)).toThrow(expect.objectContaining({ code: 'native.listen_failed', message: expect.stringMatching(/EADDRINUSE/) }));
    } finally {
      l.close();
      l.close(); // a second close does nothing
    }
  });

  it('accepts non-blocking, close-on-exec fds that net.Socket can take over', async () => {
    const sys = loadSys();
    const path = tempSocket();
    const fds: number[] = [];
    const l = sys.listenUnix(path, 8, (fd) => fds.push(fd), () => undefined);
    cleanup.push(() => l.close());
    const c = net.connect(path);
    await expect.poll(() => fds.length).toBe(1);
    const s = new net.Socket({ fd: fds[0]!, readable: true, writable: true });
    const got = new Promise<string>((r) => c.once('data', (d) => r(d.toString())));
    s.end('over the accepted fd');
    expect(await got).toBe('over the accepted fd');
    s.destroy();
    c.destroy();
  });
});
