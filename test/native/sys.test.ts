import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { loadSys, loadSysWithDevices, parseSnpReportResponse, SNP_REPORT_SIZE } from '../../src/native/sys.js';

function fdOf(sock: Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('socket has no fd');
  return fd;
}

/** The pid a pidfd refers to, from /proc/self/fdinfo. */
function pidOfPidfd(pidfd: number): number {
  const info = readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
  const m = /^Pid:\s*(-?\d+)/m.exec(info);
  if (!m) throw new Error(`fdinfo of ${pidfd} has no Pid line:\n${info}`);
  return Number(m[1]);
}

async function expectSigilError(p: Promise<unknown> | (() => unknown), code: string, msg?: RegExp): Promise<SigilError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SigilError);
  const se = err as SigilError;
  expect(se.code).toBe(code);
  if (msg) expect(se.message).toMatch(msg);
  return se;
}

describe('sigil_sys peerCred', () => {
  let dir: string;
  let server: Server;
  let sockPath: string;
  const accepted: Socket[] = [];
  const waiters: ((s: Socket) => void)[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-peercred-'));
    sockPath = join(dir, 's.sock');
    server = createServer((s) => {
      const w = waiters.shift();
      if (w) w(s);
      else accepted.push(s);
    });
    await new Promise<void>((resolve) => server.listen(sockPath, resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  const nextConnection = (): Promise<Socket> =>
    new Promise((resolve) => {
      const s = accepted.shift();
      if (s) resolve(s);
      else waiters.push(resolve);
    });

  it('reports this process for a same-process connection, on both ends', async () => {
    const sys = loadSys();
    const client = createConnection(sockPath);
    await new Promise<void>((r) => client.once('connect', () => r()));
    const srv = await nextConnection();
    try {
      for (const s of [srv, client]) {
        const c = sys.peerCred(fdOf(s));
        expect(c.pid).toBe(process.pid);
        expect(c.uid).toBe(process.getuid?.());
        expect(c.gid).toBe(process.getgid?.());
        // This kernel (Linux >= 6.5) has SO_PEERPIDFD; older kernels simply omit it.
        if (c.pidfd !== undefined) {
          expect(pidOfPidfd(c.pidfd)).toBe(process.pid);
          closeSync(c.pidfd);
        }
      }
    } finally {
      client.destroy();
      srv.destroy();
    }
  });

  it('reports the child process for a connection made by a child', async () => {
    const sys = loadSys();
    const code = `const s=require('net').createConnection(${JSON.stringify(sockPath)});s.on('connect',()=>process.stdout.write('up\\n'));process.stdin.on('data',()=>{});process.stdin.on('end',()=>process.exit(0));`;
    const child: ChildProcess = spawn(process.execPath, ['-e', code], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const srv = await nextConnection();
      const c = sys.peerCred(fdOf(srv));
      expect(c.pid).toBe(child.pid);
      expect(c.pid).not.toBe(process.pid);
      expect(c.uid).toBe(process.getuid?.());
      expect(c.gid).toBe(process.getgid?.());
      if (c.pidfd !== undefined) {
        expect(pidOfPidfd(c.pidfd)).toBe(child.pid);
        closeSync(c.pidfd);
      }
      srv.destroy();
    } finally {
      child.stdin?.end();
      await new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
    }
  });

  it('rejects descriptors that are not connected Unix sockets', async () => {
    const sys = loadSys();
    const f = openSync(join(dir, 'plain'), 'w');
    try {
      await expectSigilError(() => sys.peerCred(f), 'native.peercred_failed', /ENOTSOCK/);
    } finally {
      closeSync(f);
    }
    await expectSigilError(() => sys.peerCred(-1), 'native.invalid_argument');
    await expectSigilError(() => sys.peerCred(1.5), 'native.invalid_argument');
  });

  it('rejects a TCP socket', async () => {
    const sys = loadSys();
    const tcp = createServer((s) => s.destroy());
    await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
    const addr = tcp.address();
    const port = typeof addr === 'object' && addr ? addr.port : 0;
    const c = createConnection({ host: '127.0.0.1', port });
    await new Promise<void>((r) => c.once('connect', () => r()));
    try {
      await expectSigilError(() => sys.peerCred(fdOf(c)), 'native.peercred_failed', /not an AF_UNIX socket/);
    } finally {
      c.destroy();
      await new Promise<void>((r) => tcp.close(() => r()));
    }
  });
});

describe('sigil_sys ioctls (device paths redirected: no /dev/nsm or /dev/sev-guest here)', () => {
  it('nsmRequest reports a missing device and a device that is not the NSM', async () => {
    const missing = loadSysWithDevices({ nsm: '/nonexistent/nsm' });
    await expectSigilError(missing.nsmRequest(Buffer.from([0xa0])), 'native.nsm_failed', /open\(\/nonexistent\/nsm\): ENOENT/);
    const notNsm = loadSysWithDevices({ nsm: '/dev/null' });
    await expectSigilError(notNsm.nsmRequest(Buffer.from([0xa0]), 1024), 'native.nsm_failed', /ioctl\(NSM_IOCTL_REQUEST\).*ENOTTY/);
    await expectSigilError(notNsm.nsmRequest(Buffer.alloc(0)), 'native.invalid_argument');
    await expectSigilError(notNsm.nsmRequest(Buffer.alloc(4097)), 'native.invalid_argument');
    await expectSigilError(notNsm.nsmRequest(Buffer.from([1]), 0), 'native.invalid_argument');
  });

  it('nsmRequest on the real path fails cleanly when this is not a Nitro enclave', async () => {
    if (existsSync('/dev/nsm')) return; // inside an enclave the call is real; nothing to assert here
    await expectSigilError(loadSys().nsmRequest(Buffer.from([0xa0])), 'native.nsm_failed', /ENOENT/);
  });

  it('snpGetExtReport reports a missing device and a device that is not sev-guest', async () => {
    const rd = Buffer.alloc(64, 7);
    await expectSigilError(loadSysWithDevices({ sevGuest: '/nonexistent/sev' }).snpGetExtReport(rd, 0, 4096), 'native.snp_failed', /ENOENT/);
    const notSev = loadSysWithDevices({ sevGuest: '/dev/null' });
    await expectSigilError(notSev.snpGetExtReport(rd, 0, 4096), 'native.snp_failed', /SNP_GET_EXT_REPORT.*ENOTTY/);
    await expectSigilError(notSev.snpGetExtReport(Buffer.alloc(63), 0, 4096), 'native.invalid_argument');
    await expectSigilError(notSev.snpGetExtReport(rd, 4, 4096), 'native.invalid_argument');
    await expectSigilError(notSev.snpGetExtReport(rd, 0, 0x4001), 'native.invalid_argument');
    if (!existsSync('/dev/sev-guest')) {
      await expectSigilError(loadSys().snpGetExtReport(rd, 0, 0), 'native.snp_failed', /ENOENT/);
    }
  });

  it('parseSnpReportResponse extracts the report and rejects bad responses', async () => {
    const resp = Buffer.alloc(4000);
    resp.writeUInt32LE(0, 0);
    resp.writeUInt32LE(SNP_REPORT_SIZE, 4);
    for (let i = 0; i < SNP_REPORT_SIZE; i++) resp[32 + i] = i & 0xff;
    const report = parseSnpReportResponse(resp);
    expect(report.length).toBe(SNP_REPORT_SIZE);
    expect(report[0]).toBe(0);
    expect(report[255]).toBe(255);
    expect(report[SNP_REPORT_SIZE - 1]).toBe((SNP_REPORT_SIZE - 1) & 0xff);

    const bad = Buffer.from(resp);
    bad.writeUInt32LE(0x16, 0);
    await expectSigilError(() => parseSnpReportResponse(bad), 'native.snp_failed', /status 0x16/);
    const wrongSize = Buffer.from(resp);
    wrongSize.writeUInt32LE(5000, 4);
    await expectSigilError(() => parseSnpReportResponse(wrongSize), 'native.snp_failed', /5000-byte report/);
    await expectSigilError(() => parseSnpReportResponse(resp.subarray(0, 31)), 'native.snp_failed', /shorter/);
    await expectSigilError(() => parseSnpReportResponse(resp.subarray(0, 32 + SNP_REPORT_SIZE - 1)), 'native.snp_failed');
  });
});

describe('loadSys without the addon', () => {
  it('throws native.unavailable naming the missing file and the fix', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'sigil-noaddon-'));
    const prev = process.env.SIGIL_NATIVE_DIR;
    process.env.SIGIL_NATIVE_DIR = empty;
    vi.resetModules();
    try {
      const fresh = await import('../../src/native/sys.js');
      // A fresh module graph has its own SigilError class, so match on name and code.
      let err: unknown;
      try {
        fresh.loadSys();
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ name: 'SigilError', code: 'native.unavailable' });
      const msg = (err as Error).message;
      expect(msg).toContain(join(empty, 'sigil_sys.node'));
      expect(msg).toContain('npm rebuild sigil');
    } finally {
      if (prev === undefined) delete process.env.SIGIL_NATIVE_DIR;
      else process.env.SIGIL_NATIVE_DIR = prev;
      vi.resetModules();
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
