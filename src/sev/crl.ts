/**
 * AMD's certificate revocation lists for SEV-SNP, pure: CRL bytes, the verified chain and the time
 * in; a revocation verdict or a SigilError out. No I/O (collateral.ts fetches and caches the CRL).
 *
 * AMD KDS publishes one CRL per product line and key kind (`/vcek/v1/<Product>/crl`,
 * `/vlek/v1/<Product>/crl`), issued and signed by that line's ARK with AMD's RSASSA-PSS profile
 * (SHA-384, MGF1-SHA-384, salt 48). It covers the certificates the ARK issues: the ASK/ASVK (and
 * the ARK itself). A VCEK/VLEK is issued by the ASK/ASVK, not by the ARK, so it is out of the
 * ARK's CRL's scope: serial numbers are per issuer, and every VCEK AMD issues has serial 0, so
 * matching VCEK serials against the ARK's list would revoke all of them or none.
 *
 * Parsing and the issuer / signature / thisUpdate..nextUpdate checks are the X.509 toolkit's
 * (src/x509/crl.ts). Its parseCrl does not take RSASSA-PSS yet (it reads the algorithm without the
 * `pss` option), so `parseAmdCrl` checks AMD's PSS AlgorithmIdentifier here, hands the toolkit the
 * same CertificateList with that AlgorithmIdentifier swapped for a plain RSA one (every other byte
 * as received), and puts back the original TBS bytes and the PSS algorithm for the signature
 * check. Once parseCrl accepts SigAlgOptions this shim reduces to `parseCrl(der, { pss: true, only: [PSS] })`.
 */
import { createHash } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import { checkCrl, parseCrl, type ParsedCrl } from '../x509/crl.js';
import { TAG, bytesOf, checkStrictDer, children, readSingle, tlv, tlvOf } from '../x509/der.js';
import { X509_CODES } from '../x509/errors.js';
import { pemBlocks } from '../x509/pem.js';
import { OID_RSASSA_PSS, parseSigAlg } from '../x509/sigalg.js';
import type { SevCert } from './certs.js';
import type { SnpProduct, SnpSigningKey } from './report.js';

/** Largest CRL accepted (the KDS client's answer cap; AMD's CRLs are a few KiB). */
export const MAX_CRL_BYTES = 64 * 1024;

/** What to do when no usable CRL can be had: refuse (`require`), go on unchecked (`best_effort`), or never check (`off`). */
export type SnpCrlMode = 'require' | 'best_effort' | 'off';
export const SNP_CRL_MODES: readonly SnpCrlMode[] = ['require', 'best_effort', 'off'];

export interface SnpCrlPolicy {
  /** Default `best_effort` in the pure verifier; the plugin's default depends on KDS (see plugin.ts). */
  mode?: SnpCrlMode;
}

/** Outcome of the revocation check. */
export type SnpRevocation =
  | { checked: true; crlSha256: string; thisUpdate: string; nextUpdate: string }
  | { checked: false; reason: string };

const RSA_SHA384_ALG = Buffer.from('300d06092a864886f70d01010c0500', 'hex');
const M = X509_CODES.crlMalformed;

function invalid(message: string, cause?: unknown): SigilError {
  return new SigilError('sev.crl_invalid', message, { status: 502, ...(cause === undefined ? {} : { cause }) });
}

/** DER or PEM (`X509 CRL`) bytes → DER, size-capped. */
function crlDer(input: Uint8Array, what: string): Buffer {
  if (!(input instanceof Uint8Array) || input.byteLength === 0) throw invalid(`${what} is empty`);
  if (input.byteLength > MAX_CRL_BYTES) throw invalid(`${what} is larger than ${MAX_CRL_BYTES} bytes (${input.byteLength})`);
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  if (!buf.subarray(0, 64).toString('latin1').includes('-----BEGIN')) return Buffer.from(buf);
  let blocks: Buffer[];
  try {
    blocks = pemBlocks(buf.toString('latin1'), 'X509 CRL');
  } catch (e) {
    throw invalid(`${what} is not a PEM X509 CRL: ${errorMessage(e)}`, e);
  }
  if (blocks.length !== 1) throw invalid(`${what} must hold exactly one X509 CRL block, found ${blocks.length}`);
  return blocks[0]!;
}

/**
 * Parse an AMD CRL (DER, or PEM `X509 CRL`): strict DER with no trailing bytes, at most
 * MAX_CRL_BYTES, signed with AMD's RSASSA-PSS profile (SHA-384 / MGF1-SHA-384 / salt 48), v2 with
 * nextUpdate. Anything else → sev.crl_invalid. The signature is not checked here.
 */
