/**
 * Boot facts and selectors from the events of a replayed log — only from events in PCRs whose
 * replayed value matched a trusted (quoted) value in `bank`, and from event data only where the
 * profile makes the digest the hash of that data and the verifier checked it (UEFI variables in
 * PCR 7, separators, the S-CRTM version). Everything else yields only digests.
 */
import { SigilError } from '../../errors.js';
import { algorithmByName, bankHashHex, type EventLogAlgorithm } from './algorithms.js';
import { EV, eventTypeName } from './events.js';
import { ParsedEvent, type EventLogEvent, type ParsedEventLog } from './parse.js';
import { QUIRKS, shimAuthorityDigestedLength, type QuirkName } from './quirks.js';
import { inMask, registerMask } from './register-mask.js';
import { BUFFER_BYTES, MAP_ENTRY_BYTES, OBJECT_BYTES, VIEW_BYTES, valueBytes } from './retained-size.js';
import { GUID, asciiText, isDerSequence, parseUefiVariable, utf16Text, walkSignatureLists } from './uefi.js';

export interface BootFacts {
  /** The bank whose digests the facts come from. */
  readonly bank: string;
  /** PCRs whose events were used (they matched a trusted value). */
  readonly pcrs: readonly number[];
  readonly secureBoot: 'enabled' | 'disabled' | undefined;
  /** SHA-256 fingerprints of the X.509 certificates in PK, KEK and db. */
  readonly pk: readonly string[];
  readonly kek: readonly string[];
  readonly db: readonly string[];
  /** dbx: number of entries and SHA-256 of the variable content. */
  readonly dbx: { readonly count: number; readonly digest: string } | undefined;
  /** SHA-256 fingerprints of the certificates named by EV_EFI_VARIABLE_AUTHORITY after the PCR 7 separator, first use order. */
  readonly authorities: readonly string[];
  /** Authenticode digests of EV_EFI_BOOT_SERVICES_APPLICATION events in PCR 4, in load order. */
  readonly bootApps: readonly string[];
  /** Digests of the kernel command lines GRUB (PCR 8) or systemd-stub (PCR 12) measured, and their text when the digest covers it. */
  readonly kernelCmdlines: readonly { readonly digest: string; readonly text: string | undefined }[];
  /** File digests GRUB measured into PCR 9 for kernel and initrd images. */
  readonly kernels: readonly string[];
  readonly initrds: readonly string[];
  readonly scrtmVersion: string | undefined;
  readonly scrtm: readonly string[];
  readonly firmwareBlobs: readonly string[];
  /**
   * UKI PE sections systemd-stub measured into PCR 11, in order: the name (proven by the name
   * record's digest, the hash of the ASCII name with its NUL) and the digest of the contents
   * (the record right after it). See `ukiSections` below.
   */
  readonly ukiSections: readonly { readonly name: string; readonly digest: string }[];
  readonly quirks: readonly QuirkName[];
}

/** PE section names are at most 8 bytes: a dot and up to 7 lowercase letters/digits (UAPI.5: .linux, .osrel, .cmdline, …). */
const UKI_SECTION = /^\.[a-z0-9]{1,7}$/;

/** Linux EFI stub tagged events (EV_EVENT_TAG in PCR 9): the initrd and the load options (command line). */
const LINUX_EFI_STUB_TAG = { initrd: 0x8730ec41, loadOptions: 0x8f3b22ed } as const;

function badEvent(ev: EventLogEvent, msg: string): never {
  throw new SigilError('tpm.eventlog_event_data_mismatch', `event log: event ${ev.seq} (${eventTypeName(ev.type)}, PCR ${ev.index}): ${msg}`);
}

const SHA256 = algorithmByName('sha256')!;
const fp = (der: Buffer): string => bankHashHex(SHA256, der);

