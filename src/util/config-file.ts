import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { SigilError, errorMessage } from '../errors.js';

/** Read a YAML (or JSON) config file; returns the parsed value and the file's directory (relative paths resolve against it). */
export function readConfigFile(path: string): { raw: unknown; dir: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new SigilError('config.unreadable', `cannot read config ${path}: ${errorMessage(e)}`);
  }
  try {
    return { raw: parseYaml(text), dir: dirname(resolve(path)) };
  } catch (e) {
    throw new SigilError('config.parse_failed', `config ${path} is not valid YAML/JSON: ${e instanceof Error ? (e.message.split('\n')[0] ?? '') : String(e)}`);
  }
}
