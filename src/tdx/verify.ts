/**
 * Intel TDX quote verification, pure: quote bytes + Intel collateral + time + policy in, verified
 * selectors and claims or a SigilError out. No I/O; the trust anchor is the pinned SHA-256 of the
 * Intel SGX Root CA (overridable for test PKIs).
 *
 * Order of checks (each refusal names its check):
 *  1. structure (parseTdxQuote: versions 4/5, TDX, ECDSA P-256, lengths, no trailing bytes);
 *  2. the PCK chain in the quote to the pinned root at `now` (signatures, CA roles, validity);
 *  3. the quote signature by the attestation key, the QE report signature by the PCK key, and the
 *     QE report's REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes;
 *  4. with collateral: the TCB Signing chain, the TCB Info and QE Identity signatures over the bytes
 *     as received and their issueDate/nextUpdate (and `maxCollateralAgeMs`), then the Root CA CRL
 *     and PCK CRL (signatures, issuers, validity; the PCK CRL's thisUpdate also within
 *     `maxCollateralAgeMs`) and revocation of every chain certificate;
 *  4b. with `eventLog`: the CC event log replayed into RTMR0–3 must equal the quote's (ccel.ts);
 *  5. the TD report: REPORTDATA (session binding) and the DEBUG attribute;
 *  6. TCB matching (tcb.ts) and the policy on the resulting status. Without collateral the status is
 *     `Unknown`, accepted only with `allowUnknownTcb` (and then nothing was checked for revocation),
 *     and the QE must still be Intel's TD QE (tcb.ts INTEL_TD_QE_BASELINE).
 */
