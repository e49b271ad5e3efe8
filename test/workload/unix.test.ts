import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { createUnixAttestor, parseIdNameFile, unixAttestorPlugin } from '../../src/workload/unix.js';
import { validateAgainstSchema } from '../../src/plugins/validate.js';

const signal = new AbortController().signal;
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

describe('unix workload attestor (fake /proc)', () => {
  const root = mkdtempSync(join(tmpdir(), 'sigil-unix-'));
  const proc = join(root, 'proc');
  const bin = join(root, 'bin');
  const passwd = join(root, 'passwd');
  const group = join(root, 'group');
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const pid = 2345;
  function makeProcess(exeTarget: string, groups = '10 20 20'): void {
    rmSync(join(proc, String(pid)), { recursive: true, force: true });
    mkdirSync(join(proc, String(pid)), { recursive: true });
    writeFileSync(join(proc, String(pid), 'status'), `Name:\tapp\nUid:\t1000\t1001\t1001\t1001\nGid:\t100\t100\t100\t100\nGroups:\t${groups}\n`);
    symlinkSync(exeTarget, join(proc, String(pid), 'exe'));
  }
  beforeEach(() => {
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'app'), 'binary v1');
    writeFileSync(
      passwd,
      '# comment\nroot:x:0:0:root:/root:/bin/bash\n+nis::::::\nalice:x:1001:100::/home/alice:/bin/sh\nshadowalice:x:1001:100::/:/bin/false\n',
    );
    writeFileSync(group, 'root:x:0:\nusers:x:100:alice\nwheel:x:10:\n');
    makeProcess(join(bin, 'app'));
  });

  const make = (cfg: object = {}) => createUnixAttestor(cfg, { procRoot: proc, passwdPath: passwd, groupPath: group });

  it('emits uid, gid, names, supplementary gids, path and sha256', async () => {
    const a = make();
    const sel = await a.attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(sel.sort()).toEqual(
      [
        'unix:uid:1001',
        'unix:gid:100',
        'unix:user:alice',
        'unix:group:users',
        'unix:supplementary_gid:10',
        'unix:supplementary_gid:20',
        `unix:path:${join(bin, 'app')}`,
        `unix:sha256:${sha('binary v1')}`,
      ].sort(),
    );
  });

  it('caches the hash by file identity and notices replacement and in-place change', async () => {
    const a = make();
    await a.attest({ pid, uid: 1001, gid: 100 }, signal);
    await a.attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(a.stats).toMatchObject({ hashHits: 1, hashMisses: 1 });

    // replaced by rename (new inode): the running binary is what is hashed
    writeFileSync(join(bin, 'app.new'), 'binary v2');
    renameSync(join(bin, 'app.new'), join(bin, 'app'));
    const s2 = await a.attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(s2).toContain(`unix:sha256:${sha('binary v2')}`);
    expect(a.stats.hashMisses).toBe(2);

    // modified in place, same size, mtime forced back: ctime still changes
    const p = join(bin, 'app');
    writeFileSync(p, 'binary v3');
    utimesSync(p, new Date(0), new Date(0));
    const s3 = await a.attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(s3).toContain(`unix:sha256:${sha('binary v3')}`);
    expect(a.stats.hashMisses).toBe(3);
    expect(a.hashCacheSize).toBe(3);
  });

  it('a burst of attestations of one binary hashes it once', async () => {
    const a = make();
    const all = await Promise.all(Array.from({ length: 20 }, () => a.attest({ pid, uid: 1001, gid: 100 }, signal)));
    for (const sel of all) expect(sel).toContain(`unix:sha256:${sha('binary v1')}`);
    expect(a.stats.hashMisses).toBe(1);
    expect(a.stats.hashHits + a.stats.hashMisses).toBeLessThanOrEqual(20);
  });

  it('skips the path of a deleted executable but still hashes what runs', async () => {
    const deleted = join(bin, 'gone (deleted)');
    writeFileSync(deleted, 'still running');
    makeProcess(deleted);
    const sel = await make().attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(sel.some((s) => s.startsWith('unix:path:'))).toBe(false);
    expect(sel).toContain(`unix:sha256:${sha('still running')}`);
  });

  it('honours hashBinaries=false and maxBinaryBytes', async () => {
    const off = await make({ hashBinaries: false }).attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(off.some((s) => s.startsWith('unix:sha256:'))).toBe(false);
    const small = make({ maxBinaryBytes: 4 });
    const sel = await small.attest({ pid, uid: 1001, gid: 100 }, signal);
    expect(sel.some((s) => s.startsWith('unix:sha256:'))).toBe(false);
    expect(small.stats.hashSkippedTooLarge).toBe(1);
  });

  it('no names for ids missing from passwd/group; no path when exe is unreadable', async () => {
    unlinkSync(join(proc, String(pid), 'exe'));
    const sel = await make().attest({ pid, uid: 4242, gid: 4343 }, signal);
    expect(sel.sort()).toEqual(['unix:gid:4343', 'unix:supplementary_gid:10', 'unix:supplementary_gid:20', 'unix:uid:4242'].sort());
  });

  it('fails for a process that is gone, and on an aborted signal', async () => {
    await expect(make().attest({ pid: 99999, uid: 0, gid: 0 }, signal)).rejects.toMatchObject({ code: 'workload.process_gone' });
    const ac = new AbortController();
    ac.abort();
    await expect(make().attest({ pid, uid: 1001, gid: 100 }, ac.signal)).rejects.toMatchObject({ code: 'workload.attestation_aborted' });
  });

  it('serves no name from the old passwd once a changed one cannot be read', async () => {
    const a = createUnixAttestor({}, { procRoot: proc, passwdPath: passwd, groupPath: group, nameFileRecheckMs: 0 });
    expect(await a.attest({ pid, uid: 1001, gid: 100 }, signal)).toContain('unix:user:alice');
    writeFileSync(passwd, 'mallory:x:1001:100::/:/bin/sh\n' + '#'.repeat(33 * 1024 * 1024)); // over the 32 MiB bound
    await expect(a.attest({ pid, uid: 1001, gid: 100 }, signal)).rejects.toMatchObject({ code: 'workload.proc_file_too_large' });
    await expect(a.attest({ pid, uid: 1001, gid: 100 }, signal)).rejects.toMatchObject({ code: 'workload.proc_file_too_large' });
  });

  it('re-reads passwd when it changes, looking at most once per recheck interval', async () => {
    const a = createUnixAttestor({}, { procRoot: proc, passwdPath: passwd, groupPath: group, nameFileRecheckMs: 0 });
    expect(await a.attest({ pid, uid: 1001, gid: 100 }, signal)).toContain('unix:user:alice');
    writeFileSync(passwd, 'bob:x:1001:100::/:/bin/sh\n');
    expect(await a.attest({ pid, uid: 1001, gid: 100 }, signal)).toContain('unix:user:bob');

    const slow = createUnixAttestor({}, { procRoot: proc, passwdPath: passwd, groupPath: group, nameFileRecheckMs: 60_000 });
    expect(await slow.attest({ pid, uid: 1001, gid: 100 }, signal)).toContain('unix:user:bob');
    writeFileSync(passwd, 'carol:x:1001:100::/:/bin/sh\n');
    expect(await slow.attest({ pid, uid: 1001, gid: 100 }, signal)).toContain('unix:user:bob'); // within the interval
  });
});

