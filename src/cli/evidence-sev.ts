/**
 * `sigil evidence verify sev_snp FILE [--vcek F] [--ca F] [--collateral-dir DIR] [--crl F] [--at ISO]
 *   [--allow-debug] [--allow-migration-agent] [--vmpl N…] [--report-data HEX] [--ark-sha256 HEX] [--json]`
 *
 * Verifies an SEV-SNP attestation report offline. FILE is the 0x4A0-byte report (raw, hex or
 * base64). --vcek is the VCEK or VLEK (DER or PEM); --ca the ASK+ARK (or ASVK+ARK) PEM as AMD
 * KDS serves it. Trust always comes from the built-in ARK pins (or --ark-sha256): --ca only
 * supplies certificates. Without --vcek/--ca, --collateral-dir is searched
 * (<dir>/<product>/<hwid>-<tcb>.der, <dir>/ask_ark_<product>.pem). Never touches the network.
 *
 * --crl is AMD's CRL for the report's product line and key kind (KDS `/vcek|vlek/v1/<Product>/crl`,
 * DER or PEM). The verifier's check runs with mode `require` (src/sev/crl.ts): the CRL must be
 * issued and signed by the pinned ARK and current at --at, and an ARK or ASK/ASVK it lists is
 * refused (`sev.cert_revoked`). Without --crl revocation is not checked; `claims.revocation` says
 * which of the two happened. Without --crl, a CRL kept in --collateral-dir
 * (`crl_<vcek|vlek>_<product>.der`) is checked as the attestor without KDS checks it (`best_effort`).
 */
import { SigilError, errorMessage } from '../errors.js';
import { readRegularFile } from '../util/config-file.js';
import { certificatesFromFile, parseAmdExtensions, parseSevCert, productFromEndorsementCert } from '../sev/certs.js';
import { SnpCollateralSource, crlFileName } from '../sev/collateral.js';
import { type SnpProduct, SNP_PRODUCTS, parseSnpReport, productFromReport } from '../sev/report.js';
import { SEV_ATTESTOR, verifySnpEvidence } from '../sev/verify.js';
import { decodeEvidenceBytes, parseHexArg } from '../util/evidence-input.js';
import { parseAtTime } from './at-time.js';
import { EXIT_USAGE, MAX_INPUT_FILE_BYTES, printEvidenceOutcome, rejectedOutcome, UsageError } from './output.js';

export interface SevCliOptions {
  vcek?: string;
  ca?: string;
  collateralDir?: string;
  crl?: string;
  at?: string;
  allowDebug?: boolean;
  allowMigrationAgent?: boolean;
  vmpl?: string[];
  reportData?: string;
  arkSha256?: string;
  json?: boolean;
}

