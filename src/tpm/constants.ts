/**
 * TPM 2.0 constants used by Sigil's TPM parsers and verifiers (values from TPM 2.0
 * Library Part 2 "Structures" and the TCG Algorithm Registry).
 */

export const TPM_GENERATED_VALUE = 0xff544347;

/** TPM_ST attestation structure tags. */
export const TPM_ST = {
  ATTEST_NV: 0x8014,
  ATTEST_COMMAND_AUDIT: 0x8015,
  ATTEST_SESSION_AUDIT: 0x8016,
  ATTEST_CERTIFY: 0x8017,
  ATTEST_QUOTE: 0x8018,
  ATTEST_TIME: 0x8019,
  ATTEST_CREATION: 0x801a,
  ATTEST_NV_DIGEST: 0x801c,
} as const;

/** TPM_ALG_ID values. */
export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  MGF1: 0x0007,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM3_256: 0x0012,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
  x509sign: 1 << 19,
} as const;

/** Bits of TPMA_OBJECT that are reserved (must be clear). */
export const TPMA_OBJECT_RESERVED = (1 << 0) | (1 << 3) | (1 << 8) | (1 << 9) | (0b1111 << 12) | (~0 << 20);

/** TPM_ECC_CURVE values. */
export const TPM_ECC = {
  NIST_P192: 0x0001,
  NIST_P224: 0x0002,
  NIST_P256: 0x0003,
  NIST_P384: 0x0004,
  NIST_P521: 0x0005,
  BN_P256: 0x0010,
  BN_P638: 0x0011,
  SM2_P256: 0x0020,
} as const;

export type HashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

export interface HashInfo {
  alg: number;
  name: HashName;
  size: number;
}

export const HASHES: readonly HashInfo[] = [
  { alg: TPM_ALG.SHA1, name: 'sha1', size: 20 },
  { alg: TPM_ALG.SHA256, name: 'sha256', size: 32 },
  { alg: TPM_ALG.SHA384, name: 'sha384', size: 48 },
  { alg: TPM_ALG.SHA512, name: 'sha512', size: 64 },
];

export function hashByAlg(alg: number): HashInfo | undefined {
  return HASHES.find((h) => h.alg === alg);
}

export function hashByName(name: string): HashInfo | undefined {
  return HASHES.find((h) => h.name === name);
}

export interface CurveInfo {
  id: number;
  /** JWK crv name. */
  jwk: 'P-256' | 'P-384' | 'P-521';
  /** node:crypto / OpenSSL curve name. */
  node: 'prime256v1' | 'secp384r1' | 'secp521r1';
  /** ASN.1 OID of the named curve. */
  oid: string;
  /** Coordinate size in bytes. */
  size: number;
}

export const CURVES: readonly CurveInfo[] = [
  { id: TPM_ECC.NIST_P256, jwk: 'P-256', node: 'prime256v1', oid: '1.2.840.10045.3.1.7', size: 32 },
  { id: TPM_ECC.NIST_P384, jwk: 'P-384', node: 'secp384r1', oid: '1.3.132.0.34', size: 48 },
  { id: TPM_ECC.NIST_P521, jwk: 'P-521', node: 'secp521r1', oid: '1.3.132.0.35', size: 66 },
];

export function curveById(id: number): CurveInfo | undefined {
  return CURVES.find((c) => c.id === id);
}

/** Human-readable algorithm names for error messages. */
export function algName(alg: number): string {
  for (const [k, v] of Object.entries(TPM_ALG)) if (v === alg) return k.toLowerCase();
  return `0x${alg.toString(16).padStart(4, '0')}`;
}

/** Upper bounds taken from the reference implementation's sizes (TPM 2.0 Part 2 buffer definitions). */
export const LIMITS = {
  /** sizeof(TPMU_HA): largest digest. */
  digest: 64,
  /** sizeof(TPMT_HA): TPM2B_DATA. */
  data: 66,
  /** sizeof(TPMU_NAME). */
  name: 66,
  /** MAX_RSA_KEY_BYTES (RSA-4096). */
  rsaKey: 512,
  /** MAX_ECC_KEY_BYTES (P-521 rounded). */
  eccParameter: 128,
  /** HASH_COUNT used by Sigil's selection parser. */
  pcrBanks: 16,
  /** PCR_SELECT_MAX for 32 PCRs. */
  pcrSelect: 4,
  /** TPML_DIGEST holds at most 8 digests. */
  digestList: 8,
  /** sizeof(TPMT_PUBLIC) upper bound. */
  public: 1024,
  /** sizeof(TPMS_ATTEST) upper bound. */
  attest: 1024,
} as const;
