/**
 * X.509 certificate parsing (RFC 5280 §4.1): the one parser every part of Sigil uses (SVIDs and
 * bundles, the Nitro, SEV-SNP and TDX attestors).
 *
 * Framing and byte ranges come from the strict DER reader (der.ts): the whole certificate must be
 * canonical DER, and the exact TBSCertificate, issuer/subject Name and SubjectPublicKeyInfo bytes
 * are kept for signature checks and byte-exact chaining. The fields every caller needs are decoded
 * here; an extension that needs a schema is decoded on demand with @peculiar/asn1-x509
 * (`asn1Extension`). Parsing is pure; `CertCache` remembers parses by SHA-256 of the DER.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { SigilError, errorMessage } from '../errors.js';
import { formatName } from '../spiffe/name.js';
import { TAG, bytesOf, checkStrictDer, children, decodeOid, decodeTime, readSingle, type Tlv } from './der.js';
import { X509_CODES } from './errors.js';
import {
  OID_AKI,
  OID_BC,
  OID_EKU,
  OID_KU,
  OID_SAN,
  OID_SKI,
  parseAkiValue,
  parseBasicConstraintsValue,
  parseExtKeyUsageValue,
  parseGeneralNames,
  parseKeyUsageValue,
  parseSkiValue,
} from './ext.js';
import { Lru } from './lru.js';
import { parseSigAlg, type SigAlg } from './sigalg.js';
import { inspectSpki, type SpkiInfo } from './spki.js';

export const CERT_MAX_BYTES = 64 * 1024;

export interface ParsedExtension {
  oid: string;
  critical: boolean;
  value: Buffer;
}

export interface ParsedCertificate {
  der: Buffer;
  /** SHA-256 of the DER, lowercase hex: the certificate's identity in every cache. */
  sha256: string;
  /** TBSCertificate bytes (what the signature covers). */
  tbs: Buffer;
  version: number;
  /** Serial number content octets (two's complement, as encoded). */
  serial: Buffer;
  serialHex: string;
  sigAlg: SigAlg;
  signature: Buffer;
  issuerDer: Buffer;
  subjectDer: Buffer;
  issuer: string;
  subject: string;
  notBefore: Date;
  notAfter: Date;
  spki: Buffer;
  /** Key family and size; undefined only under `keys: 'any'` for a key outside Sigil's set. */
  spkiInfo: SpkiInfo;
  extensions: ParsedExtension[];
  basicConstraints: { ca: boolean; pathLen: number | undefined; critical: boolean } | undefined;
  keyUsage: { flags: number; critical: boolean } | undefined;
  extKeyUsage: string[] | undefined;
  san: { uris: string[]; dnsNames: string[]; others: number; critical: boolean } | undefined;
  subjectKeyId: Buffer | undefined;
  authorityKeyId: Buffer | undefined;
}

/** A certificate parsed under `keys: 'any'`: the key may be of a type Sigil does not issue. */
export type AnyKeyCertificate = Omit<ParsedCertificate, 'spkiInfo'> & { spkiInfo: SpkiInfo | undefined };

export interface ParseOptions {
  /** Largest accepted DER (default 64 KiB). */
  maxBytes?: number;
  /** Accept RSASSA-PSS signatures (AMD's certificates); default false. */
  pss?: boolean;
  /**
   * Only these signature algorithm OIDs (checked before their parameters); default every
   * allowlisted one. SHA-1 algorithms are accepted only when named here (sigalg.ts).
   */
  algorithms?: readonly string[];
  /**
   * TPM EK certificates only: read BER where RFC 5280 asks for DER, because TPM vendors' EK
   * certificates (TCG EK Credential Profile) carry such encodings and Sigil has always accepted
   * them. Tolerated: non-canonical encodings below the outer framing (non-minimal lengths and
   * INTEGERs, BOOLEAN TRUE other than FF, SET OF out of order), explicit DEFAULT values (critical
   * FALSE, cA FALSE), serial numbers longer than 20 octets, UTCTime without seconds,
   * GeneralizedTime before 2050, v1/v2 certificates, NULL parameters after an ECDSA OID, and
   * public keys the SPKI inspector does not read (left to node:crypto). Still refused: indefinite
   * lengths, trailing bytes, a TBSCertificate signature algorithm that differs from the outer
   * one. Signatures are always checked over the TBSCertificate bytes as received.
   * SubjectAltName, key identifiers that do not decode are left undefined instead of refused.
   */
  ber?: boolean;
}

