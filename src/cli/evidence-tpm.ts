/**
 * `sigil evidence verify tpm` — offline verification of TPM evidence files as tpm2-tools
 * writes them (DESIGN §9): EK certificate (+ chain to --ek-ca), AK TPM2B_PUBLIC
 * (`tpm2_createak -u`), quote message (`tpm2_quote -m`, TPMS_ATTEST or TPM2B_ATTEST),
 * signature (`tpm2_quote -s`, TPMT_SIGNATURE), optional PCR values (`tpm2_quote -o`, or the
 * YAML/JSON that tpm2_pcrread prints). Without credential activation the AK–EK link is not
 * proven; the output says so (`claims.akBoundToEk: false`).
 *
 * With --ek-pub (the EK's TPM2B_PUBLIC, which must hold the key of --ek-cert) the verb also applies
 * the verifier's check that the quote's signer is the AK as the EK's child (`tpm.ak_not_under_ek`):
 * the TPM obfuscates resetCount, restartCount and firmwareVersion for a key in another hierarchy.
 * The check needs the EK's whole public area (its Name), which the certificate does not carry;
 * without --ek-pub the output says the AK's parentage was not checked (`claims.akUnderEkChecked`,
 * `claims.countersNote`).
 */
import { SigilError, errorMessage } from '../errors.js';
import { readRegularFile } from '../util/config-file.js';
import { HASHES } from '../tpm/constants.js';
import { certificatesFromBytes, checkEkPublicMatches, parseCertificate } from '../tpm/ekcert.js';
import { checkEkPublic, verifyQuote } from '../tpm/quote.js';
import { encodePcrSelection, parsePcrSelection, parseTpm2bPublic, qualifiedNameUnderEk, type PcrBankSelection } from '../tpm/structures.js';
import { verifyTpmEvidenceOffline } from '../tpm/verify.js';
import { EV, algorithmByName, checkEventLog, eventLogClaims, parseEventLog, replayEventLog, replayedToJson, type TrustedPcr } from '../tpm/eventlog/index.js';
import { decodeEvidenceBytes, parseHexArg } from '../util/evidence-input.js';
import { parseAtTime } from './at-time.js';
import { EXIT_USAGE, MAX_INPUT_FILE_BYTES, UsageError, printEvidenceOutcome, rejectedOutcome } from './output.js';

export interface TpmEvidenceOptions {
  ekCert: string;
  ekCa: string[];
  ekIntermediate?: string[];
  ekPub?: string;
  akPub: string;
  quote: string;
  signature: string;
  nonce: string;
  pcrValues?: string;
  pcrs?: string;
  at?: string;
  json?: boolean;
  eventLog?: string;
  imaLog?: string;
}

function readArg(flag: string, path: string): Buffer {
  try {
    return readRegularFile(path, MAX_INPUT_FILE_BYTES);
  } catch (e) {
    throw new UsageError(`${flag}: cannot read ${path}: ${errorMessage(e)}`);
  }
}

/**
 * A usage problem found before any evidence was looked at. With --json it is printed as the one
 * JSON object (`cli.usage`, exit 2), as the aws_nitro, sev_snp and tdx verbs do; without, it goes
 * to the CLI's usage handling (a message on stderr, exit 2).
 */
function usageRefusal(e: unknown, json: boolean): number {
  if (!(e instanceof UsageError) || !json) throw e;
  printEvidenceOutcome(rejectedOutcome('tpm', e), true);
  return EXIT_USAGE;
}

/** `sha256:0,1,2+sha1:0` → bank selections (tpm2-tools syntax). */
export function parsePcrSpec(spec: string): PcrBankSelection[] {
  const out: PcrBankSelection[] = [];
  for (const part of spec.split('+')) {
    const m = /^\s*(sha1|sha256|sha384|sha512)\s*:\s*([0-9,\s]*)$/.exec(part);
    if (!m) throw new UsageError(`--pcrs: "${part}" is not <bank>:<i>,<j>,… (banks: ${HASHES.map((h) => h.name).join(', ')})`);
    const pcrs = (m[2] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '')
      .map(Number);
    if (pcrs.some((p) => !Number.isInteger(p) || p < 0 || p > 23)) throw new UsageError(`--pcrs: PCR indices must be 0..23`);
    out.push({ bank: m[1] as PcrBankSelection['bank'], pcrs: [...new Set(pcrs)].sort((a, b) => a - b) });
  }
  return out;
}

