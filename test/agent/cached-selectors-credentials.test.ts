/**
 * Calls answered from a Workload API connection's cached selectors check the caller's credentials
 * as well as its program (src/agent/workload-api/connection.ts): real processes on a real server,
 * each keeping one connection while it changes its ids between calls, with a selector cache long
 * enough (60 s) that only that check can notice the change.
 *   - a process that fetched as root and then dropped to uid 65534 gets no uid-0 X.509-SVID and
 *     no JWT-SVID at all on its next call (Unavailable, the connection closed);
 *   - a process that dropped a supplementary group is attested anew, without reconnecting, and no
 *     longer gets the group's SVID;
 *   - a result whose attestation saw the groups change while it ran is not reused.
 * And the comparison of the status lines itself.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { credentialLines, sameCredentials } from '../../src/agent/workload-api/connection.js';
import type { Selector, WorkloadAttestor, WorkloadCaller } from '../../src/plugins/types.js';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { FakeSource, TD, makePki, startTestServer } from '../workload-api/support.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/fetch-then-setuid.mjs', import.meta.url));
const PROTO = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
const isRoot = process.getuid!() === 0;
const UNAVAILABLE = 14;

type Answer = { svids?: string[]; code?: number; message?: string; uid?: number; groups?: number[] };

const children: ChildProcessWithoutNullStreams[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** The fixture on `socket`; `run(cmd)` sends one command and resolves with its answer (without `cmd`). */
function workload(socket: string): { run(cmd: string): Promise<Answer> } {
  const child = spawn(process.execPath, [FIXTURE, socket, PROTO]);
  children.push(child);
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-2000);
  });
  const waiting: { cmd: string; resolve(a: Answer): void }[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => {
    const { cmd, ...answer } = JSON.parse(l) as Answer & { cmd: string };
    const i = waiting.findIndex((w) => w.cmd === cmd);
    if (i >= 0) waiting.splice(i, 1)[0]!.resolve(answer);
  });
  return {
    run(cmd) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no answer to "${cmd}" within 15 s; stderr: ${stderr}`)), 15_000);
        waiting.push({
          cmd,
          resolve: (a) => {
            clearTimeout(t);
            resolve(a);
          },
        });
        child.stdin.write(`${cmd}\n`);
      });
    },
  };
}

describe.skipIf(!isRoot)('calls answered from the cached selectors follow the caller\'s credentials', () => {
  const source = (): FakeSource => {
    const s = new FakeSource(makePki());
    s.addEntry({ id: 'root', spiffeId: `spiffe://${TD}/root`, selectors: ['unix:uid:0'] });
    s.addEntry({ id: 'group', spiffeId: `spiffe://${TD}/root-group-4321`, selectors: ['unix:uid:0', 'unix:supplementary_gid:4321'] });
    s.addEntry({ id: 'nobody', spiffeId: `spiffe://${TD}/nobody`, selectors: ['unix:uid:65534'] });
    return s;
  };
  const unix = (): Map<string, WorkloadAttestor> => new Map([['unix', createUnixAttestor({ hashBinaries: false })]]);

  for (const call of ['x509', 'jwt'] as const) {
    it(`a process that fetched as root and dropped to uid 65534 gets no SVID on its next ${call === 'x509' ? 'FetchX509SVID' : 'FetchJWTSVID'} over the same connection`, async () => {
      const t = await startTestServer(source(), unix(), { selectorCacheMs: 60_000 });
      try {
        const w = workload(t.socket);
        expect(await w.run('x509')).toEqual({ svids: [`spiffe://${TD}/root`] });
        expect(await w.run('drop')).toEqual({ uid: 65534 });
        const after = await w.run(call);
        expect(after.svids).toBeUndefined();
        expect(after.code).toBe(UNAVAILABLE);
        expect(after.message).toContain('caller process changed');
        expect(t.server.stats().callerChanged).toBe(1);
      } finally {
        await t.cleanup();
      }
    });
  }

  it('a process that dropped a supplementary group is attested anew on its next call and no longer gets the group\'s SVID', async () => {
    const t = await startTestServer(source(), unix(), { selectorCacheMs: 60_000 });
    try {
      const w = workload(t.socket);
      await w.run('groups 4321');
      expect((await w.run('x509')).svids?.sort()).toEqual([`spiffe://${TD}/root`, `spiffe://${TD}/root-group-4321`]);
      expect((await w.run('jwt')).svids?.sort()).toEqual([`spiffe://${TD}/root`, `spiffe://${TD}/root-group-4321`]);
      await w.run('groups');
      expect(await w.run('x509')).toEqual({ svids: [`spiffe://${TD}/root`] });
      expect(await w.run('jwt')).toEqual({ svids: [`spiffe://${TD}/root`] });
      // Same connection, not refused: the uid did not change.
      expect(t.server.stats().callerChanged).toBe(0);
      expect(t.server.stats().connections).toBe(1);
    } finally {
      await t.cleanup();
    }
  });

  it('a result whose attestation saw the groups change while it ran is not reused', async () => {
    // An attestor that holds each attestation until the test lets it go, counting attestations.
    let attestations = 0;
    let hold: Promise<void> | undefined;
    let arrived: (() => void) | undefined;
    const slow: WorkloadAttestor = {
      async attest(_c: WorkloadCaller): Promise<Selector[]> {
        attestations++;
        arrived?.();
        if (hold) await hold;
        return ['slow:seen'];
      },
    };
    const attestors = unix();
    attestors.set('slow', slow);
    const t = await startTestServer(source(), attestors, { selectorCacheMs: 60_000 });
    try {
      const w = workload(t.socket);
      await w.run('groups 4321');
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      const inAttestor = new Promise<void>((r) => (arrived = r));
      const first = w.run('x509&');
      await inAttestor;
      // The unix attestor has read the groups (4321); they change before the attestation ends.
      await w.run('groups');
      release();
      hold = undefined;
      expect((await first).svids).toContain(`spiffe://${TD}/root`);
      expect(attestations).toBe(1);
      // Within the cache window, yet attested again: the group's SVID is not served.
      expect(await w.run('x509')).toEqual({ svids: [`spiffe://${TD}/root`] });
      expect(attestations).toBe(2);
      // That attestation saw steady credentials: it is reused.
      expect(await w.run('jwt')).toEqual({ svids: [`spiffe://${TD}/root`] });
      expect(attestations).toBe(2);
      expect(t.server.stats().callerChanged).toBe(0);
    } finally {
      await t.cleanup();
    }
  });
});

