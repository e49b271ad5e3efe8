/**
 * Linux IMA runtime measurement list, ASCII form (`/sys/kernel/security/ima/ascii_runtime_measurements`):
 * one line per measurement, `PCR template-hash template-name template-fields…`. Pure parsing and
 * PCR 10 replay; errors are `tpm.ima_*` SigilErrors.
 */
import { createHash } from 'node:crypto';
import { SigilError } from '../../errors.js';
import { bankHash, type EventLogAlgorithm } from '../eventlog/algorithms.js';

export const IMA_DEFAULT_MAX_BYTES = 1024 * 1024;
export const IMA_DEFAULT_MAX_ENTRIES = 20_000;

export interface ImaEntry {
  readonly line: number;
  readonly pcr: number;
  /** SHA-1 template hash as listed (all zeros for a violation). */
  readonly templateHash: Buffer;
  readonly template: 'ima-ng' | 'ima-sig' | 'ima-buf';
  /** File digest algorithm and value, e.g. sha256 / hex. */
  readonly digestAlg: string;
  readonly digest: Buffer;
  /** Path (ima-ng, ima-sig) or buffer name (ima-buf). */
  readonly path: string;
  /** Template data as the kernel hashed it. */
  readonly templateData: Buffer;
  readonly violation: boolean;
}

function fail(code: string, msg: string): never {
  throw new SigilError(`tpm.ima_${code}`, `IMA log: ${msg}`);
}

function lenPrefixed(b: Buffer): Buffer {
  const l = Buffer.alloc(4);
  l.writeUInt32LE(b.length);
  return Buffer.concat([l, b]);
}

const DIGEST_SIZES: Record<string, number> = { md5: 16, sha1: 20, sha256: 32, sha384: 48, sha512: 64, sm3: 32, 'sha3-256': 32, 'sha3-384': 48, 'sha3-512': 64 };

/** Parse the ASCII list. Paths with spaces are not representable in it and are refused. */
export function parseImaAsciiLog(bytes: Uint8Array, opts: { maxBytes?: number; maxEntries?: number } = {}): ImaEntry[] {
  const maxBytes = opts.maxBytes ?? IMA_DEFAULT_MAX_BYTES;
  const maxEntries = opts.maxEntries ?? IMA_DEFAULT_MAX_ENTRIES;
  if (bytes.length === 0) fail('empty', 'the log is empty');
  if (bytes.length > maxBytes) fail('too_large', `the log is ${bytes.length} bytes, more than the limit of ${maxBytes}`);
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  if (!text.endsWith('\n')) fail('truncated', 'the last line has no newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length > maxEntries) fail('too_many_entries', `more than ${maxEntries} entries`);
  return lines.map((l, i) => parseLine(l, i + 1));
}

function parseLine(l: string, n: number): ImaEntry {
  const bad: (m: string) => never = (m) => fail('bad_entry', `line ${n}: ${m}`);
  const f = l.split(' ');
  if (f.length < 5) bad(`${f.length} fields, expected at least 5`);
  const [pcrS, th, template, dng, path, ...rest] = f as [string, string, string, string, string, ...string[]];
  if (!/^\d{1,2}$/.test(pcrS)) bad(`PCR "${pcrS.slice(0, 8)}" is not a number`);
  const pcr = Number(pcrS);
  if (!/^[0-9a-f]{40}$/.test(th)) bad('template hash is not 40 lowercase hex digits');
  if (template !== 'ima-ng' && template !== 'ima-sig' && template !== 'ima-buf') bad(`template ${template.slice(0, 16)} is not supported (ima-ng, ima-sig, ima-buf)`);
  const m = /^([a-z0-9-]+):([0-9a-f]*)$/.exec(dng);
  if (!m) bad('file digest is not <alg>:<hex>');
  const digestAlg = m[1]!;
  const size = DIGEST_SIZES[digestAlg];
  if (size === undefined) bad(`digest algorithm ${digestAlg} is unknown`);
  if (m[2]!.length !== size * 2) bad(`${digestAlg} digest has ${m[2]!.length / 2} bytes, expected ${size}`);
  if (path.length === 0 || [...path].some((c) => c.charCodeAt(0) < 0x20)) bad('empty path or control characters in it');
  const digest = Buffer.from(m[2]!, 'hex');
  const dField = Buffer.concat([Buffer.from(`${digestAlg}:\0`, 'latin1'), digest]);
  const nField = Buffer.concat([Buffer.from(path, 'latin1'), Buffer.from([0])]);
  const parts = [lenPrefixed(dField), lenPrefixed(nField)];
  if (template === 'ima-sig' || template === 'ima-buf') {
    if (rest.length > 1) bad('too many fields');
    const extra = rest[0] ?? '';
    if (!/^([0-9a-f]{2})*$/.test(extra)) bad('signature/buffer field is not hex');
    parts.push(lenPrefixed(Buffer.from(extra, 'hex')));
  } else if (rest.length > 0) bad('too many fields (a path with spaces?)');
  const templateData = Buffer.concat(parts);
  const templateHash = Buffer.from(th, 'hex');
  const violation = templateHash.equals(Buffer.alloc(20));
  if (!violation && !createHash('sha1').update(templateData).digest().equals(templateHash)) bad('template hash is not the SHA-1 of the template data');
  return { line: n, pcr, templateHash, template: template as ImaEntry['template'], digestAlg, digest, path, templateData, violation };
}

/**
 * Replay `entries` into `bank` starting from `start` (zeros after reset), calling `onValue` with
 * the register after each entry; returns the final value. A violation extends all ones.
 */
export function replayIma(entries: readonly ImaEntry[], alg: EventLogAlgorithm, start: Buffer = Buffer.alloc(alg.size), onValue?: (n: number, v: Buffer) => boolean | void): Buffer {
  let v = start;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const d = e.violation ? Buffer.alloc(alg.size, 0xff) : alg.name === 'sha1' ? e.templateHash : bankHash(alg, e.templateData);
    v = bankHash(alg, v, d);
    if (onValue?.(i + 1, v) === true) break;
  }
  return v;
}
