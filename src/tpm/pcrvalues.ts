/**
 * PCR value files as users have them:
 *  - tpm2-tools `tpm2_quote -o` / `tpm2_pcrread -o` default "serialized" format: the tss2
 *    C structures dumped little-endian with padding — TPML_PCR_SELECTION (u32 count +
 *    16 × {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], pad}) = 132 bytes, u32 number of
 *    TPML_DIGEST, then each TPML_DIGEST (u32 count + 8 × {u16 size, u8 buffer[64]}) = 532 bytes;
 *  - the TSS2 "marshaled" format (newer tpm2-tools `-F marshaled`): big-endian
 *    TPML_PCR_SELECTION ‖ u32 n ‖ n × TPML_DIGEST;
 *  - `-F values`: the raw PCR values concatenated in selection order (needs the quote's selection);
 *  - text: JSON `[{ "bank", "index", "value" }]`, or the YAML/JSON map printed by
 *    `tpm2_pcrread` / `tpm2_quote` (`sha256: { 0: 0x…, … }`, optionally under `pcrs:`).
 * Hand-written (no maintained library reads these); every count and size is bounded.
 */
import { parse as parseYaml } from 'yaml';
import { SigilError, errorMessage } from '../errors.js';
import { LIMITS, hashByAlg, hashByName } from './constants.js';
import type { PcrValue } from './quote.js';
import { TpmReader } from './reader.js';
import type { PcrSelection } from './structures.js';

const CODE = 'tpm.malformed_pcr_values';
const SER_SELECTION = 4 + 16 * 8;
const SER_DIGEST_LIST = 4 + 8 * 66;

function fail(msg: string): never {
  throw new SigilError(CODE, `PCR values: ${msg}`);
}

function valuesFromSelection(sel: PcrSelection[], digests: Buffer[]): PcrValue[] {
  const out: PcrValue[] = [];
  let i = 0;
  for (const s of sel) {
    const h = hashByAlg(s.hashAlg);
    if (!h) fail(`unknown bank 0x${s.hashAlg.toString(16)}`);
    for (const pcr of s.pcrs) {
      const d = digests[i++];
      if (!d) fail(`fewer digests than selected PCRs`);
      if (d.length !== h.size) fail(`digest for ${h.name}:${pcr} is ${d.length} bytes, expected ${h.size}`);
      out.push({ bank: h.name, index: pcr, value: d });
    }
  }
  if (i !== digests.length) fail(`${digests.length} digests for ${i} selected PCRs`);
  return out;
}

/** tpm2-tools "serialized" (little-endian C structure) format. */
export function parseSerializedPcrs(buf: Buffer): PcrValue[] {
  if (buf.length < SER_SELECTION + 4 || (buf.length - SER_SELECTION - 4) % SER_DIGEST_LIST !== 0) fail('not the tpm2-tools serialized layout');
  const count = buf.readUInt32LE(0);
  if (count > LIMITS.pcrBanks) fail(`selection count ${count} exceeds ${LIMITS.pcrBanks}`);
  const sel: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const o = 4 + i * 8;
    const hashAlg = buf.readUInt16LE(o);
    const sizeofSelect = buf.readUInt8(o + 2);
    if (!hashByAlg(hashAlg)) fail(`selection ${i} has unknown bank 0x${hashAlg.toString(16)}`);
    if (sizeofSelect > LIMITS.pcrSelect) fail(`selection ${i} sizeofSelect ${sizeofSelect} exceeds ${LIMITS.pcrSelect}`);
    const pcrs: number[] = [];
    for (let b = 0; b < sizeofSelect; b++) {
      const byte = buf.readUInt8(o + 3 + b);
      for (let bit = 0; bit < 8; bit++) if ((byte >> bit) & 1) pcrs.push(b * 8 + bit);
    }
    sel.push({ hashAlg, sizeofSelect, pcrs });
  }
  const lists = buf.readUInt32LE(SER_SELECTION);
  if (SER_SELECTION + 4 + lists * SER_DIGEST_LIST !== buf.length) fail(`digest list count ${lists} does not match the file size`);
  const digests: Buffer[] = [];
  for (let l = 0; l < lists; l++) {
    const base = SER_SELECTION + 4 + l * SER_DIGEST_LIST;
    const n = buf.readUInt32LE(base);
    if (n > LIMITS.digestList) fail(`digest list ${l} count ${n} exceeds ${LIMITS.digestList}`);
    for (let k = 0; k < n; k++) {
      const o = base + 4 + k * 66;
      const size = buf.readUInt16LE(o);
      if (size > LIMITS.digest) fail(`digest size ${size} exceeds ${LIMITS.digest}`);
      digests.push(Buffer.from(buf.subarray(o + 2, o + 2 + size)));
    }
  }
  return valuesFromSelection(sel, digests);
}

