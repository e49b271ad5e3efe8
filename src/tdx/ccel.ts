/**
 * The TDX CC event log (CCEL), pure: the ACPI `CCEL` table, the log area, and its replay into
 * RTMR0–3 with the shared TCG event-log parser (src/tpm/eventlog), checked against a verified quote.
 *
 * The log is TCG crypto-agile with SHA-384 digests. Each record's register index is the CC
 * measurement-register index of the TDX guest ABI: 0 = MRTD (never extended by the log), 1–4 =
 * RTMR0–3. RTMRs start at 48 zero bytes; there is no StartupLocality rule.
 *
 * Firmware quirk (kept here, named): the CCEL area has a fixed size (the table's LAML, 256 KiB on
 * OVMF/TDVF) and the log is followed by 0xFF fill up to it. The log ends where the fill starts; as
 * an event's own data may end in 0xFF bytes, the cut is moved forward over the fill (at most 64
 * bytes) to the record boundary the record headers give, and the log is parsed once there. Bytes
 * after the log other than 0xFF fill are refused.
 *
 * Second quirk: TDVF writes the first record (the TCG_PCR_EVENT carrying `Spec ID Event03`) with
 * register index 1 instead of 0, which the TCG parser rightly refuses for a TPM log. That record is
 * EV_NO_ACTION and never extended, so a private copy with its index set to 0 is parsed; only that
 * exact shape (index 1, EV_NO_ACTION, Spec ID data) is rewritten.
 */
import { SigilError } from '../errors.js';
import { EV, bootSelectors, deriveBootFacts, parseEventLog, parseSpecIdEvent, replayEventLog, type EventLogEvent, type ParsedEventLog } from '../tpm/eventlog/index.js';

export const CCEL_TABLE_SIZE = 56;
export const CC_TYPE_TDX = 2;
const RTMR_SIZE = 48;
/** At most this much CCEL area (LAML) is accepted. */
export const CCEL_MAX_AREA = 4 * 1024 * 1024;

export interface CcelTable {
  revision: number;
  ccType: number;
  ccSubType: number;
  /** Log area minimum length. */
  laml: bigint;
  /** Log area start address (guest physical). */
  lasa: bigint;
}

function fail(code: string, message: string, status = 400): never {
  throw new SigilError(code, message, { status });
}

/** Parse the 56-byte ACPI CCEL table (signature, length, checksum, CC type TDX). */
export function parseCcelTable(b: Uint8Array): CcelTable {
  const t = Buffer.from(b);
  if (t.length !== CCEL_TABLE_SIZE) fail('tdx.ccel_table_invalid', `CCEL table must be ${CCEL_TABLE_SIZE} bytes, got ${t.length}`);
  if (t.subarray(0, 4).toString('latin1') !== 'CCEL') fail('tdx.ccel_table_invalid', 'CCEL table signature is not "CCEL"');
  if (t.readUInt32LE(4) !== CCEL_TABLE_SIZE) fail('tdx.ccel_table_invalid', `CCEL table length field is ${t.readUInt32LE(4)}, expected ${CCEL_TABLE_SIZE}`);
  let sum = 0;
  for (const x of t) sum = (sum + x) & 0xff;
  if (sum !== 0) fail('tdx.ccel_table_invalid', 'CCEL table checksum does not add up to zero');
  const ccType = t[36]!;
  if (ccType !== CC_TYPE_TDX) fail('tdx.ccel_table_invalid', `CCEL table CC type is ${ccType}, not TDX (2)`);
  return { revision: t[8]!, ccType, ccSubType: t[37]!, laml: t.readBigUInt64LE(40), lasa: t.readBigUInt64LE(48) };
}

const MAX_FILL_STEPS = 64;

/**
 * The first record boundary at or after `end` (where the 0xFF fill starts), walking the record
 * headers of a crypto-agile log (sizes only: the parser checks the content); undefined when the
 * headers do not lead there. Linear in the number of records, so the cut costs one parse.
 */
