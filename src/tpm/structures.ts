/**
 * Strict parsers and encoders for the TPM 2.0 wire structures Sigil needs:
 * TPM2B_PUBLIC/TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, TPML_PCR_SELECTION,
 * TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (TPM 2.0 Library Part 2).
 *
 * Hand-written because no maintained JavaScript library parses TPM 2.0 wire
 * structures strictly: every length is bounded by the specification's buffer
 * size, selectors (algorithm IDs, structure tags) must be known, and no trailing
 * bytes are accepted. Malformed input throws SigilError with a `tpm.malformed_*` code.
 */
import { digest } from '../util/digest.js';
import { SigilError } from '../errors.js';
import { HASHES, LIMITS, TPM_ALG, TPM_GENERATED_VALUE, TPM_ST, TPMA_OBJECT_RESERVED, algName, hashByAlg, type HashName } from './constants.js';
import { TpmReader, TpmWriter } from './reader.js';

// ---------------------------------------------------------------- TPMT_PUBLIC

export interface SymDefObject {
  /** TPM_ALG_AES, TPM_ALG_SM4, TPM_ALG_CAMELLIA or TPM_ALG_NULL. */
  algorithm: number;
  keyBits: number;
  mode: number;
}

export interface AsymScheme {
  /** Scheme algorithm or TPM_ALG_NULL. */
  scheme: number;
  /** Hash of the scheme; TPM_ALG_NULL (0x0010) when the scheme has none. */
  hashAlg: number;
  /** ECDAA commit count. */
  count?: number;
}

interface PublicCommon {
  nameAlg: number;
  objectAttributes: number;
  authPolicy: Buffer;
  symmetric: SymDefObject;
  scheme: AsymScheme;
  /** The TPMT_PUBLIC bytes exactly as received (what the object Name hashes). */
  raw: Buffer;
}

export interface RsaPublic extends PublicCommon {
  type: 'rsa';
  keyBits: number;
  /** Public exponent (0 on the wire means 65537; stored here already resolved). */
  exponent: number;
  modulus: Buffer;
}

export interface EccPublic extends PublicCommon {
  type: 'ecc';
  curveId: number;
  kdf: { scheme: number; hashAlg: number };
  x: Buffer;
  y: Buffer;
}

export type TpmtPublic = RsaPublic | EccPublic;

const SYM_OBJECT_ALGS = new Set<number>([TPM_ALG.AES, TPM_ALG.SM4, TPM_ALG.CAMELLIA]);
const SYM_MODES = new Set<number>([TPM_ALG.CTR, TPM_ALG.OFB, TPM_ALG.CBC, TPM_ALG.CFB, TPM_ALG.ECB, TPM_ALG.NULL]);
const NAME_ALGS = new Set<number>([TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512, TPM_ALG.SM3_256]);
const RSA_SCHEMES = new Set<number>([TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.RSAES, TPM_ALG.OAEP]);
const ECC_SCHEMES = new Set<number>([TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR, TPM_ALG.ECMQV]);
const KDF_SCHEMES = new Set<number>([TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108]);

function readHashAlg(r: TpmReader, field: string, allowNull: boolean): number {
  const alg = r.u16(field);
  if (allowNull && alg === TPM_ALG.NULL) return alg;
  if (!NAME_ALGS.has(alg)) r.fail(`${field} ${algName(alg)} is not a known hash algorithm`);
  return alg;
}

function readSymDefObject(r: TpmReader): SymDefObject {
  const algorithm = r.u16('symmetric.algorithm');
  if (algorithm === TPM_ALG.NULL) return { algorithm, keyBits: 0, mode: TPM_ALG.NULL };
  if (!SYM_OBJECT_ALGS.has(algorithm)) r.fail(`symmetric.algorithm ${algName(algorithm)} is not a symmetric object algorithm`);
  const keyBits = r.u16('symmetric.keyBits');
  if (![128, 192, 256].includes(keyBits)) r.fail(`symmetric.keyBits ${keyBits} is not 128, 192 or 256`);
  const mode = r.u16('symmetric.mode');
  if (!SYM_MODES.has(mode)) r.fail(`symmetric.mode ${algName(mode)} is not a block cipher mode`);
  return { algorithm, keyBits, mode };
}

