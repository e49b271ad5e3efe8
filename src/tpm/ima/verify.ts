/**
 * Replay-and-match for the IMA log against a trusted PCR 10: the agent reads the list after the
 * quote, so it may hold more entries than the quote covers. The checked part is the shortest
 * prefix whose replay equals the quoted PCR 10 in every quoted bank; later entries are not yet
 * attested and are ignored. No prefix matching → `tpm.eventlog_mismatch` naming PCR 10.
 *
 * Incremental re-check: after a check the verifier keeps an `ImaProgress` per node (how many
 * entries passed, the bytes they take, PCR 10 after them per bank). On the next attestation only
 * the entries after that point are parsed and judged by the policy, and they are replayed from
 * the stored PCR 10 value: the chain R' = H(R ‖ d) means a tail that replays from the stored
 * value to the newly quoted PCR 10 extends exactly the list that was checked (anything else needs
 * a hash collision). A full list whose first `bytes` bytes are not the ones checked (reboot,
 * edits) is checked from scratch; a tail alone that does not reach the quote is refused with
 * `tpm.ima_full_log_required` (the caller then forgets the progress, so the next attempt sends
 * the whole list). Never are entries accepted without being judged.
 */
import { createHash } from 'node:crypto';
import { SigilError } from '../../errors.js';
import { algorithmByName } from '../eventlog/algorithms.js';
import type { TrustedPcr } from '../eventlog/verify.js';
import { parseImaLog, type ImaLogFormat, detectImaFormat } from './binary.js';
import { replayIma, type ImaEntry } from './log.js';
import { checkImaPolicy, type ImaPolicy } from './policy.js';

export const IMA_PCR = 10;

/** What a verifier remembers of a node's IMA list after a check that passed. */
export interface ImaProgress {
  readonly v: 1;
  /** Entries checked (covered by a quote and, with a policy, allowed). */
  readonly entries: number;
  /** Bytes those entries take in the list, in `format`. */
  readonly bytes: number;
  readonly format: ImaLogFormat;
  /** PCR 10 per bank after them (hex). */
  readonly aggregates: Readonly<Record<string, string>>;
  /** SHA-1 template hash of the last checked entry (hex; empty when none): lets the agent recognise its list. */
  readonly lastTemplateHash: string;
  /** SHA-256 (hex) of those `bytes` bytes when the verifier saw them (a whole list was sent). */
  readonly prefixSha256?: string;
  /** Fingerprint of the policy that judged them (`policyFingerprint`); another policy starts over. */
  readonly policy: string;
}

export interface ImaCheckInput {
  log: Uint8Array;
  /** Trusted PCR values; those of PCR 10 are used (at least one is required). */
  pcrs: readonly TrustedPcr[];
  policy?: ImaPolicy;
  maxBytes?: number;
  maxEntries?: number;
  /** What was checked before for this node (from the verifier's state), if anything. */
  progress?: ImaProgress;
  /** `log` holds only the entries after `progress` (the agent sent the tail). Requires `progress`. */
  tail?: boolean;
}

export interface ImaCheckResult {
  /** Entries judged in this check (the new ones when incremental). */
  entries: ImaEntry[];
  /** Entries covered by the quote in total. */
  covered: number;
  /** Entries after them (measured after the quote). */
  pending: number;
  /** `incremental`: only entries after the stored progress were parsed and judged. */
  mode: 'full' | 'incremental';
  /** What to remember for the next check. */
  progress: ImaProgress;
  selectors: string[];
}

const fingerprints = new WeakMap<ImaPolicy, string>();

/** A stable fingerprint of a policy (name, allowlist, excludes), or `none`; computed once per policy object. */
export function policyFingerprint(policy: ImaPolicy | undefined): string {
  if (!policy) return 'none';
  let fp = fingerprints.get(policy);
  if (fp === undefined) {
    const h = createHash('sha256').update(`name:${policy.name}\n`);
    for (const [path, set] of [...policy.allow].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) h.update(`allow:${path}\0${[...set].sort().join(',')}\n`);
    for (const r of policy.excludes) h.update(`exclude:${r.source}\n`);
    fp = h.digest('hex');
    fingerprints.set(policy, fp);
  }
  return fp;
}

/** A stored value that is an ImaProgress (anything else is ignored and the next check is full). */
export function isImaProgress(v: unknown): v is ImaProgress {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const o = v as Record<string, unknown>;
  const hexOk = (x: unknown, n?: number): boolean => typeof x === 'string' && /^([0-9a-f]{2})*$/.test(x) && (n === undefined || x.length === n);
  return (
    o.v === 1 &&
    Number.isSafeInteger(o.entries) && (o.entries as number) >= 0 &&
    Number.isSafeInteger(o.bytes) && (o.bytes as number) >= 0 &&
    (o.format === 'ascii' || o.format === 'binary') &&
    typeof o.aggregates === 'object' && o.aggregates !== null && !Array.isArray(o.aggregates) &&
    Object.entries(o.aggregates).every(([b, x]) => algorithmByName(b)?.size !== undefined && hexOk(x, algorithmByName(b)!.size * 2)) &&
    typeof o.lastTemplateHash === 'string' && (o.lastTemplateHash === '' || hexOk(o.lastTemplateHash, 40)) &&
    (o.prefixSha256 === undefined || hexOk(o.prefixSha256, 64)) &&
    typeof o.policy === 'string' &&
    Object.keys(o).every((k) => ['v', 'entries', 'bytes', 'format', 'aggregates', 'lastTemplateHash', 'prefixSha256', 'policy'].includes(k))
  );
}