function certFingerprint(varData: Buffer): string | undefined {
  if (isDerSequence(varData)) return fp(varData); // shim: the certificate itself
  if (varData.length > 16 && isDerSequence(varData.subarray(16))) return fp(varData.subarray(16)); // EFI_SIGNATURE_DATA: owner GUID + certificate
  return undefined;
}

/**
 * At most this many distinct X.509 certificates per PK/KEK/db variable, and distinct authorities
 * per log. Real platforms hold a handful; the bound keeps one forged log from costing the
 * verifier more than a bounded amount of work and selectors.
 */
export const MAX_BOOT_CERTIFICATES = 256;

/** The two values the profile allows as a separator's data (PFP: 00000000, or ffffffff after an error). */
const SEPARATOR_DATA = [Buffer.alloc(4, 0x00), Buffer.alloc(4, 0xff)] as const;
/** By bank ID: the digests of the two separator data values in that bank. */
const separatorDigests = new Map<number, readonly [Buffer, Buffer]>();

function separatorDigestsOf(alg: EventLogAlgorithm): readonly [Buffer, Buffer] {
  let d = separatorDigests.get(alg.id);
  if (d === undefined) separatorDigests.set(alg.id, (d = [Buffer.from(bankHashHex(alg, SEPARATOR_DATA[0]), 'hex'), Buffer.from(bankHashHex(alg, SEPARATOR_DATA[1]), 'hex')]));
  return d;
}

/**
 * 0 or 1 when `ev`'s digest in bank `alg` is the hash of separator data 00000000 or ffffffff, else
 * -1. The PCRs prove digests, not labels, so the separator of PCRs 0–7 is found by its digest.
 */
function separatorKind(alg: EventLogAlgorithm, ev: EventLogEvent): number {
  const d = digestOf(alg, ev);
  if (d === undefined) return -1;
  const seps = separatorDigestsOf(alg);
  for (let k = 0; k < 2; k++) {
    const sep = seps[k]!;
    let i = 0;
    while (i < sep.length && d.src[d.off + i] === sep[i]) i++;
    if (i === sep.length) return k;
  }
  return -1;
}

/** Whether `ev`'s data is exactly `want`. */
function dataEquals(ev: EventLogEvent, want: Buffer): boolean {
  if (ev instanceof ParsedEvent) return ev.dataLength === want.length && ev.bytes.compare(want, 0, want.length, ev.dataStart, ev.dataStart + want.length) === 0;
  return ev.data.equals(want);
}

/** Adds `v` to `set`, refusing (for `ev`) the log once `set` would hold more than MAX_BOOT_CERTIFICATES. */
function addBounded(set: Set<string>, v: string, ev: EventLogEvent, what: string): void {
  if (set.has(v)) return;
  if (set.size >= MAX_BOOT_CERTIFICATES) {
    throw new SigilError('tpm.eventlog_bad_event', `event log: event ${ev.seq} (${eventTypeName(ev.type)}, PCR ${ev.index}): more than ${MAX_BOOT_CERTIFICATES} distinct ${what}`);
  }
  set.add(v);
}

/** What a PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG event says, a pure function of its data. */
export type BootVariable =
  | { readonly kind: 'other' }
  | { readonly kind: 'SecureBoot'; readonly key: string; readonly secureBoot: 'enabled' | 'disabled'; readonly emptySecureBoot: boolean }
  | { readonly kind: 'dbx'; readonly key: string; readonly dbx: { readonly count: number; readonly digest: string } }
  | { readonly kind: 'PK' | 'KEK' | 'db'; readonly key: string; readonly certs: readonly string[] };