function readRsaScheme(r: TpmReader): AsymScheme {
  const scheme = r.u16('scheme.scheme');
  if (scheme === TPM_ALG.NULL) return { scheme, hashAlg: TPM_ALG.NULL };
  if (!RSA_SCHEMES.has(scheme)) r.fail(`RSA scheme ${algName(scheme)} is not an RSA scheme`);
  // TPMS_ENC_SCHEME_RSAES is empty; every other RSA scheme carries a hash.
  if (scheme === TPM_ALG.RSAES) return { scheme, hashAlg: TPM_ALG.NULL };
  return { scheme, hashAlg: readHashAlg(r, 'scheme.hashAlg', false) };
}

function readEccScheme(r: TpmReader): AsymScheme {
  const scheme = r.u16('scheme.scheme');
  if (scheme === TPM_ALG.NULL) return { scheme, hashAlg: TPM_ALG.NULL };
  if (!ECC_SCHEMES.has(scheme)) r.fail(`ECC scheme ${algName(scheme)} is not an ECC scheme`);
  const hashAlg = readHashAlg(r, 'scheme.hashAlg', false);
  if (scheme === TPM_ALG.ECDAA) return { scheme, hashAlg, count: r.u16('scheme.count') };
  return { scheme, hashAlg };
}

function readKdfScheme(r: TpmReader): { scheme: number; hashAlg: number } {
  const scheme = r.u16('kdf.scheme');
  if (scheme === TPM_ALG.NULL) return { scheme, hashAlg: TPM_ALG.NULL };
  if (!KDF_SCHEMES.has(scheme)) r.fail(`kdf.scheme ${algName(scheme)} is not a KDF scheme`);
  return { scheme, hashAlg: readHashAlg(r, 'kdf.hashAlg', false) };
}

function readTpmtPublicFields(r: TpmReader, raw: Buffer): TpmtPublic {
  const type = r.u16('type');
  if (type !== TPM_ALG.RSA && type !== TPM_ALG.ECC) {
    r.fail(`type ${algName(type)} is not supported (only RSA and ECC keys)`);
  }
  const nameAlg = readHashAlg(r, 'nameAlg', false);
  const objectAttributes = r.u32('objectAttributes');
  if ((objectAttributes & TPMA_OBJECT_RESERVED) !== 0) {
    r.fail(`objectAttributes 0x${objectAttributes.toString(16)} has reserved bits set`);
  }
  const authPolicy = r.tpm2b(LIMITS.digest, 'authPolicy');
  const symmetric = readSymDefObject(r);
  if (type === TPM_ALG.RSA) {
    const scheme = readRsaScheme(r);
    const keyBits = r.u16('keyBits');
    if (keyBits < 1024 || keyBits > 4096 || keyBits % 8 !== 0) r.fail(`keyBits ${keyBits} is not a supported RSA size`);
    const exp = r.u32('exponent');
    const modulus = r.tpm2b(LIMITS.rsaKey, 'unique.rsa');
    if (modulus.length !== keyBits / 8) r.fail(`modulus is ${modulus.length} bytes but keyBits says ${keyBits / 8}`);
    const exponent = exp === 0 ? 65537 : exp;
    if (exponent < 3 || exponent % 2 === 0) r.fail(`exponent ${exponent} is not a valid RSA public exponent`);
    return { type: 'rsa', nameAlg, objectAttributes, authPolicy, symmetric, scheme, keyBits, exponent, modulus, raw };
  }
  const scheme = readEccScheme(r);
  const curveId = r.u16('curveID');
  const kdf = readKdfScheme(r);
  const x = r.tpm2b(LIMITS.eccParameter, 'unique.ecc.x');
  const y = r.tpm2b(LIMITS.eccParameter, 'unique.ecc.y');
  return { type: 'ecc', nameAlg, objectAttributes, authPolicy, symmetric, scheme, curveId, kdf, x, y, raw };
}

/** Parse a TPMT_PUBLIC that fills `buf` exactly. */
export function parseTpmtPublic(buf: Buffer): TpmtPublic {
  if (buf.length > LIMITS.public) throw new SigilError('tpm.malformed_public', `TPMT_PUBLIC of ${buf.length} bytes exceeds ${LIMITS.public}`);
  const r = new TpmReader(buf, 'tpm.malformed_public', 'TPMT_PUBLIC');
  const pub = readTpmtPublicFields(r, Buffer.from(buf));
  r.end();
  return pub;
}

