/**
 * Replay of a parsed event log: each event extends `R = H(R ‖ digest)` in every bank, so the
 * result is what the registers hold if the log is complete and true. Generic over the register
 * file: TPM PCRs by default (PC Client initial values, StartupLocality for PCR 0), or any other
 * measurement registers (e.g. TDX RTMRs) with `initialValue` and `startupLocality: false`.
 */
import { SigilError } from '../../errors.js';
import { BankRegister, algorithmByName, type EventLogAlgorithm } from './algorithms.js';
import { EV } from './events.js';
import { ParsedEvent, type EventLogEvent, type ParsedEventLog } from './parse.js';

/** bank name → register index → value. Only indices that were extended or asked for appear. */
export type ReplayedRegisters = Map<string, Map<number, Buffer>>;

export interface ReplayOptions {
  /** Banks to replay (names as `sha256`); default every bank the log carries. */
  banks?: readonly string[];
  /** Indices to report even when no event extends them (they keep their initial value). */
  indices?: readonly number[];
  /** Initial value of a register; default the PC Client rule (PCRs 17–22 all ones, else zeros). */
  initialValue?: (index: number, bank: EventLogAlgorithm) => Buffer;
  /** Apply a StartupLocality event to PCR 0's initial value (default true; TPM logs only). */
  startupLocality?: boolean;
  /** Only replay events for which this returns true (default: all). */
  filter?: (ev: EventLogEvent) => boolean;
}

/** The TCG PC Client initial PCR values: 17–22 start at all ones, every other PCR at zeros. */
export function pcClientInitialValue(index: number, bank: EventLogAlgorithm): Buffer {
  return Buffer.alloc(bank.size, index >= 17 && index <= 22 ? 0xff : 0);
}

export function replayEventLog(log: ParsedEventLog, opts: ReplayOptions = {}): ReplayedRegisters {
  const banks = (opts.banks ?? log.banks.map((b) => b.name)).map((name) => {
    const alg = log.banks.find((b) => b.name === name);
    if (alg === undefined) {
      const known = algorithmByName(name) !== undefined;
      throw new SigilError(
        known ? 'tpm.eventlog_bank_missing' : 'tpm.eventlog_unsupported_algorithm',
        known ? `event log: the log has no ${name} digests (it carries ${log.banks.map((b) => b.name).join(', ')})` : `event log: unknown bank ${name}`,
      );
    }
    return alg;
  });
  const init = opts.initialValue ?? pcClientInitialValue;
  const useLocality = opts.startupLocality ?? true;
  const out: ReplayedRegisters = new Map();
  for (const alg of banks) {
    const regs = new Map<number, BankRegister>();
    const start = (index: number): BankRegister => {
      const v = init(index, alg);
      if (v.length !== alg.size) throw new SigilError('tpm.eventlog_bad_initial_value', `event log: initial value of ${alg.name} register ${index} is ${v.length} bytes, expected ${alg.size}`);
      if (index === 0 && useLocality && log.startupLocality !== undefined) {
        const b = Buffer.alloc(alg.size);
        b[alg.size - 1] = log.startupLocality;
        return new BankRegister(alg, b);
      }
      return new BankRegister(alg, v);
    };
    for (const i of opts.indices ?? []) regs.set(i, start(i));
    const filter = opts.filter;
    for (const ev of log.events) {
      if (ev.type === EV.NO_ACTION) continue;
      if (filter !== undefined && !filter(ev)) continue;
      let reg = regs.get(ev.index);
      if (reg === undefined) regs.set(ev.index, (reg = start(ev.index)));
      if (ev instanceof ParsedEvent) {
        // Straight from the log's bytes: no view per digest.
        const off = ev.digestOffset(alg.id);
        if (off < 0) throw new SigilError('tpm.eventlog_digest_count_mismatch', `event log: event ${ev.seq} has no ${alg.name} digest`);
        reg.extendFrom(ev.bytes, off);
        continue;
      }
      let d: Buffer | undefined;
      for (const x of ev.digests) {
        if (x.alg.id === alg.id) {
          d = x.digest;
          break;
        }
      }
      // The parser guarantees one digest per bank; a missing one means a hand-built log.
      if (d === undefined) throw new SigilError('tpm.eventlog_digest_count_mismatch', `event log: event ${ev.seq} has no ${alg.name} digest`);
      reg.extend(d);
    }
    const values = new Map<number, Buffer>();
    for (const [i, r] of regs) values.set(i, r.value());
    out.set(alg.name, values);
  }
  return out;
}

/** `{ bank: { index: hex } }` with indices in numeric order, for JSON output. */
export function replayedToJson(regs: ReplayedRegisters): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const [bank, m] of regs) {
    const o: Record<string, string> = {};
    for (const i of [...m.keys()].sort((a, b) => a - b)) o[String(i)] = m.get(i)!.toString('hex');
    out[bank] = o;
  }
  return out;
}