function readBootVariable(ev: EventLogEvent): BootVariable {
  const v = parseUefiVariable(ev.data, `event ${ev.seq}`);
  const key = `${v.guid}/${v.name}`;
  const isGlobal = v.guid === GUID.EFI_GLOBAL_VARIABLE;
  const isDb = v.guid === GUID.EFI_IMAGE_SECURITY_DATABASE;
  if (isGlobal && v.name === 'SecureBoot') {
    if (v.data.length > 0 && (v.data.length !== 1 || v.data[0]! > 1)) badEvent(ev, `SecureBoot variable holds ${v.data.toString('hex')}, not 00 or 01`);
    return { kind: 'SecureBoot', key, secureBoot: v.data.length === 1 && v.data[0] === 1 ? 'enabled' : 'disabled', emptySecureBoot: v.data.length === 0 };
  }
  if (isDb && v.name === 'dbx') return { kind: 'dbx', key, dbx: { count: walkSignatureLists(v.data, `event ${ev.seq} dbx`), digest: fp(v.data) } };
  if ((isGlobal && (v.name === 'PK' || v.name === 'KEK')) || (isDb && v.name === 'db')) {
    const certs = new Set<string>();
    walkSignatureLists(v.data, `event ${ev.seq} ${v.name}`, (type, data) => {
      if (type === GUID.EFI_CERT_X509) addBounded(certs, fp(data), ev, `X.509 certificates in ${v.name}`);
    });
    return { kind: v.name as 'PK' | 'KEK' | 'db', key, certs: [...certs] };
  }
  return { kind: 'other' };
}

/**
 * Event data already checked against its digest: bytes that hashed to a digest, and for PCR 7 UEFI
 * variables what they say. Nodes of one platform measure the same PK, KEK, db and dbx (some
 * 20–50 KB, hashed twice: the event digest, then the dbx and certificate fingerprints), and the
 * same separators, S-CRTM version and authority records, so a verifier that checked them for one
 * node needs only a byte comparison for the next. Entries are found by a slot made of the bank and
 * the digest's first bytes (no hex text) and used only when the bank, the whole digest and the
 * event's data equal the kept copies byte for byte; only data whose hash was checked is put.
 * Bounded by entries and by an estimate of the bytes each keeps alive — its data and digest, and
 * what the variable says (a db of 256 tiny certificates is 5 KB of data but 256 fingerprint
 * strings) — least recently used out first (retained-size.ts).
 */
export class VerifiedVariableMemo {
  /** By slot: the digest's first four bytes mixed with the bank's ID (keys sharing a slot displace each other). */
  private readonly kept = new Map<number, MemoEntry>();
  /** Estimated bytes the kept entries keep alive. */
  private bytes = 0;

  constructor(
    readonly maxEntries = 256,
    /** Estimated bytes kept (data, digests, what the variables say, records); data over a quarter of it is not kept. */
    readonly maxBytes = 4 * 1024 * 1024,
  ) {}

  get size(): number {
    return this.kept.size;
  }

  /** Estimated bytes the kept entries keep alive (at most maxBytes). */
  get retainedBytes(): number {
    return this.bytes;
  }

  /**
   * The entry for `ev` in bank `alg` (its data hashed to its digest before), or undefined when none
   * is kept for exactly this bank, digest and data (all three compared whole).
   */
  get(alg: EventLogAlgorithm, ev: EventLogEvent): { readonly variable: BootVariable | undefined } | undefined {
    const d = digestOf(alg, ev);
    if (d === undefined) return undefined;
    const slot = slotOf(alg, d.src, d.off);
    const e = this.kept.get(slot);
    if (e === undefined || !sameEntry(e, alg, d.src, d.off, ev)) return undefined;
    this.kept.delete(slot);
    this.kept.set(slot, e);
    return e;
  }