interface Target {
  bank: string;
  value: Buffer;
  alg: NonNullable<ReturnType<typeof algorithmByName>>;
}

function targetsOf(pcrs: readonly TrustedPcr[]): Target[] {
  const targets = pcrs.filter((p) => p.index === IMA_PCR);
  if (targets.length === 0) throw new SigilError('tpm.ima_pcr_not_quoted', 'IMA log: PCR 10 is not among the quoted PCRs, so the log cannot be checked (add 10 to pcrs)');
  return targets.map((t) => {
    const alg = algorithmByName(t.bank);
    if (!alg) throw new SigilError('tpm.eventlog_unsupported_algorithm', `IMA log: unknown bank ${t.bank}`);
    return { bank: t.bank, value: t.value, alg };
  });
}

/**
 * The number of leading `entries` whose replay from `start(bank)` gives every target, or
 * undefined. Zero entries qualify when the start already equals the target.
 */
function coveredPrefix(entries: readonly ImaEntry[], targets: readonly Target[], start: (t: Target) => Buffer): number | undefined {
  let covered: number | undefined;
  for (const t of targets) {
    const s = start(t);
    let n: number | undefined = s.equals(t.value) ? 0 : undefined;
    if (n === undefined) {
      replayIma(entries, t.alg, s, (i, v) => {
        if (v.equals(t.value)) {
          n = i;
          return true;
        }
        return false;
      });
    }
    if (n === undefined || (covered !== undefined && n !== covered)) return undefined;
    covered = n;
  }
  return covered;
}

function onlyPcr10(entries: readonly ImaEntry[]): void {
  for (const e of entries) if (e.pcr !== IMA_PCR) throw new SigilError('tpm.ima_bad_entry', `IMA log line ${e.line}: PCR ${e.pcr}, Sigil checks IMA in PCR 10 only`);
}

export function checkImaLog(input: ImaCheckInput): ImaCheckResult {
  const targets = targetsOf(input.pcrs);
  const fp = policyFingerprint(input.policy);
  const limits = { ...(input.maxBytes ? { maxBytes: input.maxBytes } : {}), ...(input.maxEntries ? { maxEntries: input.maxEntries } : {}) };
  const p = input.progress;
  if (input.tail === true && p === undefined) throw new SigilError('tpm.ima_full_log_required', 'IMA log: a tail was sent but this verifier holds no progress for the node; send the whole list');
  const usable = p !== undefined && p.policy === fp && targets.every((t) => p.aggregates[t.bank] !== undefined);
  if (input.tail === true && !usable) throw new SigilError('tpm.ima_full_log_required', 'IMA log: a tail was sent but the stored progress is for another policy or other PCR 10 banks; send the whole list');

  if (usable) {
    const tail = incremental(input, p, targets, fp, limits);
    if (tail) return tail;
    if (input.tail === true) {
      throw new SigilError(
        'tpm.ima_full_log_required',
        `IMA log: the entries sent after entry ${p.entries} do not replay from the PCR 10 checked then to the quoted PCR 10 (rebooted, or another list); send the whole list`,
        { details: { pcr: IMA_PCR } },
      );
    }
  }

  // Full check from a reset PCR 10.
  const format = detectImaFormat(input.log);
  const all = parseImaLog(input.log, { ...limits, format });
  onlyPcr10(all);
  const covered = coveredPrefix(all, targets, (t) => Buffer.alloc(t.alg.size));
  if (covered === undefined) {
    const t = targets[0]!;
    throw new SigilError('tpm.eventlog_mismatch', `IMA log: no prefix of its ${all.length} entries replays to the quoted PCR 10 (${t.bank}) = ${t.value.toString('hex')}`, {
      details: { pcr: IMA_PCR, bank: t.bank },
    });
  }
  const entries = all.slice(0, covered);
  if (input.policy) checkImaPolicy(entries, input.policy);
  const bytes = covered === 0 ? 0 : entries[covered - 1]!.end;
  const progress: ImaProgress = {
    v: 1,
    entries: covered,
    bytes,
    format,
    aggregates: Object.fromEntries(targets.map((t) => [t.bank, t.value.toString('hex')])),
    lastTemplateHash: covered === 0 ? '' : entries[covered - 1]!.templateHash.toString('hex'),
    prefixSha256: createHash('sha256').update(input.log.subarray(0, bytes)).digest('hex'),
    policy: fp,
  };
  return { entries, covered, pending: all.length - covered, mode: 'full', progress, selectors: input.policy ? [`tpm:ima:policy:${input.policy.name}`] : [] };
}

