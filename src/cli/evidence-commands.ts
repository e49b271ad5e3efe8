/**
 * `sigil evidence verify tpm|aws_nitro|sev_snp|tdx`: the command definitions only. The verb is the
 * attestor's name; `aws-nitro` and `sev-snp` (the spelling of the first releases) stay as aliases. Each command's
 * implementation (and the verification code behind it) is imported when the command runs, so
 * other commands — the agent daemon above all — do not load the evidence verifiers.
 */
import type { Command } from 'commander';
import type { NitroCliOptions } from './evidence-nitro.js';
import type { SevCliOptions } from './evidence-sev.js';
import type { EventLogCliOptions, TpmEvidenceOptions } from './evidence-tpm.js';
export { registerTdxEvidence } from './evidence-tdx.js';

/** Adds `tpm` under `sigil evidence verify`. */
export function registerTpmEvidence(verifyCmd: Command): void {
  verifyCmd
    .command('tpm')
    .description('verify a TPM quote, AK and EK certificate offline (files as tpm2-tools writes them; raw, hex or base64)')
    .requiredOption('--ek-cert <file>', 'EK certificate (DER or PEM), e.g. from `tpm2_nvread 0x1c00002`')
    .requiredOption('--ek-ca <files...>', 'trusted EK CA certificates (PEM bundles or DER): roots and intermediates')
    .option('--ek-intermediate <files...>', 'extra untrusted intermediate certificates for building the chain')
    .requiredOption('--ak-pub <file>', 'AK public area, TPM2B_PUBLIC (`tpm2_createak -u`)')
    .requiredOption('--quote <file>', 'quote message, TPMS_ATTEST (`tpm2_quote -m`) or TPM2B_ATTEST')
    .requiredOption('--signature <file>', 'quote signature, TPMT_SIGNATURE (`tpm2_quote -s`)')
    .requiredOption('--nonce <hex>', "expected qualifying data (the quote's extraData, `tpm2_quote -q`)")
    .option('--pcr-values <file>', 'PCR values: `tpm2_quote -o` output, or YAML/JSON as printed by tpm2_pcrread')
    .option('--pcrs <spec>', 'require exactly this PCR selection, e.g. sha256:0,1,2,3,4,5,6,7')
    .option('--event-log <file>', 'firmware event log (binary_bios_measurements): replayed against the quoted PCRs, adds boot selectors')
    .option('--ima-log <file>', 'IMA runtime measurements (binary or ASCII list): replayed against the quoted PCR 10')
    .option('--ek-pub <file>', "EK public area, TPM2B_PUBLIC (`tpm2_createek -u`, `tpm2_readpublic -o`): check that the quote's signer is the AK as the EK's child")
    .option('--at <iso-time>', 'verification time for certificate validity, RFC 3339 with Z or ±hh:mm (default: now)')
    .option('--json', 'print one JSON object')
    .action(async (opts: TpmEvidenceOptions) => {
      const { runTpmEvidence } = await import('./evidence-tpm.js');
      process.exitCode = await runTpmEvidence(opts);
    });
}

/** Adds `eventlog` under `sigil evidence`: parse and replay a TCG event log offline. */
export function registerEventLogCommand(evidenceCmd: Command): void {
  evidenceCmd
    .command('eventlog')
    .description('parse and replay a TCG firmware event log offline; print the replayed PCRs per bank and the boot selectors it yields')
    .argument('<file>', 'event log (binary_bios_measurements; raw, hex or base64)')
    .option('--pcrs <json>', 'PCR values the log must replay to, JSON or a JSON file: { "sha256": { "0": "<hex>", … } }')
    .option('--json', 'print one JSON object')
    .action(async (file: string, opts: EventLogCliOptions) => {
      const { runEventLogCommand } = await import('./evidence-tpm.js');
      process.exitCode = runEventLogCommand(file, opts);
    });
}

/** Add `aws_nitro` (alias `aws-nitro`) under `sigil evidence verify`. */
export function registerNitroEvidence(verifyCmd: Command): void {
  verifyCmd
    .command('aws_nitro')
    .alias('aws-nitro')
    .description('verify an AWS Nitro Enclaves attestation document (raw CBOR, hex or base64) offline')
    .argument('<file>', 'attestation document (COSE_Sign1)')
    .option('--at <iso-time>', 'verification time, RFC 3339 with Z or ±hh:mm (default: now); certificate validity is checked at this time')
    .option('--allow-debug', 'accept a debug-mode enclave (PCR0, PCR1, PCR2 all zero)')
    .option('--nonce <hex>', 'require the document nonce to equal this value')
    .option('--root <pem>', 'trust this root certificate (PEM) instead of the built-in AWS Nitro Enclaves Root-G1')
    .option('--json', 'print one JSON object')
    .action(async (file: string, opts: NitroCliOptions) => {
      const { runNitroEvidence } = await import('./evidence-nitro.js');
      process.exitCode = runNitroEvidence(file, opts);
    });
}

/** Add `sev_snp` (alias `sev-snp`) under `sigil evidence verify`. */
export function registerSevEvidence(verifyCmd: Command): void {
  verifyCmd
    .command('sev_snp')
    .alias('sev-snp')
    .description('verify an AMD SEV-SNP attestation report (raw, hex or base64) offline')
    .argument('<file>', 'attestation report (0x4A0 bytes)')
    .option('--vcek <file>', 'VCEK or VLEK certificate (DER or PEM)')
    .option('--ca <pem>', 'ASK+ARK (or ASVK+ARK) certificates, PEM; the ARK must match the built-in pin (or --ark-sha256)')
    .option('--collateral-dir <dir>', 'look up the VCEK (<product>/<hwid>-<tcb>.der) and ask_ark_<product>.pem here')
    .option('--crl <file>', "AMD's CRL for the report's product line and key kind (DER or PEM): required to verify under the ARK and be current; a listed ARK or ASK/ASVK is refused")
    .option('--at <iso-time>', 'verification time, RFC 3339 with Z or ±hh:mm (default: now); certificate validity is checked at this time')
    .option('--allow-debug', 'accept a guest whose policy allows debugging')
    .option('--allow-migration-agent', 'accept a guest whose policy allows a migration agent (MIGRATE_MA)')
    .option('--vmpl <n...>', 'allowed VMPLs (default 0)')
    .option('--report-data <hex>', 'require REPORT_DATA to equal this (64 bytes, or a 32-byte binding padded with zeros)')
    .option('--ark-sha256 <hex>', 'trust the ARK with this SHA-256 (DER) instead of the built-in AMD pins')
    .option('--json', 'print one JSON object')
    .action(async (file: string, opts: SevCliOptions) => {
      const { runSevEvidence } = await import('./evidence-sev.js');
      process.exitCode = await runSevEvidence(file, opts);
    });
}
