/**
 * Certificate revocation lists (RFC 5280 §5.1), pure: strict DER parse (PEM accepted and
 * converted), the issuer, signature and thisUpdate..nextUpdate checks with the time passed in,
 * and the revocation lookup for a verified path.
 */
import { createHash } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import { publicKeyOf, type AnyKeyCertificate } from './cert.js';
import { TAG, bytesOf, checkStrictDer, children, decodeOid, decodeTime, readSingle, valueOf, type Tlv } from './der.js';
import { X509_CODES } from './errors.js';
import { KU, OID_AKI } from './ext.js';
import { pemBlocks } from './pem.js';
import { parseSigAlg, verifyWith, type SigAlg } from './sigalg.js';
import { verificationTimeMs } from './validity.js';

const OID_CRL_NUMBER = '2.5.29.20';
const C = X509_CODES.crlMalformed;

export interface ParsedCrl {
  der: Buffer;
  /** SHA-256 of the DER, lowercase hex. */
  sha256: string;
  issuerDer: Buffer;
  thisUpdate: Date;
  nextUpdate: Date;
  /** Revoked serial numbers (content octets, hex). */
  revoked: Set<string>;
  tbs: Buffer;
  sigAlg: SigAlg;
  signature: Buffer;
}

function crlBad(msg: string): never {
  throw new SigilError(C, `CRL: ${msg}`, { status: 400 });
}

/** Parse a DER CRL (v2, nextUpdate required, only CRL number / AKI as critical extensions), strictly. PEM is accepted too. */
export function parseCrl(input: Uint8Array): ParsedCrl {
  let der: Buffer = Buffer.from(input);
  if (der.subarray(0, 32).toString('latin1').startsWith('-----BEGIN ')) {
    try {
      const blocks = pemBlocks(der.toString('latin1'), 'X509 CRL');
      if (blocks.length !== 1) crlBad('expected one X509 CRL block');
      der = blocks[0]!;
    } catch (e) {
      if (e instanceof SigilError && e.code === C) throw e;
      crlBad(`malformed PEM: ${errorMessage(e)}`);
    }
  }
  try {
    checkStrictDer(der, C);
  } catch (e) {
    throw new SigilError(C, `CRL: ${errorMessage(e)}`, { cause: e, status: 400 });
  }
  const top = readSingle(der, C, TAG.SEQUENCE);
  const outer = children(der, top, C);
  if (outer.length !== 3) crlBad('CertificateList must have three elements');
  const [tbsT, algT, sigT] = outer as [Tlv, Tlv, Tlv];
  if (tbsT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING || der[sigT.valueStart] !== 0) crlBad('wrong structure');
  const sigAlg = parseSigAlg(der, algT, C, C);
  const f = children(der, tbsT, C);
  let i = 0;
  if (f[i]?.tag === TAG.INTEGER) {
    if (f[i]!.end - f[i]!.valueStart !== 1 || der[f[i]!.valueStart] !== 1) crlBad('version must be v2');
    i++;
  }
  const innerAlg = f[i++];
  const issuerT = f[i++];
  const thisT = f[i++];
  if (!innerAlg || !issuerT || !thisT) crlBad('TBSCertList is missing fields');
  if (!bytesOf(der, innerAlg).equals(bytesOf(der, algT))) crlBad('inner and outer signature algorithms differ');
  if (issuerT.tag !== TAG.SEQUENCE) crlBad('issuer is not a Name');
  const thisUpdate = decodeTime(der, thisT, C);
  const nextT = f[i];
  if (!nextT || (nextT.tag !== TAG.UTC_TIME && nextT.tag !== TAG.GENERALIZED_TIME)) crlBad('nextUpdate is required');
  i++;
  const nextUpdate = decodeTime(der, nextT, C);
  const revoked = new Set<string>();
  if (f[i]?.tag === TAG.SEQUENCE) {
    for (const entry of children(der, f[i]!, C)) {
      const ef = children(der, entry, C);
      if (entry.tag !== TAG.SEQUENCE || ef.length < 2 || ef[0]!.tag !== TAG.INTEGER) crlBad('revoked certificate entry malformed');
      revoked.add(valueOf(der, ef[0]!).toString('hex'));
    }
    i++;
  }
  if (f[i]?.tag === 0xa0) {
    // crlExtensions: only CRL number / AKI are expected; an unknown critical one is refused.
    const w = children(der, f[i]!, C);
    if (w.length !== 1 || w[0]!.tag !== TAG.SEQUENCE) crlBad('crlExtensions must wrap one Extensions SEQUENCE');
    const exts = children(der, w[0]!, C);
    if (exts.length === 0) crlBad('crlExtensions is empty');
    const seen = new Set<string>();
    for (const e of exts) {
      const ef = children(der, e, C);
      if (e.tag !== TAG.SEQUENCE || ef.length < 2 || ef.length > 3 || ef[ef.length - 1]!.tag !== TAG.OCTET_STRING) crlBad('CRL extension malformed');
      if (ef.length === 3 && ef[1]!.tag !== TAG.BOOLEAN) crlBad('CRL extension critical is not a BOOLEAN');
      const oid = decodeOid(der, ef[0]!, C);
      if (seen.has(oid)) crlBad(`CRL extension ${oid} appears twice`);
      seen.add(oid);
      if (ef.length === 3 && oid !== OID_CRL_NUMBER && oid !== OID_AKI) crlBad(`unknown critical CRL extension ${oid}`);
    }
    i++;
  }
  if (i !== f.length) crlBad('unexpected fields in TBSCertList');
  return {
    der,
    sha256: createHash('sha256').update(der).digest('hex'),
    issuerDer: Buffer.from(bytesOf(der, issuerT)),
    thisUpdate,
    nextUpdate,
    revoked,
    tbs: Buffer.from(bytesOf(der, tbsT)),
    sigAlg,
    signature: Buffer.from(der.subarray(sigT.valueStart + 1, sigT.end)),
  };
}

