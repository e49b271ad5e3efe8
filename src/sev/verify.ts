/**
 * SEV-SNP evidence verification, pure: report bytes + endorsement certificate + chain
 * certificates + time + policy in, verified selectors/claims or a SigilError out. No I/O.
 */
import { timingSafeEqual, verify as cryptoVerify } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import {
  type SnpProduct,
  type SnpReport,
  type SnpSigningKey,
  type SnpTcbParts,
  SNP_PRODUCTS,
  decodeTcb,
  hwIdForProduct,
  parseSnpReport,
  productFromReport,
  tcbHex,
  tcbReservedZero,
} from './report.js';
import { type VerifiedEndorsement, endorsementTcb, parseAmdExtensions, parseSevCert, productFromEndorsementCert, resolveArkPins, verifyEndorsementChain } from './certs.js';
import { type SnpCrlPolicy, type SnpRevocation, checkAmdRevocation } from './crl.js';

export const SEV_ATTESTOR = 'sev_snp';

export interface SnpMinTcb {
  bootloader?: number;
  tee?: number;
  snp?: number;
  microcode?: number;
  /** Turin only; ignored for Milan/Genoa. */
  fmc?: number;
}

export interface SnpPolicyOptions {
  /** Accept reports whose guest policy allows debugging. Default false. */
  allowDebug?: boolean;
  /**
   * Accept reports whose guest policy allows a migration agent (MIGRATE_MA, bit 18). Default false:
   * the migration agent, which the host binds at launch and this verifier does not attest, can
   * export the guest's memory and state.
   */
  allowMigrationAgent?: boolean;
  /** VMPLs the report may come from. Default [0]. */
  vmpls?: number[];
  /** Product lines accepted. Default all three. */
  products?: SnpProduct[];
  /** Minimum REPORTED_TCB components. */
  minTcb?: SnpMinTcb;
  /**
   * Minimum LAUNCH_TCB components (the TCB the guest was launched under, signed in the report).
   * Refuses a guest launched under older firmware that the host has since updated. Default: none.
   */
  minLaunchTcb?: SnpMinTcb;
  minGuestSvn?: number;
  /** Allowed launch measurements (hex, 48 bytes each). Empty or absent = any. */
  measurements?: string[];
  /** ARK SHA-256 overrides per product (tests, or a new AMD root). */
  arkSha256?: Partial<Record<SnpProduct, string>>;
}

export interface SnpEvidence {
  /** The 0x4A0-byte attestation report. */
  report: Uint8Array;
  /** VCEK or VLEK certificate, DER. */
  endorsementCert?: Uint8Array;
  /** ASK/ASVK and ARK certificates, DER, any order. */
  chain?: readonly Uint8Array[];
  /** AMD's CRL for the report's product line and key kind (DER or PEM), as fetched or read. */
  crl?: Uint8Array;
  /** Why there is no `crl` (named in sev.crl_unavailable). */
  crlUnavailableReason?: string;
}

export interface SnpVerifyOptions extends SnpPolicyOptions {
  /** Verification time (certificate validity). */
  now: Date;
  /** When set, REPORT_DATA must equal these 64 bytes (compared in constant time). */
  expectedReportData?: Uint8Array;
  /** Revocation check against `evidence.crl` (crl.ts). Default mode `best_effort`: checked when a CRL is supplied. */
  crl?: SnpCrlPolicy;
}

export interface SnpVerification {
  report: SnpReport;
  product: SnpProduct;
  signingKey: SnpSigningKey;
  reportedTcb: SnpTcbParts;
  /** Whether the ARK and ASK/ASVK were checked against AMD's CRL, and which CRL. */
  revocation: SnpRevocation;
  selectors: string[];
  claims: Record<string, unknown>;
  agentIdSuffix: string;
}

function fail(code: string, message: string, status = 403): never {
  throw new SigilError(code, message, { status });
}

/** REPORT_DATA for a session: binding ‖ 32 zero bytes (DESIGN §3). */
export function reportDataForBinding(binding: Uint8Array): Buffer {
  if (binding.byteLength !== 32) throw new SigilError('sev.binding_invalid', `session binding must be 32 bytes, got ${binding.byteLength}`);
  return Buffer.concat([Buffer.from(binding), Buffer.alloc(32)]);
}

const TCB_NAMES: (keyof SnpMinTcb)[] = ['bootloader', 'tee', 'snp', 'microcode', 'fmc'];

