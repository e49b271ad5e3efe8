import { chmodSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

// A crash between the temp file and the rename: when `failRename` is set, rename throws as the
// kernel would (EIO), after the temp file has been written and fsync'd.
const faults = vi.hoisted(() => ({ failRename: false }));
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  return {
    ...real,
    renameSync: (from: string, to: string) => {
      if (faults.failRename) throw Object.assign(new Error(`EIO: i/o error, rename '${from}' -> '${to}'`), { code: 'EIO' });
      real.renameSync(from, to);
    },
  };
});
vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...real,
    rename: async (from: string, to: string) => {
      if (faults.failRename) throw Object.assign(new Error(`EIO: i/o error, rename '${from}' -> '${to}'`), { code: 'EIO' });
      await real.rename(from, to);
    },
  };
});

const { replaceFileAtomic, replaceFileAtomicAsync } = await import('../../src/util/atomic-file.js');

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-atomic-'));
  faults.failRename = false;
});
afterEach(() => {
  faults.failRename = false;
  chmodSync(dir, 0o700);
  rmSync(dir, { recursive: true, force: true });
});

const forms = [
  ['sync', (p: string, d: string | Buffer, m: number) => Promise.resolve().then(() => replaceFileAtomic(p, d, m))],
  ['async', replaceFileAtomicAsync],
] as const;

describe.each(forms)('replaceFileAtomic (%s)', (_name, write) => {
  it('creates the file with exactly the mode asked for', async () => {
    const p = join(dir, 'key.pem');
    await write(p, 'secret', 0o600);
    expect(readFileSync(p, 'utf8')).toBe('secret');
    expect(statSync(p).mode & 0o7777).toBe(0o600);
    const q = join(dir, 'bundle.pem');
    await write(q, Buffer.from([1, 2, 3]), 0o644);
    expect(readFileSync(q)).toEqual(Buffer.from([1, 2, 3]));
    expect(statSync(q).mode & 0o7777).toBe(0o644);
  });

  it('replaces an existing file and its mode (a 0644 file becomes 0600), leaving no temp file', async () => {
    const p = join(dir, 'ak.json');
    writeFileSync(p, 'old contents that are longer than the new ones', { mode: 0o644 });
    chmodSync(p, 0o644);
    const before = lstatSync(p).ino;
    await write(p, 'new', 0o600);
    expect(readFileSync(p, 'utf8')).toBe('new');
    expect(statSync(p).mode & 0o7777).toBe(0o600);
    expect(lstatSync(p).ino).not.toBe(before); // a new inode: never written through
    expect(readdirSync(dir)).toEqual(['ak.json']);
  });

  it('replaces a symlink at the path instead of writing through it', async () => {
    const target = join(dir, 'elsewhere');
    writeFileSync(target, 'untouched');
    const p = join(dir, 'svid.pem');
    symlinkSync(target, p);
    await write(p, 'fresh', 0o644);
    expect(lstatSync(p).isFile()).toBe(true);
    expect(readFileSync(target, 'utf8')).toBe('untouched');
  });

  it('a rename that fails (crash before the swap) leaves the old file and no temp file', async () => {
    const p = join(dir, 'bundle.json');
    writeFileSync(p, 'old');
    faults.failRename = true;
    await expect(write(p, 'new', 0o644)).rejects.toThrow(/EIO/);
    expect(readFileSync(p, 'utf8')).toBe('old');
    expect(readdirSync(dir)).toEqual(['bundle.json']);
  });

  it('a directory it cannot write to fails with the errno and leaves nothing behind', async () => {
    if (process.geteuid?.() === 0) {
      // root ignores directory permissions; use a path whose parent is a file instead
      const file = join(dir, 'file');
      writeFileSync(file, 'x');
      await expect(write(join(file, 'child'), 'data', 0o600)).rejects.toMatchObject({ code: 'ENOTDIR' });
      expect(readdirSync(dir)).toEqual(['file']);
      return;
    }
    chmodSync(dir, 0o500);
    await expect(write(join(dir, 'x'), 'data', 0o600)).rejects.toMatchObject({ code: 'EACCES' });
    chmodSync(dir, 0o700);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('the mode does not depend on the umask', async () => {
    const old = process.umask(0o077);
    try {
      const p = join(dir, 'public.pem');
      await write(p, 'x', 0o644);
      expect(statSync(p).mode & 0o7777).toBe(0o644);
    } finally {
      process.umask(old);
    }
  });
});