describe('the credential lines a cached call compares', () => {
  const status = (uid: string, gid: string, groups: string | null): string =>
    `Name:\tx\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\nPid:\t7\nPPid:\t1\nTracerPid:\t0\nUid:\t${uid}\nGid:\t${gid}\nFDSize:\t64\n${groups === null ? '' : `Groups:\t${groups}\n`}NStgid:\t7\nVmRSS:\t100 kB\n`;
  const base = status('0\t0\t0\t0', '0\t0\t0\t0', '4321 ');
  const seen = credentialLines(base);

  it('are the Uid, Gid and Groups lines; other lines may change', () => {
    expect(seen).toEqual({ uid: 'Uid:\t0\t0\t0\t0\n', gid: 'Gid:\t0\t0\t0\t0\n', groups: 'Groups:\t4321 \n' });
    expect(sameCredentials(base, seen)).toBe(true);
    expect(sameCredentials(base.replace('FDSize:\t64', 'FDSize:\t256').replace('100 kB', '9000 kB'), seen)).toBe(true);
  });

  it('any change of one of them is a difference', () => {
    for (const changed of [
      status('0\t65534\t0\t0', '0\t0\t0\t0', '4321 '), // effective uid
      status('0\t0\t0\t0', '0\t0\t65534\t0', '4321 '), // saved gid
      status('0\t0\t0\t0', '0\t0\t0\t0', ''), // groups dropped
      status('0\t0\t0\t0', '0\t0\t0\t0', '4321 4322 '), // a group added
      status('0\t0\t0\t0', '0\t0\t0\t0', null), // Groups line gone
      status('0\t0\t0\t00', '0\t0\t0\t0', '4321 '), // a longer line starting the same
    ]) expect(sameCredentials(changed, seen)).toBe(false);
    const noGroups = credentialLines(status('0\t0\t0\t0', '0\t0\t0\t0', null));
    expect(noGroups.groups).toBe('');
    expect(sameCredentials(status('0\t0\t0\t0', '0\t0\t0\t0', null), noGroups)).toBe(true);
    expect(sameCredentials(base, noGroups)).toBe(false);
  });

  it('match the real /proc/self/status against itself', () => {
    const real = readFileSync('/proc/self/status', 'utf8');
    expect(sameCredentials(real, credentialLines(real))).toBe(true);
    expect(credentialLines(real).uid).toMatch(/^Uid:(\t\d+){4}\n$/);
  });
});
