/**
 * Offline TPM evidence verification (library and `sigil evidence verify tpm`):
 * EK certificate chain, AK attributes and a quote with its signature, extraData and
 * (optionally) PCR values. Offline there is no credential activation, so nothing proves
 * that the AK lives in the same TPM as the EK: the result says so (`akBoundToEk: false`).
 */
import { digestHex } from '../util/digest.js';
import { SigilError } from '../errors.js';
import type { HashName } from './constants.js';
import { EkTrustStore, certPublicSpkiDer, verifyEkChain, type EkChainResult } from './ekcert.js';
import { parsePcrValuesFile } from './pcrvalues.js';
import { checkEventLog, eventLogClaims } from './eventlog/index.js';
import { checkImaLog } from './ima/index.js';
import { checkAkPublic, verifyQuote, type PcrValue, type QuoteCheckResult } from './quote.js';
import { objectName, parseAttestAny, parseTpm2bPublic, type PcrSelection, type TpmtPublic } from './structures.js';

export interface TpmSelectorInput {
  ekPubHash: string;
  chain: EkChainResult;
  pcrs: PcrValue[] | null;
  /** The PCR values in lowercase hex, in the order of `pcrs`, when the caller has them (selectors and claims both need them). */
  pcrHex?: readonly string[];
}

/** The values of `v.pcrs` in lowercase hex. */
export function pcrHexOf(v: { pcrs: PcrValue[] | null; pcrHex?: readonly string[] }): readonly string[] {
  return v.pcrHex ?? (v.pcrs ?? []).map((p) => p.value.toString('hex'));
}

/** Selectors of DESIGN §4 for verified TPM facts. */
export function tpmSelectors(v: TpmSelectorInput): string[] {
  const s = [`tpm:ek_pubhash:${v.ekPubHash}`];
  const id = v.chain.identity;
  if (id.manufacturer !== undefined) s.push(`tpm:ek_manufacturer:${id.manufacturer}`);
  if (id.model !== undefined) s.push(`tpm:ek_model:${id.model}`);
  if (id.version !== undefined) s.push(`tpm:ek_version:${id.version}`);
  s.push(`tpm:ek_ca:${v.chain.anchor.sha256}`);
  const hex = pcrHexOf(v);
  const pcrs = v.pcrs ?? [];
  for (let i = 0; i < pcrs.length; i++) s.push(`tpm:pcr:${pcrs[i]!.bank}:${pcrs[i]!.index}:${hex[i]}`);
  return s;
}

/** Claims shared by the online and offline verifiers. */
/** `akName`: the AK's Name when the caller has it already (otherwise computed here). */
export function tpmClaims(v: TpmSelectorInput & { ak: TpmtPublic; akName?: Buffer; quote: QuoteCheckResult }): Record<string, unknown> {
  const leaf = v.chain.chain[0];
  const ci = v.quote.attest.clockInfo;
  const pcrs: Record<string, Record<string, string>> = {};
  const hex = pcrHexOf(v);
  const list = v.pcrs ?? [];
  for (let i = 0; i < list.length; i++) (pcrs[list[i]!.bank] ??= {})[String(list[i]!.index)] = hex[i]!;
  return {
    ekPubHash: v.ekPubHash,
    ekCa: v.chain.anchor.sha256,
    ekCertSerial: leaf?.serialNumber,
    ekCertIssuer: leaf?.issuer,
    tpmManufacturer: v.chain.identity.manufacturer ?? null,
    tpmModel: v.chain.identity.model ?? null,
    tpmVersion: v.chain.identity.version ?? null,
    akName: (v.akName ?? objectName(v.ak)).toString('hex'),
    quoteHash: v.quote.signatureHash,
    clock: ci.clock.toString(),
    resetCount: ci.resetCount,
    restartCount: ci.restartCount,
    safe: ci.safe,
    firmwareVersion: v.quote.attest.firmwareVersion.toString(16).padStart(16, '0'),
    pcrs,
  };
}

