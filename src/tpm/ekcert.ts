/**
 * EK certificate validation per the TCG EK Credential Profile for TPM 2.0, on the X.509 toolkit
 * (src/x509): certificates are parsed with `parseCertificateAnyKey` under the EK profile
 * (`EK_PARSE`: BER tolerated, RSASSA-PSS and the SHA-1 algorithms accepted, see below), the
 * critical subjectAltName directoryName carrying tcg-at-tpmManufacturer / tpmModel / tpmVersion
 * (2.23.133.2.1/2/3) is decoded with `asn1Extension`; any other unknown critical extension is
 * rejected; the chain is built to the configured `ekCa` certificates (hello intermediates are
 * untrusted helpers), with signatures (toolkit `signatureVerifies`, links remembered in a
 * `LinkCache`), validity at the given time (`validityProblem`) and issuer basicConstraints /
 * keyUsage (`checkCanIssue`) checked. Pure: certificates and time in, typed result or SigilError out.
 *
 * Quirks of EK certificates the toolkit tolerates here, and why (all were accepted before the EK
 * path moved onto the toolkit, and test/tpm/ekcert-claims.test.ts pins them):
 * - BER where RFC 5280 wants DER (`ParseOptions.ber`): vendors' EK certificates carry non-minimal
 *   INTEGERs and lengths, explicit critical FALSE, BOOLEAN TRUE as 01, GeneralizedTime before
 *   2050, long or negative serial numbers, multi-valued RDNs in TCG order rather than DER order.
 * - SHA-1 signatures (sha1WithRSAEncryption, ecdsa-with-SHA1) from older EK CAs: accepted on this
 *   path only, by naming them in `EK_SIGNATURE_ALGORITHMS`; nowhere else in Sigil.
 * - RSASSA-PSS signatures (`pss`), RSA and EC keys of any size node:crypto imports (the EK key is
 *   compared with the TPM's, not used to sign), an empty subject, missing keyUsage, the critical
 *   subjectAltName with a directoryName (understood here, so not "unknown critical").
 * - Zero padding after the certificate, as TPM NV indices often hold it.
 */
import { createHash, createPublicKey } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Name as AsnName, SubjectAlternativeName } from '@peculiar/asn1-x509';
import { SigilError, errorMessage } from '../errors.js';
import { parseCertificateAnyKey, asn1Extension, extensionOf, type AnyKeyCertificate, type ParseOptions } from '../x509/cert.js';
import { LinkCache, checkCanIssue, signatureVerifies } from '../x509/chain.js';
import { TAG, children, decodeOid, readSingle, readTlv } from '../x509/der.js';
import { certificatesFromBytes as readCertificateBytes } from '../x509/pem.js';
import { KU } from '../x509/ext.js';
import { DEFAULT_SIG_ALG_OIDS, OID_ECDSA_WITH_SHA1, OID_SHA1_WITH_RSA } from '../x509/sigalg.js';
import { validityProblem } from '../x509/validity.js';
import { CURVES } from './constants.js';
import { padTo } from './keys.js';
import type { TpmtPublic } from './structures.js';

const OID = {
  keyUsage: '2.5.29.15',
  basicConstraints: '2.5.29.19',
  subjectAltName: '2.5.29.17',
  extKeyUsage: '2.5.29.37',
  anyExtendedKeyUsage: '2.5.29.37.0',
  tcgKpEkCertificate: '2.23.133.8.1',
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
  rsaesOaep: '1.2.840.113549.1.1.7',
  ecPublicKey: '1.2.840.10045.2.1',
} as const;

/**
 * Signature algorithms EK chains accept (docs/tpm.md): ECDSA and RSA PKCS#1 v1.5 with SHA-256/384/512,
 * RSASSA-PSS (SHA-256/384/512), and — on this path only — sha1WithRSAEncryption and ecdsa-with-SHA1.
 */
export const EK_SIGNATURE_ALGORITHMS: readonly string[] = [...DEFAULT_SIG_ALG_OIDS, OID_SHA1_WITH_RSA, OID_ECDSA_WITH_SHA1];

/** Limits for certificates sent by an agent. */
export const EK_LIMITS = { certBytes: 16 * 1024, intermediates: 8, depth: 8 } as const;

/** How the toolkit parses certificates on the EK path. */
const EK_PARSE: ParseOptions = { maxBytes: EK_LIMITS.certBytes, pss: true, algorithms: EK_SIGNATURE_ALGORITHMS, ber: true };

