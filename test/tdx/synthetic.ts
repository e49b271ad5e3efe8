/**
 * Synthetic Intel-like DCAP PKI, collateral and TDX quotes for tests: a test root named
 * "Intel SGX Root CA" (P-256, self-signed) → "Intel SGX PCK Platform CA" → "Intel SGX PCK
 * Certificate" carrying the Intel SGX extension, a "Intel SGX TCB Signing" certificate, CRLs made
 * here, TCB Info / QE Identity JSON signed over their exact text, and quotes (v4 or v5) signed by a
 * fresh attestation key whose QE report the PCK key signs. Nothing here is trusted by default:
 * tests pass `pki.rootSha256` as `rootSha256`.
 */
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { exportJwk } from '../../src/spiffe/keys.js';
import { TAG, encodeTime, encodeUnsignedInteger, tlv, tlvOf } from '../../src/spiffe/der.js';
import { derToPem } from '../../src/spiffe/pem.js';
import { ALG_ID_DER } from '../../src/spiffe/sigalg.js';
import { KU, OID_BC, OID_KU, encodeBasicConstraintsValue, encodeExtension, encodeExtensionRaw, encodeKeyUsageValue } from '../../src/spiffe/x509ext.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { INTEL_QE_VENDOR_ID, QE_REPORT_SIZE } from '../../src/tdx/quote.js';
import type { TdxCollateral } from '../../src/tdx/verify.js';

export const T0 = new Date('2025-03-01T00:00:00Z');
const DAY = 86_400_000;

interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}
const p256 = (): KeyPair => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = (k: KeyObject): Buffer => k.export({ format: 'der', type: 'spki' });
const intelName = (cn: string): Buffer => encodeName([['C', 'US'], ['O', 'Intel Corporation'], ['CN', cn]]);

export function oidBytes(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const out = [40 * arcs[0]! + arcs[1]!];
  for (const a of arcs.slice(2)) {
    const b: number[] = [a & 0x7f];
    for (let v = Math.floor(a / 128); v > 0; v = Math.floor(v / 128)) b.unshift((v & 0x7f) | 0x80);
    out.push(...b);
  }
  return tlv(TAG.OID, Buffer.from(out));
}
const intDer = (n: number): Buffer => encodeUnsignedInteger(Buffer.from(n.toString(16).padStart(n > 0xff ? 4 : 2, '0'), 'hex'));
const SGX = '1.2.840.113741.1.13.1';

export interface PckFacts {
  ppid: Buffer;
  compSvn: number[];
  pceSvn: number;
  cpuSvn: Buffer;
  pceId: Buffer;
  fmspc: Buffer;
}

export const DEFAULT_PCK: PckFacts = {
  ppid: Buffer.alloc(16, 0x11),
  compSvn: [5, 5, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
  pceSvn: 13,
  cpuSvn: Buffer.from('05050202030100030000000000000000', 'hex'),
  pceId: Buffer.from('0000', 'hex'),
  fmspc: Buffer.from('00806f050000', 'hex'),
};

export function sgxExtensionValue(f: PckFacts): Buffer {
  const kv = (oid: string, v: Buffer): Buffer => tlv(TAG.SEQUENCE, oidBytes(oid), v);
  const comps = f.compSvn.map((s, i) => kv(`${SGX}.2.${i + 1}`, intDer(s)));
  return tlvOf(TAG.SEQUENCE, [
    kv(`${SGX}.1`, tlv(TAG.OCTET_STRING, f.ppid)),
    kv(`${SGX}.2`, tlvOf(TAG.SEQUENCE, [...comps, kv(`${SGX}.2.17`, intDer(f.pceSvn)), kv(`${SGX}.2.18`, tlv(TAG.OCTET_STRING, f.cpuSvn))])),
    kv(`${SGX}.3`, tlv(TAG.OCTET_STRING, f.pceId)),
    kv(`${SGX}.4`, tlv(TAG.OCTET_STRING, f.fmspc)),
    kv(`${SGX}.5`, tlv(0x0a, Buffer.from([0]))),
  ]);
}

export interface TdxTestPki {
  root: KeyPair;
  rootDer: Buffer;
  rootSha256: string;
  platform: KeyPair;
  platformDer: Buffer;
  pck: KeyPair;
  pckDer: Buffer;
  pckSerial: Buffer;
  signing: KeyPair;
  signingDer: Buffer;
  /** PCK leaf, Platform CA, root — as PEM, the quote's certification data. */
  pckChainPem: string;
  tcbSigningChainPem: string;
  pckCrlIssuerChainPem: string;
}

const caExts = (): Buffer[] => [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true, 1)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign))];
const leafExts = (): Buffer[] => [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature | KU.nonRepudiation))];

