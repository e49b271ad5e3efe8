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
import { BUFFER_BYTES, MAP_ENTRY_BYTES, OBJECT_BYTES, VIEW_BYTES } from './retained-size.js';

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
 * inputs, so a hit is exactly the replay that would be computed); a 30-bit fingerprint of it (the
 * register, the count, the first bytes of each digest) only finds the slot, and keys sharing a
 * slot displace each other. Building a key copies the digests replayed, against one hash per event
 * for the replay. Inputs longer than `maxKeyBytes` are replayed without the memo. The memo is bounded
 * by entries and by an estimate of the bytes each keeps alive, its key and value in one Buffer of
 * its own and their records (retained-size.ts): `maxBytes` (32 MiB) is what `maxEntries` ×
 * `maxKeyBytes` of keys allowed before, and a typical firmware log's registers take some 1–4 KB
 * each, so the entry bound is the one that binds in practice. (The key and value were two copies
 * from Node's Buffer pool, and each small copy kept its whole 8-KiB pool alive: some 8 KiB an
 * entry whatever its size.) A verifier whose nodes all differ pays the keys and a miss (measured:
 * a few µs) for nothing.
 */
export class ReplayMemo {
  private readonly kept = new Map<number, { readonly key: Buffer; readonly value: Buffer; used: number; readonly bytes: number }>();
  /** Estimated bytes the kept entries keep alive. */
  private bytes = 0;
  /** Counts gets and puts: an entry's `used` is the count when it last moved to the most recently used end. */
  private clock = 0;
  private scratch = Buffer.alloc(4096);
  /** The scratch buffer as a DataView: keys are copied a 32-bit word at a time (a byte loop cost ~4 ns a byte). */
  private scratchView = new DataView(this.scratch.buffer, this.scratch.byteOffset, this.scratch.length);

  constructor(
    readonly maxEntries = 2048,
    readonly maxKeyBytes = 16_000,
    /** Estimated bytes kept: keys, values and their records. */
    readonly maxBytes = 32 * 1024 * 1024,
  ) {}

  get size(): number {
    return this.kept.size;
  }

  /** Estimated bytes the kept entries keep alive (at most maxBytes). */
  get retainedBytes(): number {
    return this.bytes;
  }

  /** Room for `n` more key bytes at `at` (false: the key would be too long for the memo). */
  room(at: number, n: number): boolean {
    if (at + n > this.maxKeyBytes) return false;
    if (at + n > this.scratch.length) {
      const b = Buffer.alloc(Math.min(this.maxKeyBytes, 2 * (at + n)));
      this.scratch.copy(b, 0, 0, at);
      this.scratch = b;
      this.scratchView = new DataView(b.buffer, b.byteOffset, b.length);
    }
    return true;
  }

  /** The buffer keys are built in (see `room`). */
  get buf(): Buffer {
    return this.scratch;
  }

  /** `buf` as a DataView. */
  get view(): DataView {
    return this.scratchView;
  }

  /** A copy of the value kept for exactly the key in `buf[0, n)` (fingerprint `slot`), if any. */
  get(n: number, slot: number): Buffer | undefined {
    const e = this.kept.get(slot);
    if (e === undefined || e.key.length !== n || this.scratch.compare(e.key, 0, n, 0, n) !== 0) return undefined;
    // Moved to the most recently used end only once it is in the older half: fewer than half the
    // entries came after it, so it is not next to go, and a log's eight registers hit without
    // eight map updates (a delete and a set cost more than the rest of a hit).
    if (this.clock - e.used >= this.maxEntries >> 1) {
      this.kept.delete(slot);
      this.kept.set(slot, e);
      e.used = this.clock;
    }
    this.clock++;
    // A copy: the caller owns what a replay returns.
    return Buffer.from(e.value);
  }