  /** Records that `ev`'s data hashes to its digest in bank `alg` (the caller checked it) and, when known, what it says. */
  put(alg: EventLogAlgorithm, ev: EventLogEvent, variable: BootVariable | undefined): void {
    const d = digestOf(alg, ev);
    if (d === undefined) return;
    const slot = slotOf(alg, d.src, d.off);
    const old = this.kept.get(slot);
    if (old !== undefined && sameEntry(old, alg, d.src, d.off, ev)) {
      if (old.variable === undefined && variable !== undefined) {
        old.variable = variable;
        const more = valueBytes(variable);
        old.bytes += more;
        this.bytes += more;
        this.evict();
      }
      return;
    }
    const n = ev.data.length;
    if (n > this.maxBytes / 4) return;
    const bytes = BUFFER_BYTES + 2 * VIEW_BYTES + alg.size + n + OBJECT_BYTES + MAP_ENTRY_BYTES + (variable === undefined ? 0 : valueBytes(variable));
    if (bytes > this.maxBytes / 4) return;
    if (old !== undefined) {
      this.kept.delete(slot);
      this.bytes -= old.bytes;
    }
    // Copies (the event's bytes may live in a buffer the caller reuses), in one Buffer of its own:
    // two small copies from Node's Buffer pool each kept the whole 8-KiB pool they came from alive.
    const store = Buffer.allocUnsafeSlow(alg.size + n);
    d.src.copy(store, 0, d.off, d.off + alg.size);
    ev.data.copy(store, alg.size);
    this.kept.set(slot, { alg: alg.id, digest: store.subarray(0, alg.size), data: store.subarray(alg.size), variable, bytes });
    this.bytes += bytes;
    this.evict();
  }