/** The reserved bytes inside each of the report's four TCB_VERSIONs are zero for `product`'s layout. */
function checkTcbReserved(report: SnpReport, product: SnpProduct): void {
  for (const [name, tcb] of [
    ['CURRENT_TCB', report.currentTcb],
    ['REPORTED_TCB', report.reportedTcb],
    ['COMMITTED_TCB', report.committedTcb],
    ['LAUNCH_TCB', report.launchTcb],
  ] as const) {
    if (!tcbReservedZero(tcb, product)) fail('sev.report_reserved_nonzero', `report ${name} has non-zero reserved bytes for ${product}`);
  }
}

function checkEndorsementMatchesReport(report: SnpReport, end: VerifiedEndorsement): void {
  const product = end.product;
  if (report.signingKey !== end.kind) {
    fail('sev.signing_key_mismatch', `report says it is signed by the ${report.signingKey.toUpperCase()} but the certificate is a ${end.kind.toUpperCase()}`);
  }
  checkTcbReserved(report, product);
  if (end.kind === 'vcek' && !report.chipIdMasked) {
    const hw = end.amd.hwId!;
    const expectLen = product === 'turin' ? 8 : 64;
    if (hw.length !== expectLen) fail('sev.vcek_extension_invalid', `${product} VCEK hwID must be ${expectLen} bytes, got ${hw.length}`);
    const chip = hwIdForProduct(report.chipId, product);
    const restZero = product !== 'turin' || report.chipId.subarray(8).every((b) => b === 0);
    if (!chip.equals(hw) || !restZero) fail('sev.chip_id_mismatch', 'report CHIP_ID does not match the VCEK hwID (VCEK of another chip)');
  }
  const expected = endorsementTcb(end.amd, product, end.kind.toUpperCase());
  if (!expected.equals(report.reportedTcb)) {
    fail('sev.tcb_mismatch', `report REPORTED_TCB ${tcbHex(report.reportedTcb)} differs from the certificate TCB ${tcbHex(expected)}`);
  }
}

function checkTcbFloor(which: 'REPORTED_TCB' | 'LAUNCH_TCB', tcb: SnpTcbParts, floor: SnpMinTcb | undefined, key: string): void {
  if (!floor) return;
  for (const name of TCB_NAMES) {
    const min = floor[name];
    if (min === undefined) continue;
    const have = tcb[name];
    if (have === undefined) continue; // fmc on Milan/Genoa
    if (have < min) fail('sev.tcb_too_low', `${which} ${name} SPL ${have} is below the minimum ${min}${key === 'minTcb' ? '' : ` (${key})`}`);
  }
}

function checkPolicy(report: SnpReport, product: SnpProduct, tcb: SnpTcbParts, opts: SnpPolicyOptions): void {
  if (report.policyFlags.debug && opts.allowDebug !== true) fail('sev.debug_not_allowed', 'guest policy allows debugging (DEBUG bit 19 set) and allowDebug is off');
  if (report.policyFlags.migrateMa && opts.allowMigrationAgent !== true) {
    fail('sev.migration_agent_not_allowed', 'guest policy allows a migration agent (MIGRATE_MA bit 18 set) and allowMigrationAgent is off');
  }
  const vmpls = opts.vmpls ?? [0];
  if (!vmpls.includes(report.vmpl)) fail('sev.vmpl_not_allowed', `report VMPL ${report.vmpl} is not in the allowed list [${vmpls.join(', ')}]`);
  const products = opts.products ?? SNP_PRODUCTS;
  if (!products.includes(product)) fail('sev.product_not_allowed', `product ${product} is not in the allowed list [${products.join(', ')}]`);
  checkTcbFloor('REPORTED_TCB', tcb, opts.minTcb, 'minTcb');
  checkTcbFloor('LAUNCH_TCB', decodeTcb(report.launchTcb, product), opts.minLaunchTcb, 'minLaunchTcb');
  if (opts.minGuestSvn !== undefined && report.guestSvn < opts.minGuestSvn) {
    fail('sev.guest_svn_too_low', `report GUEST_SVN ${report.guestSvn} is below the minimum ${opts.minGuestSvn}`);
  }
  if (opts.measurements && opts.measurements.length > 0) {
    const m = report.measurement.toString('hex');
    if (!opts.measurements.some((x) => x.toLowerCase() === m)) fail('sev.measurement_not_allowed', `launch MEASUREMENT ${m} is not in the allowed list`);
  }
}

