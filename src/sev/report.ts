/**
 * AMD SEV-SNP ATTESTATION_REPORT parser (versions 2, 3 and 5), pure.
 *
 * Hand-written on purpose: the report is a fixed 0x4A0-byte little-endian C structure from the
 * SEV-SNP Firmware ABI specification (AMD #56860, "ATTESTATION_REPORT Structure"); there is no
 * library for it in this stack, and a structure this small is clearer as a table of offsets.
 *
 * Layout (offsets in bytes, LE integers):
 *   0x000 VERSION u32          0x004 GUEST_SVN u32         0x008 POLICY u64
 *   0x010 FAMILY_ID [16]       0x020 IMAGE_ID [16]         0x030 VMPL u32
 *   0x034 SIGNATURE_ALGO u32   0x038 CURRENT_TCB u64       0x040 PLATFORM_INFO u64
 *   0x048 signer info u32 (bit0 AUTHOR_KEY_EN, bit1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY, 31:5 MBZ)
 *   0x04C reserved u32 (MBZ)   0x050 REPORT_DATA [64]      0x090 MEASUREMENT [48]
 *   0x0C0 HOST_DATA [32]       0x0E0 ID_KEY_DIGEST [48]    0x110 AUTHOR_KEY_DIGEST [48]
 *   0x140 REPORT_ID [32]       0x160 REPORT_ID_MA [32]     0x180 REPORTED_TCB u64
 *   0x188 CPUID_FAM_ID, 0x189 CPUID_MOD_ID, 0x18A CPUID_STEP (v3+; MBZ on v2)
 *   0x18B..0x19F reserved (MBZ) 0x1A0 CHIP_ID [64]         0x1E0 COMMITTED_TCB u64
 *   0x1E8 CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR, reserved(MBZ)
 *   0x1EC COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR, reserved(MBZ)
 *   0x1F0 LAUNCH_TCB u64
 *   0x1F8 LAUNCH_MIT_VECTOR u64, 0x200 CURRENT_MIT_VECTOR u64 (v5; MBZ before)
 *   0x208..0x29F reserved (MBZ)
 *   0x2A0 SIGNATURE: R [72] LE, S [72] LE (P-384 uses the low 48 bytes), 0x330..0x49F reserved
 * The signature covers bytes 0x000..0x29F.
 */
import { SigilError } from '../errors.js';

export type SnpProduct = 'milan' | 'genoa' | 'turin';
export const SNP_PRODUCTS: readonly SnpProduct[] = ['milan', 'genoa', 'turin'];
export type SnpSigningKey = 'vcek' | 'vlek';

export const SNP_REPORT_SIZE = 0x4a0;
/** Bytes 0x000..0x29F are signed. */
export const SNP_SIGNED_LENGTH = 0x2a0;
export const SNP_SUPPORTED_VERSIONS: readonly number[] = [2, 3, 5];

const SIG_ALGO_ECDSA_P384_SHA384 = 1;
const POLICY_RESERVED_ONE_BIT = 17n;
const POLICY_DEBUG_BIT = 19n;
/** Highest guest-policy bit defined by the ABI (25 = PAGE_SWAP_DISABLE); 63:26 must be zero. */
const POLICY_HIGHEST_DEFINED_BIT = 25n;

export interface SnpPolicyFlags {
  abiMinor: number;
  abiMajor: number;
  smt: boolean;
  migrateMa: boolean;
  debug: boolean;
  singleSocket: boolean;
  cxlAllow: boolean;
  memAes256Xts: boolean;
  raplDis: boolean;
  ciphertextHiding: boolean;
  pageSwapDisable: boolean;
}

export interface SnpTcbParts {
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
  /** Turin only. */
  fmc?: number;
}