function recordBoundaryFrom(log: Buffer, end: number): number | undefined {
  if (log.length < 32) return undefined;
  let p = 32 + log.readUInt32LE(28);
  if (p > log.length) return undefined;
  let sizes: Map<number, number>;
  try {
    sizes = new Map(parseSpecIdEvent(log.subarray(32, p)).algorithms.map((a) => [a.id, a.size]));
  } catch {
    return undefined;
  }
  while (p < end) {
    if (log.length - p < 12) return undefined;
    const count = log.readUInt32LE(p + 8);
    if (count !== sizes.size) return undefined;
    let q = p + 12;
    for (let i = 0; i < count; i++) {
      if (log.length - q < 2) return undefined;
      const size = sizes.get(log.readUInt16LE(q));
      if (size === undefined) return undefined;
      q += 2 + size;
    }
    if (log.length - q < 4) return undefined;
    p = q + 4 + log.readUInt32LE(q);
    if (p > log.length) return undefined;
  }
  return p;
}

/** Errors of the shared TCG parser (`tpm.eventlog_*`) as `tdx.ccel_invalid`, so the attestor reports only its own codes. */
function asCcelError(e: unknown): unknown {
  if (e instanceof SigilError && e.code.startsWith('tpm.eventlog_')) {
    return new SigilError('tdx.ccel_invalid', `CC ${e.message} [${e.code}]`, { cause: e, status: e.code === 'tpm.eventlog_event_data_mismatch' ? 403 : 400 });
  }
  return e;
}

/** The log inside a CCEL area: the area without its 0xFF fill (see the module comment). */
export function parseCcelArea(area: Uint8Array, table?: CcelTable): ParsedEventLog {
  const a = Buffer.from(area.buffer, area.byteOffset, area.byteLength);
  if (a.length > CCEL_MAX_AREA) fail('tdx.ccel_too_large', `CC event log area is ${a.length} bytes, more than ${CCEL_MAX_AREA}`);
  if (table && BigInt(a.length) > table.laml) fail('tdx.ccel_too_large', `CC event log area is ${a.length} bytes, more than the table's LAML ${table.laml}`);
  let end = a.length;
  while (end > 0 && a[end - 1] === 0xff) end--;
  const log = Buffer.from(a.subarray(0, a.length));
  if (log.length >= 32 + 15 && log.readUInt32LE(0) === 1 && log.readUInt32LE(4) === 3 && log.subarray(32, 32 + 15).toString('latin1') === 'Spec ID Event03') {
    log.writeUInt32LE(0, 0);
  }
  // The cut moves over at most MAX_FILL_STEPS fill bytes, to the record boundary the headers give
  // (one parse: re-parsing the whole log per fill byte cost up to 65 parses of 4 MiB).
  const boundary = recordBoundaryFrom(log, end);
  const cut = boundary !== undefined && boundary - end <= MAX_FILL_STEPS ? boundary : end;
  try {
    return parseEventLog(log.subarray(0, cut), { maxBytes: CCEL_MAX_AREA, maxEvents: 100_000, maxIndex: 4 });
  } catch (e) {
    throw e instanceof SigilError ? asCcelError(e) : fail('tdx.ccel_invalid', 'CC event log could not be parsed');
  }
}

export interface CcelReplay {
  log: ParsedEventLog;
  /** RTMR0..3 as replayed. */
  rtmrs: [Buffer, Buffer, Buffer, Buffer];
  /** Number of measured events per RTMR. */
  events: [number, number, number, number];
}

/** Replay a parsed CC event log into RTMR0–3 (SHA-384). */
export function replayCcel(log: ParsedEventLog): CcelReplay {
  if (!log.banks.some((b) => b.name === 'sha384')) fail('tdx.ccel_invalid', `CC event log has no SHA-384 digests (it carries ${log.banks.map((b) => b.name).join(', ')})`);
  let regs: Map<number, Buffer>;
  try {
    regs = replayEventLog(log, { banks: ['sha384'], indices: [1, 2, 3, 4], initialValue: () => Buffer.alloc(RTMR_SIZE), startupLocality: false }).get('sha384')!;
  } catch (e) {
    throw asCcelError(e);
  }
  for (const ev of log.events) {
    if (ev.index === 0 && ev.type !== EV.NO_ACTION) fail('tdx.ccel_invalid', `CC event log event ${ev.seq} extends MR index 0 (MRTD), which the log cannot extend`);
  }
  const count = [0, 0, 0, 0] as [number, number, number, number];
  for (const ev of log.events) if (ev.index >= 1 && ev.type !== EV.NO_ACTION) count[ev.index - 1]!++;
  return { log, rtmrs: [regs.get(1)!, regs.get(2)!, regs.get(3)!, regs.get(4)!], events: count };
}