function checkReportData(report: SnpReport, expected: Uint8Array | undefined): void {
  if (expected === undefined) return;
  const exp = Buffer.from(expected);
  if (exp.length !== 64) throw new SigilError('sev.report_data_invalid', `expected REPORT_DATA must be 64 bytes, got ${exp.length}`);
  if (!timingSafeEqual(exp, report.reportData)) fail('sev.report_data_mismatch', 'report REPORT_DATA does not match the expected value (session binding)');
}

/**
 * CHIP_ID has the shape of `product`'s hardware ID (VCEK-signed, unmasked reports): Turin's is 8
 * bytes followed by 56 zero bytes; Milan's and Genoa's is 64 fuse-derived bytes, so a tail of 56
 * zero bytes there means the ID was made up (or is a Turin ID).
 */
function checkChipIdShape(report: SnpReport, product: SnpProduct): void {
  if (report.signingKey !== 'vcek' || report.chipIdMasked) return;
  const tailZero = report.chipId.subarray(8).every((b) => b === 0);
  if (product === 'turin' && !tailZero) fail('sev.chip_id_invalid', 'report CHIP_ID is not a Turin hardware ID (bytes 8..63 must be zero)');
  if (product !== 'turin' && tailZero) fail('sev.chip_id_invalid', `report CHIP_ID has the 8-byte Turin form (bytes 8..63 zero), not a 64-byte ${product} hardware ID`);
}

export interface SnpPrecheckOptions extends SnpPolicyOptions {
  /** When set, REPORT_DATA must equal these 64 bytes (compared in constant time). */
  expectedReportData?: Uint8Array;
}

export interface SnpPrecheck {
  /** Product line from the report's CPUID (v3+), when it has one. */
  product?: SnpProduct;
  /** Product lines the report can still be from (one when `product` is known); never empty. */
  candidates: SnpProduct[];
}

/**
 * Every check on a parsed report that does not need the VCEK/VLEK: REPORT_DATA (session binding),
 * the product line from CPUID, the reserved bytes of the TCBs, the shape of CHIP_ID, and the policy
 * (debug, VMPL, allowed products, minimum TCB, minimum guest SVN, measurements). For a report
 * without CPUID (v2) the product-dependent checks are tried for each allowed product line and the
 * lines that pass are returned, so a collateral lookup only asks for those.
 *
 * The report signature is NOT checked here and cannot be: it needs the VCEK, which is what a caller
 * runs this before fetching. These checks only make the fetch cost a report that is well formed,
 * bound to this session and acceptable to the policy; anyone can still forge such a report with a
 * made-up CHIP_ID/TCB, so fetches must also be rate-limited (SnpCollateralSource) and anything
 * fetched trusted only after it verifies against the pinned ARK. verifySnpEvidence runs this first
 * too (so the pure path, e.g. the CLI, applies the same checks) and then, with the certificate,
 * the stronger check that CHIP_ID equals the VCEK hwID.
 */
export function precheckSnpReport(report: SnpReport, opts: SnpPrecheckOptions): SnpPrecheck {
  const product = productFromReport(report);
  checkReportData(report, opts.expectedReportData);
  const candidates = product ? [product] : [...(opts.products ?? SNP_PRODUCTS)];
  const passed: SnpProduct[] = [];
  const failures: { product: SnpProduct; error: unknown }[] = [];
  for (const p of candidates) {
    try {
      checkTcbReserved(report, p);
      checkChipIdShape(report, p);
      checkPolicy(report, p, decodeTcb(report.reportedTcb, p), opts);
      passed.push(p);
    } catch (e) {
      failures.push({ product: p, error: e });
    }
  }
  if (passed.length === 0) throw noLineFits(report, failures);
  return product ? { product, candidates: passed } : { candidates: passed };
}

/**
 * The error when every candidate line failed the pre-checks: that line's own error when there was
 * one candidate (CPUID named it, or one line is allowed); for a report without CPUID tried as
 * several lines, one error with the first failure's code and status whose message names every
 * line tried and why each failed (lines failing for the same reason are listed together).
 */
function noLineFits(report: SnpReport, failures: { product: SnpProduct; error: unknown }[]): unknown {
  const first = failures[0];
  if (!first) return new SigilError('sev.product_not_allowed', 'no product line is allowed', { status: 403 });
  if (failures.length === 1 || !(first.error instanceof SigilError)) return first.error;
  const byReason = new Map<string, SnpProduct[]>();
  for (const f of failures) {
    const reason = errorMessage(f.error);
    byReason.set(reason, [...(byReason.get(reason) ?? []), f.product]);
  }
  const why = [...byReason].map(([reason, lines]) => `${lines.join(', ')}: ${reason}`).join('; ');
  const tried = failures.map((f) => f.product).join(', ');
  return new SigilError(first.error.code, `report v${report.version} has no CPUID and fits none of the product lines tried (${tried}): ${why}`, {
    status: first.error.status,
    cause: first.error,
  });
}

