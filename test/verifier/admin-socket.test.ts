/**
 * The admin socket is never connectable by another user (issue 11 item 7), not even for a moment
 * under umask 000, and the verifier refuses a socket directory another user could change.
 *
 * The race test is deterministic: every synchronous `node:fs` call the verifier makes is wrapped,
 * and at the first calls after the socket's name appears, a process running as uid 65534 tries to
 * connect to it. The previous code bound the socket (mode 0777 under umask 000) and then chmod'ed
 * it: the probe at that chmod connected.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';

const OTHER_UID = 65534;

const probe = vi.hoisted(() => ({
  /** The socket path to watch; undefined = not watching. */
  path: undefined as string | undefined,
  probesLeft: 0,
  /** What each probe saw: the socket's mode and whether uid 65534 could connect. */
  seen: [] as { call: string; mode: number; connected: boolean }[],
  tryConnect: undefined as ((path: string) => boolean) | undefined,
}));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const look = (call: string) => {
    if (probe.path === undefined || probe.probesLeft <= 0 || !probe.tryConnect) return;
    let mode: number;
    try {
      mode = real.lstatSync(probe.path).mode;
    } catch {
      return; // not there yet
    }
    probe.probesLeft--;
    probe.seen.push({ call, mode: mode & 0o7777, connected: probe.tryConnect(probe.path) });
  };
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(real)) {
    if (typeof fn === 'function' && name.endsWith('Sync')) {
      // Own properties carried over (realpathSync.native).
      wrapped[name] = Object.assign((...args: unknown[]) => {
        look(`before ${name}`);
        const r = (fn as (...a: unknown[]) => unknown)(...args);
        look(`after ${name}`);
        return r;
      }, fn);
    } else {
      wrapped[name] = fn;
    }
  }
  return { ...wrapped, default: wrapped };
});

/** Connect to `path` as uid 65534 from a separate process; true when the connection was accepted by the kernel. */
function connectsAsOtherUser(path: string): boolean {
  const script = `const s=require('net').connect(${JSON.stringify(path)});s.on('connect',()=>{process.stdout.write('connected');process.exit(0)});s.on('error',(e)=>{process.stdout.write(e.code);process.exit(0)});`;
  const r = spawnSync(process.execPath, ['-e', script], { uid: OTHER_UID, gid: OTHER_UID, cwd: '/', encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`probe failed: ${r.stderr}`);
  return r.stdout === 'connected';
}

const dirs: string[] = [];
/** A directory other users may enter (0755, ours), as /run/sigil would be. */
function openDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'sigil-adm-'));
  chmodSync(d, 0o755);
  dirs.push(d);
  return d;
}

function start(dir: string, extra: Record<string, unknown> = {}): Promise<RunningVerifier> {
  const cfg = verifierConfigFrom(
    {
      trustDomain: 'example.org',
      listen: { address: '127.0.0.1', port: 0 },
      adminSocket: join(dir, 'admin.sock'),
      dataDir: join(dir, 'data'),
      nodeAttestors: { join_token: {} },
      logLevel: 'silent',
      ...extra,
    },
    dir,
  );
  return startVerifier(cfg, { logger: pino({ level: 'silent' }), tickMs: 0 });
}