export interface OfflineTpmEvidence {
  /** EK certificate DER. */
  ekCert: Buffer;
  /** Extra (untrusted) intermediates to build the chain. */
  ekIntermediates?: Buffer[];
  /** Trusted EK CA certificates (DER). */
  ekCa: Buffer[];
  /** AK TPM2B_PUBLIC (as `tpm2_createak -u` writes it). */
  akPub: Buffer;
  /** TPMS_ATTEST (`tpm2_quote -m`) or TPM2B_ATTEST. */
  quote: Buffer;
  /** TPMT_SIGNATURE (`tpm2_quote -s`). */
  signature: Buffer;
  /** Expected extraData (`tpm2_quote -q`). */
  nonce: Buffer;
  /** PCR values (any format parsePcrValuesFile reads, or already parsed). */
  pcrValues?: Buffer | PcrValue[];
  /** Verification time for certificate validity. */
  at: Date;
  hashAllowlist?: readonly HashName[];
  /** When given, the quote must select exactly these PCRs. */
  expectedSelection?: PcrSelection[];
  /** Firmware event log (binary_bios_measurements): replayed against the quoted PCRs, then boot selectors. Needs pcrValues. */
  eventLog?: Buffer;
  /** PCRs the event log does not cover (default [10], IMA's). */
  unloggedPcrs?: number[];
  /** IMA runtime measurements (binary or ASCII list, told apart by the first byte): replayed against the quoted PCR 10. Needs pcrValues. */
  imaLog?: Buffer;
}

export interface OfflineTpmResult {
  selectors: string[];
  claims: Record<string, unknown>;
}

export const OFFLINE_NOTE =
  'offline verification: the EK certificate chain and the quote were verified, but without credential activation nothing proves the AK resides in the TPM that holds this EK';

/** Verify TPM evidence files offline; throws SigilError naming the failed check. */
export async function verifyTpmEvidenceOffline(ev: OfflineTpmEvidence): Promise<OfflineTpmResult> {
  const ak = parseTpm2bPublic(ev.akPub);
  checkAkPublic(ak);
  let pcrValues: PcrValue[] | undefined;
  if (Buffer.isBuffer(ev.pcrValues)) {
    let selection: PcrSelection[] | undefined;
    try {
      const a = parseAttestAny(ev.quote);
      if (a.attested.kind === 'quote') selection = a.attested.pcrSelect;
    } catch {
      selection = undefined; // verifyQuote reports the malformed quote below
    }
    pcrValues = parsePcrValuesFile(ev.pcrValues, selection);
  } else if (ev.pcrValues) {
    pcrValues = ev.pcrValues;
  }
  const quote = verifyQuote({
    ak,
    quote: ev.quote,
    signature: ev.signature,
    qualifyingData: ev.nonce,
    ...(ev.expectedSelection ? { expectedSelection: ev.expectedSelection } : {}),
    ...(pcrValues ? { pcrValues } : {}),
    ...(ev.hashAllowlist ? { hashAllowlist: ev.hashAllowlist } : {}),
  });
  const trust = new EkTrustStore(ev.ekCa);
  const chain = await verifyEkChain(ev.ekCert, ev.ekIntermediates ?? [], trust, ev.at);
  const leaf = chain.chain[0];
  if (!leaf) throw new SigilError('tpm.ek_untrusted', 'empty EK chain');
  const ekPubHash = digestHex('sha256', certPublicSpkiDer(leaf));
  const input = { ekPubHash, chain, pcrs: quote.pcrs };
  const selectors = tpmSelectors(input);
  const claims: Record<string, unknown> = { ...tpmClaims({ ...input, ak, quote }), akBoundToEk: false, note: OFFLINE_NOTE };
  if ((ev.eventLog || ev.imaLog) && !quote.pcrs) {
    throw new SigilError('tpm.pcr_values_invalid', 'an event log can only be checked against quoted PCR values: give the PCR values too');
  }
  if (ev.eventLog && quote.pcrs) {
    const r = checkEventLog({ log: ev.eventLog, pcrs: quote.pcrs, unloggedPcrs: ev.unloggedPcrs ?? [10] });
    selectors.push(...r.selectors);
    claims.eventLog = eventLogClaims(r);
  }
  if (ev.imaLog && quote.pcrs) {
    const r = checkImaLog({ log: ev.imaLog, pcrs: quote.pcrs });
    claims.ima = { entries: r.entries.length, pending: r.pending, format: r.progress.format };
  }
  return { selectors, claims };
}