export interface SnpReport {
  /** Private copy of the 0x4A0 bytes; the fields below are views into it. */
  raw: Buffer;
  version: number;
  guestSvn: number;
  policy: bigint;
  policyFlags: SnpPolicyFlags;
  familyId: Buffer;
  imageId: Buffer;
  vmpl: number;
  signatureAlgo: number;
  currentTcb: Buffer;
  platformInfo: bigint;
  authorKeyEn: boolean;
  signingKey: SnpSigningKey;
  reportData: Buffer;
  measurement: Buffer;
  hostData: Buffer;
  idKeyDigest: Buffer;
  authorKeyDigest: Buffer;
  reportId: Buffer;
  reportIdMa: Buffer;
  reportedTcb: Buffer;
  /** v3+ only; undefined on v2. */
  cpuid?: { family: number; model: number; stepping: number };
  chipId: Buffer;
  /** CHIP_ID is all zero when the host set MaskChipId (SNP_CONFIG); there is no other flag for it in the report. */
  chipIdMasked: boolean;
  committedTcb: Buffer;
  currentVersion: { major: number; minor: number; build: number };
  committedVersion: { major: number; minor: number; build: number };
  launchTcb: Buffer;
  /** v5 only. */
  launchMitVector?: bigint;
  currentMitVector?: bigint;
  /** The signed region, bytes 0x000..0x29F (a view of `raw`). */
  signed: Buffer;
  /** r ‖ s, 48 bytes each, big-endian (IEEE P1363), ready for node:crypto. */
  signatureP1363: Buffer;
}

function fail(code: string, message: string): never {
  throw new SigilError(code, message);
}

function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

function mbz(buf: Buffer, start: number, end: number, what: string): void {
  if (!isZero(buf, start, end)) {
    fail('sev.report_reserved_nonzero', `report ${what} (bytes 0x${start.toString(16)}..0x${(end - 1).toString(16)}) must be zero`);
  }
}

/** 72-byte little-endian field → 48-byte big-endian integer; the upper 24 bytes must be zero. */
function leScalar(buf: Buffer, off: number, name: string): Buffer {
  if (!isZero(buf, off + 48, off + 72)) fail('sev.signature_malformed', `signature ${name} has non-zero bytes above the 48-byte P-384 range`);
  const out = Buffer.allocUnsafe(48);
  for (let i = 0; i < 48; i++) out[i] = buf[off + 47 - i]!;
  return out;
}

export function parsePolicy(policy: bigint): SnpPolicyFlags {
  if (((policy >> POLICY_RESERVED_ONE_BIT) & 1n) !== 1n) fail('sev.policy_invalid', 'guest policy bit 17 is reserved and must be 1');
  if (policy >> (POLICY_HIGHEST_DEFINED_BIT + 1n) !== 0n) fail('sev.policy_invalid', `guest policy 0x${policy.toString(16)} sets reserved bits 63:26`);
  const bit = (n: bigint): boolean => ((policy >> n) & 1n) === 1n;
  return {
    abiMinor: Number(policy & 0xffn),
    abiMajor: Number((policy >> 8n) & 0xffn),
    smt: bit(16n),
    migrateMa: bit(18n),
    debug: bit(POLICY_DEBUG_BIT),
    singleSocket: bit(20n),
    cxlAllow: bit(21n),
    memAes256Xts: bit(22n),
    raplDis: bit(23n),
    ciphertextHiding: bit(24n),
    pageSwapDisable: bit(25n),
  };
}

/**
 * Parse and structurally validate a report. Checks length, version, signature algorithm, signer
 * info, guest policy reserved bits and every reserved (MBZ) byte range. Does not verify the
 * signature (that needs the VCEK/VLEK; see verifySnpEvidence).
 */