const C = X509_CODES.malformed;

function bad(msg: string): never {
  throw new SigilError(C, `certificate: ${msg}`);
}

/**
 * Parse one DER certificate whose key is one Sigil accepts (EC P-256/P-384, RSA 2048..8192).
 * Throws `x509.malformed`, `x509.unsupported_algorithm`, `x509.unsupported_key`.
 */
export function parseCertificate(input: Uint8Array, opts: ParseOptions = {}): ParsedCertificate {
  return parse(input, opts, true) as ParsedCertificate;
}

/** Same as parseCertificate, but any public key node:crypto can import is accepted (TPM EK certificates). */
export function parseCertificateAnyKey(input: Uint8Array, opts: ParseOptions = {}): AnyKeyCertificate {
  return parse(input, opts, false);
}

function parse(input: Uint8Array, opts: ParseOptions, sigilKeys: boolean): AnyKeyCertificate {
  const max = opts.maxBytes ?? CERT_MAX_BYTES;
  if (!(input instanceof Uint8Array) || input.length === 0) bad('empty input');
  if (input.length > max) bad(`larger than ${max} bytes`);
  const der = Buffer.from(input);
  const ber = opts.ber === true;
  if (!ber) checkStrictDer(der, C);
  const kids = (t: Tlv): Tlv[] => children(der, t, C, ber);
  const top = readSingle(der, C, TAG.SEQUENCE, ber);
  const outer = kids(top);
  if (outer.length !== 3) bad('Certificate must have three elements');
  const [tbsT, algT, sigT] = outer as [Tlv, Tlv, Tlv];
  if (tbsT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING) bad('wrong structure');
  if (der[sigT.valueStart] !== 0) bad('signature BIT STRING has unused bits');
  const sigAlg = parseSigAlg(der, algT, C, X509_CODES.unsupportedAlgorithm, { pss: opts.pss === true, ber, ...(opts.algorithms ? { only: opts.algorithms } : {}) });

  const f = kids(tbsT);
  let i = 0;
  let version = 1;
  if (f[i]?.tag === 0xa0) {
    const v = kids(f[i]!);
    if (v.length !== 1 || v[0]!.tag !== TAG.INTEGER || v[0]!.end - v[0]!.valueStart !== 1) bad('bad version');
    version = der[v[0]!.valueStart]! + 1;
    if (version === 1 && !ber) bad('explicit v1 version must be omitted in DER');
    i++;
  }
  if (version !== 3 && !(ber && (version === 1 || version === 2))) bad(`version ${version} is not v3`);
  const serialT = f[i++];
  const innerAlgT = f[i++];
  const issuerT = f[i++];
  const validityT = f[i++];
  const subjectT = f[i++];
  const spkiT = f[i++];
  if (!serialT || !innerAlgT || !issuerT || !validityT || !subjectT || !spkiT) bad('TBSCertificate is missing fields');
  if (serialT.tag !== TAG.INTEGER) bad('serialNumber is not an INTEGER');
  const serialLen = serialT.end - serialT.valueStart;
  if (serialLen === 0) bad('serialNumber is empty');
  if (serialLen > 21 && !ber) bad('serialNumber longer than 20 octets');
  if (!bytesOf(der, innerAlgT).equals(bytesOf(der, algT))) bad('TBSCertificate signature algorithm differs from the outer one');
  if (issuerT.tag !== TAG.SEQUENCE || subjectT.tag !== TAG.SEQUENCE || validityT.tag !== TAG.SEQUENCE) bad('wrong TBSCertificate structure');
  const vt = kids(validityT);
  if (vt.length !== 2) bad('validity must have two times');
  const notBefore = decodeTime(der, vt[0]!, C, ber);
  const notAfter = decodeTime(der, vt[1]!, C, ber);
  // RFC 5280: dates through 2049 MUST be UTCTime.
  for (const [t, d] of [[vt[0]!, notBefore], [vt[1]!, notAfter]] as const) {
    const y = d.getUTCFullYear();
    if (t.tag === TAG.GENERALIZED_TIME && y >= 1950 && y < 2050 && !ber) bad('GeneralizedTime used for a date before 2050');
  }
  const spki = Buffer.from(bytesOf(der, spkiT));
  let spkiInfo: SpkiInfo | undefined;
  if (sigilKeys) {
    spkiInfo = inspectSpki(spki, C, X509_CODES.unsupportedKey);
  } else {
    if (spkiT.tag !== TAG.SEQUENCE) bad('SubjectPublicKeyInfo is not a SEQUENCE');
    try {
      spkiInfo = inspectSpki(spki, C, X509_CODES.unsupportedKey, !ber);
    } catch (e) {
      // BER: a key the inspector cannot read is left to node:crypto (publicKeyOf), as before.
      if (!(e instanceof SigilError) || (e.code !== X509_CODES.unsupportedKey && !ber)) throw e;
    }
  }

  const extensions: ParsedExtension[] = [];
  while (i < f.length) {
    const t = f[i++]!;
    if (t.tag === 0xa1 || t.tag === 0xa2 || t.tag === 0x81 || t.tag === 0x82) continue; // unique identifiers (ignored)
    if (t.tag !== 0xa3) bad(`unexpected TBSCertificate field tag 0x${t.tag.toString(16)}`);
    if (i !== f.length) bad('fields after extensions');
    const w = kids(t);
    if (w.length !== 1 || w[0]!.tag !== TAG.SEQUENCE) bad('extensions wrapper malformed');
    const exts = kids(w[0]!);
    if (exts.length === 0) bad('empty extensions');
    const seen = new Set<string>();
    for (const e of exts) {
      const ef = kids(e);
      if (e.tag !== TAG.SEQUENCE || ef.length < 2 || ef.length > 3) bad('Extension malformed');
      const oid = decodeOid(der, ef[0]!, C);
      if (seen.has(oid)) bad(`extension ${oid} appears twice`);
      seen.add(oid);
      let critical = false;
      if (ef.length === 3) {
        const b = ef[1]!;
        if (b.tag !== TAG.BOOLEAN || b.end - b.valueStart !== 1) bad('Extension critical is not a BOOLEAN');
        if (der[b.valueStart] === 0 && !ber) bad('Extension critical=FALSE must be omitted in DER');
        // BER: any non-zero octet is TRUE, an explicit FALSE is the default.
        critical = der[b.valueStart] !== 0;
      }
      const vT = ef[ef.length - 1]!;
      if (vT.tag !== TAG.OCTET_STRING) bad('Extension value is not an OCTET STRING');
      extensions.push({ oid, critical, value: Buffer.from(der.subarray(vT.valueStart, vT.end)) });
    }
  }

  const cert: AnyKeyCertificate = {
    der,
    sha256: createHash('sha256').update(der).digest('hex'),
    tbs: Buffer.from(bytesOf(der, tbsT)),
    version,
    serial: Buffer.from(der.subarray(serialT.valueStart, serialT.end)),
    serialHex: Buffer.from(der.subarray(serialT.valueStart, serialT.end)).toString('hex'),
    sigAlg,
    signature: Buffer.from(der.subarray(sigT.valueStart + 1, sigT.end)),
    issuerDer: Buffer.from(bytesOf(der, issuerT)),
    subjectDer: Buffer.from(bytesOf(der, subjectT)),
    issuer: displayName(der, issuerT, ber),
    subject: displayName(der, subjectT, ber),
    notBefore,
    notAfter,
    spki,
    spkiInfo,
    extensions,
    basicConstraints: undefined,
    keyUsage: undefined,
    extKeyUsage: undefined,
    san: undefined,
    subjectKeyId: undefined,
    authorityKeyId: undefined,
  };
  for (const e of extensions) {
    // The walk above stops at each extnValue OCTET STRING: the values decoded here get it too.
    if (!ber && HANDLED_EXTENSIONS.has(e.oid)) checkStrictDer(e.value, C);
    switch (e.oid) {
      case OID_BC:
        cert.basicConstraints = { ...parseBasicConstraintsValue(e.value, C, ber), critical: e.critical };
        break;
      case OID_KU:
        cert.keyUsage = { flags: parseKeyUsageValue(e.value, C, ber), critical: e.critical };
        break;
      case OID_EKU:
        cert.extKeyUsage = parseExtKeyUsageValue(e.value, C, ber);
        break;
      case OID_SAN:
        cert.san = optional(ber, () => ({ ...parseGeneralNames(e.value, C), critical: e.critical }));
        break;
      case OID_SKI:
        cert.subjectKeyId = optional(ber, () => parseSkiValue(e.value, C));
        break;
      case OID_AKI:
        cert.authorityKeyId = optional(ber, () => parseAkiValue(e.value, C));
        break;
      default:
        break;
    }
  }
  return cert;
}