export interface PkiOptions {
  pck?: Partial<PckFacts>;
  /** Validity of every certificate: notBefore / notAfter. */
  notBefore?: Date;
  notAfter?: Date;
  /** Extra leaf extensions for the PCK certificate (tests of unknown critical extensions). */
  pckExtraExtensions?: Buffer[];
}

export function makeTdxTestPki(o: PkiOptions = {}): TdxTestPki {
  const nb = o.notBefore ?? new Date(T0.getTime() - 365 * DAY);
  const na = o.notAfter ?? new Date(T0.getTime() + 365 * DAY);
  const root = p256();
  const rootName = intelName('Intel SGX Root CA');
  const rootDer = encodeCertificate({ subjectDer: rootName, subjectSpki: spki(root.publicKey), serial: Buffer.from([1]), notBefore: nb, notAfter: na, extensions: caExts(), signerKey: root.privateKey });
  const platform = p256();
  const platformName = intelName('Intel SGX PCK Platform CA');
  const platformDer = encodeCertificate({ issuerDer: rootName, subjectDer: platformName, subjectSpki: spki(platform.publicKey), serial: Buffer.from([2]), notBefore: nb, notAfter: na, extensions: caExts(), signerKey: root.privateKey });
  const pck = p256();
  const pckSerial = Buffer.from('4a1b2c3d', 'hex');
  const facts = { ...DEFAULT_PCK, ...o.pck };
  const pckDer = encodeCertificate({
    issuerDer: platformName,
    subjectDer: intelName('Intel SGX PCK Certificate'),
    subjectSpki: spki(pck.publicKey),
    serial: pckSerial,
    notBefore: nb,
    notAfter: na,
    extensions: [...leafExts(), encodeExtensionRaw(oidBytes(SGX).subarray(2), false, sgxExtensionValue(facts)), ...(o.pckExtraExtensions ?? [])],
    signerKey: platform.privateKey,
  });
  const signing = p256();
  const signingDer = encodeCertificate({ issuerDer: rootName, subjectDer: intelName('Intel SGX TCB Signing'), subjectSpki: spki(signing.publicKey), serial: Buffer.from([3]), notBefore: nb, notAfter: na, extensions: leafExts(), signerKey: root.privateKey });
  const pem = (...ds: Buffer[]): string => ds.map((d) => derToPem(d, 'CERTIFICATE')).join('');
  return {
    root,
    rootDer,
    rootSha256: createHash('sha256').update(rootDer).digest('hex'),
    platform,
    platformDer,
    pck,
    pckDer,
    pckSerial,
    signing,
    signingDer,
    pckChainPem: pem(pckDer, platformDer, rootDer),
    tcbSigningChainPem: pem(signingDer, rootDer),
    pckCrlIssuerChainPem: pem(platformDer, rootDer),
  };
}

/** A v2 CRL signed by `key` for issuer `issuerName`, listing `revoked` serials (content octets). */
export function makeCrl(key: KeyObject, issuerName: string, revoked: Buffer[], thisUpdate: Date, nextUpdate: Date): Buffer {
  const entries = revoked.map((s) => tlv(TAG.SEQUENCE, tlv(TAG.INTEGER, s), encodeTime(thisUpdate)));
  const tbs = tlvOf(TAG.SEQUENCE, [
    tlv(TAG.INTEGER, Buffer.from([1])),
    ALG_ID_DER.ecdsaSha256,
    intelName(issuerName),
    encodeTime(thisUpdate),
    encodeTime(nextUpdate),
    ...(entries.length ? [tlvOf(TAG.SEQUENCE, entries)] : []),
  ]);
  return tlv(TAG.SEQUENCE, tbs, ALG_ID_DER.ecdsaSha256, tlv(TAG.BIT_STRING, Buffer.from([0]), sign('sha256', tbs, key)));
}

const p1363 = (data: Buffer, key: KeyObject): Buffer => sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' });