describe('unix workload attestor (real process)', () => {
  it('describes this test process from the real /proc', async () => {
    const a = createUnixAttestor({});
    const sel = await a.attest({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() }, signal);
    const exe = realpathSync(process.execPath);
    expect(sel).toContain(`unix:uid:${process.getuid!()}`);
    expect(sel).toContain(`unix:path:${exe}`);
    expect(sel).toContain(`unix:sha256:${sha(readFileSync(exe))}`);
    if (process.getuid!() === 0) expect(sel).toContain('unix:user:root');
  });
});

describe('unix attestor config and parsing', () => {
  it('validates its config with JSON Schema and fills defaults', () => {
    const cfg = validateAgainstSchema<Record<string, unknown>>(unixAttestorPlugin.configSchema, {}, 'x');
    expect(cfg).toEqual({ hashBinaries: true, maxBinaryBytes: 268435456 });
    expect(() => createUnixAttestor({ hashBinaries: 'yes' })).toThrow(/hashBinaries/);
    expect(() => createUnixAttestor({ procRoot: '/tmp' })).toThrow(/unknown key "procRoot"/);
    expect(() => createUnixAttestor({ maxBinaryBytes: 0 })).toThrow(/maxBinaryBytes/);
  });

  it('parses passwd-style files: first entry wins, comments and NIS lines skipped', () => {
    const m = parseIdNameFile('#x:x:1:1\n+::::::\n-bad:x:2:2\na:x:5:5\nb:x:5:5\nc:x:notanumber:1\n\n::7:7\n');
    expect([...m]).toEqual([[5, 'a']]);
  });
});