/** The incremental path, or undefined when it does not apply (the caller then checks in full or refuses a tail). */
function incremental(input: ImaCheckInput, p: ImaProgress, targets: readonly Target[], fp: string, limits: { maxBytes?: number; maxEntries?: number }): ImaCheckResult | undefined {
  let tailBytes: Uint8Array;
  let prefixSha256: string | undefined;
  if (input.tail === true) {
    tailBytes = input.log;
  } else {
    // A whole list: its first p.bytes bytes must be exactly the ones checked.
    if (p.prefixSha256 === undefined || input.log.length < p.bytes) return undefined;
    const prefix = input.log.subarray(0, p.bytes);
    if (createHash('sha256').update(prefix).digest('hex') !== p.prefixSha256) return undefined;
    tailBytes = input.log.subarray(p.bytes);
    prefixSha256 = p.prefixSha256;
  }
  let tail: ImaEntry[] = [];
  if (tailBytes.length > 0) {
    try {
      tail = parseImaLog(tailBytes, { ...limits, format: p.format, firstEntry: p.entries + 1 });
    } catch (e) {
      // A whole list that does not parse from the checkpoint is checked in full (and refused there if bad).
      if (input.tail === true) throw e;
      return undefined;
    }
  }
  onlyPcr10(tail);
  const covered = coveredPrefix(tail, targets, (t) => Buffer.from(p.aggregates[t.bank]!, 'hex'));
  if (covered === undefined) return undefined;
  const entries = tail.slice(0, covered);
  if (input.policy) checkImaPolicy(entries, input.policy);
  const added = covered === 0 ? 0 : entries[covered - 1]!.end;
  if (prefixSha256 !== undefined && added > 0) prefixSha256 = createHash('sha256').update(input.log.subarray(0, p.bytes + added)).digest('hex');
  const progress: ImaProgress = {
    v: 1,
    entries: p.entries + covered,
    bytes: p.bytes + added,
    format: p.format,
    aggregates: Object.fromEntries(targets.map((t) => [t.bank, t.value.toString('hex')])),
    lastTemplateHash: covered === 0 ? p.lastTemplateHash : entries[covered - 1]!.templateHash.toString('hex'),
    ...(prefixSha256 !== undefined ? { prefixSha256 } : {}),
    policy: fp,
  };
  return {
    entries,
    covered: p.entries + covered,
    pending: tail.length - covered,
    mode: 'incremental',
    progress,
    selectors: input.policy ? [`tpm:ima:policy:${input.policy.name}`] : [],
  };
}

/**
 * Agent side: whether `list` (the node's whole current list, in `format`) starts with the
 * `entries` entries taking `bytes` bytes that a verifier offers to resume from, the last of them
 * with template hash `lastTemplateHash`. Only a hint to save bytes — the verifier checks the
 * chain either way — so a cheap walk over the entry boundaries, no hashing.
 */
export function imaListResumesAt(list: Uint8Array, format: ImaLogFormat, entries: number, bytes: number, lastTemplateHash: string): boolean {
  if (!Number.isSafeInteger(entries) || !Number.isSafeInteger(bytes) || entries < 0 || bytes < 0 || bytes > list.length) return false;
  if (entries === 0) return bytes === 0;
  const b = Buffer.from(list.buffer, list.byteOffset, list.byteLength);
  if (format === 'ascii') {
    if (bytes < 2 || b[bytes - 1] !== 0x0a) return false;
    const start = b.lastIndexOf(0x0a, bytes - 2) + 1;
    const f = b.toString('latin1', start, bytes - 1).split(' ');
    if (f[1] !== lastTemplateHash) return false;
    let n = 0;
    for (let i = b.indexOf(0x0a); i !== -1 && i < bytes; i = b.indexOf(0x0a, i + 1)) n++;
    return n === entries;
  }
  let p = 0;
  let last = -1;
  for (let n = 0; n < entries; n++) {
    if (p + 28 > b.length) return false;
    last = p + 4;
    const nameLen = b.readUInt32LE(p + 24);
    if (nameLen === 0 || nameLen > 15 || p + 28 + nameLen + 4 > b.length) return false;
    const legacy = b.toString('latin1', p + 28, p + 28 + nameLen) === 'ima';
    p += 28 + nameLen;
    if (legacy) {
      if (p + 24 > b.length) return false;
      p += 24 + b.readUInt32LE(p + 20);
    } else {
      p += 4 + b.readUInt32LE(p);
    }
    if (p > bytes) return false;
  }
  return p === bytes && b.toString('hex', last, last + 20) === lastTemplateHash;
}
