/**
 * The program a Workload API connection's attestation describes (src/agent/workload-api/
 * connection.ts, caller.ts, src/workload/unix.ts): the `unix` attestor takes its path and hash
 * selectors from the program the connection recorded at accept, which the check after the
 * attestors confirms the caller still runs — not from a read of the exe link while it is attested.
 * A fake /proc tree (no pidfd), so that the test can change what the caller's exe link shows at
 * chosen points:
 *   - a caller that runs another program while it is attested and is back on the recorded one
 *     when the check runs is attested as the recorded one (it used to get the other's selectors);
 *   - a caller that is still on the other program when the check runs is refused, as before;
 *   - without changes, the selectors are those attest() gives through the paths, hash included;
 *   - a recorded program the kernel hid fails the attestor, as an unreadable link does.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import type { ServerHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';
import { WorkloadConnection } from '../../src/agent/workload-api/connection.js';
import { timerDeadline } from '../../src/agent/workload-api/deadlines.js';
import type { Selector, WorkloadAttestor } from '../../src/plugins/types.js';
import { createUnixAttestor, type UnixAttestor } from '../../src/workload/unix.js';

const root = mkdtempSync(join(tmpdir(), 'sigil-attested-program-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const proc = join(root, 'proc');
const bin = join(root, 'bin');
const pid = 4242;
const peer = { pid, uid: 1000, gid: 100 };
const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Point the fake process's exe link at `target` (replaced in one rename, as an exec swaps it at once). */
function runs(target: string): void {
  symlinkSync(target, join(proc, String(pid), 'exe.new'));
  renameSync(join(proc, String(pid), 'exe.new'), join(proc, String(pid), 'exe'));
}

beforeEach(() => {
  rmSync(root, { recursive: true, force: true });
  mkdirSync(join(proc, String(pid)), { recursive: true });
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(bin, 'app'), 'the program it connected as');
  writeFileSync(join(bin, 'trusted'), 'a trusted program');
  writeFileSync(join(proc, String(pid), 'status'), 'Name:\tapp\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t\n');
  writeFileSync(join(proc, String(pid), 'stat'), `${pid} (app) S 1 ${pid} ${pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n`);
  writeFileSync(join(proc, String(pid), 'cgroup'), '0::/user.slice\n');
  runs(join(bin, 'app'));
});

/** A connection of the fake caller, attested by `unix` and an attestor that waits while `hold` is set. */
function connection(unix: UnixAttestor): { conn: WorkloadConnection; caller: CallerConnection; holdNext(): { inAttestors: Promise<void>; release(): void } } {
  let hold: Promise<void> | undefined;
  let arrived: (() => void) | undefined;
  const waiting: WorkloadAttestor = {
    async attest(): Promise<Selector[]> {
      arrived?.();
      if (hold) await hold;
      return ['waiting:done'];
    },
  };
  const caller = new CallerConnection(peer, proc);
  const session = { close() {}, destroy() {} } as unknown as ServerHttp2Session;
  const conn = new WorkloadConnection(caller, session, {
    // unix first: its reads happen before the waiting attestor is called.
    attestors: new Map<string, WorkloadAttestor>([
      ['unix', unix],
      ['waiting', waiting],
    ]),
    logger: pino({ level: 'silent' }),
    attestTimeoutMs: 5000,
    selectorCacheMs: 60_000,
    schedule: timerDeadline,
    onCallerChanged: () => undefined,
  });
  return {
    conn,
    caller,
    holdNext() {
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      const inAttestors = new Promise<void>((r) => (arrived = r));
      return {
        inAttestors,
        release: () => {
          hold = undefined;
          release();
        },
      };
    },
  };
}

const unixOf = (hashBinaries: boolean): UnixAttestor => createUnixAttestor({ hashBinaries }, { procRoot: proc, passwdPath: join(root, 'none'), groupPath: join(root, 'none') });

describe('the program a connection\'s attestation describes', () => {
  for (const hashBinaries of [false, true]) {
    it(`is the one recorded at accept, not one the caller ran only while it was attested${hashBinaries ? ' (hash included)' : ''}`, async () => {
      const unix = unixOf(hashBinaries);
      if (hashBinaries) {
        // Both hashes cached, so the attestor needs no hashing run while it is attested.
        const signal = new AbortController().signal;
        runs(join(bin, 'trusted'));
        await unix.attest(peer, signal);
        runs(join(bin, 'app'));
        await unix.attest(peer, signal);
      }
      const t = connection(unix);
      await t.caller.ready;
      runs(join(bin, 'trusted'));
      const h = t.holdNext();
      const attested = t.conn.attest(true);
      await h.inAttestors;
      runs(join(bin, 'app')); // back before the check
      h.release();
      const a = await attested;
      expect(t.conn.poisoned).toBe(false);
      expect(a.selectors).toContain(`unix:path:${join(bin, 'app')}`);
      expect(a.selectors).not.toContain(`unix:path:${join(bin, 'trusted')}`);
      if (hashBinaries) {
        expect(a.selectors).toContain(`unix:sha256:${sha('the program it connected as')}`);
        expect(a.selectors).not.toContain(`unix:sha256:${sha('a trusted program')}`);
      }
      t.caller.close();
    });
  }

  it('a caller still on another program when the check runs is refused', async () => {
    const t = connection(unixOf(false));
    await t.caller.ready;
    const h = t.holdNext();
    const attested = t.conn.attest(true);
    await h.inAttestors;
    runs(join(bin, 'trusted'));
    h.release();
    await expect(attested).rejects.toMatchObject({ message: expect.stringContaining('caller process changed') as string });
    expect(t.conn.poisoned).toBe(true);
    t.caller.close();
  });

  it('without changes: the selectors attest() gives through the paths, the hash computed through the caller\'s link', async () => {
    const unix = unixOf(true);
    const t = connection(unix);
    await t.caller.ready;
    const a = await t.conn.attest(true);
    expect(unix.stats.hashMisses + unix.stats.hashHits).toBeGreaterThan(0);
    const viaPaths = await unixOf(true).attest(peer, new AbortController().signal);
    expect(a.selectors).toEqual([...viaPaths, 'waiting:done'].sort());
    expect(a.selectors).toContain(`unix:sha256:${sha('the program it connected as')}`);
    // Again: from the hash cache, by the recorded file's identity.
    const hits = unix.stats.hashHits;
    expect((await t.conn.attest(true)).selectors).toEqual(a.selectors);
    expect(unix.stats.hashHits).toBe(hits + 1);
    t.caller.close();
  });

  it('a recorded program the kernel hid fails the attestor, as an unreadable link does', async () => {
    const unix = unixOf(true);
    const signal = new AbortController().signal;
    const files = { statusText: () => 'Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t\n', cgroupText: () => '', exeLink: join(proc, String(pid), 'exe'), exeImage: { path: join(bin, 'app'), file: undefined } };
    await expect(unix.attestWithFiles(peer, files, signal)).rejects.toMatchObject({ code: 'workload.binary_hash_failed' });
    // Nothing shown at all (no path either): no path or hash selector, as with an unreadable link.
    const sel = await unix.attestWithFiles(peer, { ...files, exeImage: { path: undefined, file: undefined } }, signal);
    expect(sel.some((s) => s.startsWith('unix:path:') || s.startsWith('unix:sha256:'))).toBe(false);
  });
});