function parseVmpls(v: string[] | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  return v.map((s) => {
    if (!/^[0-3]$/.test(s)) throw new UsageError(`--vmpl takes integers 0..3, got "${s}"`);
    return Number(s);
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
export async function runSevEvidence(file: string, opts: SevCliOptions): Promise<number> {
  const json = opts.json === true;
  let at: Date;
  let vmpls: number[] | undefined;
  let reportData: Buffer | undefined;
  let arkSha256: string | undefined;
  try {
    at = parseAtTime(opts.at);
    vmpls = parseVmpls(opts.vmpl);
    if (opts.reportData !== undefined) {
      const rd = parseHexArg('--report-data', opts.reportData);
      // A 32-byte value is a session binding: REPORT_DATA = binding ‖ 32 zero bytes (DESIGN §3).
      if (rd.length === 32) reportData = Buffer.concat([rd, Buffer.alloc(32)]);
      else if (rd.length === 64) reportData = rd;
      else throw new UsageError(`--report-data must be 64 bytes (or a 32-byte binding), got ${rd.length}`);
    }
    if (opts.arkSha256 !== undefined) {
      if (!/^[0-9a-fA-F]{64}$/.test(opts.arkSha256)) throw new UsageError('--ark-sha256 must be 64 hex digits');
      arkSha256 = opts.arkSha256.toLowerCase();
    }
    if (opts.vcek === undefined && opts.collateralDir === undefined) throw new UsageError('give --vcek FILE (the VCEK or VLEK) or --collateral-dir DIR');
  } catch (e) {
    const msg = errorMessage(e);
    if (json) printEvidenceOutcome(rejectedOutcome(SEV_ATTESTOR, new UsageError(msg)), true);
    else process.stderr.write(`error: ${msg}\n`);
    return EXIT_USAGE;
  }
  try {
    const reportBytes = decodeEvidenceBytes(readFileOrFail(file, 'report file'));
    const report = parseSnpReport(reportBytes);
    const reportProduct = productFromReport(report);
    const collateral = opts.collateralDir === undefined ? undefined : new SnpCollateralSource({ dir: opts.collateralDir });

    let endorsement: Buffer | undefined;
    if (opts.vcek !== undefined) {
      const certs = certificatesFromFile(readFileOrFail(opts.vcek, '--vcek'), `--vcek ${opts.vcek}`);
      if (certs.length !== 1) throw new SigilError('sev.cert_malformed', `--vcek ${opts.vcek} must hold exactly one certificate, found ${certs.length}`);
      endorsement = certs[0];
    } else if (collateral) {
      endorsement = await collateral.vcek(reportProduct ? [reportProduct] : SNP_PRODUCTS, report.chipId, report.reportedTcb);
    }

    const chain: Buffer[] = [];
    if (opts.ca !== undefined) chain.push(...certificatesFromFile(readFileOrFail(opts.ca, '--ca'), `--ca ${opts.ca}`));
    let product: SnpProduct | undefined = reportProduct;
    if (!product && endorsement) {
      const leaf = parseSevCert(endorsement, 'VCEK/VLEK');
      product = productFromEndorsementCert(leaf, parseAmdExtensions(leaf));
    }
    if (chain.length === 0 && collateral && product) chain.push(...((await collateral.chain(product, report.signingKey)) ?? []));
    if (chain.length === 0 && endorsement) {
      const p = product ?? '<product>';
      throw new SigilError(
        'sev.chain_incomplete',
        `no ${report.signingKey === 'vcek' ? 'ASK' : 'ASVK'}+ARK chain: pass --ca ${report.signingKey === 'vcek' ? 'ask' : 'asvk'}_ark_${p}.pem (AMD KDS /${report.signingKey}/v1/<Product>/cert_chain) or --collateral-dir holding it`,
      );
    }

    // --crl: the check is required, as the sev_snp attestor requires it when it has a CRL source.
    // Otherwise a CRL in --collateral-dir (crl_<vcek|vlek>_<product>.der, where the attestor keeps
    // it) is used as the attestor without KDS uses it (best_effort: a stale or unusable one is
    // reported in claims.revocation, a listed ARK/ASK is still refused).
    let crl: Buffer | undefined;
    let noCrl = 'no --crl given';
    if (opts.crl !== undefined) crl = readFileOrFail(opts.crl, '--crl');
    else if (collateral) {
      if (product) {
        crl = (await collateral.lookupCrl(product, report.signingKey, at))?.ders[0];
        noCrl = `no --crl given and no ${crlFileName(opts.collateralDir as string, product, report.signingKey)}`;
      } else noCrl = 'no --crl given and the product line is unknown, so no CRL in --collateral-dir applies';
    }
    const v = verifySnpEvidence(
      {
        report: reportBytes,
        ...(endorsement ? { endorsementCert: endorsement } : {}),
        chain,
        ...(crl ? { crl } : { crlUnavailableReason: noCrl }),
      },
      {
        now: at,
        crl: { mode: opts.crl !== undefined ? 'require' : 'best_effort' },
        allowDebug: opts.allowDebug === true,
        allowMigrationAgent: opts.allowMigrationAgent === true,
        ...(vmpls ? { vmpls } : {}),
        ...(reportData ? { expectedReportData: reportData } : {}),
        ...(arkSha256 ? { arkSha256: { milan: arkSha256, genoa: arkSha256, turin: arkSha256 } } : {}),
      },
    );
    return printEvidenceOutcome({ ok: true, attestor: SEV_ATTESTOR, selectors: v.selectors, claims: { ...v.claims, revocation: v.revocation } }, json);
  } catch (e) {
    return printEvidenceOutcome(rejectedOutcome(SEV_ATTESTOR, e), json);
  }
}
