/**
 * Attester I/O: the GHCB certificate-table parser (bounds checks) and the configfs-tsm collector
 * against an in-memory fake of the kernel interface (see fake-tsm.ts) and a real temp directory.
 * The /dev/sev-guest ioctl path is not exercised here (no SEV-SNP guest on this machine).
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSnpReportSource, getReportViaConfigfs, nodeTsmFs } from '../../src/sev/attester.js';
import { CERT_GUIDS, buildCertTable, certBundleFromTable, parseCertTable } from '../../src/sev/certtable.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { FakeTsm } from './fake-tsm.js';
import { codeOf, codeOfAsync } from './helpers.js';

const chain = makeSnpTestChain('genoa');
const table = () =>
  buildCertTable([
    { guid: CERT_GUIDS.vcek, data: chain.endorsement },
    { guid: CERT_GUIDS.ask, data: chain.intermediate },
    { guid: CERT_GUIDS.ark, data: chain.ark },
  ]);

describe('certificate table', () => {
  it('round-trips VCEK/ASK/ARK entries, ignores page padding and keeps unknown GUIDs', () => {
    const t = buildCertTable(
      [
        { guid: CERT_GUIDS.vcek, data: chain.endorsement },
        { guid: CERT_GUIDS.ask, data: chain.intermediate },
        { guid: CERT_GUIDS.ark, data: chain.ark },
        { guid: 'ecae0c0f-9502-43b1-afa2-0ae2e0d565b6', data: Buffer.from('extra') },
      ],
      16384,
    );
    const entries = parseCertTable(t);
    expect(entries.map((e) => e.kind)).toEqual(['vcek', 'ask', 'ark', undefined]);
    const b = certBundleFromTable(t);
    expect(b.vcek).toEqual(chain.endorsement);
    expect(b.ask).toEqual(chain.intermediate);
    expect(b.ark).toEqual(chain.ark);
    expect(Object.keys(b).sort()).toEqual(['ark', 'ask', 'vcek']);
    // GUID byte order is the order the string reads (RFC 4122), as Linux tools write it.
    expect(t.subarray(0, 16).toString('hex')).toBe('63da758de6644564adc5f4b93be8accd');
  });
  it('empty / terminator-only tables have no entries', () => {
    expect(parseCertTable(Buffer.alloc(0))).toEqual([]);
    expect(parseCertTable(Buffer.alloc(4096))).toEqual([]);
  });
  it('bad offsets, lengths and structure are typed errors', () => {
    const bad = (mutate: (t: Buffer) => Buffer | void) => {
      const t = table();
      const out = mutate(t) ?? t;
      return codeOf(() => parseCertTable(out));
    };
    expect(bad((t) => void t.writeUInt32LE(t.length, 16))).toBe('sev.cert_table_malformed'); // offset past end
    expect(bad((t) => void t.writeUInt32LE(0xffffffff, 20))).toBe('sev.cert_table_malformed'); // huge length
    expect(bad((t) => void t.writeUInt32LE(0xfffffff0, 16))).toBe('sev.cert_table_malformed'); // offset+length overflow region
    expect(bad((t) => void t.writeUInt32LE(8, 16))).toBe('sev.cert_table_malformed'); // points into the table
    expect(bad((t) => void t.writeUInt32LE(0, 20))).toBe('sev.cert_table_malformed'); // zero length
    expect(bad((t) => t.subarray(0, 30))).toBe('sev.cert_table_malformed'); // no terminator
    expect(bad((t) => void t.writeUInt32LE(5, 3 * 24 + 16))).toBe('sev.cert_table_malformed'); // terminator with offset
    expect(bad((t) => void t.copy(t, 24, 0, 16))).toBe('sev.cert_table_malformed'); // duplicate GUID
    const many = buildCertTable(Array.from({ length: 65 }, (_, i) => ({ guid: `00000000-0000-0000-0000-${(i + 1).toString(16).padStart(12, '0')}`, data: Buffer.from([1]) })));
    expect(codeOf(() => parseCertTable(many))).toBe('sev.cert_table_malformed');
    expect(codeOf(() => parseCertTable(Buffer.alloc(1024 * 1024 + 1)))).toBe('sev.cert_table_malformed');
  });
});

function fakeFor(opts: Partial<ConstructorParameters<typeof FakeTsm>[0]> = {}) {
  return new FakeTsm({
    produce: (inblob, privlevel) => ({ report: makeSnpReport({ chain, reportData: inblob, vmpl: privlevel ?? 0 }), aux: table() }),
    ...opts,
  });
}

describe('configfs-tsm collector (in-memory fake kernel)', () => {
  const rd = Buffer.alloc(64, 0xab);

  it('mkdir, write inblob (and privlevel), read outblob + auxblob, check generation, rmdir', async () => {
    const fs = fakeFor();
    const r = await getReportViaConfigfs(rd, { fs, root: fs.root, privlevel: 2 });
    expect(r.via).toBe('configfs');
    expect(r.report.subarray(0x50, 0x90)).toEqual(rd);
    expect(r.report.readUInt32LE(0x30)).toBe(2);
    expect(certBundleFromTable(r.certTable!).vcek).toEqual(chain.endorsement);
    expect(fs.log.map((l) => l.split(' ')[0] === 'mkdir' || l.split(' ')[0] === 'rmdir' ? l.split(' ')[0] : l)).toEqual([
      'mkdir',
      'read provider',
      'write privlevel',
      'write inblob',
      'read generation',
      'read outblob',
      'read auxblob',
      'read generation',
      'rmdir',
    ]);
    expect(fs.entries.size).toBe(0);
  });

  it('retries when generation moves between write and read, then gives up', async () => {
    // One racing write (during the outblob read of the first attempt): the second attempt succeeds.
    const fs = fakeFor({ racingWrites: 1 });
    const r = await getReportViaConfigfs(rd, { fs, root: fs.root });
    expect(r.report.subarray(0x50, 0x90)).toEqual(rd);
    expect(fs.log.filter((l) => l === 'write inblob').length).toBe(2);
    const fs2 = fakeFor({ racingWrites: 100 });
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: fs2, root: fs2.root }))).toBe('sev.configfs_generation_race');
    expect(fs2.entries.size).toBe(0); // cleaned up on failure too
  });

  it('wrong provider, missing auxblob, no TSM provider, bad input', async () => {
    const tdx = fakeFor({ provider: 'tdx_guest' });
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: tdx, root: tdx.root }))).toBe('sev.configfs_wrong_provider');
    expect(tdx.entries.size).toBe(0);
    const old = fakeFor({ noAuxblob: true });
    const r = await getReportViaConfigfs(rd, { fs: old, root: old.root });
    expect(r.certTable).toBeUndefined();
    const none = fakeFor({ mkdirErrno: 'ENXIO' });
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: none, root: none.root }))).toBe('sev.configfs_unavailable');
    const perm = fakeFor({ mkdirErrno: 'EACCES' });
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: perm, root: perm.root }))).toBe('sev.configfs_failed');
    expect(await codeOfAsync(() => getReportViaConfigfs(Buffer.alloc(32), { fs: old, root: old.root }))).toBe('sev.report_data_invalid');
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: old, root: old.root, privlevel: 4 }))).toBe('sev.config_invalid');
    const short = new FakeTsm({ produce: () => ({ report: Buffer.alloc(100) }) });
    expect(await codeOfAsync(() => getReportViaConfigfs(rd, { fs: short, root: short.root }))).toBe('sev.report_length');
  });

  it('auto transport uses configfs when its root exists', async () => {
    const fs = fakeFor();
    const src = createSnpReportSource({ fs, configfsRoot: fs.root });
    const r = await src.getReport(rd);
    expect(r.via).toBe('configfs');
    expect(fs.created).toBe(1);
    expect(fs.removed).toBe(1);
  });
});

describe('configfs-tsm collector on a real directory (no kernel behind it)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  it('a plain directory has no provider file: clear error, and the entry is removed', async () => {
    const root = await mkdtemp(join(tmpdir(), 'sigil-tsm-'));
    dirs.push(root);
    expect(await codeOfAsync(() => getReportViaConfigfs(Buffer.alloc(64), { root, fs: nodeTsmFs }))).toBe('sev.configfs_failed');
    expect(await readdir(root)).toEqual([]);
  });
  it('a missing root → sev.configfs_unavailable', async () => {
    expect(await codeOfAsync(() => getReportViaConfigfs(Buffer.alloc(64), { root: join(tmpdir(), 'sigil-no-such-tsm-root'), fs: nodeTsmFs }))).toBe(
      'sev.configfs_unavailable',
    );
  });
});