import { createPublicKey, createHash, timingSafeEqual, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { type TdxQuote, TDATTR_DEBUG, parseTdxQuote, tdAttributesValue } from './quote.js';
import { type IntelCrl, type SgxPckExtensions, type VerifiedChain, clearVerifiedMemo, memoVerified, checkCrl, checkRevocation, chainFromPem, parseCrl, parsePckExtensions, verifyIntelChain } from './pki.js';
import { type CcelReplay, ccelSelectors, checkCcelAgainstRtmrs } from './ccel.js';
import { splitSignedJson, verifySignedJson } from './signed-json.js';
import { type QeIdentity, type TcbMatch, type TcbStatus, type TdxTcbInfo, INTEL_TD_QE_BASELINE, matchQeEnclave, matchTcb, parseQeIdentity, parseTdxTcbInfo } from './tcb.js';

export const TDX_ATTESTOR = 'tdx';

/** Intel collateral for one quote, as PCS/PCCS serve it. */
export interface TdxCollateral {
  /** PCS `tdx/certification/v4/tcb` answer body: `{"tcbInfo":{…},"signature":"…"}`, bytes as received. */
  tcbInfo: Uint8Array;
  /** PCS `tdx/certification/v4/qe/identity` answer body: `{"enclaveIdentity":{…},"signature":"…"}`. */
  qeIdentity: Uint8Array;
  /** TCB Signing certificate then Intel SGX Root CA, PEM (the TCB-Info-Issuer-Chain header). */
  tcbSigningChain: string;
  /** PCK CRL (DER or PEM) of the CA that issued the PCK certificate. */
  pckCrl: Uint8Array;
  /** PCK Platform/Processor CA then Root CA, PEM (the SGX-PCK-CRL-Issuer-Chain header). */
  pckCrlIssuerChain: string;
  /** Intel SGX Root CA CRL (DER or PEM). */
  rootCrl: Uint8Array;
}

export type TdxTcbStatus = TcbStatus | 'Unknown';

export interface TdxPolicyOptions {
  /** Accept TDs with TDATTRIBUTES.DEBUG set. Default false. */
  allowDebug?: boolean;
  /** TCB statuses accepted. Default ['UpToDate']. */
  acceptedTcbStatuses?: readonly TcbStatus[];
  /** Accept a quote without collateral, with TCB status `Unknown` (no TCB or revocation check). Default false. */
  allowUnknownTcb?: boolean;
  /** Refuse TCB Info / QE Identity / PCK CRL issued longer than this before `now` (even inside nextUpdate); not the Root CA CRL (yearly). */
  maxCollateralAgeMs?: number;
  /** SHA-256 hex of the root CA's DER (test PKIs); default the Intel SGX Root CA. */
  rootSha256?: string;
  /** Allowed MRTDs (hex). Empty or absent = any. */
  mrTds?: readonly string[];
}

export interface TdxVerifyOptions extends TdxPolicyOptions {
  now: Date;
  /** CC event log area (and optionally the ACPI CCEL table): replayed into RTMR0–3, which must equal the quote's. */
  eventLog?: { area: Uint8Array; table?: Uint8Array };
  /** When set, REPORTDATA must equal these 64 bytes (constant-time compare). */
  expectedReportData?: Uint8Array;
}

export interface TdxVerification {
  quote: TdxQuote;
  pck: SgxPckExtensions;
  tcbStatus: TdxTcbStatus;
  advisoryIds: string[];
  tcb?: TcbMatch;
  /** The collateral's earliest nextUpdate (when collateral was given). */
  collateralValidUntil?: Date;
  selectors: string[];
  claims: Record<string, unknown>;
  agentIdSuffix: string;
}

function fail(code: string, message: string, status = 403): never {
  throw new SigilError(code, message, { status });
}

/** REPORTDATA for a session: binding ‖ 32 zero bytes (DESIGN §3, as SEV-SNP). */
export function tdxReportDataForBinding(binding: Uint8Array): Buffer {
  if (binding.byteLength !== 32) throw new SigilError('tdx.binding_invalid', `session binding must be 32 bytes, got ${binding.byteLength}`);
  return Buffer.concat([Buffer.from(binding), Buffer.alloc(32)]);
}

const akCache = new Map<string, KeyObject>();
const AK_CACHE_MAX = 1024;

/**
 * The attestation key (x ‖ y) as a P-256 public key (imported as a JWK: OpenSSL checks the point
 * is on the curve); not a curve point → tdx.attestation_key_invalid. A platform's QE keeps its key
 * across quotes, so imported keys are kept (bounded).
 */
export function attestationKeyObject(xy: Buffer): KeyObject {
  const id = xy.toString('hex');
  const hit = akCache.get(id);
  if (hit) return hit;
  let key: KeyObject;
  try {
    key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: xy.subarray(0, 32).toString('base64url'), y: xy.subarray(32, 64).toString('base64url') }, format: 'jwk' });
  } catch (e) {
    throw new SigilError('tdx.attestation_key_invalid', 'the quote attestation key is not a P-256 point', { cause: e, status: 403 });
  }
  if (akCache.size >= AK_CACHE_MAX) akCache.delete(akCache.keys().next().value!);
  akCache.set(id, key);
  return key;
}

function p1363Verify(data: Buffer, key: KeyObject, sig: Buffer): boolean {
  try {
    return cryptoVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  } catch {
    return false;
  }
}

/** Checks on the TD report that need no collateral: REPORTDATA, DEBUG, MRTD allowlist. */
export function checkTdReportPolicy(quote: TdxQuote, opts: Omit<TdxVerifyOptions, 'now'>): void {
  if (opts.expectedReportData !== undefined) {
    const exp = Buffer.from(opts.expectedReportData);
    if (exp.length !== 64) throw new SigilError('tdx.report_data_invalid', `expected REPORTDATA must be 64 bytes, got ${exp.length}`);
    if (!timingSafeEqual(exp, quote.body.reportData)) fail('tdx.report_data_mismatch', 'quote REPORTDATA does not match the expected value (session binding)');
  }
  if ((tdAttributesValue(quote.body) & TDATTR_DEBUG) !== 0n && opts.allowDebug !== true) {
    fail('tdx.debug_not_allowed', 'the TD is debuggable (TDATTRIBUTES.DEBUG set) and allowDebug is off');
  }
  if (opts.mrTds && opts.mrTds.length > 0) {
    const m = quote.body.mrTd.toString('hex');
    if (!opts.mrTds.some((x) => x.toLowerCase() === m)) fail('tdx.mrtd_not_allowed', `MRTD ${m} is not in the allowed list`);
  }
}

