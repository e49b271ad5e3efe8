/**
 * Durable file replacement: the one way Sigil writes state (keys, persisted bundles and SVIDs,
 * collateral caches, anything under dataDir). Both forms do the same steps:
 *   1. create a temp file next to `path` with a random name, O_EXCL (a planted file or symlink of
 *      that name makes the open fail, nothing is written through it), then fchmod it to `mode`
 *      (the open's mode is masked by the umask; the final mode must not depend on it);
 *   2. write everything, fsync the file;
 *   3. rename it over `path`;
 *   4. fsync the directory, so the rename itself survives a crash.
 * A crash leaves either the old or the new file, never a torn one. On any failure before the
 * rename the temp file is removed and the underlying error is thrown (callers wrap it in their
 * own `SigilError`); the old file is untouched.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, fchmodSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
}

function bytesOf(data: string | Uint8Array): Buffer {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

const CREATE_EXCL = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL;

/** fsync a directory; some filesystems refuse it on a directory, and then the rename stands as is. */
function fsyncDirSync(dir: string): void {
  let dfd: number;
  try {
    dfd = openSync(dir, fsc.O_RDONLY);
  } catch {
    return;
  }
  try {
    fsyncSync(dfd);
  } catch {
    // EINVAL/EBADF on filesystems without directory fsync.
  } finally {
    closeSync(dfd);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  let dh: FileHandle;
  try {
    dh = await open(dir, fsc.O_RDONLY);
  } catch {
    return;
  }
  try {
    await dh.sync();
  } catch {
    // as in fsyncDirSync
  } finally {
    await dh.close();
  }
}

/** Write `data` to `path` durably with the final `mode` (synchronous form; see the file header). */
export function replaceFileAtomic(path: string, data: string | Uint8Array, mode: number): void {
  const tmp = tempPathFor(path);
  const buf = bytesOf(data);
  let fd: number | undefined;
  let created = false;
  try {
    fd = openSync(tmp, CREATE_EXCL, mode);
    created = true;
    fchmodSync(fd, mode);
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // the original error is the one reported
      }
    }
    if (created) {
      try {
        unlinkSync(tmp);
      } catch {
        // already gone
      }
    }
    throw e;
  }
  fsyncDirSync(dirname(path));
}

/** Write `data` to `path` durably with the final `mode` (asynchronous form; see the file header). */
export async function replaceFileAtomicAsync(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = tempPathFor(path);
  const buf = bytesOf(data);
  let fh: FileHandle | undefined;
  let created = false;
  try {
    fh = await open(tmp, CREATE_EXCL, mode);
    created = true;
    await fh.chmod(mode);
    let off = 0;
    while (off < buf.length) off += (await fh.write(buf, off, buf.length - off)).bytesWritten;
    await fh.sync();
    const h = fh;
    fh = undefined;
    await h.close();
    await rename(tmp, path);
  } catch (e) {
    if (fh !== undefined) await fh.close().catch(() => undefined);
    if (created) await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dirname(path));
}
