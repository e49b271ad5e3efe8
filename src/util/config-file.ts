import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { SigilError, errorMessage } from '../errors.js';
import { checkTrustedPath } from './trusted-path.js';

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
 * modules the daemon imports and the trust anchors it uses): the file, every directory and symlink
 * on the way to it, by the rule of util/trusted-path.ts. Throws SigilError `config.insecure_path`.
 */
export function checkConfigPath(path: string): void {
  // The path as given, as the file is opened: `..` after a symlink goes up from where it leads.
  checkTrustedPath(path, 'file', {
    code: 'config.insecure_path',
    dir: `config ${path}: directory`,
    leaf: 'config',
    risk: 'the config, and with it what this process trusts and runs',
  });
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
