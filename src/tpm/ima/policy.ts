/**
 * IMA runtime policy: an allowlist (path → allowed file digests) and excludes (regular
 * expressions over paths). A measured file passes when its path is excluded or its digest is
 * allowed for that path; `boot_aggregate` is always allowed (it is the PCR 0–7 aggregate,
 * checked through the firmware event log).
 */
import { SigilError, errorMessage } from '../../errors.js';
import type { ImaEntry } from './log.js';

export interface ImaPolicy {
  readonly name: string;
  /** path → set of `<alg>:<hex>`. */
  readonly allow: ReadonlyMap<string, ReadonlySet<string>>;
  readonly excludes: readonly RegExp[];
}

function cfg(msg: string): never {
  throw new SigilError('tpm.config_invalid', `tpm: ima.allowlist: ${msg}`);
}

/**
 * Parse an allowlist file: either JSON `{ "<path>": ["sha256:<hex>", …] }`, or `sha256sum`
 * output (`<hex>  <path>` per line, the algorithm from the digest length; `#` comments).
 */
export function parseImaAllowlist(text: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  const add = (path: string, d: string, where: string): void => {
    const m = /^(sha1|sha256|sha384|sha512|sm3|md5):([0-9a-f]+)$/.exec(d.toLowerCase());
    if (!m || m[2]!.length % 2 !== 0) cfg(`${where}: "${d.slice(0, 80)}" is not <alg>:<hex>`);
    if (!path.startsWith('/') && path !== 'boot_aggregate') cfg(`${where}: path "${path.slice(0, 80)}" is not absolute`);
    let set = out.get(path);
    if (!set) out.set(path, (set = new Set()));
    set.add(`${m[1]}:${m[2]}`);
  };
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) {
    let o: unknown;
    try {
      o = JSON.parse(trimmed);
    } catch (e) {
      cfg(`not JSON: ${errorMessage(e)}`);
    }
    if (typeof o !== 'object' || o === null || Array.isArray(o)) cfg('JSON must be an object of path → digests');
    for (const [path, list] of Object.entries(o as Record<string, unknown>)) {
      if (!Array.isArray(list) || list.some((d) => typeof d !== 'string')) cfg(`${path}: digests must be an array of strings`);
      for (const d of list as string[]) add(path, d, path);
    }
    return out;
  }
  const byLen: Record<number, string> = { 40: 'sha1', 64: 'sha256', 96: 'sha384', 128: 'sha512' };
  trimmed.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([0-9a-fA-F]+)\s+\*?(.+)$/.exec(line);
    if (!m || byLen[m[1]!.length] === undefined) cfg(`line ${i + 1} is not "<hex digest>  <path>"`);
    add(m[2]!, `${byLen[m[1]!.length]}:${m[1]}`, `line ${i + 1}`);
  });
  return out;
}

export function compileExcludes(list: readonly string[]): RegExp[] {
  return list.map((s) => {
    try {
      return new RegExp(s);
    } catch (e) {
      throw new SigilError('tpm.config_invalid', `tpm: ima.excludes: "${s}" is not a regular expression: ${errorMessage(e)}`);
    }
  });
}

/** Throws `tpm.ima_policy_violation` naming the first file the policy does not allow. */
export function checkImaPolicy(entries: readonly ImaEntry[], policy: ImaPolicy): void {
  for (const e of entries) {
    if (e.path === 'boot_aggregate' && e.line === 1) continue;
    if (e.violation) throw new SigilError('tpm.ima_policy_violation', `IMA log line ${e.line}: a measurement violation (file ${e.path} changed while open)`);
    if (policy.excludes.some((r) => r.test(e.path))) continue;
    const allowed = policy.allow.get(e.path);
    const d = `${e.digestAlg}:${e.digest.toString('hex')}`;
    if (!allowed?.has(d)) {
      throw new SigilError(
        'tpm.ima_policy_violation',
        `IMA log line ${e.line}: ${e.path} (${d}) is ${allowed ? 'not an allowed version' : 'not in'} the allowlist of policy ${policy.name}`,
        { details: { path: e.path, line: e.line } },
      );
    }
  }
}