/** A decoded extension, or (BER only, the caller decodes it itself if it needs it) undefined when it does not decode. */
function optional<T>(ber: boolean, decode: () => T): T | undefined {
  if (!ber) return decode();
  try {
    return decode();
  } catch (e) {
    if (e instanceof SigilError) return undefined;
    throw e;
  }
}

/** The RFC 4514 display form of a Name; under BER a Name the formatter cannot walk is shown as hex. */
function displayName(der: Buffer, t: Tlv, ber: boolean): string {
  if (!ber) return formatName(der, t, C);
  try {
    return formatName(der, t, C);
  } catch (e) {
    if (!(e instanceof SigilError)) throw e;
    return `#${bytesOf(der, t).toString('hex')}`;
  }
}

/** Extensions the parser decodes; a critical extension outside a caller's own set must be refused by that caller. */
export const HANDLED_EXTENSIONS: ReadonlySet<string> = new Set([OID_BC, OID_KU, OID_EKU, OID_SAN, OID_SKI, OID_AKI]);

/** The value of extension `oid`, or undefined. */
export function extensionOf(cert: Pick<ParsedCertificate, 'extensions'>, oid: string): ParsedExtension | undefined {
  for (const e of cert.extensions) if (e.oid === oid) return e;
  return undefined;
}