/** Told when the AK's parentage was not checked: what the counters and firmware version are worth then. */
export const COUNTERS_NOTE =
  "resetCount, restartCount and firmwareVersion are only meaningful when the AK is a child of the EK (the TPM obfuscates them for a key in another hierarchy); the AK's parentage was not checked: give --ek-pub (the EK's TPM2B_PUBLIC) to check it";

/**
 * The verifier's check that the quote was signed by the AK as a child of the EK: `ekPubRaw` (the
 * EK's TPM2B_PUBLIC) must be an EK holding the key of `ekCertDer`, and the quote's qualifiedSigner
 * the AK's Qualified Name under it (verifyQuote's `expectedSigner`, `tpm.ak_not_under_ek`).
 */
function checkAkUnderEk(ekPubRaw: Buffer, ekPubFile: string, ekCertDer: Buffer, ev: { akPub: Buffer; quote: Buffer; signature: Buffer; nonce: Buffer }): void {
  const ekPub = parseTpm2bPublic(ekPubRaw);
  checkEkPublic(ekPub);
  try {
    checkEkPublicMatches(parseCertificate(ekCertDer, 'EK certificate'), ekPub);
  } catch (e) {
    if (e instanceof SigilError && e.code === 'tpm.ek_public_mismatch') throw new SigilError(e.code, `--ek-pub ${ekPubFile} is not the EK of --ek-cert: ${e.message}`, { cause: e });
    throw e;
  }
  const ak = parseTpm2bPublic(ev.akPub);
  verifyQuote({ ak, quote: ev.quote, signature: ev.signature, qualifyingData: ev.nonce, expectedSigner: qualifiedNameUnderEk(ekPub, ak) });
}

export async function runTpmEvidence(opts: TpmEvidenceOptions): Promise<number> {
  const json = opts.json === true;
  try {
    return await verifyTpmFiles(opts, json);
  } catch (e) {
    return usageRefusal(e, json);
  }
}

async function verifyTpmFiles(opts: TpmEvidenceOptions, json: boolean): Promise<number> {
  // Usage problems (unreadable files, bad hex, bad time) surface as UsageError → exit 2.
  const at = parseAtTime(opts.at);
  const nonce = (() => {
    try {
      return parseHexArg('--nonce', opts.nonce);
    } catch (e) {
      throw new UsageError(errorMessage(e));
    }
  })();
  const expected = opts.pcrs !== undefined ? parsePcrSelection(encodePcrSelection(parsePcrSpec(opts.pcrs))) : undefined;
  const ekCertRaw = readArg('--ek-cert', opts.ekCert);
  const caRaw = opts.ekCa.map((f) => ({ f, b: readArg('--ek-ca', f) }));
  const interRaw = (opts.ekIntermediate ?? []).map((f) => ({ f, b: readArg('--ek-intermediate', f) }));
  const ekPub = opts.ekPub !== undefined ? { file: opts.ekPub, raw: readArg('--ek-pub', opts.ekPub) } : undefined;
  const akPubRaw = readArg('--ak-pub', opts.akPub);
  const quoteRaw = readArg('--quote', opts.quote);
  const sigRaw = readArg('--signature', opts.signature);
  const pcrRaw = opts.pcrValues !== undefined ? readArg('--pcr-values', opts.pcrValues) : undefined;
  const eventLogRaw = opts.eventLog !== undefined ? readArg('--event-log', opts.eventLog) : undefined;
  const imaLogRaw = opts.imaLog !== undefined ? readArg('--ima-log', opts.imaLog) : undefined;
  if ((eventLogRaw || imaLogRaw) && !pcrRaw) throw new UsageError('--event-log and --ima-log need --pcr-values (the log is checked against the quoted PCRs)');

  try {
    const ekCerts = certificatesFromBytes(ekCertRaw, `--ek-cert ${opts.ekCert}`);
    if (ekCerts.length !== 1) throw new SigilError('tpm.ek_cert_malformed', `--ek-cert ${opts.ekCert} holds ${ekCerts.length} certificates; give the EK certificate alone`);
    const ekCert = ekCerts[0] as Buffer;
    const signed = { akPub: decodeEvidenceBytes(akPubRaw), quote: decodeEvidenceBytes(quoteRaw), signature: decodeEvidenceBytes(sigRaw), nonce };
    const result = await verifyTpmEvidenceOffline({
      ekCert,
      ekCa: caRaw.flatMap(({ f, b }) => certificatesFromBytes(b, `--ek-ca ${f}`)),
      ekIntermediates: interRaw.flatMap(({ f, b }) => certificatesFromBytes(b, `--ek-intermediate ${f}`)),
      ...signed,
      ...(pcrRaw ? { pcrValues: pcrRaw } : {}),
      ...(expected ? { expectedSelection: expected } : {}),
      ...(eventLogRaw ? { eventLog: eventLogRaw } : {}),
      ...(imaLogRaw ? { imaLog: imaLogRaw } : {}),
      at,
    });
    // After the EK chain and the quote verified: the signer is the AK as the EK's child, or the output says it was not checked.
    if (ekPub) checkAkUnderEk(decodeEvidenceBytes(ekPub.raw), ekPub.file, ekCert, signed);
    const claims = { ...result.claims, akUnderEkChecked: ekPub !== undefined, ...(ekPub ? {} : { countersNote: COUNTERS_NOTE }) };
    return printEvidenceOutcome({ ok: true, attestor: 'tpm', selectors: result.selectors, claims }, json);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    return printEvidenceOutcome(rejectedOutcome('tpm', e), json);
  }
}

