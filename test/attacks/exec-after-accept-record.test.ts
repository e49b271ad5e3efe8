/**
 * Exec after connect (issue 11 item 1): docs/workload-api.md says the caller's program is recorded
 * "in the accept callback, right after SO_PEERCRED and the start time", so that the only blind
 * window is connect() → accept. CallerConnection.capture() (src/agent/workload-api/caller.ts)
 * first awaits an asynchronous read of /proc/<pid>/stat and only then reads /proc/<pid>/exe. That
 * read waits in libuv's thread pool — the same four threads the unix attestor hashes executables
 * in (up to 256 MiB each), so another local caller can make the wait long — and a process that
 * exec's a trusted binary during it, after accept, is recorded as that binary: the child it forked
 * before then calls with the trusted program's identity.
 *
 * Broken (caller.ts belongs to the helper splitting the Workload API, not to this review): the
 * test is `it.fails` until the image is read synchronously in the constructor (before the first
 * await); then drop `.fails`. A fake /proc keeps it deterministic: the exe link is switched in the
 * same tick as the accept.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';

let root: string;
const PID = 4242;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'sigil-fakeproc-'));
  mkdirSync(join(root, 'bin'));
  writeFileSync(join(root, 'bin', 'untrusted'), 'untrusted program');
  writeFileSync(join(root, 'bin', 'trusted'), 'trusted program, different size');
  mkdirSync(join(root, String(PID)));
  // Field 22 (start time) = 777.
  writeFileSync(join(root, String(PID), 'stat'), `${PID} (x) S 1 ${PID} ${PID} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n`);
  symlinkSync(join(root, 'bin', 'untrusted'), join(root, String(PID), 'exe'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('program recorded at accept', () => {
  it('is the one the caller ran when the connection was accepted, not after the start-time read', async () => {
    const c = new CallerConnection({ pid: PID, uid: 0, gid: 0 }, root);
    // The caller exec's the trusted binary right after accept (same tick).
    unlinkSync(join(root, String(PID), 'exe'));
    symlinkSync(join(root, 'bin', 'trusted'), join(root, String(PID), 'exe'));
    await c.ready;
    expect(c.startTime).toBe(777n);
    expect(c.image?.path).toBe(join(root, 'bin', 'untrusted'));
  });
});
