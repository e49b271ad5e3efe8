/**
 * Attacks of root on a node with a genuine TPM: it can extend PCRs 0–15 after boot and send any
 * log whose replay reproduces the quoted PCRs. The PCRs prove digests in order, never an event's
 * type, so a forged log may relabel records and append records whose digests it extended itself.
 * Neither may make a boot selector appear that the firmware's own measurements do not give, and
 * neither may cost the verifier more than a bounded amount of work.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, ParsedEvent, checkEventLog, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { MAX_BOOT_CERTIFICATES } from '../../src/tpm/eventlog/boot.js';
import { checkSelectors, MAX_ATTESTOR_SELECTORS, MAX_ATTESTOR_SELECTOR_LEN } from '../../src/plugins/result.js';
import { agileLog, agileRecord, type BuiltEvent } from './eventlog-builder.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const NO_SB = 'ubuntu_2104_shielded_vm_no_secure_boot_eventlog';
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const SHA256 = 0x000b;

/** UEFI_VARIABLE_DATA: vendor GUID (16 bytes, as stored), name length, data length, UTF-16 name, data. */
function uefiVariable(guid: string, name: string, data: Buffer): Buffer {
  const lengths = Buffer.alloc(16);
  lengths.writeBigUInt64LE(BigInt(name.length), 0);
  lengths.writeBigUInt64LE(BigInt(data.length), 8);
  return Buffer.concat([Buffer.from(guid, 'hex'), lengths, Buffer.from(name, 'utf16le'), data]);
}
const EFI_GLOBAL_VARIABLE = '61dfe48bca93d211aa0d00e098032b8c';
const EFI_IMAGE_SECURITY_DATABASE = 'cbb219d73a3d9645a3bcdad00e67656f';
const EFI_CERT_X509 = 'a159c0a5e494a74a87b5ab155c2bf072';

const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest();
const extend = (pcr: Buffer, data: Buffer): Buffer => createHash('sha256').update(pcr).update(sha256(data)).digest();

/** The sha256 PCRs 0–7 a TPM holds after booting as `raw` says and then being extended by `extra` (root's own extends). */
function tpmAfter(raw: Buffer, extra: readonly { index: number; data: Buffer }[] = []): { bank: string; index: number; value: Buffer }[] {
  const regs = new Map(replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: PCRS }).get('sha256')!);
  for (const e of extra) regs.set(e.index, extend(regs.get(e.index)!, e.data));
  return PCRS.map((index) => ({ bank: 'sha256', index, value: regs.get(index)! }));
}

/** `raw` with the type of every record matching `pick` set to `type` (the digests stay). */
function relabelled(raw: Buffer, pick: (ev: { index: number; type: number; data: Buffer }) => boolean, type: number): Buffer {
  const out = Buffer.from(raw);
  let n = 0;
  for (const ev of parseEventLog(raw).events) {
    if (!pick(ev)) continue;
    out.writeUInt32LE(type, ev.offset + 4);
    n++;
  }
  expect(n).toBeGreaterThan(0);
  return out;
}

function appended(raw: Buffer, records: readonly BuiltEvent[]): Buffer {
  const banks = parseEventLog(raw).banks.map((b) => b.id);
  return Buffer.concat([raw, ...records.map((r) => agileRecord(r, banks))]);
}

const secureBootOn = uefiVariable(EFI_GLOBAL_VARIABLE, 'SecureBoot', Buffer.from([1]));
const isSecureBootVar = (ev: { index: number; type: number; data: Buffer }): boolean =>
  ev.index === 7 && ev.type === EV.EFI_VARIABLE_DRIVER_CONFIG && ev.data.includes(Buffer.from('SecureBoot', 'utf16le'));
const isPcr7Separator = (ev: { index: number; type: number }): boolean => ev.index === 7 && ev.type === EV.SEPARATOR;

