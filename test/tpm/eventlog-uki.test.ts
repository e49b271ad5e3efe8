/**
 * UKI measurements (systemd TPM2_PCR_MEASUREMENTS): systemd-stub measures each UKI PE section
 * into PCR 11 as a pair of EV_IPL records (the ASCII name with its NUL, then the contents, both
 * described by the UTF-16 name), the command line into PCR 12 (UTF-16, no NUL), and
 * systemd-pcrextend adds boot phases to PCR 11 from userspace. No real UKI event log was
 * available: these logs are built per the documented format with the test log builder.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkEventLog, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { codeOf } from '../support/codes.js';
import { agileLog, type BuiltEvent } from './eventlog-builder.js';

const EV_IPL = 0xd;
const EV_EVENT_TAG = 6;
const EV_SEPARATOR = 4;
const SHA256 = 0xb;
const SHA1 = 0x4;
const h = (alg: string, b: Buffer | string): Buffer => createHash(alg).update(b).digest();
const utf16 = (s: string, nul = true): Buffer => Buffer.from(nul ? `${s}\0` : s, 'utf16le');

/** The two PCR 11 records systemd-stub writes for one section. */
function section(name: string, contents: Buffer, opts: { nameDigestOf?: string; dataLabel?: string } = {}): BuiltEvent[] {
  const nameBytes = Buffer.from(`${opts.nameDigestOf ?? name}\0`, 'latin1');
  return [
    { index: 11, type: EV_IPL, data: utf16(name), digests: [[SHA1, h('sha1', nameBytes)], [SHA256, h('sha256', nameBytes)]] },
    { index: 11, type: EV_IPL, data: utf16(opts.dataLabel ?? name), digests: [[SHA1, h('sha1', contents)], [SHA256, h('sha256', contents)]] },
  ];
}

const linux = Buffer.from('kernel image bytes');
const osrel = Buffer.from('ID=fedora\nVERSION_ID=41\n');
const cmdline = 'root=/dev/sda2 ro quiet';
const initrd = Buffer.from('initrd bytes');

function ukiLog(extra: BuiltEvent[] = []): Buffer {
  return agileLog(
    [SHA1, SHA256],
    [
      ...section('.linux', linux),
      ...section('.osrel', osrel),
      ...section('.cmdline', Buffer.from(cmdline)),
      ...section('.initrd', initrd),
      // systemd-stub: the command line in PCR 12, digest over UTF-16 without NUL, description with one.
      { index: 12, type: EV_IPL, data: utf16(cmdline), digests: [[SHA1, h('sha1', utf16(cmdline, false))], [SHA256, h('sha256', utf16(cmdline, false))]] },
      ...extra,
    ],
  );
}

function pcrs(log: Buffer, idx: number[]): { bank: string; index: number; value: Buffer }[] {
  const r = replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: idx }).get('sha256')!;
  return idx.map((index) => ({ bank: 'sha256', index, value: r.get(index)! }));
}

