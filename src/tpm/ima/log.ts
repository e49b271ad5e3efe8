/**
 * Linux IMA runtime measurement list, ASCII form (`/sys/kernel/security/ima/ascii_runtime_measurements`):
 * one line per measurement, `PCR template-hash template-name template-fields…`. Pure parsing and
 * PCR 10 replay; errors are `tpm.ima_*` SigilErrors. The binary form is in binary.ts; both give
 * the same `ImaEntry` (the template data the kernel hashed, checked against the template hash).
 */
import { digest } from '../../util/digest.js';
import { SigilError } from '../../errors.js';
import { bankHash, type EventLogAlgorithm } from '../eventlog/algorithms.js';

/** Matches the verifier's request body limit (1 MiB): a larger list cannot be sent whole anyway. */
export const IMA_DEFAULT_MAX_BYTES = 1024 * 1024;
export const IMA_DEFAULT_MAX_ENTRIES = 20_000;

export type ImaTemplate = 'ima' | 'ima-ng' | 'ima-sig' | 'ima-buf';

export interface ImaEntry {
  /** 1-based position in the whole list (a tail parsed from entry N+1 numbers from N+1). */
  readonly line: number;
  /** Byte offset just after this entry, relative to the start of the bytes parsed. */
  readonly end: number;
  readonly pcr: number;
  /** SHA-1 template hash as listed (all zeros for a violation). */
  readonly templateHash: Buffer;
  readonly template: ImaTemplate;
  /** File digest algorithm and value, e.g. sha256 / hex. */
  readonly digestAlg: string;
  readonly digest: Buffer;
  /** Path (ima, ima-ng, ima-sig) or buffer name (ima-buf). */
  readonly path: string;
  /** The bytes the kernel hashed into the template hash (for every bank's PCR extend). */
  readonly templateData: Buffer;
  readonly violation: boolean;
}

export interface ImaParseOptions {
  maxBytes?: number;
  maxEntries?: number;
  /** Number the first entry parsed as this (1-based; default 1): a tail after N checked entries starts at N+1. */
  firstEntry?: number;
}

export function imaFail(code: string, msg: string): never {
  throw new SigilError(`tpm.ima_${code}`, `IMA log: ${msg}`);
}

export const IMA_DIGEST_SIZES: Readonly<Record<string, number>> = { md5: 16, sha1: 20, sha256: 32, sha384: 48, sha512: 64, sm3: 32, 'sha3-256': 32, 'sha3-384': 48, 'sha3-512': 64 };

/** IMA_EVENT_NAME_LEN_MAX + 1: the legacy `ima` template hashes its name zero-padded to this. */
export const IMA_LEGACY_NAME_FIELD = 256;

/** The template data of the legacy `ima` template as hashed: the 20-byte digest, then the name zero-padded to 256 bytes. */
export function legacyImaHashed(digest: Buffer, name: Buffer): Buffer {
  const out = Buffer.alloc(20 + IMA_LEGACY_NAME_FIELD);
  digest.copy(out, 0);
  name.copy(out, 20);
  return out;
}

const sha1 = (b: Buffer): Buffer => digest('sha1', b);

export function checkTemplateHash(templateHash: Buffer, templateData: Buffer, where: string): boolean {
  const violation = templateHash.equals(ZERO20);
  if (!violation && !sha1(templateData).equals(templateHash)) imaFail('bad_entry', `${where}: template hash is not the SHA-1 of the template data`);
  return violation;
}

/** Whether `s` has a character below 0x20. */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) < 0x20) return true;
  return false;
}

const ZERO20 = Buffer.alloc(20);

function limits(bytes: Uint8Array, opts: ImaParseOptions): { maxEntries: number; first: number } {
  const maxBytes = opts.maxBytes ?? IMA_DEFAULT_MAX_BYTES;
  if (bytes.length === 0) imaFail('empty', 'the log is empty');
  if (bytes.length > maxBytes) imaFail('too_large', `the log is ${bytes.length} bytes, more than the limit of ${maxBytes}`);
  const first = opts.firstEntry ?? 1;
  if (!Number.isSafeInteger(first) || first < 1) imaFail('bad_entry', `first entry number ${first} is not a positive integer`);
  return { maxEntries: opts.maxEntries ?? IMA_DEFAULT_MAX_ENTRIES, first };
}
export { limits as imaLimits };

/** Parse the ASCII list. Paths with spaces are not representable in it and are refused. */
export function parseImaAsciiLog(bytes: Uint8Array, opts: ImaParseOptions = {}): ImaEntry[] {
  const { maxEntries, first } = limits(bytes, opts);
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  if (!text.endsWith('\n')) imaFail('truncated', 'the last line has no newline');
  const out: ImaEntry[] = [];
  let pos = 0;
  while (pos < text.length) {
    if (out.length >= maxEntries) imaFail('too_many_entries', `more than ${maxEntries} entries`);
    const nl = text.indexOf('\n', pos);
    out.push(parseLine(text.slice(pos, nl), first + out.length, nl + 1));
    pos = nl + 1;
  }
  return out;
}

