/**
 * Replay-and-match for the IMA log against a trusted PCR 10: the agent reads the list after the
 * quote, so it may hold more entries than the quote covers. The checked part is the shortest
 * prefix whose replay equals the quoted PCR 10 in every quoted bank; later entries are not yet
 * attested and are ignored. No prefix matching → `tpm.eventlog_mismatch` naming PCR 10.
 */
import { SigilError } from '../../errors.js';
import { algorithmByName } from '../eventlog/algorithms.js';
import type { TrustedPcr } from '../eventlog/verify.js';
import { parseImaAsciiLog, replayIma, type ImaEntry } from './log.js';
import { checkImaPolicy, type ImaPolicy } from './policy.js';

export const IMA_PCR = 10;

export interface ImaCheckInput {
  log: Uint8Array;
  /** Trusted PCR values; those of PCR 10 are used (at least one is required). */
  pcrs: readonly TrustedPcr[];
  policy?: ImaPolicy;
  maxBytes?: number;
  maxEntries?: number;
}

export interface ImaCheckResult {
  /** Entries covered by the quoted PCR 10. */
  entries: ImaEntry[];
  /** Entries after them (measured after the quote). */
  pending: number;
  selectors: string[];
}

export function checkImaLog(input: ImaCheckInput): ImaCheckResult {
  const targets = input.pcrs.filter((p) => p.index === IMA_PCR);
  if (targets.length === 0) throw new SigilError('tpm.ima_pcr_not_quoted', 'IMA log: PCR 10 is not among the quoted PCRs, so the log cannot be checked (add 10 to pcrs)');
  const all = parseImaAsciiLog(input.log, { ...(input.maxBytes ? { maxBytes: input.maxBytes } : {}), ...(input.maxEntries ? { maxEntries: input.maxEntries } : {}) });
  for (const e of all) if (e.pcr !== IMA_PCR) throw new SigilError('tpm.ima_bad_entry', `IMA log line ${e.line}: PCR ${e.pcr}, Sigil checks IMA in PCR 10 only`);
  let covered: number | undefined;
  for (const t of targets) {
    const alg = algorithmByName(t.bank);
    if (!alg) throw new SigilError('tpm.eventlog_unsupported_algorithm', `IMA log: unknown bank ${t.bank}`);
    let n: number | undefined = t.value.equals(Buffer.alloc(alg.size)) ? 0 : undefined;
    if (n === undefined) {
      replayIma(all, alg, undefined, (i, v) => {
        if (v.equals(t.value)) {
          n = i;
          return true;
        }
        return false;
      });
    }
    if (n === undefined || (covered !== undefined && n !== covered)) {
      throw new SigilError('tpm.eventlog_mismatch', `IMA log: no prefix of its ${all.length} entries replays to the quoted PCR 10 (${t.bank}) = ${t.value.toString('hex')}`, {
        details: { pcr: IMA_PCR, bank: t.bank },
      });
    }
    covered = n;
  }
  const entries = all.slice(0, covered);
  if (input.policy) checkImaPolicy(entries, input.policy);
  return { entries, pending: all.length - entries.length, selectors: input.policy ? [`tpm:ima:policy:${input.policy.name}`] : [] };
}
