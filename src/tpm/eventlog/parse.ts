/**
 * Pure parser for TCG PC Client Platform Firmware Profile event logs (and the TDX/CC event log,
 * which uses the same records): the crypto-agile form (a TCG_PCR_EVENT carrying the Spec ID event,
 * then TCG_PCR_EVENT2 records with one digest per declared bank) and the legacy SHA-1 form
 * (TCG_PCR_EVENT records only). All integers are little-endian.
 *
 * Every length is bounds-checked against the bytes left, the log and its event count are capped,
 * and bytes after the last complete record are refused. Errors are `SigilError`s with
 * `tpm.eventlog_*` codes; nothing here reads files or clocks.
 */
import { SigilError } from '../../errors.js';
import { algorithmById, digestSizeById, type EventLogAlgorithm } from './algorithms.js';
import { EV } from './events.js';

export const EVENTLOG_DEFAULT_MAX_BYTES = 1024 * 1024;
export const EVENTLOG_DEFAULT_MAX_EVENTS = 10_000;
/** The PC Client profile defines PCRs 0–23. */
export const EVENTLOG_DEFAULT_MAX_INDEX = 23;

const SPEC_ID_03 = Buffer.from('Spec ID Event03\0', 'latin1');
const SPEC_ID_PREFIX = Buffer.from('Spec ID Event', 'latin1');
const STARTUP_LOCALITY = Buffer.from('StartupLocality\0', 'latin1');
/** At most this many banks in a Spec ID event (the registry has fewer hash algorithms). */
const MAX_SPEC_ALGORITHMS = 8;
const SHA1 = algorithmById(0x0004)!;

export interface EventLogDigest {
  readonly alg: EventLogAlgorithm;
  readonly digest: Buffer;
}

export interface EventLogEvent {
  /** Position in the log, 0 = the first record. */
  readonly seq: number;
  /** Byte offset of the record in the log. */
  readonly offset: number;
  /** Register index (PCR for TPM logs; the MR index for the CC event log). */
  readonly index: number;
  readonly type: number;
  /** One digest per bank, in the order the record lists them. */
  readonly digests: readonly EventLogDigest[];
  /** Event data. Digests and data are views into the parsed bytes: do not change those while using the result. */
  readonly data: Buffer;
}

/**
 * A record as `parseEventLog` returns it: numbers into the one buffer of the log, and views
 * (`data`, `digests`) made only when asked for — a check reads the data of few events and the
 * digests of one bank, so most records never get a `Buffer` of their own. `data` and `digests`
 * are getters: an object spread (`{ ...ev }`) leaves them out, so name them when copying a record.
 */
export class ParsedEvent implements EventLogEvent {
  #data: Buffer | undefined;
  #digests: readonly EventLogDigest[] | undefined;
  constructor(
    /** The whole log. */
    readonly bytes: Buffer,
    readonly seq: number,
    readonly offset: number,
    readonly index: number,
    readonly type: number,
    /** Crypto-agile: offset of the first digest's algorithm ID; legacy: offset of the SHA-1 digest. */
    readonly digestStart: number,
    /** Number of digests (1 and no algorithm IDs in a legacy record). */
    readonly digestCount: number,
    readonly agile: boolean,
    readonly dataStart: number,
    readonly dataLength: number,
  ) {}