/** TSS2 marshaled format: TPML_PCR_SELECTION ‖ u32 n ‖ n × TPML_DIGEST (big-endian). */
export function parseMarshaledPcrs(buf: Buffer): PcrValue[] {
  const r = new TpmReader(buf, CODE, 'PCR values (marshaled)');
  const count = r.u32('TPML_PCR_SELECTION.count');
  if (count > LIMITS.pcrBanks) r.fail(`selection count ${count} exceeds ${LIMITS.pcrBanks}`);
  const sel: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16('hash');
    if (!hashByAlg(hashAlg)) r.fail(`unknown bank 0x${hashAlg.toString(16)}`);
    const sizeofSelect = r.u8('sizeofSelect');
    if (sizeofSelect > LIMITS.pcrSelect) r.fail(`sizeofSelect ${sizeofSelect} exceeds ${LIMITS.pcrSelect}`);
    const bits = r.bytes(sizeofSelect, 'pcrSelect');
    const pcrs: number[] = [];
    for (let b = 0; b < sizeofSelect; b++) for (let bit = 0; bit < 8; bit++) if (((bits[b] ?? 0) >> bit) & 1) pcrs.push(b * 8 + bit);
    sel.push({ hashAlg, sizeofSelect, pcrs });
  }
  const lists = r.u32('digest list count');
  if (lists > 64) r.fail(`digest list count ${lists} is implausible`);
  const digests: Buffer[] = [];
  for (let l = 0; l < lists; l++) {
    const n = r.u32('TPML_DIGEST.count');
    if (n > LIMITS.digestList) r.fail(`TPML_DIGEST count ${n} exceeds ${LIMITS.digestList}`);
    for (let k = 0; k < n; k++) digests.push(r.tpm2b(LIMITS.digest, 'digest'));
  }
  r.end();
  return valuesFromSelection(sel, digests);
}

/** Raw concatenated values (`-F values`) for a known selection. */
export function parseRawPcrValues(buf: Buffer, sel: PcrSelection[]): PcrValue[] {
  const digests: Buffer[] = [];
  let off = 0;
  for (const s of sel) {
    const h = hashByAlg(s.hashAlg);
    if (!h) fail(`unknown bank 0x${s.hashAlg.toString(16)}`);
    for (let i = 0; i < s.pcrs.length; i++) {
      if (off + h.size > buf.length) fail('file is shorter than the selected PCR values');
      digests.push(Buffer.from(buf.subarray(off, off + h.size)));
      off += h.size;
    }
  }
  if (off !== buf.length) fail(`file has ${buf.length - off} byte(s) more than the selected PCR values`);
  return valuesFromSelection(sel, digests);
}

function hexValue(v: unknown, where: string): Buffer {
  if (typeof v !== 'string') fail(`${where} is not a hex string`);
  const t = v.trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]*$/.test(t) || t.length % 2 !== 0 || t.length === 0) fail(`${where} is not hex`);
  return Buffer.from(t, 'hex');
}

function bankName(b: string): PcrValue['bank'] {
  const h = hashByName(b.trim().toLowerCase());
  if (!h) fail(`unknown bank ${b}`);
  return h.name;
}

function pcrIndex(v: unknown, where: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*[0-9]{1,2}\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 31) fail(`${where} is not a PCR index 0..31`);
  return n;
}

/** JSON list `[{bank, index, value}]` or the tpm2_pcrread YAML/JSON map. */
export function parseTextPcrValues(text: string): PcrValue[] {
  let doc: unknown;
  try {
    // failsafe schema: every scalar stays a string, so 0x… digests are not read as numbers
    doc = parseYaml(text, { schema: 'failsafe', maxAliasCount: 0 });
  } catch (e) {
    throw new SigilError(CODE, `PCR values: not JSON or YAML: ${errorMessage(e)}`, { cause: e });
  }
  if (Array.isArray(doc)) {
    if (doc.length > 32 * 4) fail('too many entries');
    return doc.map((e, i) => {
      if (typeof e !== 'object' || e === null || Array.isArray(e)) fail(`entry ${i} is not an object`);
      const o = e as Record<string, unknown>;
      if (typeof o.bank !== 'string') fail(`entry ${i} has no bank`);
      return { bank: bankName(o.bank), index: pcrIndex(o.index, `entry ${i} index`), value: hexValue(o.value, `entry ${i} value`) };
    });
  }
  if (typeof doc !== 'object' || doc === null) fail('expected a list or a map of banks');
  let map = doc as Record<string, unknown>;
  if ('pcrs' in map && typeof map.pcrs === 'object' && map.pcrs !== null) map = map.pcrs as Record<string, unknown>;
  const out: PcrValue[] = [];
  for (const [bank, entries] of Object.entries(map)) {
    const b = bankName(bank);
    if (typeof entries !== 'object' || entries === null || Array.isArray(entries)) fail(`bank ${bank} is not a map of index → value`);
    for (const [idx, val] of Object.entries(entries as Record<string, unknown>)) {
      out.push({ bank: b, index: pcrIndex(idx, `${bank} index ${idx}`), value: hexValue(val, `${bank}:${idx}`) });
    }
  }
  return out;
}

function looksLikeText(buf: Buffer): boolean {
  for (const b of buf) if (b !== 9 && b !== 10 && b !== 13 && (b < 0x20 || b > 0x7e)) return false;
  return true;
}

/**
 * Read a PCR values file in any of the supported formats. `selection` (the quote's) lets the raw
 * `values` format be read; it is not trusted here — the quote verifier checks the values against it.
 */
export function parsePcrValuesFile(buf: Buffer, selection?: PcrSelection[]): PcrValue[] {
  if (buf.length === 0) fail('file is empty');
  if (buf.length > 64 * 1024) fail('file is larger than 64 KiB');
  if (looksLikeText(buf)) return parseTextPcrValues(buf.toString('utf8'));
  if (buf.length >= SER_SELECTION + 4 && (buf.length - SER_SELECTION - 4) % SER_DIGEST_LIST === 0) {
    try {
      return parseSerializedPcrs(buf);
    } catch (e) {
      if (!(e instanceof SigilError)) throw e;
    }
  }
  try {
    return parseMarshaledPcrs(buf);
  } catch (e) {
    if (!(e instanceof SigilError) || !selection) throw e;
  }
  return parseRawPcrValues(buf, selection);
}