describe('UKI selectors (PCR 11, 12)', () => {
  it('each section yields tpm:uki:section:<name>:<bank>:<digest of contents>, in order; the command line its text', () => {
    const log = ukiLog();
    const r = checkEventLog({ log, pcrs: pcrs(log, [11, 12]) });
    expect(r.facts!.ukiSections).toEqual([
      { name: '.linux', digest: h('sha256', linux).toString('hex') },
      { name: '.osrel', digest: h('sha256', osrel).toString('hex') },
      { name: '.cmdline', digest: h('sha256', cmdline).toString('hex') },
      { name: '.initrd', digest: h('sha256', initrd).toString('hex') },
    ]);
    expect(r.selectors).toContain(`tpm:uki:section:linux:sha256:${h('sha256', linux).toString('hex')}`);
    expect(r.selectors).toContain(`tpm:uki:section:osrel:sha256:${h('sha256', osrel).toString('hex')}`);
    expect(r.selectors).toContain(`tpm:kernel_cmdline:sha256:${h('sha256', utf16(cmdline, false)).toString('hex')}`);
    expect(r.facts!.kernelCmdlines).toEqual([{ digest: h('sha256', utf16(cmdline, false)).toString('hex'), text: cmdline }]);
  });

  it('nothing from PCR 11 when it is not quoted (or not compared)', () => {
    const log = ukiLog();
    expect(checkEventLog({ log, pcrs: pcrs(log, [12]) }).selectors.some((s) => s.startsWith('tpm:uki:'))).toBe(false);
    expect(checkEventLog({ log, pcrs: pcrs(log, [11, 12]), unloggedPcrs: [11] }).selectors.some((s) => s.startsWith('tpm:uki:'))).toBe(false);
  });

  it('PCR 11 after boot: the log plus systemd-pcrextend phases up to "ready" matches, and the phase is reported', () => {
    const log = ukiLog();
    const [p11, p12] = pcrs(log, [11, 12]);
    let v = p11!.value;
    for (const phase of ['enter-initrd', 'leave-initrd', 'sysinit', 'ready']) v = h('sha256', Buffer.concat([v, h('sha256', phase)]));
    const r = checkEventLog({ log, pcrs: [{ ...p11!, value: v }, p12!] });
    expect(r.pcr11Phase.get('sha256')).toBe('ready');
    expect(r.selectors.filter((s) => s.startsWith('tpm:uki:section:'))).toHaveLength(4);
    // Any other extension is a mismatch.
    const other = h('sha256', Buffer.concat([v, h('sha256', 'rootkit')]));
    expect(codeOf(() => checkEventLog({ log, pcrs: [{ ...p11!, value: other }, p12!] }))).toBe('tpm.eventlog_mismatch');
  });

  it('attack: a relabelled record never invents a section — a name record whose digest is not its name gives none', () => {
    // The first record's digest is the hash of ".initrd\0" but its label says .linux: not a proven .linux name.
    const log = agileLog([SHA1, SHA256], [...section('.linux', linux, { nameDigestOf: '.initrd' })]);
    const r = checkEventLog({ log, pcrs: pcrs(log, [11]) });
    expect(r.facts!.ukiSections).toEqual([]);
    expect(r.selectors.some((s) => s.startsWith('tpm:uki:'))).toBe(false);
  });

  it('attack: a data record labelled as another section, or a name record without its data record, is refused', () => {
    const relabelled = agileLog([SHA1, SHA256], section('.linux', linux, { dataLabel: '.initrd' }));
    expect(codeOf(() => checkEventLog({ log: relabelled, pcrs: pcrs(relabelled, [11]) }))).toBe('tpm.eventlog_event_data_mismatch');
    const lone = agileLog([SHA1, SHA256], [section('.linux', linux)[0]!]);
    expect(codeOf(() => checkEventLog({ log: lone, pcrs: pcrs(lone, [11]) }))).toBe('tpm.eventlog_event_data_mismatch');
  });

  it('older systemd-boot (PCR 8, UTF-16) and the Linux EFI stub (PCR 9 tagged events) command line and initrd digests', () => {
    const sep = { index: 8, type: EV_SEPARATOR, data: Buffer.alloc(4) };
    const opts = Buffer.from('LOADED_IMAGE::LoadOptions\0', 'latin1');
    const tagged = (tag: number, label: Buffer, digestOf: Buffer): BuiltEvent => {
      const d = Buffer.alloc(8);
      d.writeUInt32LE(tag, 0);
      d.writeUInt32LE(label.length, 4);
      return { index: 9, type: EV_EVENT_TAG, data: Buffer.concat([d, label]), digests: [[SHA1, h('sha1', digestOf)], [SHA256, h('sha256', digestOf)]] };
    };
    const log = agileLog(
      [SHA1, SHA256],
      [
        { index: 8, type: EV_IPL, data: utf16(cmdline), digests: [[SHA1, h('sha1', utf16(cmdline, false))], [SHA256, h('sha256', utf16(cmdline, false))]] },
        sep,
        tagged(0x8f3b22ed, opts, utf16('console=ttyS0', false)),
        tagged(0x8730ec41, Buffer.from('Linux initrd\0'), initrd),
      ],
    );
    const r = checkEventLog({ log, pcrs: pcrs(log, [8, 9]) });
    expect(r.facts!.kernelCmdlines).toEqual([
      { digest: h('sha256', utf16(cmdline, false)).toString('hex'), text: cmdline },
      { digest: h('sha256', utf16('console=ttyS0', false)).toString('hex'), text: undefined },
    ]);
    expect(r.selectors).toContain(`tpm:initrd:sha256:${h('sha256', initrd).toString('hex')}`);
  });
});