function checkDocTime(what: string, issue: Date, next: Date, now: Date, maxAgeMs: number | undefined): void {
  const t = now.getTime();
  if (t < issue.getTime()) fail('tdx.collateral_not_yet_valid', `${what} is issued ${issue.toISOString()}, after the verification time`);
  if (t > next.getTime()) fail('tdx.collateral_expired', `${what} expired at its nextUpdate ${next.toISOString()}`);
  if (maxAgeMs !== undefined && t - issue.getTime() > maxAgeMs) fail('tdx.collateral_stale', `${what} was issued ${issue.toISOString()}, more than ${maxAgeMs / 1000} s before the verification time`);
}

export interface VerifiedCollateral {
  tcbInfo: TdxTcbInfo;
  qeIdentity: QeIdentity;
  crls: IntelCrl[];
  /** The PCK CRL (also in `crls`), whose thisUpdate `maxCollateralAgeMs` bounds. */
  pckCrl: IntelCrl;
  /** The earliest nextUpdate of the TCB Info, QE Identity and both CRLs. */
  validUntil: Date;
}

/**
 * Verify the collateral on its own at `now`: TCB Signing chain, both JSON signatures over the bytes
 * as received, their validity windows, the Root CA CRL and the PCK CRL with its issuer chain.
 */
export function verifyTdxCollateral(c: TdxCollateral, opts: { now: Date; rootSha256?: string; maxCollateralAgeMs?: number }): VerifiedCollateral {
  if (!(opts.now instanceof Date) || Number.isNaN(opts.now.getTime())) throw new SigilError('tdx.time_invalid', 'verification time is not a valid date');
  // A set verified before is reused while `now` is inside the window in which every time check of
  // that verification holds (certificate validity, CRL thisUpdate..nextUpdate, issueDate..nextUpdate):
  // inside it the same checks give the same answer. The key covers every input byte and the pin.
  const h = createHash('sha256');
  for (const part of [c.tcbInfo, c.qeIdentity, c.tcbSigningChain, c.pckCrl, c.pckCrlIssuerChain, c.rootCrl]) {
    const b = typeof part === 'string' ? Buffer.from(part, 'latin1') : part;
    h.update(`${b.length}:`).update(b);
  }
  const key = `${h.digest('hex')}:${opts.rootSha256 ?? ''}`;
  const t = opts.now.getTime();
  const hit = collateralCache.get(key);
  let v: VerifiedCollateral;
  if (hit && t >= hit.from && t <= hit.to) {
    v = hit.verified;
  } else {
    const r = verifyCollateralAt(c, opts.now, opts.rootSha256);
    v = r.verified;
    if (collateralCache.size >= COLLATERAL_CACHE_MAX) collateralCache.delete(collateralCache.keys().next().value!);
    collateralCache.set(key, { verified: v, from: r.from, to: r.to });
  }
  if (opts.maxCollateralAgeMs !== undefined) {
    checkDocTime('TCB Info', v.tcbInfo.issueDate, v.tcbInfo.nextUpdate, opts.now, opts.maxCollateralAgeMs);
    checkDocTime('QE Identity', v.qeIdentity.issueDate, v.qeIdentity.nextUpdate, opts.now, opts.maxCollateralAgeMs);
    // Intel PCS reissues the PCK CRL like the TCB Info and QE Identity (nextUpdate a month out). The
    // Root CA CRL is not held to the age: Intel issues it about once a year, so any age shorter
    // than that would refuse every quote for most of the year (docs/tdx.md).
    checkDocTime('PCK CRL', v.pckCrl.thisUpdate, v.pckCrl.nextUpdate, opts.now, opts.maxCollateralAgeMs);
  }
  return v;
}

/** Forget every cached verification (signature memo, PCK chains, collateral, attestation keys): benchmarks of the uncached path. */
export function clearTdxCaches(): void {
  clearVerifiedMemo();
  pckChainCache.clear();
  collateralCache.clear();
  akCache.clear();
}