/** Critical extensions Sigil understands on an EK (leaf) certificate. */
const LEAF_CRITICAL_OK = new Set<string>([OID.keyUsage, OID.basicConstraints, OID.subjectAltName, OID.extKeyUsage]);
/** Critical extensions Sigil understands on an issuing CA certificate. */
const CA_CRITICAL_OK = new Set<string>([OID.keyUsage, OID.basicConstraints]);

/** A toolkit certificate with what the EK path reads from it. */
export interface ParsedCert {
  der: Buffer;
  sha256: string;
  cert: AnyKeyCertificate;
  subjectDer: Buffer;
  issuerDer: Buffer;
  selfIssued: boolean;
  notBefore: Date;
  notAfter: Date;
  criticalExtensions: string[];
  basicConstraints?: { cA: boolean; pathLen?: number };
  keyUsage?: number;
  /** Serial number as the `ekCertSerial` claim carries it (see `claimSerial`). */
  serialNumber: string;
  /** Issuer Name as the `ekCertIssuer` claim carries it (see `claimName`). */
  issuer: string;
  /** Subject Name in the same form. */
  subject: string;
}

export interface TpmIdentity {
  manufacturer?: string;
  model?: string;
  version?: string;
}

export interface EkChainResult {
  /** Leaf first, then intermediates, ending with the trust anchor used. */
  chain: ParsedCert[];
  /** The configured certificate at the top of the path (selector `tpm:ek_ca`). */
  anchor: ParsedCert;
  identity: TpmIdentity;
}

/** Outer TLV length of a DER certificate (the toolkit's strict reader), or -1; used to cut zero padding some TPMs leave in NV. */
function derLength(buf: Buffer): number {
  try {
    const t = readTlv(buf, 0, buf.length, 'tpm.ek_cert_malformed');
    return t.tag === TAG.SEQUENCE ? t.end : -1;
  } catch {
    return -1;
  }
}

/**
 * The `ekCertSerial` claim: the serialNumber INTEGER's content octets in lowercase hex, as
 * encoded, less the one 00 octet that pads a positive number whose top bit is set (the form the
 * claim has always had: "0a1b", "ff1b" for 00 ff 1b, "000a" for a non-minimal 00 0a).
 */
function claimSerial(serial: Buffer): string {
  const s = serial.length > 1 && serial[0] === 0 && serial[1]! > 0x7f ? serial.subarray(1) : serial;
  return s.toString('hex');
}

/** Short names of the `ekCertIssuer` claim's Name form. */
const CLAIM_NAME_SHORT: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.6': 'C',
  '0.9.2342.19200300.100.1.25': 'DC',
  '1.2.840.113549.1.9.1': 'E',
  '2.5.4.42': 'G',
  '2.5.4.43': 'I',
  '2.5.4.4': 'SN',
  '2.5.4.12': 'T',
};

