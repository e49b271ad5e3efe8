/**
 * Replay-and-match: an event log is trusted only as far as its replay reproduces PCR values the
 * verifier trusts (quoted by the TPM, or given by the operator). Pure: bytes and values in.
 */
import { SigilError } from '../../errors.js';
import { bootSelectors, deriveBootFacts, type BootFacts } from './boot.js';
import { parseEventLog, type ParseEventLogOptions, type ParsedEventLog } from './parse.js';
import { replayEventLog, replayedToJson, type ReplayedRegisters } from './replay.js';

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
}

export interface EventLogCheckResult {
  log: ParsedEventLog;
  replayed: ReplayedRegisters;
  /** Per bank, the PCRs whose replay matched. */
  matched: Map<string, Set<number>>;
  /** Boot facts from the preferred matched bank (undefined when no PCR was compared). */
  facts: BootFacts | undefined;
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
  const replayed = replayEventLog(log, { banks, indices: [...new Set(compared.map((p) => p.index))] });
  const matched = new Map<string, Set<number>>();
  for (const p of compared) {
    const got = replayed.get(p.bank)?.get(p.index);
    if (got === undefined || !got.equals(p.value)) {
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
  const facts = bank === undefined ? undefined : deriveBootFacts(log, bank, matched.get(bank)!);
  return { log, replayed, matched, facts, selectors: facts ? bootSelectors(facts) : [] };
}

/** Claims for a checked log (JSON-friendly). */
export function eventLogClaims(r: EventLogCheckResult): Record<string, unknown> {
  return {
    format: r.log.format,
    events: r.log.events.length,
    banks: r.log.banks.map((b) => b.name),
    matchedPcrs: Object.fromEntries([...r.matched].map(([b, s]) => [b, [...s].sort((x, y) => x - y)])),
    replayed: replayedToJson(r.replayed),
    ...(r.facts ? { boot: r.facts } : {}),
  };
}
