/** Small durable-file helpers for the agent's dataDir. */
import { closeSync, constants as fsc, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { SigilError } from '../errors.js';

/** Write `data` to `path` atomically (temp file in the same directory, fsync, rename, fsync dir). */
export function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, mode);
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
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
        /* the original error is reported */
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      /* the temp file may not exist */
    }
    throw new SigilError('agent.data_dir_write_failed', `cannot write ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  try {
    const dfd = openSync(dir, fsc.O_RDONLY);
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself has happened.
  }
}

/** Read a small file, or undefined when it does not exist. Other errors and oversize files throw. */
export function readSmallFile(path: string, maxBytes = 8 * 1024 * 1024): Buffer | undefined {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SigilError('agent.data_dir_read_failed', `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (b.length > maxBytes) throw new SigilError('agent.data_dir_read_failed', `${path} is larger than ${maxBytes} bytes`);
  return b;
}