const pckChainCache = new Map<string, { chain: VerifiedChain; from: number; to: number }>();
const PCK_CHAIN_CACHE_MAX = 1024;

/**
 * The quote's PCK chain verified to the pin at `now`; a chain verified before (same PEM text, same
 * pin) is reused while `now` is inside the validity of all its certificates, the only time check.
 * Keyed by the text's SHA-256: the text itself (up to 64 KiB, padded at will) is not kept.
 */
function verifyPckChain(pem: string, now: Date, rootSha256: string | undefined): VerifiedChain {
  const key = `${rootSha256 ?? ''}:${createHash('sha256').update(pem, 'latin1').digest('hex')}`;
  const t = now.getTime();
  const hit = pckChainCache.get(key);
  if (hit && t >= hit.from && t <= hit.to) return hit.chain;
  const chain = verifyIntelChain(chainFromPem(pem, 'pck'), 'pck', { now, ...(rootSha256 === undefined ? {} : { rootSha256 }) });
  if (pckChainCache.size >= PCK_CHAIN_CACHE_MAX) pckChainCache.delete(pckChainCache.keys().next().value!);
  const from = Math.max(...chain.certs.map((c) => c.cert.notBefore.getTime()));
  const to = Math.min(...chain.certs.map((c) => c.cert.notAfter.getTime()));
  pckChainCache.set(key, { chain, from, to });
  return chain;
}

const collateralCache = new Map<string, { verified: VerifiedCollateral; from: number; to: number }>();
const COLLATERAL_CACHE_MAX = 64;

function verifyCollateralAt(c: TdxCollateral, now: Date, rootSha256: string | undefined): { verified: VerifiedCollateral; from: number; to: number } {
  const pin = rootSha256 === undefined ? {} : { rootSha256 };
  const signing = verifyIntelChain(chainFromPem(c.tcbSigningChain, 'tcb_signing'), 'tcb_signing', { now, ...pin });
  const tcbDoc = splitSignedJson(c.tcbInfo, 'tcbInfo', 'TCB Info');
  const memo = { keyId: signing.leaf.sha256, remember: memoVerified };
  verifySignedJson(tcbDoc, signing.leaf.publicKey, 'TCB Info', memo);
  const qeDoc = splitSignedJson(c.qeIdentity, 'enclaveIdentity', 'QE Identity');
  verifySignedJson(qeDoc, signing.leaf.publicKey, 'QE Identity', memo);
  const tcbInfo = parseTdxTcbInfo(tcbDoc.value);
  const qeIdentity = parseQeIdentity(qeDoc.value);
  checkDocTime('TCB Info', tcbInfo.issueDate, tcbInfo.nextUpdate, now, undefined);
  checkDocTime('QE Identity', qeIdentity.issueDate, qeIdentity.nextUpdate, now, undefined);

  const rootCrl = parseCrl(c.rootCrl);
  checkCrl(rootCrl, signing.root, now, 'Root CA CRL');
  checkRevocation(signing.certs, [rootCrl], 'TCB signing');
  const crlIssuer = verifyIntelChain(chainFromPem(c.pckCrlIssuerChain, 'pck_crl_issuer'), 'pck_crl_issuer', { now, ...pin, crls: [rootCrl] });
  const pckCrl = parseCrl(c.pckCrl);
  checkCrl(pckCrl, crlIssuer.leaf, now, 'PCK CRL');
  const certs = [...signing.certs, ...crlIssuer.certs];
  const from = Math.max(...certs.map((x) => x.cert.notBefore.getTime()), rootCrl.thisUpdate.getTime(), pckCrl.thisUpdate.getTime(), tcbInfo.issueDate.getTime(), qeIdentity.issueDate.getTime());
  const to = Math.min(...certs.map((x) => x.cert.notAfter.getTime()), rootCrl.nextUpdate.getTime(), pckCrl.nextUpdate.getTime(), tcbInfo.nextUpdate.getTime(), qeIdentity.nextUpdate.getTime());
  const validUntil = new Date(Math.min(tcbInfo.nextUpdate.getTime(), qeIdentity.nextUpdate.getTime(), rootCrl.nextUpdate.getTime(), pckCrl.nextUpdate.getTime()));
  return { verified: { tcbInfo, qeIdentity, crls: [rootCrl, pckCrl], pckCrl, validUntil }, from, to };
}

