/**
 * Intel TDX DCAP quote parser (quote versions 4 and 5), pure.
 *
 * Hand-written from the Intel TDX DCAP Quote Generation Library and Quote Verification API
 * documents; a quote is a small little-endian C structure, clearer as a table of offsets:
 *
 *   Header (48)      VERSION u16, ATT_KEY_TYPE u16 (2 = ECDSA P-256), TEE_TYPE u32 (0x81 = TDX),
 *                    reserved/QE_SVN u16, reserved/PCE_SVN u16, QE_VENDOR_ID [16], USER_DATA [20]
 *   v4: TD report body 1.0 (584)
 *   v5: BODY_TYPE u16 (2 = TD report 1.0, 3 = TD report 1.5), BODY_SIZE u32, body (584 | 648)
 *   SIG_DATA_LEN u32, then signature data of exactly that length:
 *     QUOTE_SIGNATURE [64] (r ‖ s, big-endian), ATTESTATION_KEY [64] (x ‖ y),
 *     CERT_DATA_TYPE u16 (6 = QE report certification data), CERT_DATA_SIZE u32, and:
 *       QE_REPORT [384] (SGX enclave report), QE_REPORT_SIGNATURE [64],
 *       QE_AUTH_DATA_SIZE u16, QE_AUTH_DATA, CERT_DATA_TYPE u16 (5 = PCK chain, PEM), SIZE u32, data
 * The quote signature covers everything before SIG_DATA_LEN. Every length is checked against what
 * is left, every nested length must end exactly where its container ends, and bytes after the
 * quote are refused (`tdx.quote_trailing_bytes`).
 *
 * TD report body 1.0: TEE_TCB_SVN [16], MRSEAM [48], MRSIGNERSEAM [48], SEAMATTRIBUTES [8],
 * TDATTRIBUTES [8], XFAM [8], MRTD [48], MRCONFIGID [48], MROWNER [48], MROWNERCONFIG [48],
 * RTMR0..3 [4 × 48], REPORTDATA [64]; 1.5 appends TEE_TCB_SVN2 [16] and MRSERVICETD [48].
 */
import { SigilError } from '../errors.js';

export const TDX_HEADER_SIZE = 48;
export const TD_REPORT10_SIZE = 584;
export const TD_REPORT15_SIZE = 648;
export const QE_REPORT_SIZE = 384;
/** Upper bound on a whole quote; real quotes are ~5 KiB (the PCK chain dominates). */
export const TDX_QUOTE_MAX_BYTES = 64 * 1024;
export const TEE_TYPE_TDX = 0x81;
export const ATT_KEY_TYPE_ECDSA_P256 = 2;
export const CERT_TYPE_PCK_CHAIN = 5;
export const CERT_TYPE_QE_REPORT = 6;
/** Intel's QE vendor ID (939A7233-F79C-4CA9-940A-0DB3957F0607). */
export const INTEL_QE_VENDOR_ID = '939a7233f79c4ca9940a0db3957f0607';
/** TDATTRIBUTES bit 0: the TD is debuggable (its memory and state are readable by the host). */
export const TDATTR_DEBUG = 1n;

export interface TdReportBody {
  /** 1.0 (584 bytes) or 1.5 (648 bytes). */
  version: '1.0' | '1.5';
  teeTcbSvn: Buffer;
  mrSeam: Buffer;
  mrSignerSeam: Buffer;
  seamAttributes: Buffer;
  tdAttributes: Buffer;
  xfam: Buffer;
  mrTd: Buffer;
  mrConfigId: Buffer;
  mrOwner: Buffer;
  mrOwnerConfig: Buffer;
  rtmrs: [Buffer, Buffer, Buffer, Buffer];
  reportData: Buffer;
  /** 1.5 only. */
  teeTcbSvn2?: Buffer;
  mrServiceTd?: Buffer;
}

export interface QeReport {
  raw: Buffer;
  cpuSvn: Buffer;
  miscSelect: number;
  attributes: Buffer;
  mrEnclave: Buffer;
  mrSigner: Buffer;
  isvProdId: number;
  isvSvn: number;
  reportData: Buffer;
}

export interface TdxQuote {
  /** Private copy of the quote's bytes (exactly the quote, nothing after it). */
  raw: Buffer;
  version: 4 | 5;
  attestationKeyType: number;
  teeType: number;
  qeVendorId: Buffer;
  userData: Buffer;
  body: TdReportBody;
  /** Header ‖ (v5: body type ‖ size ‖) body — what the attestation key signed. */
  signed: Buffer;
  /** r ‖ s, 32 bytes each (IEEE P1363). */
  signature: Buffer;
  /** Uncompressed P-256 point without the 0x04 prefix: x ‖ y. */
  attestationKey: Buffer;
  qeReport: QeReport;
  qeReportSignature: Buffer;
  qeAuthData: Buffer;
  /** The PCK certificate chain exactly as carried (PEM text, leaf first). */
  pckChainPem: string;
}

