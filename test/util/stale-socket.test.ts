import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isSigilError } from '../../src/errors.js';
import { removeStaleSocket } from '../../src/util/socket-dir.js';

const codes = { notSocket: 'test.socket_exists', inUse: 'test.socket_in_use', unusable: 'test.socket_unusable' };

let dir: string;
const servers: Server[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-sock-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

function listen(path: string): Promise<Server> {
  return new Promise((res, rej) => {
    const s = createServer((c) => c.destroy());
    s.once('error', rej);
    s.listen(path, () => {
      servers.push(s);
      res(s);
    });
  });
}

/** A socket file nobody serves: bound, then the listener's fd closed without unlinking the name. */
async function staleSocket(path: string): Promise<void> {
  const s = await listen(path);
  // Closing a Unix listener removes its name; keep a hard link to the inode so the name survives.
  const keep = `${path}.keep`;
  linkSync(path, keep);
  await new Promise<void>((r) => s.close(() => r()));
  servers.splice(servers.indexOf(s), 1);
  if (!existsSync(path)) renameSync(keep, path);
  else rmSync(keep);
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (isSigilError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected a refusal');
}

describe('removeStaleSocket', () => {
  it('nothing at the path: absent, nothing created', async () => {
    const p = join(dir, 'none.sock');
    expect(await removeStaleSocket(p, 'adminSocket', codes)).toBe('absent');
    expect(existsSync(p)).toBe(false);
  });

  it('never removes a socket a process serves', async () => {
    const p = join(dir, 'live.sock');
    await listen(p);
    const r = await refusal(removeStaleSocket(p, 'adminSocket', codes));
    expect(r.code).toBe('test.socket_in_use');
    expect(r.message).toContain(p);
    expect(lstatSync(p).isSocket()).toBe(true);
  });

  it('removes a socket nobody serves', async () => {
    const p = join(dir, 'stale.sock');
    await staleSocket(p);
    expect(lstatSync(p).isSocket()).toBe(true);
    expect(await removeStaleSocket(p, 'adminSocket', codes)).toBe('removed');
    expect(existsSync(p)).toBe(false);
    // and a new listener can bind there
    await listen(p);
  });

  it('refuses a regular file, a directory and a symlink at the path, and leaves them', async () => {
    const file = join(dir, 'file.sock');
    writeFileSync(file, 'not a socket');
    const f = await refusal(removeStaleSocket(file, 'adminSocket', codes));
    expect(f.code).toBe('test.socket_exists');
    expect(f.message).toMatch(/adminSocket .*file\.sock exists and is a regular file/);
    expect(existsSync(file)).toBe(true);

    const d = join(dir, 'dir.sock');
    mkdirSync(d);
    expect((await refusal(removeStaleSocket(d, 'adminSocket', codes))).code).toBe('test.socket_exists');
    expect(existsSync(d)).toBe(true);

    // a symlink to a stale socket is not the socket: refused, not followed
    const target = join(dir, 'target.sock');
    await staleSocket(target);
    const link = join(dir, 'link.sock');
    symlinkSync(target, link);
    const l = await refusal(removeStaleSocket(link, 'adminSocket', codes));
    expect(l.code).toBe('test.socket_exists');
    expect(l.message).toContain('a symlink');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(lstatSync(target).isSocket()).toBe(true);
  });

  it('a path it cannot inspect is refused with the unusable code', async () => {
    const file = join(dir, 'plain');
    writeFileSync(file, 'x');
    const r = await refusal(removeStaleSocket(join(file, 'below.sock'), 'adminSocket', codes));
    expect(r.code).toBe('test.socket_unusable');
    expect(r.message).toContain('ENOTDIR');
  });
});