/** Decode extension `oid`'s value with an @peculiar/asn1-x509 (or asn1-schema) type; undefined when absent. */
export function asn1Extension<T>(cert: Pick<ParsedCertificate, 'extensions'>, oid: string, type: new () => T): T | undefined {
  const e = extensionOf(cert, oid);
  if (!e) return undefined;
  try {
    return AsnConvert.parse(e.value, type);
  } catch (err) {
    throw new SigilError(C, `certificate: extension ${oid} does not decode: ${errorMessage(err)}`, { cause: err });
  }
}

/** The RDN attribute value `oid` (default commonName) of a Name, as text; '' when absent. */
export function nameAttribute(formatted: string, short = 'CN'): string {
  const m = new RegExp(`(?:^|,)${short}=((?:\\\\.|[^,\\\\])*)`).exec(formatted);
  return m ? m[1]!.replace(/\\(.)/g, '$1') : '';
}

const keyMemo = new WeakMap<object, KeyObject>();

/** The certificate's public key as a KeyObject (imported once per parsed certificate). */
export function publicKeyOf(cert: Pick<AnyKeyCertificate, 'spki' | 'spkiInfo'>): KeyObject {
  let k = keyMemo.get(cert);
  if (!k) {
    try {
      const jwk = cert.spkiInfo?.jwk;
      k = jwk ? createPublicKey({ key: jwk, format: 'jwk' }) : createPublicKey({ key: cert.spki, format: 'der', type: 'spki' });
    } catch (e) {
      throw new SigilError(C, `certificate: public key is invalid: ${errorMessage(e)}`, { cause: e });
    }
    keyMemo.set(cert, k);
  }
  return k;
}

/**
 * Parsed certificates remembered by SHA-256 of their DER (bounded, least recently used first out).
 * Parsing is deterministic, so a hit is the same result; failures are not remembered.
 */
export class CertCache {
  readonly #lru: Lru<AnyKeyCertificate>;
  hits = 0;
  misses = 0;

  constructor(maxEntries = 512) {
    this.#lru = new Lru(maxEntries);
  }

  get size(): number {
    return this.#lru.size;
  }

  parse(der: Uint8Array, opts: ParseOptions = {}): ParsedCertificate {
    return this.#get(der, opts, true) as ParsedCertificate;
  }

  parseAnyKey(der: Uint8Array, opts: ParseOptions = {}): AnyKeyCertificate {
    return this.#get(der, opts, false);
  }

  #get(der: Uint8Array, opts: ParseOptions, sigilKeys: boolean): AnyKeyCertificate {
    const key = `${createHash('sha256').update(der).digest('hex')}:${opts.pss === true ? 'p' : ''}${opts.ber === true ? 'b' : ''}${sigilKeys ? 's' : 'a'}${opts.maxBytes ?? ''}:${opts.algorithms?.join(',') ?? ''}`;
    const hit = this.#lru.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const c = parse(der, opts, sigilKeys);
    this.#lru.set(key, c);
    return c;
  }

  clear(): void {
    this.#lru.clear();
    this.hits = 0;
    this.misses = 0;
  }
}