  /** Least recently used out until within both bounds. */
  private evict(): void {
    for (const [key, e] of this.kept) {
      if (this.kept.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.kept.delete(key);
      this.bytes -= e.bytes;
    }
  }
}

interface MemoEntry {
  readonly alg: number;
  readonly digest: Buffer;
  readonly data: Buffer;
  variable: BootVariable | undefined;
  /** Estimated bytes this entry keeps alive (counted in VerifiedVariableMemo's bound). */
  bytes: number;
}

/** Where `ev`'s digest in bank `alg` lies: straight in the log's bytes when it was parsed here. */
function digestOf(alg: EventLogAlgorithm, ev: EventLogEvent): { readonly src: Buffer; readonly off: number } | undefined {
  if (ev instanceof ParsedEvent) {
    const off = ev.digestOffset(alg.id);
    return off < 0 || off + alg.size > ev.bytes.length ? undefined : { src: ev.bytes, off };
  }
  const d = ev.digests.find((x) => x.alg.id === alg.id)?.digest;
  return d === undefined || d.length !== alg.size ? undefined : { src: d, off: 0 };
}

/** A 30-bit slot: the first four digest bytes (a hash output: as good as any four) and the bank. */
function slotOf(alg: EventLogAlgorithm, src: Buffer, off: number): number {
  return ((src[off]! | (src[off + 1]! << 8) | (src[off + 2]! << 16) | (src[off + 3]! << 24)) ^ Math.imul(alg.id, 0x9e3779b1)) >>> 2;
}

function sameEntry(e: MemoEntry, alg: EventLogAlgorithm, src: Buffer, off: number, ev: EventLogEvent): boolean {
  if (e.alg !== alg.id) return false;
  const d = e.digest;
  for (let i = 0; i < d.length; i++) if (d[i] !== src[off + i]) return false;
  return sameData(ev, e.data);
}

function sameData(ev: EventLogEvent, kept: Buffer): boolean {
  if (ev instanceof ParsedEvent) {
    const n = kept.length;
    if (ev.dataLength !== n) return false;
    // Short data (separators, versions) byte by byte: Buffer#compare's argument checks cost more than the bytes.
    if (n <= 64) {
      const b = ev.bytes;
      const at = ev.dataStart;
      for (let i = 0; i < n; i++) if (b[at + i] !== kept[i]) return false;
      return true;
    }
    return ev.bytes.compare(kept, 0, n, ev.dataStart, ev.dataStart + n) === 0;
  }
  return ev.data.equals(kept);
}

/**
 * Derive boot facts from `log` using the digests of `bank`, for events in `trustedPcrs` only.
 * Throws `tpm.eventlog_event_data_mismatch` when an event whose data must hash to its digest
 * does not (the log lies about that event), `tpm.eventlog_bad_event` for malformed UEFI data.
 */
export function deriveBootFacts(log: ParsedEventLog, bank: string, trustedPcrs: ReadonlySet<number>, memo?: VerifiedVariableMemo): BootFacts {
  const alg = log.banks.find((b) => b.name === bank);
  if (alg === undefined) throw new SigilError('tpm.eventlog_bank_missing', `event log: the log has no ${bank} digests`);
  const quirks = new Set<QuirkName>();
  let secureBoot: 'enabled' | 'disabled' | undefined;
  // Sets, not lists searched on each insert: a forged log may carry thousands of records.
  const pk = new Set<string>();
  const kek = new Set<string>();
  const db = new Set<string>();
  let dbx: { count: number; digest: string } | undefined;
  const authorities = new Set<string>();
  const bootApps: string[] = [];
  const kernelCmdlines: { digest: string; text: string | undefined }[] = [];
  const kernels = new Set<string>();
  const initrds = new Set<string>();
  let scrtmVersion: string | undefined;
  const scrtm = new Set<string>();
  const firmwareBlobs = new Set<string>();
  /** PCRs 0–7 whose separator (found by its digest) has been seen. */
  const separated = new Set<number>();
  const seenVars = new Set<string>();
  let exitBootServices = false;
  let scrtmSeen = false;
  const ukiSections: { name: string; digest: string }[] = [];
  /** The PCR 11 section name record just seen (its digest verified), waiting for its data record. */
  let ukiName: string | undefined;

  const mask = registerMask(trustedPcrs);
  for (const ev of log.events) {
    if (ev.type === EV.NO_ACTION || (mask !== undefined ? !inMask(mask, ev.index) : !trustedPcrs.has(ev.index))) continue;
    // The digest's hex is made where a case reads it: most records (boot variables, GPT, actions) never do.
    if (ev.index === 11) {
      ukiName = ukiRecord(alg, ukiSections, ev, digestHexOf(alg, ev), ukiName);
      continue;
    }
    if (ev.index <= 7) {
      // The PCRs prove digests, not labels: PCR 0–7's separator is the record whose digest is the
      // hash of separator data, whatever it is labelled, so a relabelled separator cannot move
      // the line between the boot policy and what came after (nor can a record labelled a
      // separator that is not one).
      const sep = separatorKind(alg, ev);
      if (sep >= 0) {
        if (ev.type !== EV.SEPARATOR) badEvent(ev, `the digest is that of a separator (${SEPARATOR_DATA[sep]!.toString('hex')}), but the record is not labelled EV_SEPARATOR`);
        if (!dataEquals(ev, SEPARATOR_DATA[sep]!)) badEvent(ev, 'the digest is not the hash of the separator data');
        separated.add(ev.index);
        continue;
      }
      if (ev.type === EV.SEPARATOR) badEvent(ev, 'a separator in PCRs 0–7 must be the hash of 00000000 or ffffffff');
    }
    switch (ev.type) {
      case EV.SEPARATOR:
        checkDataDigest(alg, ev, memo, 'the digest is not the hash of the separator data');
        break;
      case EV.EFI_VARIABLE_DRIVER_CONFIG: {
        if (ev.index !== 7) break;
        // The memo holds only bytes that were hashed to this digest before (compared whole here).
        const kept = memo?.get(alg, ev);
        if (kept === undefined && !hashesTo(alg, ev.data, digestHexOf(alg, ev))) badEvent(ev, 'the digest is not the hash of the UEFI variable data');
        if (separated.has(7)) {
          if (kept === undefined) memo?.put(alg, ev, undefined);
          break; // configuration after the separator is not the boot policy
        }
        const v = kept?.variable ?? readBootVariable(ev);
        if (kept?.variable === undefined) memo?.put(alg, ev, v);
        if (v.kind === 'other') break;
        if (seenVars.has(v.key)) badEvent(ev, `${v.kind} is measured twice before the separator`);
        seenVars.add(v.key);
        if (v.kind === 'SecureBoot') {
          if (v.emptySecureBoot) quirks.add(QUIRKS.emptySecureBootVariable);
          secureBoot = v.secureBoot;
        } else if (v.kind === 'dbx') dbx = { ...v.dbx }; // the memo's object is shared: the facts get their own
        else for (const f of v.certs) (v.kind === 'PK' ? pk : v.kind === 'KEK' ? kek : db).add(f); // each variable once, its certificates bounded
        break;
      }
      case EV.EFI_VARIABLE_AUTHORITY: {
        if (ev.index !== 7) break;
        // The memo holds data that hashed whole to its digest (the quirk's shorter digest is not kept).
        const n = memo?.get(alg, ev) !== undefined ? ev.data.length : shimAuthorityDigestedLength(alg, digestHexOf(alg, ev), ev.data);
        if (n === undefined) badEvent(ev, 'the digest is not the hash of the authority data');
        if (n === ev.data.length) memo?.put(alg, ev, undefined);
        const v = parseUefiVariable(ev.data.subarray(0, n), `event ${ev.seq}`, n === ev.data.length);
        if (n !== ev.data.length || v.length !== ev.data.length) {
          if (v.guid !== GUID.SHIM_LOCK) badEvent(ev, 'authority data is longer than its UEFI_VARIABLE_DATA');
          quirks.add(QUIRKS.shimAuthorityExtraBytes);
        }
        const f = certFingerprint(v.data);
        if (f !== undefined && separated.has(7)) addBounded(authorities, f, ev, 'authorities');
        break;
      }
      case EV.EFI_BOOT_SERVICES_APPLICATION:
        if (ev.index === 4) bootApps.push(digestHexOf(alg, ev));
        break;
      case EV.IPL: {
        if (ev.index !== 8 && ev.index !== 9 && ev.index !== 12) break; // nothing else is read from EV_IPL
        const hex = digestHexOf(alg, ev);
        const text = asciiText(ev.data);
        if (ev.index === 8 && text?.startsWith('kernel_cmdline: ')) {
          // GRUB hashes the command line alone: without the "kernel_cmdline: " label and the NUL.
          const cmdline = text.slice('kernel_cmdline: '.length);
          const covered = hashesTo(alg, Buffer.from(cmdline, 'latin1'), hex);
          if (covered) quirks.add(QUIRKS.grubStringWithoutNul);
          kernelCmdlines.push({ digest: hex, text: covered ? cmdline : undefined });
        } else if (ev.index === 12 || (ev.index === 8 && utf16Text(ev.data) !== undefined)) {
          // systemd-stub and systemd-boot (PCR 12; before systemd 251, systemd-boot used PCR 8):
          // the command line in UTF-16, hashed without trailing NULs (the description may keep one).
          const t = utf16Text(ev.data);
          if (t !== undefined) kernelCmdlines.push({ digest: hex, text: hashesTo(alg, ev.data, hex) || hashesTo(alg, Buffer.from(t, 'utf16le'), hex) ? t : undefined });
        } else if (ev.index === 9 && text !== undefined) {
          const file = text.slice(text.lastIndexOf('/') + 1);
          if (/^(initrd|initramfs)/.test(file)) initrds.add(hex);
          else if (/^(vmlinuz|vmlinux|linux|bzImage|kernel)/.test(file)) kernels.add(hex);
        }
        break;
      }
      case EV.S_CRTM_VERSION:
        // Firmware measures PCR 0 before its separator only; later records were extended after
        // boot (root can extend PCR 0 too) and yield nothing.
        if (ev.index !== 0 || separated.has(0)) break;
        checkDataDigest(alg, ev, memo, 'the digest is not the hash of the S-CRTM version');
        if (scrtmSeen) badEvent(ev, 'the S-CRTM version is measured a second time');
        scrtmSeen = true;
        {
          // Text when it is printable without edge spaces (copyable into a selector), else hex.
          const t = utf16Text(ev.data) ?? asciiText(ev.data);
          if (t !== undefined && /^[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?$/.test(t)) scrtmVersion = t;
          else if (ev.data.length <= 256) scrtmVersion = ev.data.toString('hex');
        }
        break;
      case EV.S_CRTM_CONTENTS:
        if (ev.index === 0 && !separated.has(0)) scrtm.add(digestHexOf(alg, ev));
        break;
      case EV.EFI_PLATFORM_FIRMWARE_BLOB:
      case EV.EFI_PLATFORM_FIRMWARE_BLOB2:
        if (ev.index === 0 && !separated.has(0)) firmwareBlobs.add(digestHexOf(alg, ev));
        break;
      case EV.EFI_ACTION:
        if (asciiText(ev.data) === 'Exit Boot Services Invocation') exitBootServices = true;
        break;
      case EV.EVENT_TAG: {
        // TCG_PCClientTaggedEvent { u32 taggedEventID; u32 taggedEventDataSize; data }: only the
        // digest is proven (the data is a label), so these yield digests, never text.
        if (ev.index !== 9 || ev.data.length < 8 || ev.data.readUInt32LE(4) !== ev.data.length - 8) break;
        const tag = ev.data.readUInt32LE(0);
        if (tag === LINUX_EFI_STUB_TAG.initrd) initrds.add(digestHexOf(alg, ev));
        else if (tag === LINUX_EFI_STUB_TAG.loadOptions) kernelCmdlines.push({ digest: digestHexOf(alg, ev), text: undefined });
        break;
      }
      default:
        break;
    }
  }
  if (trustedPcrs.has(5) && bootApps.length > 0 && !exitBootServices) quirks.add(QUIRKS.missingExitBootServices);
  if (ukiName !== undefined) badEvent(log.events.findLast((e) => e.index === 11)!, `UKI section ${ukiName} has a name record but no data record`);
  return {
    bank,
    pcrs: [...trustedPcrs].sort((a, b) => a - b),
    secureBoot,
    pk: [...pk],
    kek: [...kek],
    db: [...db],
    dbx,
    authorities: [...authorities],
    bootApps,
    kernelCmdlines,
    kernels: [...kernels],
    initrds: [...initrds],
    scrtmVersion,
    scrtm: [...scrtm],
    firmwareBlobs: [...firmwareBlobs],
    ukiSections,
    quirks: [...quirks],
  };

}

/** Lowercase hex of `ev`'s digest in bank `alg`, straight from the log's bytes when it was parsed here. */
function digestHexOf(alg: EventLogAlgorithm, ev: EventLogEvent): string {
  if (ev instanceof ParsedEvent) {
    const off = ev.digestOffset(alg.id);
    if (off >= 0) return ev.bytes.toString('hex', off, off + alg.size);
  }
  return ev.digests.find((d) => d.alg.id === alg.id)!.digest.toString('hex');
}

/**
 * Refuses `ev` (with `msg`) unless its data hashes to its digest in bank `alg`. Data the memo holds
 * for this digest (hashed to it before, compared byte for byte) is not hashed again; data that
 * checks out is put there. For the small records every log repeats (separators, the S-CRTM
 * version): a hash costs some 5 µs, the memo lookup a fraction of that.
 */
function checkDataDigest(alg: EventLogAlgorithm, ev: EventLogEvent, memo: VerifiedVariableMemo | undefined, msg: string): void {
  if (memo?.get(alg, ev) !== undefined) return;
  if (!hashesTo(alg, ev.data, digestHexOf(alg, ev))) badEvent(ev, msg);
  memo?.put(alg, ev, undefined);
}

/** Whether `data` hashes to the digest whose lowercase hex is `hex` in bank `alg`. */
function hashesTo(alg: EventLogAlgorithm, data: Buffer, hex: string): boolean {
  return bankHashHex(alg, data) === hex;
}

/**
 * One PCR 11 record. systemd-stub writes a pair per UKI section, both EV_IPL with the section
 * name (UTF-16) as description: first a record whose digest (`hex`, in bank `alg`) is the hash of
 * the ASCII name with its NUL — checked here, so the name is proven — then one whose digest is the
 * hash of the section's contents. Returns the name awaiting its data record (`pending` is the one
 * before this record); a completed pair goes into `ukiSections`. Records that are not such a pair
 * yield nothing; a data record whose description names another section, or a second name record
 * for a section already measured, is refused.
 */
function ukiRecord(alg: EventLogAlgorithm, ukiSections: { name: string; digest: string }[], ev: EventLogEvent, hex: string, pending: string | undefined): string | undefined {
  const label = ev.type === EV.IPL ? utf16Text(ev.data) : undefined;
  if (pending !== undefined) {
    if (label !== pending) badEvent(ev, `UKI section ${pending}'s data record is labelled ${JSON.stringify(label ?? ev.data.toString('hex').slice(0, 32))}`);
    ukiSections.push({ name: pending, digest: hex });
    return undefined;
  }
  if (label === undefined || !UKI_SECTION.test(label)) return undefined;
  if (!hashesTo(alg, Buffer.from(`${label}\0`, 'latin1'), hex)) return undefined;
  // systemd-stub measures each section once; a second pair can only come from a later extend
  // (PCR 11 is extendable from userspace) and would add a selector the booted UKI does not have.
  if (ukiSections.some((s) => s.name === label)) badEvent(ev, `UKI section ${label} is measured a second time`);
  return label;
}


const MAX_SELECTOR = 1024;

/** Selectors (DESIGN §4) for boot facts. Values are lowercase hex except the S-CRTM version text. */
export function bootSelectors(f: BootFacts): string[] {
  const s: string[] = [];
  if (f.secureBoot !== undefined) s.push(`tpm:secureboot:${f.secureBoot}`);
  for (const x of f.pk) s.push(`tpm:secureboot:pk:${x}`);
  for (const x of f.kek) s.push(`tpm:secureboot:kek:${x}`);
  for (const x of f.db) s.push(`tpm:secureboot:db:${x}`);
  if (f.dbx) s.push(`tpm:secureboot:dbx_count:${f.dbx.count}`, `tpm:secureboot:dbx_digest:${f.dbx.digest}`);
  for (const x of f.authorities) s.push(`tpm:secureboot:authority:${x}`);
  for (const x of new Set(f.bootApps)) s.push(`tpm:boot_app:${f.bank}:${x}`);
  if (f.bootApps.length > 0) {
    const chain = `tpm:boot_chain:${f.bank}:${f.bootApps.join('+')}`;
    if (chain.length <= MAX_SELECTOR) s.push(chain);
  }
  for (const c of new Set(f.kernelCmdlines.map((k) => k.digest))) s.push(`tpm:kernel_cmdline:${f.bank}:${c}`);
  for (const x of f.kernels) s.push(`tpm:kernel:${f.bank}:${x}`);
  for (const x of f.initrds) s.push(`tpm:initrd:${f.bank}:${x}`);
  if (f.scrtmVersion !== undefined) s.push(`tpm:firmware:scrtm_version:${f.scrtmVersion}`);
  for (const x of f.scrtm) s.push(`tpm:firmware:scrtm:${f.bank}:${x}`);
  for (const x of f.firmwareBlobs) s.push(`tpm:firmware:blob:${f.bank}:${x}`);
  for (const x of f.ukiSections) s.push(`tpm:uki:section:${x.name.slice(1)}:${f.bank}:${x.digest}`);
  return s;
}

