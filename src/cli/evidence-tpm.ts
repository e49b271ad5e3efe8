/**
 * `sigil evidence verify tpm` — offline verification of TPM evidence files as tpm2-tools
 * writes them (DESIGN §9): EK certificate (+ chain to --ek-ca), AK TPM2B_PUBLIC
 * (`tpm2_createak -u`), quote message (`tpm2_quote -m`, TPMS_ATTEST or TPM2B_ATTEST),
 * signature (`tpm2_quote -s`, TPMT_SIGNATURE), optional PCR values (`tpm2_quote -o`, or the
 * YAML/JSON that tpm2_pcrread prints). Without credential activation the AK–EK link is not
 * proven; the output says so (`claims.akBoundToEk: false`).
 */
import { readFileSync } from 'node:fs';
import { SigilError } from '../errors.js';
import { HASHES } from '../tpm/constants.js';
import { certificatesFromBytes } from '../tpm/ekcert.js';
import { encodePcrSelection, parsePcrSelection, type PcrBankSelection } from '../tpm/structures.js';
import { verifyTpmEvidenceOffline } from '../tpm/verify.js';
import { decodeEvidenceBytes, parseHexArg } from '../util/evidence-input.js';
import { UsageError, printEvidenceOutcome, rejectedOutcome } from './output.js';

export interface TpmEvidenceOptions {
  ekCert: string;
  ekCa: string[];
  ekIntermediate?: string[];
  akPub: string;
  quote: string;
  signature: string;
  nonce: string;
  pcrValues?: string;
  pcrs?: string;
  at?: string;
  json?: boolean;
}

function readArg(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new UsageError(`${flag}: cannot read ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
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

export async function runTpmEvidence(opts: TpmEvidenceOptions): Promise<number> {
  const json = opts.json === true;
  // Usage problems (unreadable files, bad hex, bad time) surface as UsageError → exit 2.
  const nonce = (() => {
    try {
      return parseHexArg('--nonce', opts.nonce);
    } catch (e) {
      throw new UsageError(e instanceof Error ? e.message : String(e));
    }
  })();
  let at = new Date();
  if (opts.at !== undefined) {
    at = new Date(opts.at);
    if (Number.isNaN(at.getTime())) throw new UsageError(`--at: "${opts.at}" is not an ISO-8601 time`);
  }
  const expected = opts.pcrs !== undefined ? parsePcrSelection(encodePcrSelection(parsePcrSpec(opts.pcrs))) : undefined;
  const ekCertRaw = readArg('--ek-cert', opts.ekCert);
  const caRaw = opts.ekCa.map((f) => ({ f, b: readArg('--ek-ca', f) }));
  const interRaw = (opts.ekIntermediate ?? []).map((f) => ({ f, b: readArg('--ek-intermediate', f) }));
  const akPubRaw = readArg('--ak-pub', opts.akPub);
  const quoteRaw = readArg('--quote', opts.quote);
  const sigRaw = readArg('--signature', opts.signature);
  const pcrRaw = opts.pcrValues !== undefined ? readArg('--pcr-values', opts.pcrValues) : undefined;

  try {
    const ekCerts = certificatesFromBytes(ekCertRaw, `--ek-cert ${opts.ekCert}`);
    if (ekCerts.length !== 1) throw new SigilError('tpm.ek_cert_malformed', `--ek-cert ${opts.ekCert} holds ${ekCerts.length} certificates; give the EK certificate alone`);
    const result = await verifyTpmEvidenceOffline({
      ekCert: ekCerts[0] as Buffer,
      ekCa: caRaw.flatMap(({ f, b }) => certificatesFromBytes(b, `--ek-ca ${f}`)),
      ekIntermediates: interRaw.flatMap(({ f, b }) => certificatesFromBytes(b, `--ek-intermediate ${f}`)),
      akPub: decodeEvidenceBytes(akPubRaw),
      quote: decodeEvidenceBytes(quoteRaw),
      signature: decodeEvidenceBytes(sigRaw),
      nonce,
      ...(pcrRaw ? { pcrValues: pcrRaw } : {}),
      ...(expected ? { expectedSelection: expected } : {}),
      at,
    });
    return printEvidenceOutcome({ ok: true, attestor: 'tpm', selectors: result.selectors, claims: result.claims }, json);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    return printEvidenceOutcome(rejectedOutcome('tpm', e), json);
  }
}