/**
 * Replay the CC event log and require every RTMR of the (verified) quote to equal its replayed
 * value: a log that is incomplete, reordered or made up is `tdx.rtmr_mismatch`.
 */
export function checkCcelAgainstRtmrs(area: Uint8Array, quoteRtmrs: readonly Buffer[], table?: Uint8Array): CcelReplay {
  const t = table === undefined ? undefined : parseCcelTable(table);
  const r = replayCcel(parseCcelArea(area, t));
  for (let i = 0; i < 4; i++) {
    if (!r.rtmrs[i]!.equals(quoteRtmrs[i]!)) {
      fail('tdx.rtmr_mismatch', `CC event log replays RTMR${i} to ${r.rtmrs[i]!.toString('hex')}, the quote says ${quoteRtmrs[i]!.toString('hex')}`, 403);
    }
  }
  return r;
}

/**
 * The TCG PC Client PCR a CC event stands for, so the shared boot-fact derivation (written for TPM
 * logs) reads a CC event log. TDVF maps PCR 1 and 7 to RTMR0, PCR 2–6 to RTMR1 and PCR 8–15 to
 * RTMR2 (TDX guest ABI / TDVF design guide); within one RTMR the PCR is told apart by event type:
 *  - RTMR0: Secure Boot configuration, authorities and the separator → PCR 7, the rest → PCR 1;
 *  - RTMR1: EFI boot-services applications → PCR 4, the rest → PCR 5;
 *  - RTMR2: GRUB commands and kernel command lines (`grub_cmd: `, `kernel_cmdline: `) → PCR 8,
 *    other EV_IPL text (files GRUB read) → PCR 9, the rest → PCR 14;
 *  - RTMR3 (no firmware use) → PCR 16 (no boot facts).
 */
export function pcrForCcEvent(ev: EventLogEvent): number {
  switch (ev.index) {
    case 1:
      return ev.type === EV.EFI_VARIABLE_DRIVER_CONFIG || ev.type === EV.EFI_VARIABLE_AUTHORITY || ev.type === EV.SEPARATOR ? 7 : 1;
    case 2:
      return ev.type === EV.EFI_BOOT_SERVICES_APPLICATION ? 4 : 5;
    case 3: {
      if (ev.type !== EV.IPL) return 14;
      const text = ev.data.toString('latin1');
      return text.startsWith('grub_cmd: ') || text.startsWith('kernel_cmdline: ') ? 8 : 9;
    }
    default:
      return 16;
  }
}

/**
 * Event-log selectors (the TPM measured-boot selectors under `tdx:`) from a CC event log whose
 * replay matched the quote's RTMRs: Secure Boot state and keys, boot applications, kernel command
 * lines and kernels, with SHA-384 digests.
 */
export function ccelSelectors(replay: CcelReplay): string[] {
  // data and digests named: parsed records make them on demand (prototype getters a spread skips).
  const events = replay.log.events.map((ev) => (ev.type === EV.NO_ACTION ? ev : { ...ev, data: ev.data, digests: ev.digests, index: pcrForCcEvent(ev) }));
  const view: ParsedEventLog = { ...replay.log, events };
  let facts: ReturnType<typeof deriveBootFacts>;
  try {
    facts = deriveBootFacts(view, 'sha384', new Set([1, 4, 5, 7, 8, 9, 14]));
  } catch (e) {
    throw asCcelError(e);
  }
  return bootSelectors(facts).map((x) => `tdx:${x.slice('tpm:'.length)}`);
}