function parseLine(l: string, n: number, end: number): ImaEntry {
  const bad: (m: string) => never = (m) => imaFail('bad_entry', `line ${n}: ${m}`);
  const f = l.split(' ');
  if (f.length < 5) bad(`${f.length} fields, expected at least 5`);
  const [pcrS, th, template, dng, path, ...rest] = f as [string, string, string, string, string, ...string[]];
  if (!/^\d{1,2}$/.test(pcrS)) bad(`PCR "${pcrS.slice(0, 8)}" is not a number`);
  const pcr = Number(pcrS);
  if (!/^[0-9a-f]{40}$/.test(th)) bad('template hash is not 40 lowercase hex digits');
  const templateHash = Buffer.from(th, 'hex');
  if (template === 'ima') {
    // Legacy template: `<sha1 file digest hex> <name>`, hashed as digest ‖ name padded to 256 bytes.
    if (rest.length > 0) bad('too many fields (a path with spaces?)');
    if (!/^[0-9a-f]{40}$/.test(dng)) bad('ima template file digest is not 40 hex digits');
    const name = Buffer.from(path, 'latin1');
    if (name.length >= IMA_LEGACY_NAME_FIELD || hasControl(path)) bad('name longer than 255 bytes or with control characters');
    const digest = Buffer.from(dng, 'hex');
    const templateData = legacyImaHashed(digest, name);
    const violation = checkTemplateHash(templateHash, templateData, `line ${n}`);
    return { line: n, end, pcr, templateHash, template: 'ima', digestAlg: 'sha1', digest, path, templateData, violation };
  }
  if (template !== 'ima-ng' && template !== 'ima-sig' && template !== 'ima-buf') bad(`template ${template.slice(0, 16)} is not supported (ima, ima-ng, ima-sig, ima-buf)`);
  const m = /^([a-z0-9-]+):([0-9a-f]*)$/.exec(dng);
  if (!m) bad('file digest is not <alg>:<hex>');
  const digestAlg = m[1]!;
  const size = IMA_DIGEST_SIZES[digestAlg];
  if (size === undefined) bad(`digest algorithm ${digestAlg} is unknown`);
  if (m[2]!.length !== size * 2) bad(`${digestAlg} digest has ${m[2]!.length / 2} bytes, expected ${size}`);
  if (path.length === 0 || hasControl(path)) bad('empty path or control characters in it');
  let extra = '';
  if (template === 'ima-sig' || template === 'ima-buf') {
    if (rest.length > 1) bad('too many fields');
    extra = rest[0] ?? '';
    if (!/^([0-9a-f]{2})*$/.test(extra)) bad('signature/buffer field is not hex');
  } else if (rest.length > 0) bad('too many fields (a path with spaces?)');
  // Template data: u32 len ‖ "<alg>:\0" ‖ digest, u32 len ‖ path ‖ NUL [, u32 len ‖ extra], in one buffer.
  const hasExtra = template !== 'ima-ng';
  const dLen = digestAlg.length + 2 + size;
  const total = 4 + dLen + 4 + path.length + 1 + (hasExtra ? 4 + extra.length / 2 : 0);
  const templateData = Buffer.alloc(total);
  let o = templateData.writeUInt32LE(dLen, 0);
  o += templateData.write(digestAlg, o, 'latin1') + 1; // ':' below
  templateData[o - 1] = 0x3a;
  o += 1; // NUL (zero-filled)
  o += templateData.write(m[2]!, o, 'hex');
  o = templateData.writeUInt32LE(path.length + 1, o);
  o += templateData.write(path, o, 'latin1') + 1;
  if (hasExtra) {
    o = templateData.writeUInt32LE(extra.length / 2, o);
    templateData.write(extra, o, 'hex');
  }
  const digest = templateData.subarray(4 + digestAlg.length + 2, 4 + dLen);
  const violation = checkTemplateHash(templateHash, templateData, `line ${n}`);
  return { line: n, end, pcr, templateHash, template, digestAlg, digest, path, templateData, violation };
}

/**
 * Replay `entries` into `bank` starting from `start` (zeros after reset), calling `onValue` with
 * the register after each entry (`n` counts from 1 within `entries`); returns the final value.
 * A violation extends all ones.
 */
export function replayIma(entries: readonly ImaEntry[], alg: EventLogAlgorithm, start: Buffer = Buffer.alloc(alg.size), onValue?: (n: number, v: Buffer) => boolean | void): Buffer {
  let v = start;
  const ones = Buffer.alloc(alg.size, 0xff);
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const d = e.violation ? ones : alg.name === 'sha1' ? e.templateHash : bankHash(alg, e.templateData);
    v = bankHash(alg, v, d);
    if (onValue?.(i + 1, v) === true) break;
  }
  return v;
}