/** `{"<member>":<text>,"signature":"<hex>"}` with the signature over `text` exactly. */
export function signJson(member: 'tcbInfo' | 'enclaveIdentity', text: string, key: KeyObject): Buffer {
  return Buffer.from(`{"${member}":${text},"signature":"${p1363(Buffer.from(text, 'utf8'), key).toString('hex')}"}`, 'utf8');
}

const comps = (svns: number[]): { svn: number }[] => svns.map((svn) => ({ svn }));

export interface TcbInfoOptions {
  fmspc?: string;
  issueDate?: Date;
  nextUpdate?: Date;
  /** Levels highest first: SGX components, PCESVN, TDX components, status, advisories. */
  levels?: { sgx: number[]; pceSvn: number; tdx: number[]; status: string; advisoryIDs?: string[] }[];
  mrSignerSeam?: string;
}

export const DEFAULT_TEE_TCB_SVN = [3, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

export function tcbInfoText(o: TcbInfoOptions = {}): string {
  const levels = o.levels ?? [
    { sgx: DEFAULT_PCK.compSvn, pceSvn: 13, tdx: DEFAULT_TEE_TCB_SVN, status: 'UpToDate' },
    { sgx: [2, 2, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0], pceSvn: 5, tdx: [2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], status: 'OutOfDate', advisoryIDs: ['INTEL-SA-00837'] },
  ];
  return JSON.stringify({
    id: 'TDX',
    version: 3,
    issueDate: (o.issueDate ?? new Date(T0.getTime() - DAY)).toISOString().replace('.000Z', 'Z'),
    nextUpdate: (o.nextUpdate ?? new Date(T0.getTime() + 29 * DAY)).toISOString().replace('.000Z', 'Z'),
    fmspc: o.fmspc ?? DEFAULT_PCK.fmspc.toString('hex'),
    pceId: '0000',
    tcbType: 0,
    tcbEvaluationDataNumber: 17,
    tdxModule: { mrsigner: o.mrSignerSeam ?? '00'.repeat(48), attributes: '0000000000000000', attributesMask: 'FFFFFFFFFFFFFFFF' },
    tcbLevels: levels.map((l) => ({
      tcb: { sgxtcbcomponents: comps(l.sgx), pcesvn: l.pceSvn, tdxtcbcomponents: comps(l.tdx) },
      tcbDate: '2024-11-13T00:00:00Z',
      tcbStatus: l.status,
      ...(l.advisoryIDs ? { advisoryIDs: l.advisoryIDs } : {}),
    })),
  });
}

export const QE_MRSIGNER = 'dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5';

export function qeIdentityText(o: { issueDate?: Date; nextUpdate?: Date; isvSvn?: number; status?: string } = {}): string {
  return JSON.stringify({
    id: 'TD_QE',
    version: 2,
    issueDate: (o.issueDate ?? new Date(T0.getTime() - DAY)).toISOString().replace('.000Z', 'Z'),
    nextUpdate: (o.nextUpdate ?? new Date(T0.getTime() + 29 * DAY)).toISOString().replace('.000Z', 'Z'),
    tcbEvaluationDataNumber: 17,
    miscselect: '00000000',
    miscselectMask: 'FFFFFFFF',
    attributes: '11000000000000000000000000000000',
    attributesMask: 'FBFFFFFFFFFFFFFF0000000000000000',
    mrsigner: QE_MRSIGNER.toUpperCase(),
    isvprodid: 2,
    tcbLevels: [{ tcb: { isvsvn: o.isvSvn ?? 4 }, tcbDate: '2024-03-13T00:00:00Z', tcbStatus: o.status ?? 'UpToDate' }],
  });
}

export interface CollateralOptions {
  tcbInfo?: TcbInfoOptions;
  qeIdentity?: Parameters<typeof qeIdentityText>[0];
  revokedPck?: Buffer[];
  revokedByRoot?: Buffer[];
  crlThisUpdate?: Date;
  crlNextUpdate?: Date;
}

export function makeCollateral(pki: TdxTestPki, o: CollateralOptions = {}): TdxCollateral {
  const tu = o.crlThisUpdate ?? new Date(T0.getTime() - DAY);
  const nu = o.crlNextUpdate ?? new Date(T0.getTime() + 29 * DAY);
  return {
    tcbInfo: signJson('tcbInfo', tcbInfoText(o.tcbInfo), pki.signing.privateKey),
    qeIdentity: signJson('enclaveIdentity', qeIdentityText(o.qeIdentity), pki.signing.privateKey),
    tcbSigningChain: pki.tcbSigningChainPem,
    pckCrl: makeCrl(pki.platform.privateKey, 'Intel SGX PCK Platform CA', o.revokedPck ?? [], tu, nu),
    pckCrlIssuerChain: pki.pckCrlIssuerChainPem,
    rootCrl: makeCrl(pki.root.privateKey, 'Intel SGX Root CA', o.revokedByRoot ?? [], tu, nu),
  };
}

export interface QuoteOptions {
  version?: 4 | 5;
  /** v5 only: TD report 1.5 body. */
  body15?: boolean;
  reportData?: Buffer;
  tdAttributes?: Buffer;
  teeTcbSvn?: number[];
  mrTd?: Buffer;
  rtmrs?: Buffer[];
  qeIsvSvn?: number;
  qeAuthData?: Buffer;
  /** Overrides the PCK chain PEM carried in the quote. */
  pckChainPem?: string;
}

function qeReport(isvSvn: number, reportData: Buffer): Buffer {
  const b = Buffer.alloc(QE_REPORT_SIZE);
  Buffer.from('05050202030100030000000000000000', 'hex').copy(b, 0);
  Buffer.from('11000000000000000700000000000000', 'hex').copy(b, 48);
  Buffer.alloc(32, 0x42).copy(b, 64);
  Buffer.from(QE_MRSIGNER, 'hex').copy(b, 128);
  b.writeUInt16LE(2, 256);
  b.writeUInt16LE(isvSvn, 258);
  reportData.copy(b, 320);
  return b;
}

/** A TDX quote signed by a fresh attestation key, its QE report signed by the PKI's PCK key. */
export function makeTdxQuote(pki: TdxTestPki, o: QuoteOptions = {}): Buffer {
  const version = o.version ?? 4;
  const header = Buffer.alloc(48);
  header.writeUInt16LE(version, 0);
  header.writeUInt16LE(2, 2);
  header.writeUInt32LE(0x81, 4);
  Buffer.from(INTEL_QE_VENDOR_ID, 'hex').copy(header, 12);
  const body = Buffer.alloc(o.body15 ? 648 : 584);
  Buffer.from(o.teeTcbSvn ?? DEFAULT_TEE_TCB_SVN).copy(body, 0);
  Buffer.alloc(48, 0xa1).copy(body, 16); // MRSEAM
  (o.tdAttributes ?? Buffer.from('0000001000000000', 'hex')).copy(body, 120);
  Buffer.from('e702060000000000', 'hex').copy(body, 128); // XFAM
  (o.mrTd ?? Buffer.alloc(48, 0xd7)).copy(body, 136);
  (o.rtmrs ?? [0, 1, 2, 3].map((i) => Buffer.alloc(48, 0x30 + i))).forEach((r, i) => r.copy(body, 328 + 48 * i));
  (o.reportData ?? Buffer.alloc(64)).copy(body, 520);
  if (o.body15) Buffer.alloc(48, 0x5e).copy(body, 600);
  let signed: Buffer;
  if (version === 4) signed = Buffer.concat([header, body]);
  else {
    const d = Buffer.alloc(6);
    d.writeUInt16LE(o.body15 ? 3 : 2, 0);
    d.writeUInt32LE(body.length, 2);
    signed = Buffer.concat([header, d, body]);
  }
  const ak = p256();
  const akXy = exportJwk(ak.publicKey);
  const akRaw = Buffer.concat([Buffer.from(akXy.x!, 'base64url'), Buffer.from(akXy.y!, 'base64url')]);
  const auth = o.qeAuthData ?? Buffer.from([...Array(32).keys()]);
  const qe = qeReport(o.qeIsvSvn ?? 4, Buffer.concat([createHash('sha256').update(akRaw).update(auth).digest(), Buffer.alloc(32)]));
  const pem = Buffer.from(o.pckChainPem ?? pki.pckChainPem, 'latin1');
  const u16 = (n: number): Buffer => Buffer.from([n & 0xff, n >> 8]);
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n, 0);
    return b;
  };
  const inner = Buffer.concat([qe, p1363(qe, pki.pck.privateKey), u16(auth.length), auth, u16(5), u32(pem.length), pem]);
  const sigData = Buffer.concat([p1363(signed, ak.privateKey), akRaw, u16(6), u32(inner.length), inner]);
  return Buffer.concat([signed, u32(sigData.length), sigData]);
}