describe.skipIf(!have)('a forged log cannot add boot selectors (root extends PCRs after boot)', () => {
  it('the honest log of a machine with Secure Boot off says disabled', () => {
    const raw = read(NO_SB);
    expect(checkEventLog({ log: raw, pcrs: tpmAfter(raw) }).selectors).toContain('tpm:secureboot:disabled');
  });

  it('relabelling the real SecureBoot variable and separator, then appending SecureBoot=1 and a separator, is refused', () => {
    const raw = read(NO_SB);
    const extra = [
      { index: 7, data: secureBootOn },
      { index: 7, data: Buffer.alloc(4) },
    ];
    let forged = relabelled(raw, isSecureBootVar, EV.EFI_VARIABLE_BOOT);
    forged = relabelled(forged, isPcr7Separator, EV.EFI_ACTION);
    forged = appended(forged, [
      { index: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn },
      { index: 7, type: EV.SEPARATOR, data: Buffer.alloc(4) },
    ]);
    expect(() => checkEventLog({ log: forged, pcrs: tpmAfter(raw, extra) })).toThrow(/digest is that of a separator \(00000000\), but the record is not labelled EV_SEPARATOR/);
  });

  it('appending SecureBoot=1 after the real separator changes nothing (configuration after the separator is not the boot policy)', () => {
    const raw = read(NO_SB);
    const forged = appended(relabelled(raw, isSecureBootVar, EV.EFI_VARIABLE_BOOT), [{ index: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: secureBootOn }]);
    const sel = checkEventLog({ log: forged, pcrs: tpmAfter(raw, [{ index: 7, data: secureBootOn }]) }).selectors;
    expect(sel.filter((s) => s.startsWith('tpm:secureboot:enabled') || s.startsWith('tpm:secureboot:disabled'))).toEqual([]);
  });

  it('a record labelled EV_SEPARATOR in PCRs 0–7 whose data is not 00000000 or ffffffff is refused, even when its digest is the hash of its data', () => {
    const raw = read(NO_SB);
    const data = Buffer.from('not a separator');
    const forged = appended(raw, [{ index: 7, type: EV.SEPARATOR, data }]);
    expect(codeOf(() => checkEventLog({ log: forged, pcrs: tpmAfter(raw, [{ index: 7, data }]) }))).toBe('tpm.eventlog_event_data_mismatch');
    // A real separator record whose data was edited (digest kept) is refused as before.
    const sep = parseEventLog(raw).events.find(isPcr7Separator) as ParsedEvent;
    const edited = Buffer.from(raw);
    edited[sep.dataStart] = 1;
    expect(codeOf(() => checkEventLog({ log: edited, pcrs: tpmAfter(raw) }))).toBe('tpm.eventlog_event_data_mismatch');
  });

  it('an S-CRTM version or firmware blob appended after PCR 0\'s separator yields nothing; a second S-CRTM version before it is refused', () => {
    const raw = read(NO_SB);
    const honest = checkEventLog({ log: raw, pcrs: tpmAfter(raw) }).selectors.filter((s) => s.startsWith('tpm:firmware:'));
    expect(honest).toContain('tpm:firmware:scrtm_version:GCE Virtual Firmware v1');
    const version = Buffer.from('PatchedFirmware-9.99\0', 'utf16le');
    const blob = Buffer.from('a firmware volume root measured itself');
    const forged = appended(raw, [
      { index: 0, type: EV.S_CRTM_VERSION, data: version },
      { index: 0, type: EV.EFI_PLATFORM_FIRMWARE_BLOB, data: blob },
    ]);
    const sel = checkEventLog({ log: forged, pcrs: tpmAfter(raw, [{ index: 0, data: version }, { index: 0, data: blob }]) }).selectors;
    expect(sel.filter((s) => s.startsWith('tpm:firmware:'))).toEqual(honest);

    // Before the separator, a second version record (a log built for the purpose).
    const v1 = Buffer.from('v1\0', 'utf16le');
    const twice = agileLog([SHA256], [
      { index: 0, type: EV.S_CRTM_VERSION, data: v1 },
      { index: 0, type: EV.S_CRTM_VERSION, data: version },
      { index: 0, type: EV.SEPARATOR, data: Buffer.alloc(4) },
    ]);
    const regs = replayEventLog(parseEventLog(twice), { banks: ['sha256'], indices: [0] }).get('sha256')!;
    expect(() => checkEventLog({ log: twice, pcrs: [{ bank: 'sha256', index: 0, value: regs.get(0)! }] })).toThrow(/S-CRTM version is measured a second time/);
  });

  it('appended authority and PCR 4 records are what they are documented to be: measured, and visible in the boot chain', () => {
    const raw = read(NO_SB);
    const honest = checkEventLog({ log: raw, pcrs: tpmAfter(raw) }).selectors;
    const app = Buffer.from('an application root extended itself');
    const forged = appended(raw, [{ index: 4, type: EV.EFI_BOOT_SERVICES_APPLICATION, data: app }]);
    const sel = checkEventLog({ log: forged, pcrs: tpmAfter(raw, [{ index: 4, data: app }]) }).selectors;
    const chain = (s: readonly string[]): string => s.find((x) => x.startsWith('tpm:boot_chain:'))!;
    expect(chain(sel)).toBe(`${chain(honest)}+${sha256(app).toString('hex')}`);
  });
});

