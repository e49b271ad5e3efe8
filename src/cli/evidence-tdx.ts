/**
 * `sigil evidence verify tdx QUOTE [--collateral DIR] [--at ISO] [--allow-debug] [--report-data HEX]
 *   [--event-log F [--ccel-table F]] [--accept-status S…] [--allow-unknown-tcb] [--root-sha256 HEX] [--json]`
 *
 * Verifies an Intel TDX DCAP quote offline. QUOTE is the quote (raw, hex or base64; exactly the
 * quote: bytes after it are refused). --collateral is a directory in the layout of
 * src/tdx/collateral.ts (tcbinfo-<fmspc>.json, qe-identity.json, tcb-signing-chain.pem,
 * pck-crl-<ca>.der, pck-crl-issuer-chain-<ca>.pem, root-crl.der). Without it the TCB status is
 * unknown, accepted only with --allow-unknown-tcb. Trust comes from the built-in Intel SGX Root
 * CA pin (or --root-sha256). Never touches the network. The verifier code is imported when the
 * command runs, so other commands do not load it.
 */
import type { Command } from 'commander';
import { SigilError, errorMessage } from '../errors.js';
import { readRegularFile } from '../util/config-file.js';
import { decodeEvidenceBytes, parseHexArg } from '../util/evidence-input.js';
import { parseAtTime } from './at-time.js';
import { EXIT_USAGE, MAX_INPUT_FILE_BYTES, printEvidenceOutcome, rejectedOutcome, UsageError } from './output.js';

const ATTESTOR = 'tdx';

export interface TdxCliOptions {
  collateral?: string;
  at?: string;
  allowDebug?: boolean;
  reportData?: string;
  eventLog?: string;
  ccelTable?: string;
  acceptStatus?: string[];
  allowUnknownTcb?: boolean;
  rootSha256?: string;
  json?: boolean;
}

/** Adds `tdx` under `sigil evidence verify`. */
export function registerTdxEvidence(verifyCmd: Command): void {
  verifyCmd
    .command('tdx')
    .description('verify an Intel TDX DCAP quote (raw, hex or base64) offline with Intel collateral')
    .argument('<quote>', 'TDX quote (v4 or v5)')
    .option('--collateral <dir>', 'Intel collateral directory: tcbinfo-<fmspc>.json, qe-identity.json, tcb-signing-chain.pem, pck-crl-<ca>.der, pck-crl-issuer-chain-<ca>.pem, root-crl.der')
    .option('--at <iso-time>', 'verification time, RFC 3339 with Z or ±hh:mm (default: now); certificates, CRLs and collateral are checked at this time')
    .option('--allow-debug', 'accept a debuggable TD (TDATTRIBUTES.DEBUG)')
    .option('--report-data <hex>', 'require REPORTDATA to equal this (64 bytes, or a 32-byte binding padded with zeros)')
    .option('--event-log <file>', 'CC event log area (/sys/firmware/acpi/tables/data/CCEL): replayed into RTMR0-3, adds boot selectors')
    .option('--ccel-table <file>', 'ACPI CCEL table (/sys/firmware/acpi/tables/CCEL), checked with --event-log')
    .option('--accept-status <status...>', 'accepted TCB statuses (default UpToDate)')
    .option('--allow-unknown-tcb', 'without --collateral, accept the quote with TCB status Unknown (no TCB or revocation check)')
    .option('--root-sha256 <hex>', 'trust the root CA with this SHA-256 (DER) instead of the Intel SGX Root CA')
    .option('--json', 'print one JSON object')
    .action(async (file: string, opts: TdxCliOptions) => {
      process.exitCode = await runTdxEvidence(file, opts);
    });
}

function readFileOrFail(path: string, what: string): Buffer {
  try {
    return readRegularFile(path, MAX_INPUT_FILE_BYTES);
  } catch (e) {
    throw new SigilError('input.unreadable', `cannot read ${what} ${path}: ${errorMessage(e)}`);
  }
}

/** Run the command; resolves to the exit code. Exported for in-process tests. */
export async function runTdxEvidence(file: string, opts: TdxCliOptions): Promise<number> {
  const json = opts.json === true;
  const { TCB_STATUSES } = await import('../tdx/tcb.js');
  let at: Date;
  let reportData: Buffer | undefined;
  let statuses: (typeof TCB_STATUSES)[number][] | undefined;
  try {
    at = parseAtTime(opts.at);
    if (opts.reportData !== undefined) {
      const rd = parseHexArg('--report-data', opts.reportData);
      // A 32-byte value is a session binding: REPORTDATA = binding ‖ 32 zero bytes (DESIGN §3).
      if (rd.length === 32) reportData = Buffer.concat([rd, Buffer.alloc(32)]);
      else if (rd.length === 64) reportData = rd;
      else throw new UsageError(`--report-data must be 64 bytes (or a 32-byte binding), got ${rd.length}`);
    }
    if (opts.acceptStatus !== undefined) {
      for (const s of opts.acceptStatus) if (!(TCB_STATUSES as readonly string[]).includes(s)) throw new UsageError(`--accept-status takes ${TCB_STATUSES.join(', ')}; got "${s}"`);
      statuses = opts.acceptStatus as (typeof TCB_STATUSES)[number][];
    }
    if (opts.rootSha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(opts.rootSha256)) throw new UsageError('--root-sha256 must be 64 hex digits');
    if (opts.ccelTable !== undefined && opts.eventLog === undefined) throw new UsageError('--ccel-table needs --event-log');
    if (opts.collateral === undefined && opts.allowUnknownTcb !== true) throw new UsageError('give --collateral DIR, or --allow-unknown-tcb to verify without it (TCB status Unknown)');
  } catch (e) {
    const msg = errorMessage(e);
    if (json) printEvidenceOutcome(rejectedOutcome(ATTESTOR, new UsageError(msg)), true);
    else process.stderr.write(`error: ${msg}\n`);
    return EXIT_USAGE;
  }
  try {
    const { verifyTdxQuote } = await import('../tdx/verify.js');
    const { collateralKeyOfQuote, loadCollateralDir } = await import('../tdx/collateral.js');
    const quote = decodeEvidenceBytes(readFileOrFail(file, 'quote file'));
    let collateral;
    if (opts.collateral !== undefined) {
      const key = collateralKeyOfQuote(quote);
      collateral = await loadCollateralDir(opts.collateral, key);
      if (!collateral) throw new SigilError('tdx.collateral_missing', `--collateral ${opts.collateral} holds no collateral for FMSPC ${key.fmspc} (PCK ${key.ca} CA)`);
    }
    const eventLog =
      opts.eventLog === undefined
        ? undefined
        : { area: readFileOrFail(opts.eventLog, '--event-log'), ...(opts.ccelTable === undefined ? {} : { table: readFileOrFail(opts.ccelTable, '--ccel-table') }) };
    const v = verifyTdxQuote(quote, collateral, {
      now: at,
      allowDebug: opts.allowDebug === true,
      allowUnknownTcb: opts.allowUnknownTcb === true,
      ...(statuses ? { acceptedTcbStatuses: statuses } : {}),
      ...(reportData ? { expectedReportData: reportData } : {}),
      ...(opts.rootSha256 ? { rootSha256: opts.rootSha256.toLowerCase() } : {}),
      ...(eventLog ? { eventLog } : {}),
    });
    return printEvidenceOutcome({ ok: true, attestor: ATTESTOR, selectors: v.selectors, claims: v.claims }, json);
  } catch (e) {
    return printEvidenceOutcome(rejectedOutcome(ATTESTOR, e), json);
  }
}
