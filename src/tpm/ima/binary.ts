/**
 * Linux IMA runtime measurement list, binary form (`/sys/kernel/security/ima/binary_runtime_measurements`),
 * as the kernel writes it (security/integrity/ima/ima_fs.c, little-endian on every platform Sigil
 * runs on, and always with `ima_canonical_fmt`). Per entry:
 *   u32 PCR ‖ 20-byte SHA-1 template hash ‖ u32 name length ‖ template name ‖
 *   - `ima` (legacy): 20-byte file digest ‖ u32 length ‖ file name (no NUL);
 *   - others: u32 template data length ‖ template data = for each field, u32 length ‖ field bytes.
 * The template hash is SHA-1 over the template data (for `ima`: digest ‖ name zero-padded to 256
 * bytes); each entry's is recomputed and compared. Every length is bounded; trailing bytes refused.
 */
import { SigilError } from '../../errors.js';
import { IMA_DIGEST_SIZES, IMA_LEGACY_NAME_FIELD, checkTemplateHash, imaFail, imaLimits, legacyImaHashed, parseImaAsciiLog, type ImaEntry, type ImaParseOptions, type ImaTemplate } from './log.js';

/** IMA_TEMPLATE_NAME_LEN_MAX in the kernel. */
export const IMA_MAX_TEMPLATE_NAME = 15;
/** Largest template data accepted (a signature or a measured buffer such as a key is a few KiB). */
export const IMA_MAX_TEMPLATE_DATA = 64 * 1024;

/** Fields of each supported template (after d-ng and n-ng). */
const EXTRA_FIELDS: Readonly<Record<string, number>> = { 'ima-ng': 0, 'ima-sig': 1, 'ima-buf': 1 };

export function parseImaBinaryLog(bytes: Uint8Array, opts: ImaParseOptions = {}): ImaEntry[] {
  const { maxEntries, first } = imaLimits(bytes, opts);
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: ImaEntry[] = [];
  let p = 0;
  while (p < b.length) {
    if (out.length >= maxEntries) imaFail('too_many_entries', `more than ${maxEntries} entries`);
    const n = first + out.length;
    const start = p;
    const need = (k: number, what: string): number => {
      if (k > b.length - p) imaFail('truncated', `entry ${n} at byte ${start}: ${what} needs ${k} bytes, ${b.length - p} left`);
      const at = p;
      p += k;
      return at;
    };
    const u32 = (what: string): number => b.readUInt32LE(need(4, what));
    const pcr = u32('PCR index');
    if (pcr > 23) imaFail('bad_entry', `entry ${n}: PCR ${pcr} is not 0..23`);
    const hAt = need(20, 'template hash');
    const templateHash = Buffer.from(b.subarray(hAt, hAt + 20));
    const nameLen = u32('template name length');
    if (nameLen === 0 || nameLen > IMA_MAX_TEMPLATE_NAME) imaFail('bad_entry', `entry ${n}: template name length ${nameLen} is not 1..${IMA_MAX_TEMPLATE_NAME}`);
    const nAt = need(nameLen, 'template name');
    const name = b.toString('latin1', nAt, nAt + nameLen);
    if (name === 'ima') {
      const dAt = need(20, 'ima file digest');
      const digest = Buffer.from(b.subarray(dAt, dAt + 20));
      const fnLen = u32('ima file name length');
      if (fnLen >= IMA_LEGACY_NAME_FIELD) imaFail('bad_entry', `entry ${n}: ima file name length ${fnLen} is over 255`);
      const fAt = need(fnLen, 'ima file name');
      const fname = b.subarray(fAt, fAt + fnLen);
      const path = checkedName(fname, n);
      const templateData = legacyImaHashed(digest, fname);
      const violation = checkTemplateHash(templateHash, templateData, `entry ${n}`);
      out.push({ line: n, end: p, pcr, templateHash, template: 'ima', digestAlg: 'sha1', digest, path, templateData, violation });
      continue;
    }
    const extra = EXTRA_FIELDS[name];
    if (extra === undefined) imaFail('bad_entry', `entry ${n}: template ${JSON.stringify(name)} is not supported (ima, ima-ng, ima-sig, ima-buf)`);
    const dataLen = u32('template data length');
    if (dataLen > IMA_MAX_TEMPLATE_DATA) imaFail('bad_entry', `entry ${n}: template data length ${dataLen} is over ${IMA_MAX_TEMPLATE_DATA}`);
    const tAt = need(dataLen, 'template data');
    const templateData = Buffer.from(b.subarray(tAt, tAt + dataLen));
    const fields = splitFields(templateData, 2 + extra, n);
    const d = fields[0]!;
    const colon = d.indexOf(0x3a);
    if (colon <= 0 || colon + 1 >= d.length || d[colon + 1] !== 0) imaFail('bad_entry', `entry ${n}: digest field is not "<alg>:\\0<digest>"`);
    const digestAlg = d.toString('latin1', 0, colon);
    const size = IMA_DIGEST_SIZES[digestAlg];
    if (size === undefined) imaFail('bad_entry', `entry ${n}: digest algorithm ${JSON.stringify(digestAlg.slice(0, 16))} is unknown`);
    if (d.length - colon - 2 !== size) imaFail('bad_entry', `entry ${n}: ${digestAlg} digest has ${d.length - colon - 2} bytes, expected ${size}`);
    const nf = fields[1]!;
    if (nf.length < 2 || nf[nf.length - 1] !== 0) imaFail('bad_entry', `entry ${n}: name field is empty or not NUL-terminated`);
    const path = checkedName(nf.subarray(0, nf.length - 1), n);
    const violation = checkTemplateHash(templateHash, templateData, `entry ${n}`);
    out.push({ line: n, end: p, pcr, templateHash, template: name as ImaTemplate, digestAlg, digest: Buffer.from(d.subarray(colon + 2)), path, templateData, violation });
  }
  return out;
}

