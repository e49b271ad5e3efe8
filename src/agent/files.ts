/** Small durable-file helpers for the agent's dataDir. */
import { readFileSync } from 'node:fs';
import { SigilError, errorMessage } from '../errors.js';
import { replaceFileAtomic } from '../util/atomic-file.js';

/** Write `data` to `path` atomically (temp file in the same directory, fsync, rename, fsync dir). */
export function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): void {
  try {
    replaceFileAtomic(path, data, mode);
  } catch (e) {
    throw new SigilError('agent.data_dir_write_failed', `cannot write ${path}: ${errorMessage(e)}`, { cause: e });
  }
}

/** Read a small file, or undefined when it does not exist. Other errors and oversize files throw. */
export function readSmallFile(path: string, maxBytes = 8 * 1024 * 1024): Buffer | undefined {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SigilError('agent.data_dir_read_failed', `cannot read ${path}: ${errorMessage(e)}`, { cause: e });
  }
  if (b.length > maxBytes) throw new SigilError('agent.data_dir_read_failed', `${path} is larger than ${maxBytes} bytes`);
  return b;
}