/**
 * Refuse a report as `product`, a line it did not pass the pre-checks as (a report without CPUID,
 * whose line the VCEK/VLEK or its chain names). When the report fails that line's own checks
 * (reserved TCB bytes, CHIP_ID shape, TCB layout) it is from another line than its certificate:
 * sev.product_mismatch, naming the lines it does fit and that line's failure. When it passes them,
 * the line is only outside `products`: sev.product_not_allowed.
 */
function refuseLine(report: SnpReport, product: SnpProduct, opts: SnpVerifyOptions, fits: readonly SnpProduct[], namedBy: string): never {
  const products = opts.products ?? SNP_PRODUCTS;
  try {
    precheckSnpReport(report, { ...opts, products: [product] });
  } catch (e) {
    if (!(e instanceof SigilError) || e.code === 'sev.product_not_allowed') throw e;
    throw new SigilError(
      'sev.product_mismatch',
      `report v${report.version} (no CPUID) fits ${fits.join(', ')} but the ${namedBy} is for ${product}, and as ${product} it fails: ${e.message} (${e.code})`,
      { status: 403, cause: e },
    );
  }
  fail('sev.product_not_allowed', `product ${product} (named by the ${namedBy}) is not in the allowed list [${products.join(', ')}]`);
}

/**
 * Product line a VCEK/VLEK names (productName, else issuer CN), read before its chain is checked;
 * undefined when it names none or cannot be parsed (verifyEndorsementChain then says why).
 */
export function productNamedByEndorsement(der: Uint8Array): SnpProduct | undefined {
  try {
    const leaf = parseSevCert(der, 'VCEK/VLEK');
    return productFromEndorsementCert(leaf, parseAmdExtensions(leaf));
  } catch {
    return undefined;
  }
}

const hex = (b: Buffer): string => b.toString('hex');

function tcbClaim(tcb: Buffer, product: SnpProduct): Record<string, unknown> {
  return { hex: tcbHex(tcb), ...decodeTcb(tcb, product) };
}

/**
 * Verify an SEV-SNP attestation report end to end: structure, every precheckSnpReport check
 * (REPORT_DATA when given, reserved TCB bytes, CHIP_ID shape, policy), certificate chain to the
 * pinned ARK (at `now`), VCEK/VLEK binding to the report (signing key kind, CHIP_ID,
 * REPORTED_TCB), the report signature, and the ARK and ASK/ASVK against AMD's CRL
 * (`evidence.crl`, `opts.crl.mode`, see crl.ts).
 */