const hex = (b: Buffer): string => b.toString('hex');

/**
 * Steps 2–3, which need no collateral: the PCK chain to the pinned root at `now`, the quote
 * signature, the QE report signature and the QE binding. The plugin runs this before any
 * collateral lookup, so a forged quote never costs a PCS request.
 */
export function verifyTdxQuoteSignatures(quote: TdxQuote, now: Date, rootSha256: string | undefined): { pckChain: VerifiedChain; pck: SgxPckExtensions } {
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new SigilError('tdx.time_invalid', 'verification time is not a valid date');
  const pckChain = verifyPckChain(quote.pckChainPem, now, rootSha256);
  const pck = parsePckExtensions(pckChain.leaf);

  const ak = attestationKeyObject(quote.attestationKey);
  if (!p1363Verify(quote.signed, ak, quote.signature)) fail('tdx.quote_signature_invalid', 'quote signature does not verify under the attestation key');
  // The QE report (and its signature) is the same for every quote of a platform: memoised per
  // (QE report, signature, PCK certificate), so a cached platform costs one P-256 verify per quote.
  const qeKey = `qe:${createHash('sha256').update(quote.qeReport.raw).digest('hex')}:${quote.qeReportSignature.toString('hex')}:${pckChain.leaf.sha256}`;
  if (!memoVerified(qeKey, () => p1363Verify(quote.qeReport.raw, pckChain.leaf.publicKey, quote.qeReportSignature))) fail('tdx.qe_report_signature_invalid', 'QE report signature does not verify under the PCK certificate');
  const binding = createHash('sha256').update(quote.attestationKey).update(quote.qeAuthData).digest();
  const rd = quote.qeReport.reportData;
  if (!rd.subarray(0, 32).equals(binding) || !rd.subarray(32).every((b) => b === 0)) {
    fail('tdx.qe_binding_mismatch', 'QE report REPORTDATA is not SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes');
  }
  return { pckChain, pck };
}

/**
 * Verify a TDX quote end to end (see the module comment for the order). `collateral` undefined =
 * the no-collateral mode: TCB status `Unknown`, refused unless `allowUnknownTcb`.
 */