/** The CRL's signature under `issuer`'s key (false on any mismatch). */
export function crlSignatureVerifies(crl: ParsedCrl, issuer: AnyKeyCertificate): boolean {
  return verifyWith(crl.sigAlg, crl.tbs, publicKeyOf(issuer), crl.signature);
}

/**
 * The CRL names `issuer`, the issuer may sign CRLs (keyUsage, when present, asserts cRLSign: RFC
 * 5280 §4.2.1.3), its signature verifies (through `verify`, default a direct check) and `at` is
 * inside thisUpdate..nextUpdate. Throws `x509.crl_issuer_mismatch`, `x509.crl_issuer_not_crl_signer`,
 * `x509.crl_signature_invalid`, `x509.crl_not_yet_valid`, `x509.crl_expired` (`x509.bad_time` for a time that is not finite).
 */
export function checkCrl(crl: ParsedCrl, issuer: AnyKeyCertificate, at: number | Date, what = 'CRL', verify: () => boolean = () => crlSignatureVerifies(crl, issuer)): void {
  if (!crl.issuerDer.equals(issuer.subjectDer)) throw new SigilError(X509_CODES.crlIssuerMismatch, `${what} is not issued by "${issuer.subject}"`, { status: 403 });
  if (issuer.keyUsage && (issuer.keyUsage.flags & KU.cRLSign) === 0) {
    throw new SigilError(X509_CODES.crlIssuerNotCrlSigner, `${what} issuer's keyUsage lacks cRLSign: its key may not sign CRLs`, { status: 403 });
  }
  if (!verify()) throw new SigilError(X509_CODES.crlSignatureInvalid, `${what} signature does not verify under its issuer's key`, { status: 403 });
  const t = verificationTimeMs(at);
  if (t < crl.thisUpdate.getTime()) throw new SigilError(X509_CODES.crlNotYetValid, `${what} is not valid before ${crl.thisUpdate.toISOString()}`, { status: 403 });
  if (t > crl.nextUpdate.getTime()) throw new SigilError(X509_CODES.crlExpired, `${what} expired at its nextUpdate ${crl.nextUpdate.toISOString()}`, { status: 403 });
}