export function parseSnpReport(input: Uint8Array): SnpReport {
  if (!(input instanceof Uint8Array)) fail('sev.report_malformed', 'report must be bytes');
  if (input.byteLength !== SNP_REPORT_SIZE) {
    fail('sev.report_length', `report must be exactly ${SNP_REPORT_SIZE} bytes, got ${input.byteLength}`);
  }
  const raw = Buffer.from(input); // private copy: later mutation by the caller cannot change a verified view
  const version = raw.readUInt32LE(0x000);
  if (!SNP_SUPPORTED_VERSIONS.includes(version)) {
    fail('sev.report_version_unsupported', `report version ${version} is not supported (supported: ${SNP_SUPPORTED_VERSIONS.join(', ')})`);
  }
  const signatureAlgo = raw.readUInt32LE(0x034);
  if (signatureAlgo !== SIG_ALGO_ECDSA_P384_SHA384) {
    fail('sev.signature_algo_unsupported', `report signature algorithm ${signatureAlgo} is not ECDSA P-384 with SHA-384 (1)`);
  }
  const policy = raw.readBigUInt64LE(0x008);
  const policyFlags = parsePolicy(policy);

  const signer = raw.readUInt32LE(0x048);
  if (signer >>> 5 !== 0) fail('sev.report_reserved_nonzero', `report signer info 0x${signer.toString(16)} sets reserved bits 31:5`);
  const keySel = (signer >>> 2) & 7;
  const maskChipKey = (signer & 2) !== 0;
  if (keySel === 7 || maskChipKey) fail('sev.report_unsigned', 'report is not signed (SIGNING_KEY = none or MASK_CHIP_KEY set)');
  if (keySel !== 0 && keySel !== 1) fail('sev.signing_key_unknown', `report SIGNING_KEY ${keySel} is reserved`);
  const signingKey: SnpSigningKey = keySel === 0 ? 'vcek' : 'vlek';

  // PLATFORM_INFO is not checked bit by bit: firmware defines new bits there with each ABI
  // revision (SMT_EN, TSME_EN, ECC_EN, RAPL_DIS, CIPHERTEXT_HIDING_EN, ALIAS_CHECK_COMPLETE, …;
  // the real Turin report sets bit 6) and they describe the host, not the guest's request. It is
  // reported as a claim. Byte ranges the ABI marks reserved are enforced below.
  mbz(raw, 0x04c, 0x050, 'reserved field after signer info');
  if (version >= 3) mbz(raw, 0x18b, 0x1a0, 'reserved field after CPUID');
  else mbz(raw, 0x188, 0x1a0, 'reserved field after REPORTED_TCB');
  mbz(raw, 0x1eb, 0x1ec, 'reserved byte after CURRENT_MAJOR');
  mbz(raw, 0x1ef, 0x1f0, 'reserved byte after COMMITTED_MAJOR');
  if (version >= 5) mbz(raw, 0x208, SNP_SIGNED_LENGTH, 'reserved field after CURRENT_MIT_VECTOR');
  else mbz(raw, 0x1f8, SNP_SIGNED_LENGTH, 'reserved field after LAUNCH_TCB');
  mbz(raw, 0x330, SNP_REPORT_SIZE, 'reserved part of SIGNATURE');

  const r = leScalar(raw, 0x2a0, 'R');
  const s = leScalar(raw, 0x2e8, 'S');

  const chipId = raw.subarray(0x1a0, 0x1e0);
  const report: SnpReport = {
    raw,
    version,
    guestSvn: raw.readUInt32LE(0x004),
    policy,
    policyFlags,
    familyId: raw.subarray(0x010, 0x020),
    imageId: raw.subarray(0x020, 0x030),
    vmpl: raw.readUInt32LE(0x030),
    signatureAlgo,
    currentTcb: raw.subarray(0x038, 0x040),
    platformInfo: raw.readBigUInt64LE(0x040),
    authorKeyEn: (signer & 1) !== 0,
    signingKey,
    reportData: raw.subarray(0x050, 0x090),
    measurement: raw.subarray(0x090, 0x0c0),
    hostData: raw.subarray(0x0c0, 0x0e0),
    idKeyDigest: raw.subarray(0x0e0, 0x110),
    authorKeyDigest: raw.subarray(0x110, 0x140),
    reportId: raw.subarray(0x140, 0x160),
    reportIdMa: raw.subarray(0x160, 0x180),
    reportedTcb: raw.subarray(0x180, 0x188),
    chipId,
    chipIdMasked: isZero(raw, 0x1a0, 0x1e0),
    committedTcb: raw.subarray(0x1e0, 0x1e8),
    currentVersion: { build: raw[0x1e8]!, minor: raw[0x1e9]!, major: raw[0x1ea]! },
    committedVersion: { build: raw[0x1ec]!, minor: raw[0x1ed]!, major: raw[0x1ee]! },
    launchTcb: raw.subarray(0x1f0, 0x1f8),
    signed: raw.subarray(0, SNP_SIGNED_LENGTH),
    signatureP1363: Buffer.concat([r, s]),
  };
  if (version >= 3) report.cpuid = { family: raw[0x188]!, model: raw[0x189]!, stepping: raw[0x18a]! };
  if (version >= 5) {
    report.launchMitVector = raw.readBigUInt64LE(0x1f8);
    report.currentMitVector = raw.readBigUInt64LE(0x200);
  }
  return report;
}