export function verifyTdxQuote(quoteBytes: Uint8Array, collateral: TdxCollateral | undefined, opts: TdxVerifyOptions): TdxVerification {
  if (!(opts.now instanceof Date) || Number.isNaN(opts.now.getTime())) throw new SigilError('tdx.time_invalid', 'verification time is not a valid date');
  const quote = parseTdxQuote(quoteBytes);
  const pin = opts.rootSha256 === undefined ? {} : { rootSha256: opts.rootSha256 };

  const { pckChain, pck } = verifyTdxQuoteSignatures(quote, opts.now, opts.rootSha256);

  let tcb: TcbMatch | undefined;
  let verified: VerifiedCollateral | undefined;
  if (collateral) {
    verified = verifyTdxCollateral(collateral, { now: opts.now, ...pin, ...(opts.maxCollateralAgeMs === undefined ? {} : { maxCollateralAgeMs: opts.maxCollateralAgeMs }) });
    checkRevocation(pckChain.certs, verified.crls, 'pck');
  }

  let ccel: CcelReplay | undefined;
  if (opts.eventLog) ccel = checkCcelAgainstRtmrs(opts.eventLog.area, quote.body.rtmrs, opts.eventLog.table);

  checkTdReportPolicy(quote, opts);

  let tcbStatus: TdxTcbStatus;
  if (verified) {
    tcb = matchTcb(quote.body, pck, quote.qeReport, verified.tcbInfo, verified.qeIdentity);
    tcbStatus = tcb.status;
    const accepted = opts.acceptedTcbStatuses ?? ['UpToDate'];
    if (!accepted.includes(tcb.status)) {
      fail('tdx.tcb_status_not_accepted', `TCB status ${tcb.status}${tcb.advisoryIds.length ? ` (${tcb.advisoryIds.join(', ')})` : ''} is not in the accepted list [${accepted.join(', ')}]`);
    }
  } else {
    tcbStatus = 'Unknown';
    if (opts.allowUnknownTcb !== true) fail('tdx.collateral_missing', 'no TCB Info / QE Identity / CRLs given: the TCB status is unknown and allowUnknownTcb is off');
    // No QE Identity: the QE must still be Intel's TD QE (not debug), or any PCK-certified enclave could sign TD reports.
    matchQeEnclave(quote.qeReport, INTEL_TD_QE_BASELINE, "Intel's TD QE (no QE Identity given)");
  }

  const b = quote.body;
  const sel = (k: string, v: string): string => `${TDX_ATTESTOR}:${k}:${v}`;
  const selectors = [
    sel('mrtd', hex(b.mrTd)),
    ...b.rtmrs.map((r, i) => sel(`rtmr:${i}`, hex(r))),
    sel('mrconfigid', hex(b.mrConfigId)),
    sel('mrowner', hex(b.mrOwner)),
    sel('mrownerconfig', hex(b.mrOwnerConfig)),
    sel('tcb_status', tcbStatus),
    sel('fmspc', hex(pck.fmspc)),
    sel('seam:mrseam', hex(b.mrSeam)),
    sel('td_attributes', hex(b.tdAttributes)),
    ...(ccel ? ccelSelectors(ccel) : []),
  ];
  const claims: Record<string, unknown> = {
    quoteVersion: quote.version,
    tdReportVersion: b.version,
    teeTcbSvn: hex(b.teeTcbSvn),
    mrSeam: hex(b.mrSeam),
    mrSignerSeam: hex(b.mrSignerSeam),
    seamAttributes: hex(b.seamAttributes),
    tdAttributes: hex(b.tdAttributes),
    debug: (tdAttributesValue(b) & TDATTR_DEBUG) !== 0n,
    xfam: hex(b.xfam),
    mrTd: hex(b.mrTd),
    mrConfigId: hex(b.mrConfigId),
    mrOwner: hex(b.mrOwner),
    mrOwnerConfig: hex(b.mrOwnerConfig),
    rtmrs: b.rtmrs.map(hex),
    reportData: hex(b.reportData),
    tcbStatus,
    advisoryIds: tcb?.advisoryIds ?? [],
    fmspc: hex(pck.fmspc),
    pceId: hex(pck.pceId),
    pceSvn: pck.pceSvn,
    sgxTcbComponents: pck.compSvn,
    pckSha256: pckChain.leaf.sha256,
    pckNotAfter: pckChain.leaf.cert.notAfter.toISOString(),
    qeIsvSvn: quote.qeReport.isvSvn,
    revocationChecked: verified !== undefined,
  };
  if (ccel) claims.eventLog = { eventsPerRtmr: ccel.events, records: ccel.log.events.length, bytes: ccel.log.byteLength };
  if (b.teeTcbSvn2) claims.teeTcbSvn2 = hex(b.teeTcbSvn2);
  if (b.mrServiceTd) claims.mrServiceTd = hex(b.mrServiceTd);
  if (tcb) {
    claims.tcbDate = tcb.tcbDate;
    claims.platformTcbStatus = tcb.platformStatus;
    claims.qeTcbStatus = tcb.qeStatus;
    if (tcb.moduleStatus) claims.tdxModuleTcbStatus = tcb.moduleStatus;
    claims.tcbEvaluationDataNumber = verified!.tcbInfo.tcbEvaluationDataNumber;
    claims.collateralValidUntil = verified!.validUntil.toISOString();
  }
  return {
    quote,
    pck,
    tcbStatus,
    advisoryIds: tcb?.advisoryIds ?? [],
    ...(tcb ? { tcb } : {}),
    ...(verified ? { collateralValidUntil: verified.validUntil } : {}),
    selectors,
    claims,
    agentIdSuffix: hex(pck.ppid),
  };
}