export function parseAmdCrl(input: Uint8Array, what = 'AMD CRL'): ParsedCrl {
  const der = crlDer(input, what);
  try {
    checkStrictDer(der, M);
    const top = readSingle(der, M, TAG.SEQUENCE);
    const outer = children(der, top, M);
    if (outer.length !== 3 || outer[0]!.tag !== TAG.SEQUENCE) throw new SigilError(M, 'CertificateList must be a SEQUENCE of TBSCertList, algorithm, signature');
    const [tbsT, algT, sigT] = outer as [(typeof outer)[0], (typeof outer)[0], (typeof outer)[0]];
    const sigAlg = parseSigAlg(der, algT, M, M, { pss: true, only: [OID_RSASSA_PSS] });
    if (sigAlg.hash !== 'sha384' || sigAlg.saltLength !== 48) throw new SigilError(M, 'RSASSA-PSS parameters are not SHA-384 / MGF1-SHA-384 / salt 48');
    const algBytes = bytesOf(der, algT);
    const fields = children(der, tbsT, M);
    const algIndex = fields[0]?.tag === TAG.INTEGER ? 1 : 0;
    const inner = fields[algIndex];
    if (!inner || !bytesOf(der, inner).equals(algBytes)) throw new SigilError(M, 'inner and outer signature algorithms differ');
    // The same CertificateList with AMD's PSS AlgorithmIdentifier (both places) read as RSA-SHA384,
    // so the toolkit's parser checks everything else; the signature is checked below over the original TBS.
    const tbsParts = fields.map((f, i) => (i === algIndex ? RSA_SHA384_ALG : bytesOf(der, f)));
    const shim = tlv(TAG.SEQUENCE, tlvOf(TAG.SEQUENCE, tbsParts), RSA_SHA384_ALG, bytesOf(der, sigT));
    const parsed = parseCrl(shim);
    return {
      ...parsed,
      der,
      sha256: createHash('sha256').update(der).digest('hex'),
      tbs: Buffer.from(bytesOf(der, tbsT)),
      sigAlg,
    };
  } catch (e) {
    if (e instanceof SigilError && e.code === 'sev.crl_invalid') throw e;
    throw invalid(`${what} is not a valid AMD CRL: ${errorMessage(e)}`, e);
  }
}

/** The verified chain the CRL is checked against. */
export interface CrlSubject {
  product: SnpProduct;
  kind: SnpSigningKey;
  ark: SevCert;
  intermediate: SevCert;
}

/**
 * Parse `crlBytes` as an AMD CRL and check it is issued by `ark` (the pinned ARK of `product`),
 * signed by it, and current at `now` (thisUpdate <= now <= nextUpdate). sev.crl_expired past
 * nextUpdate, sev.crl_invalid otherwise. Does not look at the revoked serials.
 */
export function verifyAmdCrl(crlBytes: Uint8Array, ark: SevCert, product: SnpProduct, now: Date, what = `AMD ${product} CRL`): ParsedCrl {
  const crl = parseAmdCrl(crlBytes, what);
  try {
    checkCrl(crl, ark.cert, now, what);
  } catch (e) {
    const se = e instanceof SigilError ? e : invalid(`${what}: ${errorMessage(e)}`, e);
    if (se.code === X509_CODES.crlExpired) throw new SigilError('sev.crl_expired', se.message, { status: 503, cause: se });
    if (se.code === X509_CODES.crlIssuerMismatch) throw invalid(`${what} is not issued by the ${product} ARK (another product line's CRL?)`, se);
    throw invalid(se.message, se);
  }
  return crl;
}

/** Why a CRL could not be used, under `require` → the error; under `best_effort` → unchecked with this reason. */
function unusable(mode: SnpCrlMode, e: SigilError): SnpRevocation {
  if (mode === 'require') throw e;
  return { checked: false, reason: `${e.code}: ${e.message}` };
}

/**
 * Check the chain against AMD's CRL at `now` (pure). `crlBytes` is the CRL as fetched or read (or
 * undefined when none could be had); `unavailableReason` says why there is none. The CRL must be
 * issued by the chain's (pinned, already verified) ARK, signed by it with AMD's RSASSA-PSS profile
 * and current (thisUpdate <= now <= nextUpdate); then an ARK or ASK/ASVK serial on it →
 * sev.cert_revoked (403) in every mode but `off`. A missing CRL → sev.crl_unavailable (503), an
 * expired one → sev.crl_expired (503), any other fault → sev.crl_invalid (502) under `require`;
 * under `best_effort` these give `{ checked: false, reason }`.
 */
export function checkAmdRevocation(
  crlBytes: Uint8Array | undefined,
  subject: CrlSubject,
  now: Date,
  mode: SnpCrlMode = 'best_effort',
  unavailableReason = 'no CRL was supplied',
): SnpRevocation {
  if (!SNP_CRL_MODES.includes(mode)) throw new SigilError('sev.config_invalid', `crl.mode must be one of ${SNP_CRL_MODES.join(', ')}`);
  if (mode === 'off') return { checked: false, reason: 'crl.mode is off' };
  const interLabel = subject.kind === 'vcek' ? 'ASK' : 'ASVK';
  const what = `AMD ${subject.product} ${subject.kind.toUpperCase()} CRL`;
  if (crlBytes === undefined) {
    return unusable(mode, new SigilError('sev.crl_unavailable', `${what} unavailable (${unavailableReason}); revocation of the ${interLabel} cannot be checked`, { status: 503 }));
  }
  let crl: ParsedCrl;
  try {
    crl = verifyAmdCrl(crlBytes, subject.ark, subject.product, now, what);
  } catch (e) {
    if (!(e instanceof SigilError)) throw e;
    return unusable(mode, e);
  }
  for (const [label, cert] of [
    ['ARK', subject.ark],
    [interLabel, subject.intermediate],
  ] as const) {
    if (crl.revoked.has(cert.serialHex)) {
      throw new SigilError('sev.cert_revoked', `the ${subject.product} ${label} certificate (serial 0x${cert.serialHex}) is revoked by AMD's CRL (thisUpdate ${crl.thisUpdate.toISOString()})`, {
        status: 403,
      });
    }
  }
  return { checked: true, crlSha256: crl.sha256, thisUpdate: crl.thisUpdate.toISOString(), nextUpdate: crl.nextUpdate.toISOString() };
}

/** nextUpdate of a CRL that parses as an AMD CRL, else undefined (for the collateral cache; not a trust decision). */
export function amdCrlNextUpdate(der: Uint8Array): Date | undefined {
  try {
    return parseAmdCrl(der).nextUpdate;
  } catch {
    return undefined;
  }
}
