/**
 * Signature AlgorithmIdentifiers the toolkit verifies: ECDSA and RSA PKCS#1 v1.5 with
 * SHA-256/384/512, and (only when the caller opts in) RSASSA-PSS with an explicit SHA-2 hash,
 * MGF1 over the same hash and trailerField 1 (RFC 4055). MD5 is refused; SHA-1 is refused unless
 * the caller names the SHA-1 algorithm's OID in its own per-call list (`only` here,
 * `ParseOptions.algorithms` and `ChainOptions.algorithms` for certificates): only the TPM EK path
 * does, because TPM vendors' EK CAs have signed with SHA-1 (see docs/tpm.md).
 */
import { constants, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError } from '../errors.js';
import { TAG, children, decodeOid, readTlv, type Tlv } from './der.js';

export type SigHash = 'sha1' | 'sha256' | 'sha384' | 'sha512';
export interface SigAlg {
  oid: string;
  family: 'ec' | 'rsa' | 'rsa-pss';
  hash: SigHash;
  /** RSASSA-PSS salt length in bytes (rsa-pss only). */
  saltLength?: number;
}

export const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';
const OID_MGF1 = '1.2.840.113549.1.1.8';
const HASH_OIDS: Record<string, SigHash> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

const ALGS: Record<string, SigAlg> = {
  '1.2.840.10045.4.3.2': { oid: '1.2.840.10045.4.3.2', family: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { oid: '1.2.840.10045.4.3.3', family: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { oid: '1.2.840.10045.4.3.4', family: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { oid: '1.2.840.113549.1.1.11', family: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { oid: '1.2.840.113549.1.1.12', family: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { oid: '1.2.840.113549.1.1.13', family: 'rsa', hash: 'sha512' },
};

export const OID_SHA1_WITH_RSA = '1.2.840.113549.1.1.5';
export const OID_ECDSA_WITH_SHA1 = '1.2.840.10045.4.1';

/** SHA-1 signature algorithms: never accepted unless named in the caller's own list. */
const SHA1_ALGS: Record<string, SigAlg> = {
  [OID_SHA1_WITH_RSA]: { oid: OID_SHA1_WITH_RSA, family: 'rsa', hash: 'sha1' },
  [OID_ECDSA_WITH_SHA1]: { oid: OID_ECDSA_WITH_SHA1, family: 'ec', hash: 'sha1' },
};

/** The signature algorithm OIDs accepted by default (RSASSA-PSS also needs `pss`). */
export const DEFAULT_SIG_ALG_OIDS: readonly string[] = [...Object.keys(ALGS), OID_RSASSA_PSS];

/** Whether `alg` may be used under the caller's list: SHA-1 only when the list names it. */
export function sigAlgAllowed(alg: Pick<SigAlg, 'oid' | 'hash'>, only: readonly string[] | undefined): boolean {
  if (only && !only.includes(alg.oid)) return false;
  return alg.hash !== 'sha1' || only?.includes(alg.oid) === true;
}

/** AlgorithmIdentifier DER for the algorithms Sigil signs with. */
export const ALG_ID_DER = {
  ecdsaSha256: Buffer.from('300a06082a8648ce3d040302', 'hex'),
  ecdsaSha384: Buffer.from('300a06082a8648ce3d040303', 'hex'),
  rsaSha256: Buffer.from('300d06092a864886f70d01010b0500', 'hex'),
} as const;

export interface SigAlgOptions {
  /** Accept RSASSA-PSS (default false: refused as unsupported). */
  pss?: boolean;
  /**
   * The caller's own allowlist of algorithm OIDs: any other is refused as unsupported before its
   * parameters are read. SHA-1 algorithms are accepted only when named here.
   */
  only?: readonly string[];
  /** BER tolerances of TPM EK certificates (cert.ts `ParseOptions.ber`): non-minimal lengths, NULL parameters on ECDSA. */
  ber?: boolean;
}

/** Parse a signature AlgorithmIdentifier; `unsupportedCode` for algorithms outside the allowlist. */
export function parseSigAlg(buf: Uint8Array, t: Tlv, malformedCode: string, unsupportedCode: string, opts: SigAlgOptions = {}): SigAlg {
  if (t.tag !== TAG.SEQUENCE) throw new SigilError(malformedCode, 'signature AlgorithmIdentifier is not a SEQUENCE');
  const ber = opts.ber === true;
  const parts = children(buf, t, malformedCode, ber);
  if (parts.length < 1 || parts.length > 2) throw new SigilError(malformedCode, 'signature AlgorithmIdentifier must have one or two elements');
  const oid = decodeOid(buf, parts[0]!, malformedCode);
  if (opts.only && !opts.only.includes(oid)) throw new SigilError(unsupportedCode, `signature algorithm ${oid} is not accepted here (expected ${opts.only.join(' or ')})`);
  if (oid === OID_RSASSA_PSS && opts.pss === true) return parsePssParams(buf, parts[1], malformedCode, unsupportedCode, ber);
  const alg = ALGS[oid] ?? (opts.only?.includes(oid) === true ? SHA1_ALGS[oid] : undefined);
  if (!alg) throw new SigilError(unsupportedCode, `signature algorithm ${oid} is not accepted (ECDSA or RSA PKCS#1 v1.5 with SHA-256/384/512 only)`);
  const p = parts[1];
  // Quirk (BER, EK certificates only): some CAs write NULL parameters after an ECDSA OID.
  const nullParam = p !== undefined && p.tag === TAG.NULL && p.end === p.valueStart;
  if (alg.family === 'ec' && p && !(ber && nullParam)) throw new SigilError(malformedCode, 'ECDSA AlgorithmIdentifier must not have parameters');
  if (alg.family === 'rsa' && p && (p.tag !== TAG.NULL || p.end !== p.valueStart)) {
    throw new SigilError(malformedCode, 'RSA signature AlgorithmIdentifier parameters must be NULL');
  }
  return alg;
}

function hashOf(buf: Uint8Array, t: Tlv, code: string, ber: boolean): string {
  if (t.tag !== TAG.SEQUENCE) throw new SigilError(code, 'RSASSA-PSS: hash AlgorithmIdentifier is not a SEQUENCE');
  const a = children(buf, t, code, ber);
  if (a.length < 1 || a.length > 2) throw new SigilError(code, 'RSASSA-PSS: hash AlgorithmIdentifier must have one or two elements');
  const p = a[1];
  if (p && (p.tag !== TAG.NULL || p.end !== p.valueStart)) throw new SigilError(code, 'RSASSA-PSS: hash parameters must be NULL or absent');
  return decodeOid(buf, a[0]!, code);
}

/** RSASSA-PSS-params (RFC 4055 §3.1); defaults (SHA-1) are refused, so hash and MGF must be explicit. */
function parsePssParams(buf: Uint8Array, p: Tlv | undefined, malformedCode: string, unsupportedCode: string, ber: boolean): SigAlg {
  if (!p || p.tag !== TAG.SEQUENCE) throw new SigilError(unsupportedCode, 'RSASSA-PSS parameters are missing');
  let hashOid: string | undefined;
  let mgfHashOid: string | undefined;
  let saltLength = 20;
  let trailer = 1;
  let last = -1;
  for (const f of children(buf, p, malformedCode, ber)) {
    const n = f.tag - 0xa0;
    if (n < 0 || n > 3 || n <= last) throw new SigilError(malformedCode, 'RSASSA-PSS parameters are out of order or unknown');
    last = n;
    const inner = readTlv(buf, f.valueStart, f.end, malformedCode, ber);
    if (inner.end !== f.end) throw new SigilError(malformedCode, 'RSASSA-PSS parameter has trailing bytes');
    if (n === 0) hashOid = hashOf(buf, inner, malformedCode, ber);
    else if (n === 1) {
      if (inner.tag !== TAG.SEQUENCE) throw new SigilError(malformedCode, 'RSASSA-PSS maskGenAlgorithm is not a SEQUENCE');
      const m = children(buf, inner, malformedCode, ber);
      if (m.length !== 2 || decodeOid(buf, m[0]!, malformedCode) !== OID_MGF1) throw new SigilError(unsupportedCode, 'RSASSA-PSS mask generation is not MGF1');
      mgfHashOid = hashOf(buf, m[1]!, malformedCode, ber);
    } else {
      if (inner.tag !== TAG.INTEGER || inner.end - inner.valueStart > 2 || (buf[inner.valueStart]! & 0x80) !== 0) {
        throw new SigilError(malformedCode, 'RSASSA-PSS saltLength/trailerField is not a small INTEGER');
      }
      let v = 0;
      for (let i = inner.valueStart; i < inner.end; i++) v = v * 256 + buf[i]!;
      if (n === 2) saltLength = v;
      else trailer = v;
    }
  }
  const hash = hashOid === undefined ? undefined : HASH_OIDS[hashOid];
  if (!hash) throw new SigilError(unsupportedCode, `RSASSA-PSS hash ${hashOid ?? 'SHA-1 (default)'} is not accepted (SHA-256/384/512 only)`);
  if (mgfHashOid !== hashOid) throw new SigilError(unsupportedCode, 'RSASSA-PSS MGF1 hash differs from the signature hash');
  if (trailer !== 1) throw new SigilError(unsupportedCode, 'RSASSA-PSS trailerField must be 1');
  return { oid: OID_RSASSA_PSS, family: 'rsa-pss', hash, saltLength };
}

/** Verify `sig` over `data`; false on any mismatch (never throws for a bad signature). */
export function verifyWith(alg: SigAlg, data: Uint8Array, key: KeyObject, sig: Uint8Array): boolean {
  const kt = key.asymmetricKeyType;
  try {
    if (alg.family === 'ec') return kt === 'ec' && cryptoVerify(alg.hash, data, key, sig);
    if (alg.family === 'rsa') return kt === 'rsa' && cryptoVerify(alg.hash, data, key, sig);
    if (kt !== 'rsa' && kt !== 'rsa-pss') return false;
    if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) return false;
    return cryptoVerify(alg.hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: alg.saltLength ?? 0 }, sig);
  } catch {
    return false;
  }
}
