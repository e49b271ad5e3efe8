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
  /** Replays done before (by this verifier), reused when the replay's whole input is the same. Only with the default `initialValue`. */
  memo?: ReplayMemo;
}

/**
 * A bounded memo of replays, one register at a time. A register's replay is a fold over its input
 * alone — the bank, the register index, the PCR 0 StartupLocality (when applied), and the ordered
 * digests of the events replayed into it — and the firmware part of a fleet's logs (PCRs 0–7) is
 * the same from node to node and boot to boot, and mostly the same after an update (a kernel update
 * changes PCRs 4, 8 and 9, not the firmware's PCR 0). So a verifier keeps the value each input
 * gives. The key is that input itself, byte for byte (no digest of it: equal keys mean equal
 * inputs, so a hit is exactly the replay that would be computed). Building the keys copies the
 * digests replayed, against one hash per event for the replay. Inputs longer than `maxKeyBytes`
 * are replayed without the memo, so it holds at most `maxEntries` × `maxKeyBytes` of keys (32 MB;
 * some 1–4 KB per register of a typical firmware log in practice). A verifier whose nodes all
 * differ pays the keys and a miss (measured: a few µs) for nothing.
 */
export class ReplayMemo {
  private readonly kept = new Map<string, Buffer>();
  private scratch = Buffer.alloc(4096);

  constructor(
    readonly maxEntries = 2048,
    /** Under V8's 16,384-character limit past which a string's hash is its length alone. */
    readonly maxKeyBytes = 16_000,
  ) {}

  get size(): number {
    return this.kept.size;
  }

  /** Room for `n` more key bytes at `at` (false: the key would be too long for the memo). */
  room(at: number, n: number): boolean {
    if (at + n > this.maxKeyBytes) return false;
    if (at + n > this.scratch.length) {
      const b = Buffer.alloc(Math.min(this.maxKeyBytes, 2 * (at + n)));
      this.scratch.copy(b, 0, 0, at);
      this.scratch = b;
    }
    return true;
  }

  get buf(): Buffer {
    return this.scratch;
  }

  get(key: string): Buffer | undefined {
    const e = this.kept.get(key);
    if (e === undefined) return undefined;
    this.kept.delete(key);
    this.kept.set(key, e);
    // A copy: the caller owns what a replay returns.
    return Buffer.from(e);
  }

  put(key: string, value: Buffer): void {
    this.kept.delete(key);
    this.kept.set(key, Buffer.from(value));
    if (this.kept.size > this.maxEntries) this.kept.delete(this.kept.keys().next().value!);
  }
}

/**
 * The memo key of register `index`'s replay in one bank (see ReplayMemo) from the events replayed
 * into it, or undefined when it would be too long. Throws, as the replay would, when an event
 * lacks the bank's digest.
 */
function registerKey(memo: ReplayMemo, alg: EventLogAlgorithm, locality: number | undefined, index: number, events: readonly EventLogEvent[]): string | undefined {
  if (!memo.room(0, 10)) return undefined;
  let b = memo.buf;
  b.writeUInt16LE(alg.id, 0);
  b.writeUInt32LE(index, 2);
  b.writeInt32LE(index === 0 ? (locality ?? -1) : -1, 6);
  let n = 10;
  for (const ev of events) {
    if (!memo.room(n, alg.size)) return undefined;
    b = memo.buf;
    if (ev instanceof ParsedEvent) {
      const off = ev.digestOffset(alg.id);
      if (off < 0) throw noDigest(ev, alg);
      const src = ev.bytes;
      if (off + alg.size > src.length) return undefined; // the replay reports it
      // A byte loop: cheaper than a native copy call for 20–64 bytes.
      for (let i = 0; i < alg.size; i++) b[n + i] = src[off + i]!;
      n += alg.size;
      continue;
    }
    const d = ev.digests.find((x) => x.alg.id === alg.id)?.digest;
    if (d === undefined) throw noDigest(ev, alg);
    if (d.length !== alg.size) return undefined; // the replay reports it
    n += d.copy(b, n);
  }
  return b.toString('latin1', 0, n);
}

function noDigest(ev: EventLogEvent, alg: EventLogAlgorithm): SigilError {
  return new SigilError('tpm.eventlog_digest_count_mismatch', `event log: event ${ev.seq} has no ${alg.name} digest`);
}

/** Extends `reg` by `ev`'s digest in `alg`'s bank. */
function extendBy(reg: BankRegister, ev: EventLogEvent, alg: EventLogAlgorithm): void {
  if (ev instanceof ParsedEvent) {
    // Straight from the log's bytes: no view per digest.
    const off = ev.digestOffset(alg.id);
    if (off < 0) throw noDigest(ev, alg);
    reg.extendFrom(ev.bytes, off);
    return;
  }
  let d: Buffer | undefined;
  for (const x of ev.digests) {
    if (x.alg.id === alg.id) {
      d = x.digest;
      break;
    }
  }
  // The parser guarantees one digest per bank; a missing one means a hand-built log.
  if (d === undefined) throw noDigest(ev, alg);
  reg.extend(d);
}

/** A register at its PC Client initial value, PCR 0 at the StartupLocality when one applies. */
function pcClientRegister(alg: EventLogAlgorithm, index: number, locality: number | undefined): BankRegister {
  if (index === 0 && locality !== undefined) {
    const b = Buffer.alloc(alg.size);
    b[alg.size - 1] = locality;
    return new BankRegister(alg, b);
  }
  return new BankRegister(alg, pcClientInitialValue(index, alg));
}

/**
 * One bank's replay through the memo: the registers whose input was replayed before come from it,
 * the others are replayed (only their events) and kept. One pass sorts the events by register.
 * Undefined when the memo cannot serve this replay: an event passing the filter extends a
 * register not asked for.
 */
function replayThroughMemo(memo: ReplayMemo, log: ParsedEventLog, alg: EventLogAlgorithm, opts: ReplayOptions, useLocality: boolean): Map<number, Buffer> | undefined {
  const byIndex = new Map<number, EventLogEvent[]>();
  for (const i of opts.indices ?? []) byIndex.set(i, []);
  const filter = opts.filter;
  for (const ev of log.events) {
    if (ev.type === EV.NO_ACTION) continue;
    if (filter !== undefined && !filter(ev)) continue;
    const list = byIndex.get(ev.index);
    if (list === undefined) return undefined;
    list.push(ev);
  }
  const locality = useLocality ? log.startupLocality : undefined;
  // In the order asked for, as the plain replay reports them.
  const out = new Map<number, Buffer>();
  for (const [i, events] of byIndex) {
    const key = registerKey(memo, alg, locality, i, events);
    let v = key === undefined ? undefined : memo.get(key);
    if (v === undefined) {
      const reg = pcClientRegister(alg, i, locality);
      for (const ev of events) extendBy(reg, ev, alg);
      v = reg.value();
      if (key !== undefined) memo.put(key, v);
    }
    out.set(i, v);
  }
  return out;
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
  const memo = opts.initialValue === undefined ? opts.memo : undefined;
  for (const alg of banks) {
    const viaMemo = memo === undefined ? undefined : replayThroughMemo(memo, log, alg, opts, useLocality);
    if (viaMemo !== undefined) {
      out.set(alg.name, viaMemo);
      continue;
    }
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
      extendBy(reg, ev, alg);
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