/**
 * Product line from the report's CPUID fields (v3+): family 19h models 00h–0Fh = Milan,
 * 10h–1Fh and A0h–AFh = Genoa (incl. Bergamo/Siena, which use the Genoa KDS line), family 1Ah
 * models 00h–1Fh = Turin. Returns undefined when the report has no CPUID (v2) or it is all zero;
 * throws for a CPUID that is present but not an SEV-SNP product this verifier knows.
 */
export function productFromReport(report: SnpReport): SnpProduct | undefined {
  const c = report.cpuid;
  if (c === undefined || (c.family === 0 && c.model === 0 && c.stepping === 0)) return undefined;
  if (c.family === 0x19) {
    if (c.model <= 0x0f) return 'milan';
    if ((c.model >= 0x10 && c.model <= 0x1f) || (c.model >= 0xa0 && c.model <= 0xaf)) return 'genoa';
  }
  if (c.family === 0x1a && c.model <= 0x1f) return 'turin';
  return fail('sev.product_unknown', `report CPUID family 0x${c.family.toString(16)} model 0x${c.model.toString(16)} is not a known SEV-SNP product`);
}

/** TCB_VERSION layout: Milan/Genoa [bl, tee, rsvd×4, snp, ucode]; Turin [fmc, bl, tee, snp, rsvd×3, ucode]. */
export function decodeTcb(tcb: Buffer, product: SnpProduct): SnpTcbParts {
  if (product === 'turin') {
    return { fmc: tcb[0]!, bootloader: tcb[1]!, tee: tcb[2]!, snp: tcb[3]!, microcode: tcb[7]! };
  }
  return { bootloader: tcb[0]!, tee: tcb[1]!, snp: tcb[6]!, microcode: tcb[7]! };
}

export function encodeTcb(parts: SnpTcbParts, product: SnpProduct): Buffer {
  const b = Buffer.alloc(8);
  if (product === 'turin') {
    b[0] = parts.fmc ?? 0;
    b[1] = parts.bootloader;
    b[2] = parts.tee;
    b[3] = parts.snp;
  } else {
    b[0] = parts.bootloader;
    b[1] = parts.tee;
    b[6] = parts.snp;
  }
  b[7] = parts.microcode;
  return b;
}

/** Reserved bytes inside a TCB_VERSION for the product line are zero. */
export function tcbReservedZero(tcb: Buffer, product: SnpProduct): boolean {
  return product === 'turin' ? isZero(tcb, 4, 7) : isZero(tcb, 2, 6);
}

/** The TCB as the 16-hex-digit u64 value (the form AMD tools and the `reported_tcb` selector use). */
export function tcbHex(tcb: Buffer): string {
  return tcb.readBigUInt64LE(0).toString(16).padStart(16, '0');
}

/**
 * The hardware ID as used by VCEK hwID and AMD KDS: the whole 64-byte CHIP_ID on Milan/Genoa,
 * the first 8 bytes on Turin (the rest of Turin's CHIP_ID is zero).
 */
export function hwIdForProduct(chipId: Buffer, product: SnpProduct): Buffer {
  return product === 'turin' ? chipId.subarray(0, 8) : chipId;
}