describe('a forged log cannot make the verifier do unbounded work', () => {
  /** A log of one PCR 7 db variable of `n` distinct X.509 entries (4-byte "certificates") and the separator. */
  function dbLog(n: number): { log: Buffer; pcrs: { bank: string; index: number; value: Buffer }[] } {
    const size = 20;
    const list = Buffer.alloc(28 + n * size);
    Buffer.from(EFI_CERT_X509, 'hex').copy(list, 0);
    list.writeUInt32LE(list.length, 16);
    list.writeUInt32LE(0, 20);
    list.writeUInt32LE(size, 24);
    for (let i = 0; i < n; i++) list.writeUInt32BE(i, 28 + i * size + 16);
    const log = agileLog([SHA256], [
      { index: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: uefiVariable(EFI_IMAGE_SECURITY_DATABASE, 'db', list) },
      { index: 7, type: EV.SEPARATOR, data: Buffer.alloc(4) },
    ]);
    const regs = replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: [7] }).get('sha256')!;
    return { log, pcrs: [{ bank: 'sha256', index: 7, value: regs.get(7)! }] };
  }

  it(`db with ${MAX_BOOT_CERTIFICATES} certificates is read; one more is refused`, () => {
    const ok = dbLog(MAX_BOOT_CERTIFICATES);
    expect(checkEventLog(ok).selectors.filter((s) => s.startsWith('tpm:secureboot:db:'))).toHaveLength(MAX_BOOT_CERTIFICATES);
    const over = dbLog(MAX_BOOT_CERTIFICATES + 1);
    expect(() => checkEventLog(over)).toThrow(/more than 256 distinct X\.509 certificates in db/);
    expect(codeOf(() => checkEventLog(over))).toBe('tpm.eventlog_bad_event');
  });

  it('a 1-MiB db of 52,000 entries is refused in well under a second (it took 30 s when duplicates were found by a list search)', () => {
    const big = dbLog(52_000);
    const t0 = performance.now();
    expect(codeOf(() => checkEventLog(big))).toBe('tpm.eventlog_bad_event');
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it(`more than ${MAX_BOOT_CERTIFICATES} distinct authorities after the separator are refused`, () => {
    const auth = (i: number): BuiltEvent => ({
      index: 7,
      type: EV.EFI_VARIABLE_AUTHORITY,
      // EFI_SIGNATURE_DATA: owner GUID + a (tiny) DER SEQUENCE standing for a certificate.
      data: uefiVariable(EFI_IMAGE_SECURITY_DATABASE, 'db', Buffer.concat([Buffer.alloc(16), Buffer.from([0x30, 0x04, 0x02, 0x02, i >> 8, i & 0xff])])),
    });
    const build = (n: number): { log: Buffer; pcrs: { bank: string; index: number; value: Buffer }[] } => {
      const log = agileLog([SHA256], [{ index: 7, type: EV.SEPARATOR, data: Buffer.alloc(4) }, ...Array.from({ length: n }, (_, i) => auth(i))]);
      const regs = replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: [7] }).get('sha256')!;
      return { log, pcrs: [{ bank: 'sha256', index: 7, value: regs.get(7)! }] };
    };
    expect(checkEventLog(build(MAX_BOOT_CERTIFICATES)).selectors.filter((s) => s.startsWith('tpm:secureboot:authority:'))).toHaveLength(MAX_BOOT_CERTIFICATES);
    expect(() => checkEventLog(build(MAX_BOOT_CERTIFICATES + 1))).toThrow(/more than 256 distinct authorities/);
  });

  it(`an attestor result with more than ${MAX_ATTESTOR_SELECTORS} selectors, or a selector over ${MAX_ATTESTOR_SELECTOR_LEN} characters, is refused`, () => {
    const many = Array.from({ length: MAX_ATTESTOR_SELECTORS }, (_, i) => `tpm:boot_app:sha256:${i}`);
    expect(() => checkSelectors('tpm', { selectors: many, claims: {}, agentIdSuffix: 'x' })).not.toThrow();
    expect(codeOf(() => checkSelectors('tpm', { selectors: [...many, 'tpm:one:more'], claims: {}, agentIdSuffix: 'x' }))).toBe('attest.too_many_selectors');
    const long = `tpm:x:${'a'.repeat(MAX_ATTESTOR_SELECTOR_LEN - 6)}`;
    expect(() => checkSelectors('tpm', { selectors: [long], claims: {}, agentIdSuffix: 'x' })).not.toThrow();
    expect(codeOf(() => checkSelectors('tpm', { selectors: [`${long}a`], claims: {}, agentIdSuffix: 'x' }))).toBe('attest.bad_selector');
  });
});