/** Parse a TPM2B_PUBLIC (u16 size ‖ TPMT_PUBLIC) that fills `buf` exactly. */
export function parseTpm2bPublic(buf: Buffer): TpmtPublic {
  const r = new TpmReader(buf, 'tpm.malformed_public', 'TPM2B_PUBLIC');
  const size = r.u16('size');
  if (size === 0) r.fail('size is 0 (no public area)');
  if (size > LIMITS.public) r.fail(`size ${size} exceeds ${LIMITS.public}`);
  if (size !== r.remaining) r.fail(`size field says ${size} bytes but ${r.remaining} follow`);
  return parseTpmtPublic(r.bytes(size, 'publicArea'));
}

/** Serialise a parsed public area back as TPM2B_PUBLIC. */
export function encodeTpm2bPublic(pub: TpmtPublic): Buffer {
  return new TpmWriter().tpm2b(pub.raw).toBuffer();
}

/** Object Name = nameAlg ‖ H_nameAlg(TPMT_PUBLIC). */
export function objectName(pub: TpmtPublic): Buffer {
  const h = hashByAlg(pub.nameAlg);
  if (!h) throw new SigilError('tpm.unsupported_algorithm', `nameAlg ${algName(pub.nameAlg)} is not supported for Name computation`);
  const w = new TpmWriter().u16(pub.nameAlg);
  return Buffer.concat([w.toBuffer(), digest(h.name, pub.raw)]);
}

/** TPM_RH_ENDORSEMENT: the endorsement hierarchy's handle, which is also its Qualified Name. */
const TPM_RH_ENDORSEMENT = Buffer.from([0x40, 0x00, 0x00, 0x0b]);

/** Qualified Name of `child` under a parent whose Qualified Name is `parentQn`: nameAlg ‖ H_nameAlg(parentQn ‖ Name(child)) (Part 1, "Qualified Name"). */
export function qualifiedName(parentQn: Buffer, child: TpmtPublic, childName = objectName(child)): Buffer {
  const h = hashByAlg(child.nameAlg);
  if (!h) throw new SigilError('tpm.unsupported_algorithm', `nameAlg ${algName(child.nameAlg)} is not supported for Name computation`);
  return Buffer.concat([childName.subarray(0, 2), digest(h.name, Buffer.concat([parentQn, childName]))]);
}

/**
 * The Qualified Name of `ak` created as a child of the primary key `ek` of the endorsement
 * hierarchy: what a TPM puts in `qualifiedSigner` of a quote that AK signs. The verifier compares
 * the two so that the AK is known to be the EK's child: for a signing key outside the endorsement
 * and platform hierarchies the TPM obfuscates resetCount, restartCount and firmwareVersion
 * (Part 2, TPMS_CLOCK_INFO / TPMS_ATTEST), so they would say nothing about the TPM.
 */
export function qualifiedNameUnderEk(ek: TpmtPublic, ak: TpmtPublic, akName = objectName(ak)): Buffer {
  return qualifiedName(qualifiedName(TPM_RH_ENDORSEMENT, ek), ak, akName);
}

// ---------------------------------------------------------------- PCR selection

export interface PcrSelection {
  hashAlg: number;
  /** sizeofSelect as on the wire. */
  sizeofSelect: number;
  /** Selected PCR indices, ascending. */
  pcrs: number[];
}

function readPcrSelectionList(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION.count');
  if (count > LIMITS.pcrBanks) r.fail(`count ${count} exceeds ${LIMITS.pcrBanks} banks`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16(`pcrSelections[${i}].hash`);
    if (!hashByAlg(hashAlg)) r.fail(`pcrSelections[${i}].hash ${algName(hashAlg)} is not a supported PCR bank`);
    const sizeofSelect = r.u8(`pcrSelections[${i}].sizeofSelect`);
    if (sizeofSelect > LIMITS.pcrSelect) r.fail(`pcrSelections[${i}].sizeofSelect ${sizeofSelect} exceeds ${LIMITS.pcrSelect}`);
    const bits = r.bytes(sizeofSelect, `pcrSelections[${i}].pcrSelect`);
    const pcrs: number[] = [];
    for (let b = 0; b < sizeofSelect; b++) {
      for (let bit = 0; bit < 8; bit++) if (((bits[b] ?? 0) >> bit) & 1) pcrs.push(b * 8 + bit);
    }
    out.push({ hashAlg, sizeofSelect, pcrs });
  }
  return out;
}

