/**
 * Attack review: `removeStaleSocket` racing a second starter. Between its lstat of a stale socket
 * and its unlink, another verifier removes that stale socket and binds its own live one at the same
 * path. On ext4 (and other filesystems that hand a freed inode number straight back) the new socket
 * gets the stale one's inode number, so an identity of (dev, ino) alone matches the live socket and
 * removes it: the second verifier keeps running with an admin socket nobody can reach.
 */
import { connect, createServer, type Server } from 'node:net';
import { existsSync, linkSync, lstatSync, mkdtempSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isSigilError } from '../../src/errors.js';
import { removeStaleSocket } from '../../src/util/socket-dir.js';

const codes = { notSocket: 'test.socket_exists', inUse: 'test.socket_in_use', unusable: 'test.socket_unusable' };

let dir: string;
const servers: Server[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-review-sock-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

function listenNow(path: string): Server {
  const s = createServer((c) => c.destroy());
  s.listen(path);
  servers.push(s);
  return s;
}

/** A socket file nobody serves (the listener closed, its name kept through a hard link). */
async function staleSocket(path: string): Promise<void> {
  const s = listenNow(path);
  await new Promise<void>((r) => s.once('listening', () => r()));
  linkSync(path, `${path}.keep`);
  await new Promise<void>((r) => s.close(() => r()));
  servers.splice(servers.indexOf(s), 1);
  if (existsSync(path)) unlinkSync(path);
  renameSync(`${path}.keep`, path);
}

function connects(path: string): Promise<boolean> {
  return new Promise((res) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      res(true);
    });
    c.once('error', () => res(false));
  });
}

describe('review: removeStaleSocket against a socket replaced during its probe', () => {
  it('never removes the live socket another process bound in the stale one\'s place', async () => {
    let reused = 0;
    for (let round = 0; round < 10; round++) {
      const p = join(dir, `admin-${round}.sock`);
      await staleSocket(p);
      const staleIno = lstatSync(p).ino;
      const pending = removeStaleSocket(p, 'adminSocket', codes).then(
        (r) => r,
        (e: unknown) => (isSigilError(e) ? e.code : Promise.reject(e)),
      );
      // The second verifier: removes the stale name and binds its own socket there.
      unlinkSync(p);
      const live = listenNow(p);
      await new Promise<void>((r) => (live.listening ? r() : live.once('listening', () => r())));
      if (lstatSync(p).ino === staleIno) reused++;
      const outcome = await pending;
      expect(['removed', codes.inUse]).toContain(outcome);
      expect(existsSync(p)).toBe(true);
      expect(await connects(p)).toBe(true);
    }
    // Informational: how often the filesystem handed the stale inode number to the new socket.
    console.log(`inode number reused in ${reused}/10 rounds`);
  });
});
