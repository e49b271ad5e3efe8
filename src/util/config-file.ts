import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { SigilError, errorMessage } from '../errors.js';
import { checkDirChain } from './socket-dir.js';

/** Largest config file read (a config with inline PEM bundles is a few hundred KiB). */
export const MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024;

/**
 * Read a file an operator named (a config, an evidence file): only a regular file, of at most
 * `maxBytes`. A FIFO would block the process until someone writes to it (opened non-blocking, it is
 * refused instead), a device such as /dev/zero never ends. Throws a plain Error whose message says
 * what is wrong (callers wrap it in their own code), as fs errors do.
 */
export function readRegularFile(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`not a regular file (${st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isSocket() ? 'a socket' : st.isDirectory() ? 'a directory' : 'another kind'})`);
    if (st.size > maxBytes) throw new Error(`${st.size} bytes, more than the ${maxBytes} accepted`);
    // Read to the end (the file may have grown since fstat), never past the limit.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const chunk = Buffer.allocUnsafe(Math.min(64 * 1024, maxBytes + 1 - total));
      const r = readSync(fd, chunk, 0, chunk.length, null);
      if (r === 0) break;
      total += r;
      if (total > maxBytes) throw new Error(`more than the ${maxBytes} bytes accepted`);
      chunks.push(r === chunk.length ? chunk : chunk.subarray(0, r));
    }
    return Buffer.concat(chunks, total);
  } finally {
    closeSync(fd);
  }
}

/**
 * Refuse config `path` unless only this process's user or root can change it (it names the plugin
 * modules the daemon imports and the trust anchors it uses): the file (after symlinks) owned by one
 * of them and not group- or world-writable, a symlink at `path` owned by one of them, and the
 * directories holding both passing the rule of the socket directories (socket-dir.ts checkDirChain).
 * Throws SigilError `config.insecure_path`.
 */
export function checkConfigPath(path: string): void {
  const euid = process.geteuid?.();
  if (euid === undefined) return;
  const given = resolve(path);
  const fail = (why: string): never => {
    throw new SigilError('config.insecure_path', `config ${given} ${why}; another user could change what this process trusts and runs`, { status: 500 });
  };
  let real: string;
  try {
    const link = lstatSync(given);
    if (link.isSymbolicLink() && link.uid !== euid && link.uid !== 0) fail(`is a symlink owned by uid ${link.uid}, neither this process's uid ${euid} nor root`);
    real = realpathSync(given);
    const st = statSync(real);
    const what = real === given ? 'is' : `leads to ${real}, which is`;
    if (st.uid !== euid && st.uid !== 0) fail(`${what} owned by uid ${st.uid}, neither this process's uid ${euid} nor root`);
    if ((st.mode & 0o022) !== 0) fail(`${what} writable by ${(st.mode & 0o002) !== 0 ? 'every user' : 'its group'} (mode 0${(st.mode & 0o777).toString(8)})`);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    return fail(`cannot be inspected: ${errorMessage(e)}`);
  }
  checkDirChain(dirname(given), 'config.insecure_path', `config ${given}: directory`, 'the config');
  if (dirname(real) !== dirname(given)) checkDirChain(dirname(real), 'config.insecure_path', `config ${given}: directory`, 'the config');
}

/** Read a YAML (or JSON) config file; returns the parsed value and the file's directory (relative paths resolve against it). */
export function readConfigFile(path: string): { raw: unknown; dir: string } {
  let text: string;
  try {
    text = readRegularFile(path, MAX_CONFIG_FILE_BYTES).toString('utf8');
  } catch (e) {
    throw new SigilError('config.unreadable', `cannot read config ${path}: ${errorMessage(e)}`);
  }
  checkConfigPath(path);
  try {
    return { raw: parseYaml(text), dir: dirname(resolve(path)) };
  } catch (e) {
    throw new SigilError('config.parse_failed', `config ${path} is not valid YAML/JSON: ${e instanceof Error ? (e.message.split('\n')[0] ?? '') : String(e)}`);
  }
}
