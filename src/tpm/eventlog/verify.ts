/**
 * Replay-and-match: an event log is trusted only as far as its replay reproduces PCR values the
 * verifier trusts (quoted by the TPM, or given by the operator). Pure: bytes and values in.
 */
import { SigilError } from '../../errors.js';
import { algorithmByName, bankHash } from './algorithms.js';
import { bootSelectors, deriveBootFacts, type BootFacts, type VerifiedVariableMemo } from './boot.js';
import { parseEventLog, type EventLogEvent, type ParseEventLogOptions, type ParsedEventLog } from './parse.js';
import { inMask, registerMask } from './register-mask.js';
import { replayEventLog, replayedToJson, type ReplayMemo, type ReplayedRegisters } from './replay.js';

export interface TrustedPcr {
  bank: string;
  index: number;
  value: Buffer;
}

export interface EventLogCheckInput {
  /** The raw log, or one already parsed. */
  log: Uint8Array | ParsedEventLog;
  /** PCR values the verifier trusts (the quoted PCRs). Every one is compared unless in `unloggedPcrs`. */
  pcrs: readonly TrustedPcr[];
  /** PCRs extended outside this log (e.g. 10 by IMA) that are not compared and yield no events. */
  unloggedPcrs?: readonly number[];
  parse?: ParseEventLogOptions;
  /** PCR 7 variable data checked before (by this verifier): equal bytes are not hashed again. */
  variableMemo?: VerifiedVariableMemo;
  /** Replays done before (by this verifier): the same replay input is not hashed again. */
  replayMemo?: ReplayMemo;
}

export interface EventLogCheckResult {
  log: ParsedEventLog;
  /** Per compared bank, the compared PCRs as the log replays them (other PCRs are not replayed). */
  replayed: ReplayedRegisters;
  /** Per bank, the PCRs whose replay matched. */
  matched: Map<string, Set<number>>;
  /** Boot facts from the preferred matched bank (undefined when no PCR was compared). */
  facts: BootFacts | undefined;
  /**
   * Per bank, when PCR 11 matched only after systemd-pcrextend's boot phases (userspace, not in
   * the firmware log) were extended on top of the log: the last phase.
   */
  pcr11Phase: Map<string, string>;
  selectors: string[];
}

/** Bank preference for deriving facts: the strongest commonly available digest first. */
const FACT_BANKS = ['sha256', 'sha384', 'sha512', 'sm3_256', 'sha1'];

/**
 * Parse `log`, replay it in every bank of `pcrs`, and refuse it (`tpm.eventlog_mismatch`, naming
 * PCR and bank) when any compared PCR differs. Then derive boot facts and selectors from the
 * events of the matched PCRs.
 */
export function checkEventLog(input: EventLogCheckInput): EventLogCheckResult {
  const log = input.log instanceof Uint8Array ? parseEventLog(input.log, input.parse) : input.log;
  const skip = new Set(input.unloggedPcrs ?? []);
  const compared = input.pcrs.filter((p) => !skip.has(p.index));
  const banks = [...new Set(compared.map((p) => p.bank))];
  // Only the compared PCRs are replayed: events of other PCRs cannot be checked against anything
  // (their replay would be the log's word) and yield no facts, so hashing them is wasted work.
  const indices = new Set(compared.map((p) => p.index));
  const replayed = replayEventLog(log, { banks, indices: [...indices], filter: inRegisters(indices), ...(input.replayMemo ? { memo: input.replayMemo } : {}) });
  const matched = new Map<string, Set<number>>();
  const pcr11Phase = new Map<string, string>();
  for (const p of compared) {
    const got = replayed.get(p.bank)?.get(p.index);
    const phase = p.index === 11 && got !== undefined && !got.equals(p.value) ? phaseMatching(got, p) : undefined;
    if (phase !== undefined) pcr11Phase.set(p.bank, phase);
    else if (got === undefined || !got.equals(p.value)) {
      throw new SigilError(
        'tpm.eventlog_mismatch',
        `event log: replaying it gives PCR ${p.index} (${p.bank}) = ${got?.toString('hex') ?? 'nothing'}, but the trusted value is ${p.value.toString('hex')}`,
        { details: { pcr: p.index, bank: p.bank } },
      );
    }
    let set = matched.get(p.bank);
    if (!set) matched.set(p.bank, (set = new Set()));
    set.add(p.index);
  }
  const bank = FACT_BANKS.find((b) => matched.has(b)) ?? [...matched.keys()][0];
  const facts = bank === undefined ? undefined : deriveBootFacts(log, bank, matched.get(bank)!, input.variableMemo);
  return { log, replayed, matched, facts, pcr11Phase, selectors: facts ? bootSelectors(facts) : [] };
}

/** A replay filter: the events of `indices` only (a bit test when the indices allow one). */
function inRegisters(indices: ReadonlySet<number>): (ev: EventLogEvent) => boolean {
  const mask = registerMask(indices);
  return mask !== undefined ? (ev) => inMask(mask, ev.index) : (ev) => indices.has(ev.index);
}

/**
 * systemd-pcrextend measures boot phases into PCR 11 from userspace, after the firmware log ends:
 * the hash of each phase string (UTF-8, no NUL), in this order (systemd TPM2_PCR_MEASUREMENTS).
 * At shutdown "shutdown" and "final" follow; a running node has reached at most "ready".
 */
export const SYSTEMD_PCR11_PHASES = ['enter-initrd', 'leave-initrd', 'sysinit', 'ready'] as const;

/** The phase after which the log's PCR 11 extended by the first phases equals the trusted value, if any. */
function phaseMatching(fromLog: Buffer, p: TrustedPcr): string | undefined {
  const alg = algorithmByName(p.bank);
  if (alg === undefined) return undefined;
  let v = fromLog;
  for (const phase of SYSTEMD_PCR11_PHASES) {
    v = bankHash(alg, v, bankHash(alg, Buffer.from(phase, 'utf8')));
    if (v.equals(p.value)) return phase;
  }
  return undefined;
}

/** Claims for a checked log (JSON-friendly). */
export function eventLogClaims(r: EventLogCheckResult): Record<string, unknown> {
  return {
    format: r.log.format,
    events: r.log.events.length,
    banks: r.log.banks.map((b) => b.name),
    matchedPcrs: Object.fromEntries([...r.matched].map(([b, s]) => [b, [...s].sort((x, y) => x - y)])),
    replayed: replayedToJson(r.replayed),
    ...(r.pcr11Phase.size > 0 ? { pcr11Phase: Object.fromEntries(r.pcr11Phase) } : {}),
    ...(r.facts ? { boot: r.facts } : {}),
  };
}
