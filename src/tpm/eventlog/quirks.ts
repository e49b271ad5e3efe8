/**
 * Firmware and boot loader quirks Sigil tolerates in event logs, each named (the name appears in
 * the claims when a log needed it) and documented in docs/tpm.md. Nothing else is tolerated.
 */
import type { EventLogAlgorithm } from './algorithms.js';
import { bankHashHex } from './algorithms.js';

export const QUIRKS = {
  /**
   * Older shim (before 15.3) measured its `Shim`/`MokList` EV_EFI_VARIABLE_AUTHORITY events with
   * bytes after the UEFI_VARIABLE_DATA and a digest over the event data less its last byte. Used
   * only when the declared variable lies wholly inside the digested bytes.
   */
  shimAuthorityExtraBytes: 'shim_authority_extra_bytes',
  /** A log without the EV_EFI_ACTION "Exit Boot Services Invocation" events (some firmware omits them). */
  missingExitBootServices: 'missing_exit_boot_services',
  /** The SecureBoot variable measured with no data (variable absent): Secure Boot is off. */
  emptySecureBootVariable: 'empty_secureboot_variable',
  /** GRUB's PCR 8 events carry "kernel_cmdline: <line>\0" but hash only <line>. */
  grubStringWithoutNul: 'grub_cmdline_label',
} as const;

export type QuirkName = (typeof QUIRKS)[keyof typeof QUIRKS];

/**
 * How many leading bytes of `data` the digest (lowercase hex `want`) covers under the shim
 * authority quirk, or undefined when the digest is neither over all of `data` nor over all but its
 * last byte.
 */
export function shimAuthorityDigestedLength(alg: EventLogAlgorithm, want: string, data: Buffer): number | undefined {
  if (bankHashHex(alg, data) === want) return data.length;
  if (data.length > 0 && bankHashHex(alg, data.subarray(0, data.length - 1)) === want) return data.length - 1;
  return undefined;
}