async function refusal(p: Promise<RunningVerifier>): Promise<SigilError> {
  const r = await p.then(
    async (v) => {
      await v.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  expect(r).toBeInstanceOf(SigilError);
  return r as SigilError;
}

let savedUmask: number;
beforeAll(() => {
  savedUmask = process.umask(0o022);
  probe.tryConnect = connectsAsOtherUser;
});
afterEach(() => {
  probe.path = undefined;
  probe.probesLeft = 0;
  probe.seen.length = 0;
  process.umask(0o022);
});
afterAll(() => {
  process.umask(savedUmask);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('admin socket creation', () => {
  it('under umask 000, another user can connect at no point after the socket name appears, and it is 0600 from the first instant', async () => {
    const dir = openDir();
    const sock = join(dir, 'admin.sock');
    process.umask(0o000);
    probe.path = sock;
    probe.probesLeft = 4;
    const v = await start(dir);
    probe.path = undefined;
    process.umask(0o022);
    try {
      expect(probe.seen.length).toBeGreaterThan(0);
      for (const s of probe.seen) {
        expect(s.connected, `uid ${OTHER_UID} connected at ${s.call}`).toBe(false);
        expect(s.mode & 0o777, `mode at ${s.call}`).toBe(0o600);
      }
      expect(lstatSync(sock).mode & 0o777).toBe(0o600);
      expect(lstatSync(sock).isSocket()).toBe(true);
      expect(connectsAsOtherUser(sock)).toBe(false);
      // The verifier's own user still can.
      expect(await adminCall(sock, 'GET', '/healthz')).toBeTruthy();
    } finally {
      await v.close();
    }
    expect(existsSync(sock)).toBe(false);
  });

  it('the probe does detect a world-connectable socket (so the test above can fail)', async () => {
    const dir = openDir();
    const sock = join(dir, 'plain.sock');
    const { createServer } = await import('node:net');
    process.umask(0o000);
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(sock, r));
    process.umask(0o022);
    try {
      expect(connectsAsOtherUser(sock)).toBe(true);
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('restarts over the stale socket of a stopped verifier and leaves no temporary directory behind', async () => {
    const dir = openDir();
    const v1 = await start(dir);
    await v1.close();
    const v2 = await start(dir);
    try {
      expect(await adminCall(v2.adminSocket, 'GET', '/healthz')).toBeTruthy();
    } finally {
      await v2.close();
    }
    const { readdirSync } = await import('node:fs');
    expect(readdirSync(dir).filter((n) => n.startsWith('.s'))).toEqual([]);
  });
});

describe('admin socket directory', () => {
  it.each([
    ['world-writable', 0o777],
    ['group-writable', 0o775],
    ['world-writable even with the sticky bit', 0o1777],
  ])('refuses a %s socket directory, naming it', async (_what, mode) => {
    const dir = openDir();
    const sockDir = join(dir, 'run');
    mkdirSync(sockDir);
    chmodSync(sockDir, mode);
    const e = await refusal(start(dir, { adminSocket: join(sockDir, 'admin.sock') }));
    expect(e.code).toBe('verifier.admin_socket_dir_insecure');
    expect(e.message).toContain(sockDir);
    expect(existsSync(join(sockDir, 'admin.sock'))).toBe(false);
  });

  it('refuses a socket directory owned by another user', async () => {
    const dir = openDir();
    const sockDir = join(dir, 'run');
    mkdirSync(sockDir, { mode: 0o755 });
    chownSync(sockDir, OTHER_UID, OTHER_UID);
    const e = await refusal(start(dir, { adminSocket: join(sockDir, 'admin.sock') }));
    expect(e.code).toBe('verifier.admin_socket_dir_insecure');
    expect(e.message).toContain(`${sockDir} is owned by uid ${OTHER_UID}`);
  });

  it('refuses a socket directory under a world-writable ancestor without the sticky bit', async () => {
    const dir = openDir();
    const loose = join(dir, 'loose');
    mkdirSync(join(loose, 'run'), { recursive: true });
    chmodSync(loose, 0o777);
    chmodSync(join(loose, 'run'), 0o755);
    const e = await refusal(start(dir, { adminSocket: join(loose, 'run', 'admin.sock') }));
    expect(e.code).toBe('verifier.admin_socket_dir_insecure');
    expect(e.message).toContain(`directory ${loose} is writable by every user`);
  });

  it('creates a missing socket directory 0755 (under umask 000 too) and accepts it', async () => {
    const dir = openDir();
    const sockDir = join(dir, 'run', 'sigil');
    process.umask(0o000);
    const v = await start(dir, { adminSocket: join(sockDir, 'admin.sock') });
    process.umask(0o022);
    try {
      expect(lstatSync(sockDir).mode & 0o777).toBe(0o755);
      expect(lstatSync(join(sockDir, 'admin.sock')).mode & 0o777).toBe(0o600);
    } finally {
      await v.close();
    }
  });

  it('refuses a socket path too long for sun_path with its own code', async () => {
    const dir = openDir();
    const e = await refusal(start(dir, { adminSocket: join(dir, 'x'.repeat(100), 'admin.sock') }));
    expect(e.code).toBe('verifier.admin_socket_path_too_long');
  });

  it('removes the temporary bind directories a killed verifier left (old, ours, empty or holding only its socket), nothing else', async () => {
    const dir = openDir();
    const old = new Date(Date.now() - 3600_000);
    const mk = (name: string) => mkdirSync(join(dir, name));
    // A socket left by a process killed with SIGKILL after bind.
    mk('.sa0a0a0');
    const r = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(join(dir, '.sa0a0a0', 's'))}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(r.signal).toBe('SIGKILL');
    expect(lstatSync(join(dir, '.sa0a0a0', 's')).isSocket()).toBe(true);
    mk('.sb1b1b1');
    mk('.sc2c2c2');
    writeFileSync(join(dir, '.sc2c2c2', 's'), 'not a socket');
    mk('.sd3d3d3');
    mk('.other');
    const { utimesSync, readdirSync } = await import('node:fs');
    for (const n of ['.sa0a0a0', '.sb1b1b1', '.sc2c2c2', '.other']) utimesSync(join(dir, n), old, old);
    const v = await start(dir);
    await v.close();
    expect(readdirSync(dir).filter((n) => n.startsWith('.')).sort()).toEqual(['.other', '.sc2c2c2', '.sd3d3d3']);
  });

  it('still refuses a non-socket file at the socket path', async () => {
    const dir = openDir();
    writeFileSync(join(dir, 'admin.sock'), 'not a socket');
    const e = await refusal(start(dir));
    expect(e.code).toBe('verifier.admin_socket_exists');
  });
});
