/**
 * Attack review: PCR 11 is extendable from userspace (locality 0), so root on a node that booted
 * a UKI with a bad kernel can extend PCR 11 with a second, well-formed pair for `.linux` — the
 * hash of ".linux\0", then the digest of a known good kernel — and append those two records to
 * the log it sends. The replay matches the quote; the name record is proven by its digest. Without
 * a check the verifier then emits `tpm:uki:section:linux:<bank>:<good digest>` next to the bad one,
 * and an entry that requires the good kernel's selector matches. systemd-stub measures each section
 * of the UKI once, so a section measured twice is refused.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkEventLog, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { codeOf } from '../support/codes.js';
import { agileLog, type BuiltEvent } from '../tpm/eventlog-builder.js';

const EV_IPL = 0xd;
const SHA1 = 0x4;
const SHA256 = 0xb;
const h = (alg: string, b: Buffer | string): Buffer => createHash(alg).update(b).digest();
const utf16 = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf16le');

function section(name: string, contents: Buffer): BuiltEvent[] {
  const nameBytes = Buffer.from(`${name}\0`, 'latin1');
  return [
    { index: 11, type: EV_IPL, data: utf16(name), digests: [[SHA1, h('sha1', nameBytes)], [SHA256, h('sha256', nameBytes)]] },
    { index: 11, type: EV_IPL, data: utf16(name), digests: [[SHA1, h('sha1', contents)], [SHA256, h('sha256', contents)]] },
  ];
}

function quoted(log: Buffer): { bank: string; index: number; value: Buffer }[] {
  const r = replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: [11] }).get('sha256')!;
  return [{ bank: 'sha256', index: 11, value: r.get(11)! }];
}

const evilKernel = Buffer.from('kernel the attacker booted');
const goodKernel = Buffer.from('kernel the policy allows');
const osrel = Buffer.from('ID=fedora\n');

describe('attack review: UKI section selectors', () => {
  it('a second .linux pair extended from userspace is refused, not turned into a second selector', () => {
    const log = agileLog([SHA1, SHA256], [...section('.linux', evilKernel), ...section('.osrel', osrel), ...section('.linux', goodKernel)]);
    const good = `tpm:uki:section:linux:sha256:${h('sha256', goodKernel).toString('hex')}`;
    let selectors: string[] | undefined;
    const code = codeOf(() => {
      selectors = checkEventLog({ log, pcrs: quoted(log) }).selectors;
    });
    expect(selectors ?? []).not.toContain(good);
    expect(code).toBe('tpm.eventlog_event_data_mismatch');
  });

  it('one pair per section (what systemd-stub writes) still yields each section once', () => {
    const log = agileLog([SHA1, SHA256], [...section('.linux', goodKernel), ...section('.osrel', osrel)]);
    const r = checkEventLog({ log, pcrs: quoted(log) });
    expect(r.facts!.ukiSections.map((s) => s.name)).toEqual(['.linux', '.osrel']);
    expect(r.selectors).toContain(`tpm:uki:section:linux:sha256:${h('sha256', goodKernel).toString('hex')}`);
  });
});