/** Parse a TPML_PCR_SELECTION that fills `buf` exactly. */
export function parsePcrSelection(buf: Buffer): PcrSelection[] {
  const r = new TpmReader(buf, 'tpm.malformed_pcr_selection', 'TPML_PCR_SELECTION');
  const sel = readPcrSelectionList(r);
  r.end();
  return sel;
}

export interface PcrBankSelection {
  bank: HashName;
  pcrs: number[];
}

/** Encode a TPML_PCR_SELECTION (sizeofSelect = 3, or 4 when a PCR ≥ 24 is selected). */
export function encodePcrSelection(sel: PcrBankSelection[]): Buffer {
  if (sel.length > LIMITS.pcrBanks) throw new SigilError('tpm.malformed_pcr_selection', `more than ${LIMITS.pcrBanks} PCR banks`);
  const w = new TpmWriter().u32(sel.length);
  for (const s of sel) {
    const h = HASHES.find((x) => x.name === s.bank);
    if (!h) throw new SigilError('tpm.malformed_pcr_selection', `unknown PCR bank ${s.bank}`);
    const max = s.pcrs.reduce((m, p) => Math.max(m, p), -1);
    if (max > 31 || s.pcrs.some((p) => !Number.isInteger(p) || p < 0)) {
      throw new SigilError('tpm.malformed_pcr_selection', `PCR indices must be integers 0..31 (bank ${s.bank})`);
    }
    const size = max >= 24 ? 4 : 3;
    const bits = Buffer.alloc(size);
    for (const p of s.pcrs) bits[p >> 3] = (bits[p >> 3] ?? 0) | (1 << (p & 7));
    w.u16(h.alg).u8(size).bytes(bits);
  }
  return w.toBuffer();
}

/** Canonical form for comparing selections: banks in order with their PCR lists; empty banks dropped. */
export function canonicalSelection(sel: PcrSelection[]): string {
  return sel
    .filter((s) => s.pcrs.length > 0)
    .map((s) => `${hashByAlg(s.hashAlg)?.name ?? s.hashAlg}:${s.pcrs.join(',')}`)
    .join('+');
}

// ---------------------------------------------------------------- TPMS_ATTEST

export interface ClockInfo {
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
}

export type Attested =
  | { kind: 'quote'; pcrSelect: PcrSelection[]; pcrDigest: Buffer }
  | { kind: 'certify'; name: Buffer; qualifiedName: Buffer }
  | { kind: 'creation'; objectName: Buffer; creationHash: Buffer };

export interface TpmsAttest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  attested: Attested;
  /** The TPMS_ATTEST bytes (what the signature covers). */
  raw: Buffer;
}

function readName(r: TpmReader, field: string): Buffer {
  const name = r.tpm2b(LIMITS.name, field);
  if (name.length === 0 || name.length === 4) return name; // empty or a handle
  if (name.length < 2) r.fail(`${field} of ${name.length} byte(s) is neither a handle nor alg‖digest`);
  const alg = name.readUInt16BE(0);
  const h = hashByAlg(alg);
  if (!h) r.fail(`${field} hash ${algName(alg)} is not supported`);
  if (name.length !== 2 + h.size) r.fail(`${field} digest is ${name.length - 2} bytes, ${h.name} needs ${h.size}`);
  return name;
}