function fail(code: string, message: string): never {
  throw new SigilError(code, message);
}

/** A bounds-checked little-endian reader; `what` names the structure in errors. */
class Reader {
  private off: number;
  constructor(
    private readonly buf: Buffer,
    start: number,
    private readonly end: number,
    private readonly what: string,
  ) {
    this.off = start;
  }
  get offset(): number {
    return this.off;
  }
  get left(): number {
    return this.end - this.off;
  }
  private need(n: number, field: string): void {
    if (n > this.left) fail('tdx.quote_truncated', `${this.what}: ${field} needs ${n} bytes at offset ${this.off}, only ${this.left} left`);
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  done(): void {
    if (this.left !== 0) fail('tdx.quote_malformed', `${this.what}: ${this.left} unexpected bytes at offset ${this.off}`);
  }
}

function parseTdReport(b: Buffer, version: '1.0' | '1.5'): TdReportBody {
  const r = new Reader(b, 0, b.length, `TD report body ${version}`);
  const body: TdReportBody = {
    version,
    teeTcbSvn: r.bytes(16, 'TEE_TCB_SVN'),
    mrSeam: r.bytes(48, 'MRSEAM'),
    mrSignerSeam: r.bytes(48, 'MRSIGNERSEAM'),
    seamAttributes: r.bytes(8, 'SEAMATTRIBUTES'),
    tdAttributes: r.bytes(8, 'TDATTRIBUTES'),
    xfam: r.bytes(8, 'XFAM'),
    mrTd: r.bytes(48, 'MRTD'),
    mrConfigId: r.bytes(48, 'MRCONFIGID'),
    mrOwner: r.bytes(48, 'MROWNER'),
    mrOwnerConfig: r.bytes(48, 'MROWNERCONFIG'),
    rtmrs: [r.bytes(48, 'RTMR0'), r.bytes(48, 'RTMR1'), r.bytes(48, 'RTMR2'), r.bytes(48, 'RTMR3')],
    reportData: r.bytes(64, 'REPORTDATA'),
  };
  if (version === '1.5') {
    body.teeTcbSvn2 = r.bytes(16, 'TEE_TCB_SVN2');
    body.mrServiceTd = r.bytes(48, 'MRSERVICETD');
  }
  r.done();
  return body;
}

/** Parse the 384-byte SGX enclave report of the Quoting Enclave. */
export function parseQeReport(b: Buffer): QeReport {
  if (b.length !== QE_REPORT_SIZE) fail('tdx.quote_malformed', `QE report must be ${QE_REPORT_SIZE} bytes, got ${b.length}`);
  return {
    raw: b,
    cpuSvn: b.subarray(0, 16),
    miscSelect: b.readUInt32LE(16),
    attributes: b.subarray(48, 64),
    mrEnclave: b.subarray(64, 96),
    mrSigner: b.subarray(128, 160),
    isvProdId: b.readUInt16LE(256),
    isvSvn: b.readUInt16LE(258),
    reportData: b.subarray(320, 384),
  };
}

/** TDATTRIBUTES as a 64-bit little-endian integer. */
export function tdAttributesValue(body: TdReportBody): bigint {
  return body.tdAttributes.readBigUInt64LE(0);
}

/**
 * Parse a TDX quote (v4 or v5). `input` must be exactly the quote: bytes after it are refused
 * (`tdx.quote_trailing_bytes`), as are other versions, TEE types, key types and certification
 * data types.
 */
export function parseTdxQuote(input: Uint8Array): TdxQuote {
  if (!(input instanceof Uint8Array)) fail('tdx.quote_malformed', 'quote must be bytes');
  if (input.byteLength > TDX_QUOTE_MAX_BYTES) fail('tdx.quote_too_large', `quote is ${input.byteLength} bytes, more than ${TDX_QUOTE_MAX_BYTES}`);
  const raw = Buffer.from(input);
  const r = new Reader(raw, 0, raw.length, 'quote');
  const version = r.u16('VERSION');
  if (version !== 4 && version !== 5) fail('tdx.quote_version_unsupported', `quote version ${version} is not supported (4 or 5)`);
  const attestationKeyType = r.u16('ATT_KEY_TYPE');
  if (attestationKeyType !== ATT_KEY_TYPE_ECDSA_P256) {
    fail('tdx.attestation_key_type_unsupported', `attestation key type ${attestationKeyType} is not supported (2 = ECDSA P-256)`);
  }
  const teeType = r.u32('TEE_TYPE');
  if (teeType !== TEE_TYPE_TDX) fail('tdx.tee_type_unsupported', `TEE type 0x${teeType.toString(16)} is not TDX (0x81)`);
  r.bytes(4, 'reserved');
  const qeVendorId = r.bytes(16, 'QE_VENDOR_ID');
  if (qeVendorId.toString('hex') !== INTEL_QE_VENDOR_ID) fail('tdx.qe_vendor_unknown', `QE vendor ID ${qeVendorId.toString('hex')} is not Intel's`);
  const userData = r.bytes(20, 'USER_DATA');

  let body: TdReportBody;
  if (version === 4) {
    body = parseTdReport(r.bytes(TD_REPORT10_SIZE, 'TD report body'), '1.0');
  } else {
    const type = r.u16('BODY_TYPE');
    const size = r.u32('BODY_SIZE');
    const want = type === 2 ? TD_REPORT10_SIZE : type === 3 ? TD_REPORT15_SIZE : -1;
    if (want < 0) fail('tdx.body_type_unsupported', `quote v5 body type ${type} is not a TD report (2 = TDX 1.0, 3 = TDX 1.5)`);
    if (size !== want) fail('tdx.quote_malformed', `quote v5 body type ${type} must be ${want} bytes, BODY_SIZE says ${size}`);
    body = parseTdReport(r.bytes(size, 'TD report body'), type === 2 ? '1.0' : '1.5');
  }
  const signedEnd = r.offset;
  const sigLen = r.u32('SIG_DATA_LEN');
  if (sigLen > r.left) fail('tdx.quote_truncated', `signature data length ${sigLen} runs past the end of the quote (${r.left} bytes left)`);
  if (sigLen < r.left) fail('tdx.quote_trailing_bytes', `${r.left - sigLen} bytes follow the quote's signature data`);
  const s = new Reader(raw, r.offset, r.offset + sigLen, 'quote signature data');
  const signature = s.bytes(64, 'QUOTE_SIGNATURE');
  const attestationKey = s.bytes(64, 'ATTESTATION_KEY');
  const outerType = s.u16('CERT_DATA_TYPE');
  const outerSize = s.u32('CERT_DATA_SIZE');
  if (outerType !== CERT_TYPE_QE_REPORT) fail('tdx.cert_data_unsupported', `certification data type ${outerType} is not supported (6 = QE report certification data)`);
  if (outerSize !== s.left) fail('tdx.quote_malformed', `certification data size ${outerSize} does not match the ${s.left} bytes left in the signature data`);
  const qeReportBytes = s.bytes(QE_REPORT_SIZE, 'QE_REPORT');
  const qeReportSignature = s.bytes(64, 'QE_REPORT_SIGNATURE');
  const authLen = s.u16('QE_AUTH_DATA_SIZE');
  const qeAuthData = s.bytes(authLen, 'QE_AUTH_DATA');
  const innerType = s.u16('PCK_CERT_DATA_TYPE');
  const innerSize = s.u32('PCK_CERT_DATA_SIZE');
  if (innerType !== CERT_TYPE_PCK_CHAIN) fail('tdx.cert_data_unsupported', `QE certification data type ${innerType} is not supported (5 = PCK certificate chain)`);
  if (innerSize !== s.left) fail('tdx.quote_malformed', `PCK certification data size ${innerSize} does not match the ${s.left} bytes left`);
  const pemBytes = s.bytes(innerSize, 'PCK certificate chain');
  s.done();
  // The chain is PEM text; the quoting library may end it with one NUL (C string).
  const pemEnd = pemBytes.length > 0 && pemBytes[pemBytes.length - 1] === 0 ? pemBytes.length - 1 : pemBytes.length;
  for (let i = 0; i < pemEnd; i++) {
    const c = pemBytes[i]!;
    if (c > 0x7e || (c < 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09)) fail('tdx.pck_chain_malformed', `PCK certificate chain has a non-PEM byte 0x${c.toString(16)} at ${i}`);
  }

  return {
    raw,
    version,
    attestationKeyType,
    teeType,
    qeVendorId,
    userData,
    body,
    signed: raw.subarray(0, signedEnd),
    signature,
    attestationKey,
    qeReport: parseQeReport(qeReportBytes),
    qeReportSignature,
    qeAuthData,
    pckChainPem: pemBytes.subarray(0, pemEnd).toString('latin1'),
  };
}
