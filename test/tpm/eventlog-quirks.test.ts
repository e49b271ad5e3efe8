/**
 * The firmware and boot loader quirks Sigil tolerates (src/tpm/eventlog/quirks.ts, docs/tpm.md
 * "Tolerated quirks") are named in the facts exactly when a real log needed them, and only when
 * the PCR whose events show the quirk is among the quoted (trusted) ones.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkEventLog, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { requireTestdata, td } from '../support/testdata.js';

requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));

/** The log checked against its own replay in `bank`, PCRs `indices` quoted. */
function quirksOf(file: string, indices: number[]): string[] {
  const raw = read(file);
  const log = parseEventLog(raw);
  const bank = log.banks.some((b) => b.name === 'sha256') ? 'sha256' : 'sha1';
  const m = replayEventLog(log, { banks: [bank], indices }).get(bank)!;
  const r = checkEventLog({ log: raw, pcrs: indices.map((index) => ({ bank, index, value: m.get(index)! })) });
  return [...r.facts!.quirks].sort();
}

const ALL = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

describe('event log quirks: named exactly when a real log needs them', () => {
  it.each([
    ['crypto_agile_eventlog', ['empty_secureboot_variable', 'missing_exit_boot_services']],
    // Legacy SHA-1 form (TCG_PCR_EVENT only), no "Exit Boot Services Invocation" action.
    ['ebs_event_missing_eventlog', ['missing_exit_boot_services']],
    ['keylime_binary_bios_measurements', ['grub_cmdline_label', 'missing_exit_boot_services']],
    ['keylime_binary_bios_measurements_secureboot', ['grub_cmdline_label']],
    ['sb_cert_eventlog', ['missing_exit_boot_services', 'shim_authority_extra_bytes']],
    ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', ['grub_cmdline_label']],
  ])('%s: %j', (file, want) => {
    expect(quirksOf(file, ALL)).toEqual(want);
  });

  it('a quirk is named only when the PCR it is seen in is quoted', () => {
    // GRUB's command line events are in PCR 8: not quoted, no GRUB quirk.
    expect(quirksOf('ubuntu_2104_shielded_vm_no_secure_boot_eventlog', [0, 1, 2, 3, 4, 5, 6, 7])).toEqual([]);
    // Exit Boot Services is a PCR 5 event: without PCR 5 its absence is not a fact.
    expect(quirksOf('ebs_event_missing_eventlog', [0, 1, 2, 3, 4, 6, 7])).toEqual([]);
    // The empty SecureBoot variable is a PCR 7 event.
    expect(quirksOf('crypto_agile_eventlog', [0, 1, 2, 3, 4, 5, 6])).toEqual(['missing_exit_boot_services']);
  });
});