  get data(): Buffer {
    return (this.#data ??= this.bytes.subarray(this.dataStart, this.dataStart + this.dataLength));
  }

  get digests(): readonly EventLogDigest[] {
    if (this.#digests === undefined) {
      const out: EventLogDigest[] = [];
      if (!this.agile) out.push({ alg: SHA1, digest: this.bytes.subarray(this.digestStart, this.digestStart + SHA1.size) });
      else {
        let p = this.digestStart;
        for (let i = 0; i < this.digestCount; i++) {
          // Checked by the parser: a known, declared algorithm whose digest fits.
          const alg = algorithmById(this.bytes.readUInt16LE(p))!;
          out.push({ alg, digest: this.bytes.subarray(p + 2, p + 2 + alg.size) });
          p += 2 + alg.size;
        }
      }
      this.#digests = out;
    }
    return this.#digests;
  }

  /** Offset in `bytes` of this record's digest of algorithm `id`, or -1. */
  digestOffset(id: number): number {
    if (!this.agile) return id === SHA1.id ? this.digestStart : -1;
    const b = this.bytes;
    let p = this.digestStart;
    for (let i = 0; i < this.digestCount; i++) {
      const a = b[p]! | (b[p + 1]! << 8);
      if (a === id) return p + 2;
      // Known (checked by the parser); a table read, not a map lookup, for every record of every replay.
      const size = digestSizeById(a);
      if (size === 0) return -1;
      p += 2 + size;
    }
    return -1;
  }

  /** True when the data starts with `prefix`. */
  dataStartsWith(prefix: Buffer): boolean {
    return this.dataLength >= prefix.length && this.bytes.compare(prefix, 0, prefix.length, this.dataStart, this.dataStart + prefix.length) === 0;
  }
}

export interface SpecIdEvent {
  readonly platformClass: number;
  readonly specVersion: { readonly major: number; readonly minor: number; readonly errata: number };
  /** 1 = UINTN is 32 bits, 2 = 64 bits. */
  readonly uintnSize: number;
  readonly algorithms: readonly EventLogAlgorithm[];
  readonly vendorInfo: Buffer;
}

export interface ParsedEventLog {
  readonly format: 'crypto-agile' | 'legacy-sha1';
  /** Absent in the legacy form. */
  readonly specId: SpecIdEvent | undefined;
  /** Banks every event carries a digest for (`['sha1']` in the legacy form). */
  readonly banks: readonly EventLogAlgorithm[];
  /** Every record, the Spec ID event included (it is EV_NO_ACTION and never extended). */
  readonly events: readonly EventLogEvent[];
  /** Locality from a `StartupLocality` EV_NO_ACTION event, if the log has one. */
  readonly startupLocality: number | undefined;
  readonly byteLength: number;
}

export interface ParseEventLogOptions {
  /** Refuse logs longer than this (default 1 MiB). */
  maxBytes?: number;
  /** Refuse logs with more records than this (default 10,000). */
  maxEvents?: number;
  /** Highest register index accepted (default 23, the PC Client PCRs). */
  maxIndex?: number;
}

function fail(code: string, message: string, offset?: number): never {
  throw new SigilError(`tpm.eventlog_${code}`, offset === undefined ? `event log: ${message}` : `event log: ${message} (at byte ${offset})`);
}

class LeReader {
  off = 0;
  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.off;
  }

  need(n: number, field: string, recordStart: number): void {
    if (n > this.remaining) fail('truncated', `record at byte ${recordStart}: ${field} needs ${n} byte(s), ${this.remaining} left`);
  }

  u8(field: string, rec: number): number {
    this.need(1, field, rec);
    return this.buf.readUInt8(this.off++);
  }

  u16(field: string, rec: number): number {
    this.need(2, field, rec);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }

  u32(field: string, rec: number): number {
    this.need(4, field, rec);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  /** Skips n bytes; returns where they start. */
  skip(n: number, field: string, rec: number): number {
    this.need(n, field, rec);
    const at = this.off;
    this.off += n;
    return at;
  }

  bytes(n: number, field: string, rec: number): Buffer {
    this.need(n, field, rec);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
}

function badSpecId(m: string): never {
  return fail('bad_spec_id', `Spec ID event: ${m}`);
}

/**
 * Parse the Spec ID event data (TCG_EfiSpecIdEvent). A field cut short is refused as
 * `Spec ID event: truncated`. Written without closures: every parse of a crypto-agile log comes
 * here, and each named closure made per call is a defineProperty call when built with esbuild's
 * keepNames (as under tsx).
 */
export function parseSpecIdEvent(data: Buffer): SpecIdEvent {
  if (data.length < SPEC_ID_03.length || !data.subarray(0, SPEC_ID_03.length).equals(SPEC_ID_03)) badSpecId('signature is not "Spec ID Event03"');
  const r = new LeReader(data);
  r.off = SPEC_ID_03.length;
  try {
    return readSpecIdFields(r);
  } catch (e) {
    if (e instanceof SigilError && e.code === 'tpm.eventlog_truncated') badSpecId('truncated');
    throw e;
  }
}

/** The fields after the signature; a read past the end throws `tpm.eventlog_truncated` (parseSpecIdEvent renames it). */
function readSpecIdFields(r: LeReader): SpecIdEvent {
  const platformClass = r.u32('platformClass', 0);
  const minor = r.u8('specVersionMinor', 0);
  const major = r.u8('specVersionMajor', 0);
  const errata = r.u8('specErrata', 0);
  const uintnSize = r.u8('uintnSize', 0);
  if (major !== 2) badSpecId(`spec version major ${major}, expected 2`);
  if (uintnSize !== 1 && uintnSize !== 2) badSpecId(`uintnSize ${uintnSize}, expected 1 or 2`);
  const count = r.u32('numberOfAlgorithms', 0);
  if (count === 0) badSpecId('declares no algorithms');
  if (count > MAX_SPEC_ALGORITHMS) badSpecId(`declares ${count} algorithms (at most ${MAX_SPEC_ALGORITHMS})`);
  const algorithms: EventLogAlgorithm[] = [];
  for (let i = 0; i < count; i++) {
    const id = r.u16('algorithmId', 0);
    const size = r.u16('digestSize', 0);
    const alg = algorithmById(id);
    if (alg === undefined) fail('unknown_algorithm', `Spec ID event declares algorithm 0x${id.toString(16).padStart(4, '0')}, which Sigil does not know`);
    if (alg.size !== size) badSpecId(`declares ${alg.name} with digest size ${size}, expected ${alg.size}`);
    for (const a of algorithms) if (a.id === id) badSpecId(`declares ${alg.name} twice`);
    algorithms.push(alg);
  }
  const vendorInfoSize = r.u8('vendorInfoSize', 0);
  const vendorInfo = r.bytes(vendorInfoSize, 'vendorInfo', 0);
  if (r.remaining !== 0) badSpecId(`${r.remaining} trailing byte(s)`);
  return { platformClass, specVersion: { major, minor, errata }, uintnSize, algorithms, vendorInfo };
}

/**
 * Parse a TCG event log. The form is chosen by the first record: a crypto-agile log begins with
 * an EV_NO_ACTION TCG_PCR_EVENT in PCR 0 with a zero digest whose data starts with
 * `Spec ID Event03`; any other first record means the legacy SHA-1 form.
 */
export function parseEventLog(bytes: Uint8Array, opts: ParseEventLogOptions = {}): ParsedEventLog {
  const maxBytes = opts.maxBytes ?? EVENTLOG_DEFAULT_MAX_BYTES;
  const maxEvents = opts.maxEvents ?? EVENTLOG_DEFAULT_MAX_EVENTS;
  const maxIndex = opts.maxIndex ?? EVENTLOG_DEFAULT_MAX_INDEX;
  if (bytes.length === 0) fail('empty', 'the log is empty');
  if (bytes.length > maxBytes) fail('too_large', `the log is ${bytes.length} bytes, more than the limit of ${maxBytes}`);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = new LeReader(buf);
  const st: Records = { buf, events: [], maxEvents, maxIndex, startupLocality: undefined, pcr0Extended: false };
  const events = st.events;

  // First record: always a TCG_PCR_EVENT (SHA-1 header).
  const first = readLegacy(r, buf, 0);
  const cryptoAgile = first.type === EV.NO_ACTION && first.dataStartsWith(SPEC_ID_03);
  if (cryptoAgile) {
    if (first.index !== 0) fail('bad_spec_id', `Spec ID event in register ${first.index}, expected 0`, 0);
    if (!isZero(buf, first.digestStart, SHA1.size)) fail('bad_spec_id', 'Spec ID event digest is not zero', 0);
    const specId = parseSpecIdEvent(first.data);
    events.push(first);
    const algs = specId.algorithms;
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
    while (r.remaining > 0) push(st, readAgile(r, buf, dv, events.length, algs));
    requireMeasurements(events);
    return { format: 'crypto-agile', specId, banks: algs, events, startupLocality: st.startupLocality, byteLength: buf.length };
  }
  if (first.type === EV.NO_ACTION && first.dataStartsWith(SPEC_ID_PREFIX)) {
    // "Spec ID Event00"/"02": the TCG EFI Platform (SHA-1) header; the rest is TCG_PCR_EVENT.
    if (first.index !== 0) fail('bad_spec_id', `Spec ID event in register ${first.index}, expected 0`, 0);
  }
  push(st, first);
  // StartupLocality is defined only right after the Spec ID event of a crypto-agile log: a log
  // that begins with it has lost its header, i.e. it is truncated at the front.
  if (st.startupLocality !== undefined) fail('truncated', 'the log begins with a StartupLocality event but has no Spec ID event before it (its header is missing)', 0);
  while (r.remaining > 0) push(st, readLegacy(r, buf, events.length));
  requireMeasurements(events);
  return { format: 'legacy-sha1', specId: undefined, banks: [SHA1], events, startupLocality: st.startupLocality, byteLength: buf.length };
}

/** The records read so far and what the checks across records need (a parse's state, not a closure made per parse). */
interface Records {
  readonly buf: Buffer;
  readonly events: ParsedEvent[];
  readonly maxEvents: number;
  readonly maxIndex: number;
  startupLocality: number | undefined;
  pcr0Extended: boolean;
}

/** Appends `ev` after the checks that span records: count and index limits, the Spec ID event first only, StartupLocality. */
function push(st: Records, ev: ParsedEvent): void {
  const events = st.events;
  if (events.length >= st.maxEvents) fail('too_many_events', `more than ${st.maxEvents} events`, ev.offset);
  if (ev.index > st.maxIndex) fail('bad_index', `event ${ev.seq} names register ${ev.index} (at most ${st.maxIndex})`, ev.offset);
  if (ev.type === EV.NO_ACTION) {
    if (ev.dataStartsWith(SPEC_ID_PREFIX) && ev.seq !== 0) {
      fail('bad_spec_id', `event ${ev.seq}: a Spec ID event after the first record`, ev.offset);
    }
    if (ev.dataStartsWith(STARTUP_LOCALITY)) {
      if (ev.dataLength !== STARTUP_LOCALITY.length + 1) fail('bad_startup_locality', `event ${ev.seq}: StartupLocality data is ${ev.dataLength} bytes, expected 17`, ev.offset);
      if (ev.index !== 0) fail('bad_startup_locality', `event ${ev.seq}: StartupLocality in register ${ev.index}, expected 0`, ev.offset);
      if (st.startupLocality !== undefined) fail('bad_startup_locality', `event ${ev.seq}: a second StartupLocality event`, ev.offset);
      if (st.pcr0Extended) fail('bad_startup_locality', `event ${ev.seq}: StartupLocality after PCR 0 was extended`, ev.offset);
      const loc = st.buf[ev.dataStart + STARTUP_LOCALITY.length]!;
      if (loc > 4) fail('bad_startup_locality', `event ${ev.seq}: locality ${loc} (0–4 allowed)`, ev.offset);
      st.startupLocality = loc;
    }
  } else if (ev.index === 0) {
    st.pcr0Extended = true;
  }
  events.push(ev);
}

function isZero(b: Buffer, off: number, n: number): boolean {
  for (let i = off; i < off + n; i++) if (b[i] !== 0) return false;
  return true;
}

function requireMeasurements(events: readonly EventLogEvent[]): void {
  if (!events.some((e) => e.type !== EV.NO_ACTION)) fail('no_measurements', 'the log has no measured events (only EV_NO_ACTION records)');
}

function readLegacy(r: LeReader, buf: Buffer, seq: number): ParsedEvent {
  const offset = r.off;
  const index = r.u32('pcrIndex', offset);
  const type = r.u32('eventType', offset);
  const digestStart = r.skip(SHA1.size, 'digest', offset);
  const size = r.u32('eventSize', offset);
  const dataStart = r.skip(size, 'event data', offset);
  return new ParsedEvent(buf, seq, offset, index, type, digestStart, 1, false, dataStart, size);
}

/** Field names for truncation messages, made once rather than per digest read. */
const DIGEST_FIELD = new Map<number, string>();
for (let id = 0; id < 0x30; id++) {
  const a = algorithmById(id);
  if (a !== undefined) DIGEST_FIELD.set(id, `${a.name} digest`);
}

function readAgile(r: LeReader, buf: Buffer, dv: DataView, seq: number, algs: readonly EventLogAlgorithm[]): ParsedEvent {
  const offset = r.off;
  // The three header fields read directly when all 12 bytes are there (nearly every record); a
  // shorter tail goes through the reader, which names the field that does not fit.
  let index: number, type: number, count: number;
  if (buf.length - offset >= 12) {
    index = dv.getUint32(offset, true);
    type = dv.getUint32(offset + 4, true);
    count = dv.getUint32(offset + 8, true);
    r.off = offset + 12;
  } else {
    index = r.u32('pcrIndex', offset);
    type = r.u32('eventType', offset);
    count = r.u32('digest count', offset);
  }
  if (count !== algs.length) fail('digest_count_mismatch', `event ${seq} has ${count} digest(s), the Spec ID event declares ${algs.length}`, offset);
  const digestStart = r.off;
  const end = buf.length;
  let p = digestStart;
  // Bit i set: the record has a digest of algs[i] (at most 8 banks).
  let seen = 0;
  for (let i = 0; i < count; i++) {
    if (end - p < 2) {
      r.off = p;
      r.need(2, 'algorithmId', offset);
    }
    const id = dv.getUint16(p, true);
    p += 2;
    let slot = 0;
    while (slot < algs.length && algs[slot]!.id !== id) slot++;
    if (slot === algs.length) fail('unknown_algorithm', `event ${seq} has a digest of algorithm 0x${id.toString(16).padStart(4, '0')}, not declared by the Spec ID event`, offset);
    const alg = algs[slot]!;
    if ((seen & (1 << slot)) !== 0) fail('digest_count_mismatch', `event ${seq} has two ${alg.name} digests`, offset);
    seen |= 1 << slot;
    if (alg.size > end - p) {
      r.off = p;
      r.need(alg.size, DIGEST_FIELD.get(alg.id) ?? 'digest', offset);
    }
    p += alg.size;
  }
  if (end - p < 4) {
    r.off = p;
    r.need(4, 'eventSize', offset);
  }
  const size = dv.getUint32(p, true);
  const dataStart = p + 4;
  if (size > end - dataStart) {
    r.off = dataStart;
    r.need(size, 'event data', offset);
  }
  r.off = dataStart + size;
  return new ParsedEvent(buf, seq, offset, index, type, digestStart, count, true, dataStart, size);
}

/** The digest of `ev` in `bank`, or undefined. */
export function eventDigest(ev: EventLogEvent, bank: string): Buffer | undefined {
  return ev.digests.find((d) => d.alg.name === bank)?.digest;
}