/** Parse a TPMS_ATTEST (no size prefix) that fills `buf` exactly. */
export function parseAttest(buf: Buffer): TpmsAttest {
  if (buf.length > LIMITS.attest) throw new SigilError('tpm.malformed_attest', `TPMS_ATTEST of ${buf.length} bytes exceeds ${LIMITS.attest}`);
  const r = new TpmReader(buf, 'tpm.malformed_attest', 'TPMS_ATTEST');
  const magic = r.u32('magic');
  if (magic !== TPM_GENERATED_VALUE) r.fail(`magic 0x${magic.toString(16)} is not TPM_GENERATED_VALUE (0xff544347)`);
  const type = r.u16('type');
  const qualifiedSigner = readName(r, 'qualifiedSigner');
  const extraData = r.tpm2b(LIMITS.data, 'extraData');
  const clock = r.u64('clockInfo.clock');
  const resetCount = r.u32('clockInfo.resetCount');
  const restartCount = r.u32('clockInfo.restartCount');
  const safeByte = r.u8('clockInfo.safe');
  if (safeByte > 1) r.fail(`clockInfo.safe is ${safeByte}, not YES (1) or NO (0)`);
  const firmwareVersion = r.u64('firmwareVersion');
  let attested: Attested;
  switch (type) {
    case TPM_ST.ATTEST_QUOTE: {
      const pcrSelect = readPcrSelectionList(r);
      const pcrDigest = r.tpm2b(LIMITS.digest, 'quote.pcrDigest');
      attested = { kind: 'quote', pcrSelect, pcrDigest };
      break;
    }
    case TPM_ST.ATTEST_CERTIFY:
      attested = { kind: 'certify', name: readName(r, 'certify.name'), qualifiedName: readName(r, 'certify.qualifiedName') };
      break;
    case TPM_ST.ATTEST_CREATION:
      attested = { kind: 'creation', objectName: readName(r, 'creation.objectName'), creationHash: r.tpm2b(LIMITS.digest, 'creation.creationHash') };
      break;
    default:
      attested = r.fail(`type 0x${type.toString(16)} is not a supported attestation type (quote, certify, creation)`);
  }
  r.end();
  return {
    magic,
    type,
    qualifiedSigner,
    extraData,
    clockInfo: { clock, resetCount, restartCount, safe: safeByte === 1 },
    firmwareVersion,
    attested,
    raw: Buffer.from(buf),
  };
}

/**
 * Parse TPMS_ATTEST as TPM2B_ATTEST (u16 size ‖ TPMS_ATTEST) or bare TPMS_ATTEST
 * (tpm2_quote -m writes the bare structure). Detection: bare structures start with
 * TPM_GENERATED_VALUE; a TPM2B's size must equal the rest of the buffer.
 */
export function parseAttestAny(buf: Buffer): TpmsAttest {
  if (buf.length >= 4 && buf.readUInt32BE(0) === TPM_GENERATED_VALUE) return parseAttest(buf);
  return parseTpm2bAttest(buf);
}

/** Parse a TPM2B_ATTEST that fills `buf` exactly. */
export function parseTpm2bAttest(buf: Buffer): TpmsAttest {
  const r = new TpmReader(buf, 'tpm.malformed_attest', 'TPM2B_ATTEST');
  const size = r.u16('size');
  if (size > LIMITS.attest) r.fail(`size ${size} exceeds ${LIMITS.attest}`);
  if (size !== r.remaining) r.fail(`size field says ${size} bytes but ${r.remaining} follow`);
  return parseAttest(r.bytes(size, 'attestationData'));
}

// ---------------------------------------------------------------- TPMT_SIGNATURE

export type TpmtSignature =
  | { sigAlg: typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS; hashAlg: number; sig: Buffer }
  | { sigAlg: typeof TPM_ALG.ECDSA; hashAlg: number; r: Buffer; s: Buffer };

/** Parse a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA) that fills `buf` exactly. */
export function parseSignature(buf: Buffer): TpmtSignature {
  const r = new TpmReader(buf, 'tpm.malformed_signature', 'TPMT_SIGNATURE');
  const sigAlg = r.u16('sigAlg');
  let out: TpmtSignature;
  if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) {
    const hashAlg = readHashAlg(r, 'hash', false);
    const sig = r.tpm2b(LIMITS.rsaKey, 'sig');
    if (sig.length === 0) r.fail('RSA signature is empty');
    out = { sigAlg, hashAlg, sig };
  } else if (sigAlg === TPM_ALG.ECDSA) {
    const hashAlg = readHashAlg(r, 'hash', false);
    const sr = r.tpm2b(LIMITS.eccParameter, 'signatureR');
    const ss = r.tpm2b(LIMITS.eccParameter, 'signatureS');
    if (sr.length === 0 || ss.length === 0) r.fail('ECDSA signature has an empty r or s');
    out = { sigAlg, hashAlg, r: sr, s: ss };
  } else {
    out = r.fail(`sigAlg ${algName(sigAlg)} is not supported (RSASSA, RSAPSS, ECDSA)`);
  }
  r.end();
  return out;
}