export function verifySnpEvidence(evidence: SnpEvidence, opts: SnpVerifyOptions): SnpVerification {
  if (!(opts.now instanceof Date) || Number.isNaN(opts.now.getTime())) throw new SigilError('sev.time_invalid', 'verification time is not a valid date');
  const report = parseSnpReport(evidence.report);
  // The same checks, in the same order, as the sev_snp plugin runs before it looks for collateral,
  // so the CLI and the plugin refuse a report for the same reason (REPORT_DATA, reserved TCB bytes,
  // CHIP_ID shape, policy).
  const pre = precheckSnpReport(report, opts);
  const reportProduct = productFromReport(report);
  if (!evidence.endorsementCert) {
    fail('sev.vcek_missing', `no ${report.signingKey.toUpperCase()} certificate: supply it (agent certificate table, --vcek, collateral dir or KDS)`);
  }
  // A report without CPUID was checked for every allowed product line it could be from; the
  // certificate names the line. If that line did not pass, verification cannot succeed whatever the
  // chain (it would be verified, and the report checked, as that line): refuse now, with that line's
  // pre-check failure, or sev.product_not_allowed.
  const kindName = report.signingKey.toUpperCase();
  if (!reportProduct) {
    const named = productNamedByEndorsement(evidence.endorsementCert);
    if (named && !pre.candidates.includes(named)) refuseLine(report, named, opts, pre.candidates, kindName);
  }
  const end = verifyEndorsementChain(evidence.endorsementCert, evidence.chain ?? [], {
    now: opts.now,
    reportProduct,
    pins: resolveArkPins(opts.arkSha256),
  });
  const product = end.product;
  if (!pre.candidates.includes(product)) refuseLine(report, product, opts, pre.candidates, `${kindName} chain`);
  checkEndorsementMatchesReport(report, end);

  let sigOk = false;
  try {
    sigOk = cryptoVerify('sha384', report.signed, { key: end.leaf.publicKey, dsaEncoding: 'ieee-p1363' }, report.signatureP1363);
  } catch {
    sigOk = false;
  }
  if (!sigOk) fail('sev.signature_invalid', `report signature does not verify under the ${end.kind.toUpperCase()}`);

  // AMD's CRL (issued by the ARK) against the verified ARK and ASK/ASVK; the CRL and the time are passed in.
  const revocation = checkAmdRevocation(evidence.crl, end, opts.now, opts.crl?.mode ?? 'best_effort', evidence.crlUnavailableReason);

  // REPORT_DATA was checked by precheckSnpReport; the policy too, for each candidate line. Checked
  // again here for the certificate's line, which also refuses a line outside `products`.
  const tcb = decodeTcb(report.reportedTcb, product);
  checkPolicy(report, product, tcb, opts);

  const sel = (k: string, v: string | number | boolean): string => `${SEV_ATTESTOR}:${k}:${v}`;
  // Masked CHIP_ID: the VCEK (which signed this report) still names the chip in hwID.
  const chipId = end.kind === 'vcek' ? (report.chipIdMasked ? Buffer.concat([end.amd.hwId!, Buffer.alloc(64 - end.amd.hwId!.length)]) : report.chipId) : undefined;
  const selectors = [
    sel('measurement', hex(report.measurement)),
    sel('host_data', hex(report.hostData)),
    ...(chipId ? [sel('chip_id', hex(chipId))] : []),
    sel('product', product),
    sel('signing_key', end.kind),
    sel('vmpl', report.vmpl),
    sel('debug', report.policyFlags.debug),
    sel('guest_svn', report.guestSvn),
    sel('reported_tcb', tcbHex(report.reportedTcb)),
    sel('family_id', hex(report.familyId)),
    sel('image_id', hex(report.imageId)),
    sel('id_key_digest', hex(report.idKeyDigest)),
    sel('author_key_digest', hex(report.authorKeyDigest)),
  ];
  const claims: Record<string, unknown> = {
    version: report.version,
    product,
    signingKey: end.kind,
    policy: `0x${report.policy.toString(16)}`,
    policyFlags: report.policyFlags,
    platformInfo: `0x${report.platformInfo.toString(16)}`,
    vmpl: report.vmpl,
    guestSvn: report.guestSvn,
    measurement: hex(report.measurement),
    hostData: hex(report.hostData),
    familyId: hex(report.familyId),
    imageId: hex(report.imageId),
    idKeyDigest: hex(report.idKeyDigest),
    authorKeyDigest: hex(report.authorKeyDigest),
    authorKeyEn: report.authorKeyEn,
    reportData: hex(report.reportData),
    reportId: hex(report.reportId),
    reportIdMa: hex(report.reportIdMa),
    reportedTcb: tcbClaim(report.reportedTcb, product),
    currentTcb: tcbClaim(report.currentTcb, product),
    committedTcb: tcbClaim(report.committedTcb, product),
    launchTcb: tcbClaim(report.launchTcb, product),
    currentVersion: `${report.currentVersion.major}.${report.currentVersion.minor}.${report.currentVersion.build}`,
    committedVersion: `${report.committedVersion.major}.${report.committedVersion.minor}.${report.committedVersion.build}`,
    chipIdMasked: report.chipIdMasked,
    endorsementSha256: end.leaf.sha256,
    endorsementNotAfter: end.leaf.notAfter.toISOString(),
    arkSha256: end.ark.sha256,
  };
  if (chipId) claims.chipId = hex(chipId);
  if (end.amd.cspId !== undefined) claims.cspId = end.amd.cspId;
  if (report.cpuid) claims.cpuid = report.cpuid;
  if (report.launchMitVector !== undefined) claims.launchMitVector = `0x${report.launchMitVector.toString(16)}`;
  if (report.currentMitVector !== undefined) claims.currentMitVector = `0x${report.currentMitVector.toString(16)}`;

  return {
    report,
    product,
    signingKey: end.kind,
    reportedTcb: tcb,
    revocation,
    selectors,
    claims,
    agentIdSuffix: chipId ? hex(chipId) : hex(report.measurement),
  };
}