function claimEscape(v: string): string {
  return v
    .replace(/([,+"\\<>;])/g, '\\$1')
    .replace(/^([ #])/, '\\$1')
    .replace(/([ ]$)/, '\\$1')
    .replace(/([\r\n\t])/, (c) => `\\${Buffer.from(c, 'utf8').toString('hex').toUpperCase()}`);
}

/**
 * The Name form of the `ekCertIssuer` claim, frozen so claims stay byte for byte what they have
 * always been: RDNs in encoded order joined by ", ", attributes of one RDN by "+", the short names
 * above (others dotted), string values escaped (only the first CR/LF/TAB as \XX) and any other
 * value type as "#" and the hex of its DER. The strings are decoded by asn1-x509's Name schema.
 * (The toolkit's own `subject`/`issuer` are RFC 4514 strings; they are used in messages.)
 */
function claimName(nameDer: Buffer): string {
  const name = AsnConvert.parse(nameDer, AsnName);
  return name
    .map((rdn) =>
      rdn
        .map((atv) => {
          const type = CLAIM_NAME_SHORT[atv.type] ?? atv.type;
          const v = atv.value;
          const value = v.anyValue ? `#${Buffer.from(v.anyValue).toString('hex')}` : claimEscape(v.toString());
          return `${type}=${value}`;
        })
        .join('+'),
    )
    .join(', ');
}

/** Parse one DER certificate (trailing zero padding from TPM NV storage is tolerated, other trailing bytes are not). */
export function parseCertificate(input: Buffer, what: string, code = 'tpm.ek_cert_malformed'): ParsedCert {
  if (input.length > EK_LIMITS.certBytes) throw new SigilError(code, `${what} is ${input.length} bytes, more than ${EK_LIMITS.certBytes}`);
  const len = derLength(input);
  if (len < 0 || len > input.length) throw new SigilError(code, `${what} is not a DER certificate`);
  if (input.subarray(len).some((b) => b !== 0)) throw new SigilError(code, `${what} has trailing bytes after the certificate`);
  const der = Buffer.from(input.subarray(0, len));
  try {
    const cert = parseCertificateAnyKey(der, EK_PARSE);
    const out: ParsedCert = {
      der,
      sha256: cert.sha256,
      cert,
      subjectDer: cert.subjectDer,
      issuerDer: cert.issuerDer,
      selfIssued: cert.subjectDer.equals(cert.issuerDer),
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
      criticalExtensions: cert.extensions.filter((e) => e.critical).map((e) => e.oid),
      serialNumber: claimSerial(cert.serial),
      issuer: claimName(cert.issuerDer),
      subject: claimName(cert.subjectDer),
    };
    if (cert.basicConstraints) {
      const bc = cert.basicConstraints;
      out.basicConstraints = bc.pathLen === undefined ? { cA: bc.ca } : { cA: bc.ca, pathLen: bc.pathLen };
    }
    if (cert.keyUsage) out.keyUsage = cert.keyUsage.flags;
    return out;
  } catch (e) {
    if (e instanceof SigilError && !e.code.startsWith('x509.')) throw e;
    throw new SigilError(code, `${what} could not be parsed: ${errorMessage(e)}`, { cause: e });
  }
}

/** Certificates from a file's bytes: one or more PEM blocks, or a single DER certificate (raw, hex or base64); the toolkit's reader. */
export function certificatesFromBytes(data: Buffer, what: string): Buffer[] {
  try {
    return readCertificateBytes(data);
  } catch (e) {
    throw new SigilError('tpm.ek_cert_malformed', `${what}: ${errorMessage(e)}`, { cause: e });
  }
}

/** TPM manufacturer / model / version from the EK certificate's subjectAltName directoryName. */
export function tpmIdentity(cert: ParsedCert): TpmIdentity {
  const ext = extensionOf(cert.cert, OID.subjectAltName);
  if (!ext) return {};
  const id: TpmIdentity = {};
  let san: SubjectAlternativeName;
  try {
    // asn1-x509's schema decodes the directoryName's strings (UTF8, Printable, IA5, Teletex, BMP, Universal).
    san = asn1Extension(cert.cert, OID.subjectAltName, SubjectAlternativeName) ?? new SubjectAlternativeName();
  } catch (e) {
    throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName could not be parsed: ${errorMessage(e)}`, { cause: e });
  }
  const keys: Record<string, keyof TpmIdentity> = { [OID.tpmManufacturer]: 'manufacturer', [OID.tpmModel]: 'model', [OID.tpmVersion]: 'version' };
  for (const gn of san) {
    const dn: AsnName | undefined = gn.directoryName;
    if (!dn) continue;
    for (const rdn of dn) {
      for (const atv of rdn) {
        const key = keys[atv.type];
        if (!key) continue;
        const v = atv.value;
        const s = v.utf8String ?? v.printableString ?? v.ia5String ?? v.teletexString ?? v.bmpString ?? v.universalString;
        if (typeof s !== 'string' || s.length === 0 || s.length > 256 || [...s].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) {
          throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName attribute ${atv.type} is not a printable string`);
        }
        if (id[key] !== undefined) throw new SigilError('tpm.ek_cert_san_invalid', `EK certificate subjectAltName repeats attribute ${atv.type}`);
        // "id:<hex>" values (manufacturer, version) are lowercased: selectors use lowercase hex
        id[key] = /^id:[0-9A-Fa-f]+$/.test(s) ? s.toLowerCase() : s;
      }
    }
  }
  if (ext.critical && id.manufacturer === undefined && id.model === undefined && id.version === undefined) {
    throw new SigilError('tpm.ek_cert_san_invalid', 'EK certificate has a critical subjectAltName without TPM manufacturer/model/version attributes');
  }
  return id;
}

function checkLeafExtensions(leaf: ParsedCert): void {
  for (const oid of leaf.criticalExtensions) {
    if (!LEAF_CRITICAL_OK.has(oid)) throw new SigilError('tpm.ek_cert_unknown_critical_extension', `EK certificate has unknown critical extension ${oid}`);
  }
  if (leaf.basicConstraints?.cA) throw new SigilError('tpm.ek_cert_invalid', 'EK certificate is a CA certificate (basicConstraints cA=TRUE)');
  // An EK decrypts (keyEncipherment for RSA, keyAgreement for ECC in the TCG EK Credential Profile):
  // a keyUsage without either certifies some other key (dataEncipherment is let through too).
  if (leaf.keyUsage !== undefined && (leaf.keyUsage & (KU.keyEncipherment | KU.keyAgreement | KU.dataEncipherment)) === 0) {
    throw new SigilError('tpm.ek_cert_invalid', `EK certificate keyUsage (0x${leaf.keyUsage.toString(16)}) allows neither keyEncipherment nor keyAgreement: it certifies no EK`);
  }
  // Critical or not, extendedKeyUsage limits the certificate to the purposes it lists (RFC 5280
  // 4.2.1.12): one for serverAuth, say, certifies a key that lives in a server, not a TPM's EK.
  const eku = extensionOf(leaf.cert, OID.extKeyUsage);
  if (eku) {
    // Decoded (BER tolerated) by the toolkit's parser; a value that does not decode was refused there.
    const list = leaf.cert.extKeyUsage ?? [];
    if (!list.includes(OID.tcgKpEkCertificate) && !list.includes(OID.anyExtendedKeyUsage)) {
      throw new SigilError('tpm.ek_cert_invalid', `EK certificate has ${eku.critical ? 'a critical' : 'an'} extendedKeyUsage without tcg-kp-EKCertificate (2.23.133.8.1)`);
    }
  }
}

/** Reasons quoted in a `tpm.ek_untrusted` message (the rest are counted). */
const MAX_REASONS_SHOWN = 5;
/** Characters of a Name quoted in a message: Names come from the agent's certificates (up to 16 KiB each). */
const MAX_NAME_SHOWN = 120;

/** A certificate Name as quoted in a refusal, cut short. */
function shownName(name: string): string {
  return name.length > MAX_NAME_SHOWN ? `${name.slice(0, MAX_NAME_SHOWN - 3)}...` : name;
}

/** The first MAX_REASONS_SHOWN reasons, then how many more there were: one bounded log line whatever the agent sends. */
function listReasons(reasons: readonly string[]): string {
  const shown = reasons.slice(0, MAX_REASONS_SHOWN).join('; ');
  const more = reasons.length - MAX_REASONS_SHOWN;
  return more > 0 ? `${shown}; and ${more} more` : shown;
}

function checkTime(c: ParsedCert, at: Date, role: string): void {
  const p = validityProblem(c, at);
  if (p === 'x509.not_yet_valid') {
    throw new SigilError('tpm.ek_cert_expired', `${role} (${shownName(c.cert.subject)}) is not valid before ${c.notBefore.toISOString()} (checked at ${at.toISOString()})`);
  }
  if (p === 'x509.expired') {
    throw new SigilError('tpm.ek_cert_expired', `${role} (${shownName(c.cert.subject)}) expired ${c.notAfter.toISOString()} (checked at ${at.toISOString()})`);
  }
}

function checkIssuer(ca: ParsedCert, intermediatesBelow: number, configured: boolean): string | null {
  if (!configured) {
    for (const oid of ca.criticalExtensions) if (!CA_CRITICAL_OK.has(oid)) return `has unknown critical extension ${oid}`;
  }
  if (!ca.basicConstraints?.cA) return 'is not a CA (basicConstraints cA is not TRUE)';
  if (ca.basicConstraints.pathLen !== undefined && intermediatesBelow > ca.basicConstraints.pathLen) {
    return `pathLenConstraint ${ca.basicConstraints.pathLen} is exceeded`;
  }
  try {
    checkCanIssue(ca.cert, 'issuer');
  } catch (e) {
    return errorMessage(e).replace(/^issuer /, '');
  }
  return null;
}

/** Signature of `child` under `issuer`'s key with the EK algorithms, remembered per (child, issuer) in `links`. */
function signedBy(child: ParsedCert, issuer: ParsedCert, links: LinkCache): boolean {
  return links.check(child, issuer, () => {
    try {
      return signatureVerifies(child.cert, issuer.cert, EK_SIGNATURE_ALGORITHMS);
    } catch {
      return false; // an issuer key node:crypto cannot import verifies nothing
    }
  });
}

/** Trusted EK CA certificates (roots and intermediates named in the `ekCa` config). */
export class EkTrustStore {
  readonly certs: ParsedCert[];
  /** Verified (child, issuer) signature links under these anchors. */
  readonly links = new LinkCache(1024);
  private readonly byDer: Set<string>;

  constructor(ders: Buffer[]) {
    if (ders.length === 0) throw new SigilError('tpm.config_invalid', 'ekCa holds no certificates');
    this.certs = ders.map((d, i) => parseCertificate(d, `ekCa certificate #${i + 1}`, 'tpm.config_invalid'));
    this.byDer = new Set(this.certs.map((c) => c.sha256));
  }

  isTrusted(c: ParsedCert): boolean {
    return this.byDer.has(c.sha256);
  }
}

interface CacheEntry {
  result: EkChainResult;
  notBefore: number;
  notAfter: number;
}

/** A chain remembered by its texts: the intermediates' texts as they were sent (the EK certificate's is the map key). */
interface TextEntry {
  intermediates: readonly string[];
  entry: CacheEntry;
}

/** Chains kept per EK certificate text (other intermediates sent with the same certificate). */
const TEXT_VARIANTS_MAX = 4;

/**
 * Validates EK certificates against an EkTrustStore. Successful chains are cached per
 * (certificate, intermediates) so repeated attestations skip the signature checks; the
 * validity window is still checked against the session time on every call.
 */
export class EkCertVerifier {
  private readonly cache = new Map<string, CacheEntry>();
  /**
   * The same results by the certificates' base64 texts (see verifyTexts): by the EK certificate's
   * text, then the intermediates' texts compared one by one, most recently used first. Keyed so,
   * a lookup hashes only the certificate's text (once per string: V8 keeps a string's hash) and
   * compares the others, instead of joining ~2–3 KB of texts into a new key and hashing that on
   * every call. `textEntries` counts the chains held, bounded by maxCache as before.
   */
  private readonly textCache = new Map<string, TextEntry[]>();
  private textEntries = 0;

  constructor(
    readonly trust: EkTrustStore,
    private readonly maxCache = 4096,
  ) {}

  async verify(ekCertDer: Buffer, intermediatesDer: Buffer[], at: Date): Promise<EkChainResult> {
    if (intermediatesDer.length > EK_LIMITS.intermediates) {
      throw new SigilError('tpm.ek_cert_malformed', `more than ${EK_LIMITS.intermediates} EK intermediate certificates`);
    }
    const h = createHash('sha256');
    for (const d of [ekCertDer, ...intermediatesDer]) h.update(`${d.length}:`).update(d);
    const key = h.digest('hex');
    const hit = cachedAt(this.cache, key, at);
    if (hit) return hit.result;
    const result = verifyEkChainSync(ekCertDer, intermediatesDer, this.trust, at);
    remember(this.cache, key, entryFor(result), this.maxCache);
    return result;
  }

  /**
   * `verify` for certificates as the base64 texts an agent sent (or a session state holds): a chain
   * whose exact texts verified before, and is within its validity at `at`, is answered without
   * decoding or hashing them. Otherwise `decode` turns each text into DER (index -1: the EK
   * certificate; it throws on bad text) and `verify` runs. Equal texts are equal DER, so a hit
   * skips no check but the repeated path building. Chains longer than 16,000 characters of text
   * are not kept by text: V8 hashes longer strings by their length alone, and equal-length keys
   * would share one hash chain.
   */
  async verifyTexts(ekCert: string, intermediates: readonly string[], at: Date, decode: (text: string, index: number) => Buffer): Promise<EkChainResult> {
    if (intermediates.length > EK_LIMITS.intermediates) {
      throw new SigilError('tpm.ek_cert_malformed', `more than ${EK_LIMITS.intermediates} EK intermediate certificates`);
    }
    let total = ekCert.length;
    for (const t of intermediates) total += t.length;
    const keep = total <= 16_000;
    if (keep) {
      const hit = this.textHit(ekCert, intermediates, at);
      if (hit) return hit.result;
    }
    const result = await this.verify(decode(ekCert, -1), intermediates.map((t, i) => decode(t, i)), at);
    if (keep) this.rememberText(ekCert, intermediates, entryFor(result));
    return result;
  }

  /**
   * What verifyTexts answers from its memo, without a promise: the result for exactly these texts
   * when it is kept and valid at `at`, else undefined (then call verifyTexts, which checks them).
   */
  cachedTexts(ekCert: string, intermediates: readonly string[], at: Date): EkChainResult | undefined {
    if (intermediates.length > EK_LIMITS.intermediates) return undefined;
    let total = ekCert.length;
    for (const t of intermediates) total += t.length;
    return total <= 16_000 ? this.textHit(ekCert, intermediates, at)?.result : undefined;
  }

  /** The chain kept for exactly these texts when `at` lies within its validity (moved to most recently used). */
  private textHit(ekCert: string, intermediates: readonly string[], at: Date): CacheEntry | undefined {
    const list = this.textCache.get(ekCert);
    if (list === undefined) return undefined;
    const i = list.findIndex((e) => sameTexts(e.intermediates, intermediates));
    const e = list[i];
    if (e === undefined) return undefined;
    const t = at.getTime();
    if (t < e.entry.notBefore || t > e.entry.notAfter) return undefined;
    if (i > 0) {
      list.splice(i, 1);
      list.unshift(e);
    }
    this.textCache.delete(ekCert);
    this.textCache.set(ekCert, list);
    return e.entry;
  }

  private rememberText(ekCert: string, intermediates: readonly string[], entry: CacheEntry): void {
    const list = this.textCache.get(ekCert) ?? [];
    if (this.textCache.delete(ekCert)) this.textEntries -= list.length;
    const i = list.findIndex((e) => sameTexts(e.intermediates, intermediates));
    if (i >= 0) list.splice(i, 1);
    list.unshift({ intermediates: [...intermediates], entry });
    if (list.length > Math.min(TEXT_VARIANTS_MAX, this.maxCache)) list.length = Math.min(TEXT_VARIANTS_MAX, this.maxCache);
    // Least recently used certificates first out, with their chains, until this list fits.
    while (this.textEntries + list.length > this.maxCache) {
      const oldest = this.textCache.entries().next().value as [string, TextEntry[]] | undefined;
      if (oldest === undefined) break;
      this.textCache.delete(oldest[0]);
      this.textEntries -= oldest[1].length;
    }
    this.textCache.set(ekCert, list);
    this.textEntries += list.length;
  }

  /** Chains held by text (for tests of the bound). */
  get textCacheSize(): number {
    return this.textEntries;
  }
}

function sameTexts(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The cached entry for `key` when `at` lies within its validity (moved to most recently used). */
function cachedAt(cache: Map<string, CacheEntry>, key: string, at: Date): CacheEntry | undefined {
  const hit = cache.get(key);
  const t = at.getTime();
  if (hit === undefined || t < hit.notBefore || t > hit.notAfter) return undefined;
  cache.delete(key);
  cache.set(key, hit);
  return hit;
}

function remember(cache: Map<string, CacheEntry>, key: string, entry: CacheEntry, max: number): void {
  cache.delete(key);
  if (cache.size >= max) {
    const oldest = cache.keys().next().value;
    if (oldest !== undefined) cache.delete(oldest);
  }
  cache.set(key, entry);
}

function entryFor(result: EkChainResult): CacheEntry {
  return {
    result,
    notBefore: Math.max(...result.chain.map((c) => c.notBefore.getTime())),
    notAfter: Math.min(...result.chain.map((c) => c.notAfter.getTime())),
  };
}

/** Build and check the EK certificate path to a configured certificate (uncached). */
export async function verifyEkChain(ekCertDer: Buffer, intermediatesDer: Buffer[], trust: EkTrustStore, at: Date): Promise<EkChainResult> {
  return Promise.resolve(verifyEkChainSync(ekCertDer, intermediatesDer, trust, at));
}

function verifyEkChainSync(ekCertDer: Buffer, intermediatesDer: Buffer[], trust: EkTrustStore, at: Date): EkChainResult {
  const leaf = parseCertificate(ekCertDer, 'EK certificate');
  checkLeafExtensions(leaf);
  const identity = tpmIdentity(leaf);
  const helpers = intermediatesDer.map((d, i) => parseCertificate(d, `EK intermediate certificate #${i + 1}`));
  checkTime(leaf, at, 'EK certificate');

  const chain: ParsedCert[] = [leaf];
  let current = leaf;
  let reachedTrust = trust.isTrusted(leaf);
  const reasons: string[] = [];
  while (chain.length <= EK_LIMITS.depth) {
    if (reachedTrust && current.selfIssued) break;
    // Once a configured certificate is reached, keep climbing only through configured
    // certificates so `tpm:ek_ca` names the topmost configured CA (normally the root).
    const pool = reachedTrust ? trust.certs : [...trust.certs, ...helpers];
    let next: ParsedCert | undefined;
    for (const cand of pool) {
      if (cand.sha256 === current.sha256 || chain.some((c) => c.sha256 === cand.sha256)) continue;
      if (!cand.subjectDer.equals(current.issuerDer)) continue;
      const configured = trust.isTrusted(cand);
      const problem = checkIssuer(cand, chain.length - 1, configured);
      if (problem) {
        reasons.push(`issuer ${shownName(cand.cert.subject)} ${problem}`);
        continue;
      }
      if (!signedBy(current, cand, trust.links)) {
        reasons.push(`signature of ${shownName(current.cert.subject)} does not verify with ${shownName(cand.cert.subject)}`);
        continue;
      }
      next = cand;
      break;
    }
    if (!next) break;
    checkTime(next, at, trust.isTrusted(next) ? 'EK CA certificate' : 'EK intermediate certificate');
    chain.push(next);
    current = next;
    if (trust.isTrusted(next)) reachedTrust = true;
  }
  if (!reachedTrust) {
    const why = reasons.length > 0 ? `: ${listReasons(reasons)}` : `: no configured ekCa certificate issued ${shownName(current.cert.subject)} (issuer ${shownName(current.cert.issuer)})`;
    throw new SigilError('tpm.ek_untrusted', `EK certificate does not chain to a configured ekCa certificate${why}`);
  }
  return { chain, anchor: current, identity };
}

function mismatch(why: string): never {
  throw new SigilError('tpm.ek_public_mismatch', `EK public key sent by the agent differs from the EK certificate: ${why}`);
}

type CertKey = { kind: 'rsa'; n: Buffer; e: Buffer } | { kind: 'ec'; curveOid: string | undefined; x: string; y: string } | { kind: 'other'; alg: string };

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** Key material of a certificate, computed once per parsed certificate (cached chains reuse it). */
const certKeys = new WeakMap<ParsedCert, CertKey>();

/** The SPKI's algorithm OID, its parameters (curve OID when an OID) and the subjectPublicKey bits, read BER-tolerantly. */
function spkiParts(cert: ParsedCert): { alg: string; curveOid: string | undefined; keyBits: Buffer } {
  const code = 'tpm.ek_cert_malformed';
  const spki = cert.cert.spki;
  const top = readSingle(spki, code, TAG.SEQUENCE, true);
  const [algT, bitsT] = children(spki, top, code, true);
  if (!algT || !bitsT || algT.tag !== TAG.SEQUENCE || bitsT.tag !== TAG.BIT_STRING || bitsT.end === bitsT.valueStart) {
    throw new SigilError(code, 'EK certificate SubjectPublicKeyInfo is malformed');
  }
  const a = children(spki, algT, code, true);
  if (!a[0]) throw new SigilError(code, 'EK certificate SubjectPublicKeyInfo has no algorithm');
  const alg = decodeOid(spki, a[0], code);
  const curveOid = a[1]?.tag === TAG.OID ? decodeOid(spki, a[1], code) : undefined;
  return { alg, curveOid, keyBits: Buffer.from(spki.subarray(bitsT.valueStart + 1, bitsT.end)) };
}

/** RSAPublicKey { modulus, publicExponent } content octets (as encoded; sign not checked, as before). */
function rsaPublicKey(keyBits: Buffer): { n: Buffer; e: Buffer } {
  const code = 'tpm.ek_cert_malformed';
  const top = readSingle(keyBits, code, TAG.SEQUENCE, true);
  const [nT, eT, ...rest] = children(keyBits, top, code, true);
  if (!nT || !eT || rest.length > 0 || nT.tag !== TAG.INTEGER || eT.tag !== TAG.INTEGER) throw new SigilError(code, 'RSAPublicKey must be SEQUENCE { n, e }');
  return { n: keyBits.subarray(nT.valueStart, nT.end), e: keyBits.subarray(eT.valueStart, eT.end) };
}

function certKey(cert: ParsedCert): CertKey {
  const hit = certKeys.get(cert);
  if (hit) return hit;
  const { alg, curveOid, keyBits } = spkiParts(cert);
  let k: CertKey;
  if (alg === OID.rsaEncryption || alg === OID.rsaesOaep) {
    try {
      const r = rsaPublicKey(keyBits);
      k = { kind: 'rsa', n: stripZeros(r.n), e: stripZeros(r.e) };
    } catch (err) {
      throw new SigilError('tpm.ek_cert_malformed', 'EK certificate RSA public key could not be parsed', { cause: err });
    }
  } else if (alg === OID.ecPublicKey) {
    try {
      const jwk = createPublicKey({ key: cert.cert.spki, format: 'der', type: 'spki' }).export({ format: 'jwk' });
      k = { kind: 'ec', curveOid, x: jwk.x ?? '', y: jwk.y ?? '' };
    } catch (err) {
      throw new SigilError('tpm.ek_cert_malformed', 'EK certificate EC public key could not be parsed', { cause: err });
    }
  } else {
    k = { kind: 'other', alg };
  }
  certKeys.set(cert, k);
  return k;
}

/** Throws `tpm.ek_public_mismatch` unless the certificate's public key equals the TPM EK public area. */
export function checkEkPublicMatches(cert: ParsedCert, ek: TpmtPublic): void {
  const k = certKey(cert);
  if (k.kind === 'rsa') {
    if (ek.type !== 'rsa') mismatch(`certificate holds an RSA key, TPM EK is ${ek.type.toUpperCase()}`);
    const eb = Buffer.alloc(4);
    eb.writeUInt32BE(ek.exponent >>> 0);
    if (!k.n.equals(stripZeros(ek.modulus))) mismatch('RSA modulus differs');
    if (!k.e.equals(stripZeros(eb))) mismatch('RSA exponent differs');
    return;
  }
  if (k.kind === 'ec') {
    if (ek.type !== 'ecc') mismatch(`certificate holds an EC key, TPM EK is ${ek.type.toUpperCase()}`);
    const curve = CURVES.find((c) => c.oid === k.curveOid);
    if (!curve || curve.id !== ek.curveId) mismatch(`certificate curve ${k.curveOid ?? 'unnamed'} differs from the TPM EK curve`);
    const x = padTo(ek.x, curve.size, 'EK x');
    const y = padTo(ek.y, curve.size, 'EK y');
    if (k.x !== x.toString('base64url') || k.y !== y.toString('base64url')) mismatch('EC point differs');
    return;
  }
  throw new SigilError('tpm.ek_cert_invalid', `EK certificate public key algorithm ${k.alg} is not RSA or EC`);
}

/** DER SPKI of the certificate's key in node's canonical encoding (RSAES-OAEP keys re-encoded as rsaEncryption). */
export function certPublicSpkiDer(cert: ParsedCert): Buffer {
  try {
    if (spkiParts(cert).alg === OID.rsaesOaep) {
      const k = certKey(cert);
      if (k.kind !== 'rsa') throw new SigilError('tpm.ek_cert_malformed', 'EK certificate RSAES-OAEP key is not an RSA key');
      const jwk = { kty: 'RSA', n: k.n.toString('base64url'), e: k.e.toString('base64url') };
      return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    }
    return createPublicKey({ key: cert.cert.spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' });
  } catch (e) {
    throw new SigilError('tpm.ek_cert_malformed', `EK certificate public key could not be read: ${errorMessage(e)}`, { cause: e });
  }
}

/** Key kind of a certificate's public key, as the native addon names EK algorithms. */
export function certKeyKind(cert: ParsedCert): 'rsa' | 'ecc-p256' | 'ecc-p384' | 'ecc-p521' | 'other' {
  let parts: ReturnType<typeof spkiParts>;
  try {
    parts = spkiParts(cert);
  } catch {
    return 'other';
  }
  if (parts.alg === OID.rsaEncryption || parts.alg === OID.rsaesOaep) return 'rsa';
  if (parts.alg !== OID.ecPublicKey || parts.curveOid === undefined) return 'other';
  const curve = CURVES.find((c) => c.oid === parts.curveOid);
  if (curve?.jwk === 'P-256') return 'ecc-p256';
  if (curve?.jwk === 'P-384') return 'ecc-p384';
  if (curve?.jwk === 'P-521') return 'ecc-p521';
  return 'other';
}