// ---------------------------------------------------------------- credential structures

/** sizeof(TPMS_ID_OBJECT) = TPM2B_DIGEST integrityHMAC + TPM2B_DIGEST encIdentity. */
const ID_OBJECT_MAX = 2 + LIMITS.digest + 2 + LIMITS.digest;
/** sizeof(TPMU_ENCRYPTED_SECRET): the largest member is an RSA-4096 ciphertext. */
const ENCRYPTED_SECRET_MAX = LIMITS.rsaKey;

/** TPM2B_ID_OBJECT = u16 size ‖ TPM2B_DIGEST(integrityHMAC) ‖ encIdentity. */
export function encodeIdObject(integrityHmac: Buffer, encIdentity: Buffer): Buffer {
  if (integrityHmac.length > 0xffff) throw new SigilError('tpm.encode_too_large', `TPM2B of ${integrityHmac.length} bytes exceeds 65535`);
  const inner = 2 + integrityHmac.length + encIdentity.length;
  if (inner > ID_OBJECT_MAX) throw new SigilError('tpm.malformed_id_object', `ID object of ${inner} bytes exceeds ${ID_OBJECT_MAX}`);
  // size ‖ (size ‖ integrityHMAC ‖ encIdentity), written in place (the TpmWriter's parts cost more than the bytes).
  const out = Buffer.allocUnsafe(2 + inner); // every byte is written; the blob is public
  out.writeUInt16BE(inner, 0);
  out.writeUInt16BE(integrityHmac.length, 2);
  integrityHmac.copy(out, 4);
  encIdentity.copy(out, 4 + integrityHmac.length);
  return out;
}

/** Parse a TPM2B_ID_OBJECT that fills `buf` exactly. */
export function parseIdObject(buf: Buffer): { integrityHmac: Buffer; encIdentity: Buffer } {
  const r = new TpmReader(buf, 'tpm.malformed_id_object', 'TPM2B_ID_OBJECT');
  const size = r.u16('size');
  if (size > ID_OBJECT_MAX) r.fail(`size ${size} exceeds ${ID_OBJECT_MAX}`);
  if (size !== r.remaining) r.fail(`size field says ${size} bytes but ${r.remaining} follow`);
  const integrityHmac = r.tpm2b(LIMITS.digest, 'integrityHMAC');
  if (integrityHmac.length === 0) r.fail('integrityHMAC is empty');
  const encIdentity = r.bytes(r.remaining, 'encIdentity');
  if (encIdentity.length < 2) r.fail('encIdentity is shorter than a TPM2B size field');
  return { integrityHmac, encIdentity };
}

/** TPM2B_ENCRYPTED_SECRET = u16 size ‖ secret. */
export function encodeEncryptedSecret(secret: Buffer): Buffer {
  if (secret.length > ENCRYPTED_SECRET_MAX) throw new SigilError('tpm.malformed_encrypted_secret', `encrypted secret of ${secret.length} bytes exceeds ${ENCRYPTED_SECRET_MAX}`);
  return new TpmWriter().tpm2b(secret).toBuffer();
}

/** Parse a TPM2B_ENCRYPTED_SECRET that fills `buf` exactly. */
export function parseEncryptedSecret(buf: Buffer): Buffer {
  const r = new TpmReader(buf, 'tpm.malformed_encrypted_secret', 'TPM2B_ENCRYPTED_SECRET');
  const secret = r.tpm2b(ENCRYPTED_SECRET_MAX, 'secret');
  if (secret.length === 0) r.fail('secret is empty');
  r.end();
  return secret;
}

/** TPMS_ECC_POINT = TPM2B x ‖ TPM2B y. */
export function encodeEccPoint(x: Buffer, y: Buffer): Buffer {
  return new TpmWriter().tpm2b(x).tpm2b(y).toBuffer();
}

/** TPM2B_DIGEST marshalling. */
export function encodeDigest2b(d: Buffer): Buffer {
  if (d.length > LIMITS.digest) throw new SigilError('tpm.malformed_digest', `digest of ${d.length} bytes exceeds ${LIMITS.digest}`);
  return new TpmWriter().tpm2b(d).toBuffer();
}
