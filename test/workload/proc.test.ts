import { mkdtempSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseStatStartTime, parseStatus, readBoundedFile, readExeFileSync, readExeImageSync, readStartTime, readStatus, sameFile, sameImage } from '../../src/workload/proc.js';

describe('/proc parsers', () => {
  it('reads starttime (field 22) after the last ")" even with hostile comm', () => {
    const tail = 'S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 123456789 1000 50';
    expect(parseStatStartTime(`42 (bash) ${tail}`)).toBe(123456789n);
    expect(parseStatStartTime(`42 (a) b) 1 2 (c ) ${tail}`)).toBe(123456789n);
    expect(parseStatStartTime(`42 (new\nline) ${tail}`)).toBe(123456789n);
    expect(() => parseStatStartTime('42 bash S 1')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_stat' }));
    expect(() => parseStatStartTime('42 (x) S 1 2')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_stat' }));
    expect(() => parseStatStartTime(`42 (x) ${tail.replace('123456789', '12x')}`)).toThrow(expect.objectContaining({ code: 'workload.bad_proc_stat' }));
  });

  it('parses Uid/Gid/Groups and refuses malformed status', () => {
    const s = parseStatus('Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 11 \nVmRSS:\t1 kB\n');
    expect(s).toEqual({ uids: [1, 2, 3, 4], gids: [5, 6, 7, 8], groups: [10, 11] });
    expect(parseStatus('Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n').groups).toEqual([]);
    expect(() => parseStatus('Uid:\t1\t2\t3\nGid:\t5\t6\t7\t8\n')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_status' }));
    expect(() => parseStatus('Gid:\t5\t6\t7\t8\n')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_status' }));
    expect(() => parseStatus('Uid:\t1\t2\t3\t4\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_status' }));
    expect(() => parseStatus('Uid:\t1\t2\t3\t-4\nGid:\t5\t6\t7\t8\n')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_status' }));
    expect(() => parseStatus('Uid:\t1\t2\t3\t99999999999\nGid:\t5\t6\t7\t8\n')).toThrow(expect.objectContaining({ code: 'workload.bad_proc_status' }));
  });

  it('reads the real /proc for this process', async () => {
    const st = await readStatus('/proc', process.pid);
    expect(st.uids[1]).toBe(process.geteuid!());
    const t1 = await readStartTime('/proc', process.pid);
    expect(t1).toBeGreaterThan(0n);
    expect(await readStartTime('/proc', process.pid)).toBe(t1);
  });

  const dir = mkdtempSync(join(tmpdir(), 'sigil-procfile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  it('bounds file reads', async () => {
    writeFileSync(join(dir, 'big'), Buffer.alloc(5000, 0x41));
    await expect(readBoundedFile(join(dir, 'big'), 4096)).rejects.toMatchObject({ code: 'workload.proc_file_too_large' });
    expect((await readBoundedFile(join(dir, 'big'), 5000)).length).toBe(5000);
    await expect(readBoundedFile(join(dir, 'none'))).rejects.toMatchObject({ code: 'workload.process_gone' });
    await expect(readStartTime(dir, -1)).rejects.toMatchObject({ code: 'workload.bad_pid' });
  });
});

describe('/proc/<pid>/exe', () => {
  it('names the program this process runs and the file behind it', () => {
    const img = readExeImageSync('/proc', process.pid);
    expect(img.path).toBe(realpathSync(process.execPath));
    const st = statSync(process.execPath, { bigint: true });
    expect(img.file).toEqual({ dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, isFile: true });
    expect(sameFile(readExeFileSync(`/proc/${process.pid}/exe`), img.file)).toBe(true);
    expect(sameImage(img, { ...img, path: '/elsewhere' })).toBe(false);
    expect(sameFile(img.file, img.file && { ...img.file, ctimeNs: img.file.ctimeNs + 1n })).toBe(false);
    expect(sameFile(img.file, undefined)).toBe(false);
    expect(sameFile(undefined, undefined)).toBe(true);
  });

  it('a process that is gone gives workload.process_gone', () => {
    expect(() => readExeImageSync('/proc', 2 ** 30)).toThrow(expect.objectContaining({ code: 'workload.process_gone' }));
  });
});