/** Split template data into exactly `count` length-prefixed fields that fill it. */
function splitFields(data: Buffer, count: number, n: number): Buffer[] {
  const out: Buffer[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (data.length - p < 4) imaFail('bad_entry', `entry ${n}: template data ends inside field ${i + 1}'s length`);
    const len = data.readUInt32LE(p);
    p += 4;
    if (len > data.length - p) imaFail('bad_entry', `entry ${n}: field ${i + 1} length ${len} runs past the template data`);
    out.push(data.subarray(p, p + len));
    p += len;
  }
  if (p !== data.length) imaFail('bad_entry', `entry ${n}: ${data.length - p} bytes after the last template field`);
  return out;
}

function checkedName(raw: Buffer, n: number): string {
  for (const c of raw) if (c < 0x20) imaFail('bad_entry', `entry ${n}: the file name has a control character or NUL`);
  if (raw.length === 0) imaFail('bad_entry', `entry ${n}: empty file name`);
  return raw.toString('latin1');
}

export type ImaLogFormat = 'ascii' | 'binary';

/**
 * Which form `bytes` is: an ASCII list starts with the PCR number in decimal digits; a binary
 * one with a little-endian u32 PCR index ≤ 23, whose first byte is below 0x20.
 */
export function detectImaFormat(bytes: Uint8Array): ImaLogFormat {
  if (bytes.length === 0) imaFail('empty', 'the log is empty');
  const c = bytes[0]!;
  if (c >= 0x30 && c <= 0x39) return 'ascii';
  if (c < 0x20) return 'binary';
  throw new SigilError('tpm.ima_bad_entry', 'IMA log: neither the ASCII list (starts with a PCR number) nor the binary list (starts with a u32 PCR index)');
}

/** Parse either form (`format` given, or detected from the first byte). */
export function parseImaLog(bytes: Uint8Array, opts: ImaParseOptions & { format?: ImaLogFormat } = {}): ImaEntry[] {
  const format = opts.format ?? detectImaFormat(bytes);
  return format === 'binary' ? parseImaBinaryLog(bytes, opts) : parseImaAsciiLog(bytes, opts);
}