export interface EventLogCliOptions {
  pcrs?: string;
  json?: boolean;
}

/**
 * `--pcrs`: JSON (inline or a file) `{ "<bank>": { "<index>": "<hex>" } }` — the shape
 * `sigil evidence eventlog --json` prints under claims.replayed.
 */
function parsePcrsJson(arg: string): TrustedPcr[] {
  const text = arg.trimStart().startsWith('{') ? arg : readArg('--pcrs', arg).toString('utf8');
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--pcrs: not JSON: ${errorMessage(e)}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new UsageError('--pcrs: expected { "<bank>": { "<index>": "<hex>" } }');
  const out: TrustedPcr[] = [];
  for (const [bank, m] of Object.entries(o as Record<string, unknown>)) {
    const alg = algorithmByName(bank);
    if (!alg) throw new UsageError(`--pcrs: unknown bank ${bank}`);
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new UsageError(`--pcrs: ${bank} must map PCR indices to hex values`);
    for (const [i, v] of Object.entries(m as Record<string, unknown>)) {
      const index = Number(i);
      if (!/^\d{1,2}$/.test(i) || index > 23) throw new UsageError(`--pcrs: ${bank}.${i} is not a PCR index 0..23`);
      if (typeof v !== 'string' || !/^[0-9a-fA-F]+$/.test(v) || v.length !== alg.size * 2) throw new UsageError(`--pcrs: ${bank}.${i} must be ${alg.size * 2} hex digits`);
      out.push({ bank, index, value: Buffer.from(v, 'hex') });
    }
  }
  if (out.length === 0) throw new UsageError('--pcrs: no PCR values');
  return out;
}

/**
 * `sigil evidence eventlog FILE [--pcrs JSON] [--json]`: parse and replay a firmware event log
 * offline and print, per bank, the replayed PCR values and the boot selectors it would yield.
 * With --pcrs the log must replay to those values (exit 1 otherwise) and selectors come only from
 * the PCRs given; without, the log is taken as it is (a golden machine), which proves nothing.
 */
export function runEventLogCommand(file: string, opts: EventLogCliOptions): number {
  const json = opts.json === true;
  try {
    return checkEventLogFile(file, opts, json);
  } catch (e) {
    return usageRefusal(e, json);
  }
}

function checkEventLogFile(file: string, opts: EventLogCliOptions, json: boolean): number {
  const raw = decodeEvidenceBytes(readArg('<file>', file));
  const given = opts.pcrs !== undefined ? parsePcrsJson(opts.pcrs) : undefined;
  try {
    const log = parseEventLog(raw);
    let pcrs = given;
    if (!pcrs) {
      const bank = (['sha256', 'sha384', 'sha512', 'sm3_256', 'sha1'] as const).find((b) => log.banks.some((x) => x.name === b)) ?? log.banks[0]!.name;
      const extended = new Set(log.events.filter((e) => e.type !== EV.NO_ACTION).map((e) => e.index));
      pcrs = [...replayEventLog(log, { banks: [bank] }).get(bank)!].filter(([i]) => extended.has(i)).map(([index, value]) => ({ bank, index, value }));
    }
    const r = checkEventLog({ log, pcrs, unloggedPcrs: given ? [10] : [] });
    const all = replayedToJson(replayEventLog(log, { indices: [...Array(24).keys()] }));
    const claims = { ...eventLogClaims(r), replayed: all, verifiedAgainst: given ? '--pcrs' : 'nothing: the selectors are what this log yields if a quote matches it' };
    return printEvidenceOutcome({ ok: true, attestor: 'tpm', selectors: r.selectors, claims }, json);
  } catch (e) {
    return printEvidenceOutcome(rejectedOutcome('tpm', e), json);
  }
}