  /** Keeps `value` for a copy of the key in `buf[0, n)` (a key sharing its slot gives up its place). */
  put(n: number, slot: number, value: Buffer): void {
    const old = this.kept.get(slot);
    if (old !== undefined) {
      this.kept.delete(slot);
      this.bytes -= old.bytes;
    }
    // The value and a copy of the key in one Buffer of its own (not from the pool: see above).
    const v = value.length;
    const store = Buffer.allocUnsafeSlow(v + n);
    value.copy(store, 0);
    this.scratch.copy(store, v, 0, n);
    const bytes = BUFFER_BYTES + 2 * VIEW_BYTES + v + n + OBJECT_BYTES + MAP_ENTRY_BYTES;
    this.kept.set(slot, { key: store.subarray(v), value: store.subarray(0, v), used: this.clock++, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.kept) {
      if (this.kept.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.kept.delete(k);
      this.bytes -= e.bytes;
    }
  }
}

/** A register's memo key: its length in the memo's buffer, and its slot. */
interface RegisterKey {
  readonly n: number;
  readonly slot: number;
}

/**
 * The memo key of register `index`'s replay in one bank (see ReplayMemo) from the events replayed
 * into it, built in the memo's buffer, or undefined when it would be too long. Throws, as the
 * replay would, when an event lacks the bank's digest.
 */
function registerKey(memo: ReplayMemo, alg: EventLogAlgorithm, locality: number | undefined, index: number, events: readonly EventLogEvent[]): RegisterKey | undefined {
  // The index goes into the key as a u32: any other number (a caller's odd index) is replayed without the memo.
  if ((index >>> 0) !== index) return undefined;
  // One digest of alg.size per event: room for the whole key at once, or no key.
  if (!memo.room(0, 10 + events.length * alg.size)) return undefined;
  const b = memo.buf;
  const kv = memo.view;
  const loc = index === 0 ? (locality ?? -1) : -1;
  kv.setUint16(0, alg.id, true);
  kv.setUint32(2, index, true);
  kv.setInt32(6, loc, true);
  let h = Math.imul(Math.imul(Math.imul(0x811c9dc5 ^ alg.id, 0x01000193) ^ index, 0x01000193) ^ loc, 0x01000193) ^ events.length;
  const size = alg.size;
  // Every registered digest size is a multiple of 4: copied a word at a time through DataViews
  // (the log's made once per log, not per event); a byte loop otherwise.
  const words = size % 4 === 0;
  let src: Buffer | undefined;
  let sv: DataView | undefined;
  let n = 10;
  for (const ev of events) {
    if (ev instanceof ParsedEvent) {
      const off = ev.digestOffset(alg.id);
      if (off < 0) throw noDigest(ev, alg);
      if (ev.bytes !== src) {
        src = ev.bytes;
        sv = new DataView(src.buffer, src.byteOffset, src.length);
      }
      if (off + size > src.length) return undefined; // the replay reports it
      if (words) for (let i = 0; i < size; i += 4) kv.setInt32(n + i, sv!.getInt32(off + i));
      else for (let i = 0; i < size; i++) b[n + i] = src[off + i]!;
    } else {
      const d = ev.digests.find((x) => x.alg.id === alg.id)?.digest;
      if (d === undefined) throw noDigest(ev, alg);
      if (d.length !== size) return undefined; // the replay reports it
      d.copy(b, n);
    }
    // The first four bytes of a digest are as good as any four (digests are hash outputs); the whole key is compared on a hit.
    h = Math.imul(h ^ kv.getInt32(n), 0x01000193);
    n += size;
  }
  // 30 bits: a small integer, so the map hashes a number, not a string of the key.
  return { n, slot: h >>> 2 };
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
    let v = key === undefined ? undefined : memo.get(key.n, key.slot);
    if (v === undefined) {
      const reg = pcClientRegister(alg, i, locality);
      for (const ev of events) extendBy(reg, ev, alg);
      v = reg.value();
      if (key !== undefined) memo.put(key.n, key.slot, v);
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
