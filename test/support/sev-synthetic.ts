/**
 * Synthetic AMD SEV-SNP evidence for tests: a test ARK → ASK → VCEK (or ARK → ASVK → VLEK)
 * chain with AMD's certificate extensions and RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48)
 * signatures, and attestation reports signed with the VCEK/VLEK P-384 key.
 *
 * The ARK/ASK here are RSA-2048 (real AMD roots are RSA-4096) to keep key generation fast; the
 * verifier accepts them because the test passes the chain's ARK fingerprint as `arkSha256`
 * (see `chain.arkPins`). Nothing here is trusted by default.
 *
 * Usage:
 *   const chain = makeSnpTestChain('milan');
 *   const report = makeSnpReport({ chain, reportData: reportDataForBinding(binding) });
 *   verifySnpEvidence({ report, endorsementCert: chain.vcek, chain: chain.chainDer },
 *                     { now, arkSha256: chain.arkPins });
 */
import { createHash, generateKeyPairSync, randomBytes, sign, constants, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  BasicConstraints,
  Certificate,
  Extension,
  Extensions,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
  id_ce_basicConstraints,
  id_ce_keyUsage,
} from '@peculiar/asn1-x509';
import { RsaSaPssParams, id_RSASSA_PSS, id_mgf1, id_sha384 } from '@peculiar/asn1-rsa';
import type { SnpProduct, SnpTcbParts } from '../../src/sev/report.js';
import { encodeTcb } from '../../src/sev/report.js';

export type SnpTestSigningKey = 'vcek' | 'vlek';

export interface SnpTestChain {
  product: SnpProduct;
  signingKey: SnpTestSigningKey;
  /** DER certificates. */
  ark: Buffer;
  /** ASK (VCEK chains) or ASVK (VLEK chains). */
  intermediate: Buffer;
  /** VCEK or VLEK (the report signer). */
  endorsement: Buffer;
  /** Same as `endorsement` for VCEK chains, undefined otherwise. */
  vcek?: Buffer;
  /** Same as `endorsement` for VLEK chains, undefined otherwise. */
  vlek?: Buffer;
  /** [intermediate, ark] DER, the order AMD KDS serves them. */
  chainDer: Buffer[];
  /** intermediate then ARK, PEM (like ask_ark_<product>.pem). */
  chainPem: string;
  /** Private P-384 key of the VCEK/VLEK. */
  signingPrivateKey: KeyObject;
  /** SHA-256 of the ARK DER, lowercase hex. */
  arkSha256: string;
  /** `{ [product]: arkSha256 }` — pass as the verifier's `arkSha256` config. */
  arkPins: Partial<Record<SnpProduct, string>>;
  /** 64-byte CHIP_ID for reports (Turin: 8-byte hwID then zeros). */
  chipId: Buffer;
  /** hwID as in the VCEK (64 bytes, Turin 8). */
  hwId: Buffer;
  tcb: SnpTcbParts;
  /** 8-byte REPORTED_TCB matching the certificate. */
  reportedTcb: Buffer;
  notBefore: Date;
  notAfter: Date;
}

export interface SnpTestChainOptions {
  signingKey?: SnpTestSigningKey;
  chipId?: Buffer;
  tcb?: Partial<SnpTcbParts>;
  /** Validity of every certificate in the chain. Default 2020-01-01 → 2040-01-01. */
  notBefore?: Date;
  notAfter?: Date;
  /** VCEK/VLEK validity (defaults to the chain's). */
  leafNotBefore?: Date;
  leafNotAfter?: Date;
  /** Separate key material: chains with different tags have different ARKs/ASKs. Default "default". */
  keyTag?: string;
  /** VLEK cspID. Default "sigil-test-csp". */
  cspId?: string;
  /** Override the ASK/ASVK common name (negative tests). Default "SEV-<Product>" / "SEV-VLEK-<Product>". */
  intermediateCommonName?: string;
}

const PRODUCT_TITLE: Record<SnpProduct, string> = { milan: 'Milan', genoa: 'Genoa', turin: 'Turin' };
const PRODUCT_NAME_EXT: Record<SnpProduct, string> = { milan: 'Milan-B0', genoa: 'Genoa-B1', turin: 'Turin' };
/** CPUID family/model/stepping written into v3+ reports. */
export const SNP_TEST_CPUID: Record<SnpProduct, [number, number, number]> = {
  milan: [0x19, 0x01, 0x01],
  genoa: [0x19, 0x11, 0x01],
  turin: [0x1a, 0x02, 0x01],
};
const AMD_OID = '1.3.6.1.4.1.3704.1';

const caCerts = new Map<string, Buffer>();
const rsaKeys = new Map<string, { publicKey: KeyObject; privateKey: KeyObject }>();
function rsaKey(tag: string): { publicKey: KeyObject; privateKey: KeyObject } {
  let k = rsaKeys.get(tag);
  if (!k) {
    k = generateKeyPairSync('rsa', { modulusLength: 2048 });
    rsaKeys.set(tag, k);
  }
  return k;
}

function pssAlgorithm(): AlgorithmIdentifier {
  const params = new RsaSaPssParams({
    hashAlgorithm: new AlgorithmIdentifier({ algorithm: id_sha384, parameters: null }),
    maskGenAlgorithm: new AlgorithmIdentifier({
      algorithm: id_mgf1,
      parameters: AsnConvert.serialize(new AlgorithmIdentifier({ algorithm: id_sha384, parameters: null })),
    }),
    saltLength: 48,
  });
  return new AlgorithmIdentifier({ algorithm: id_RSASSA_PSS, parameters: AsnConvert.serialize(params) });
}

function amdName(cn: string): Name {
  const rdn = (type: string, value: AttributeValue): RelativeDistinguishedName =>
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type, value })]);
  return new Name([
    rdn('2.5.4.11', new AttributeValue({ utf8String: 'Engineering' })),
    rdn('2.5.4.6', new AttributeValue({ printableString: 'US' })),
    rdn('2.5.4.7', new AttributeValue({ utf8String: 'Santa Clara' })),
    rdn('2.5.4.8', new AttributeValue({ utf8String: 'CA' })),
    rdn('2.5.4.10', new AttributeValue({ utf8String: 'Sigil test chain (not AMD)' })),
    rdn('2.5.4.3', new AttributeValue({ utf8String: cn })),
  ]);
}

function ext(oid: string, value: Buffer | ArrayBuffer, critical = false): Extension {
  return new Extension({ extnID: oid, critical, extnValue: new OctetString(value) });
}
function derInt(v: number): Buffer {
  return v < 0x80 ? Buffer.from([0x02, 0x01, v]) : Buffer.from([0x02, 0x02, 0x00, v]);
}
function derIa5(s: string): Buffer {
  const b = Buffer.from(s, 'latin1');
  return Buffer.concat([Buffer.from([0x16, b.length]), b]);
}

function makeCert(p: {
  serial: number;
  issuer: Name;
  subject: Name;
  spki: Buffer;
  notBefore: Date;
  notAfter: Date;
  extensions: Extension[];
  signer: KeyObject;
}): Buffer {
  const alg = pssAlgorithm();
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: Uint8Array.from([p.serial]).buffer,
    signature: alg,
    issuer: p.issuer,
    validity: new Validity({ notBefore: p.notBefore, notAfter: p.notAfter }),
    subject: p.subject,
    subjectPublicKeyInfo: AsnConvert.parse(p.spki, SubjectPublicKeyInfo),
    extensions: new Extensions(p.extensions),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const signature = sign('sha384', tbsDer, { key: p.signer, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 });
  const cert = new Certificate({ tbsCertificate: tbs, signatureAlgorithm: alg, signatureValue: signature.buffer.slice(signature.byteOffset, signature.byteOffset + signature.byteLength) });
  return Buffer.from(AsnConvert.serialize(cert));
}

function caExtensions(): Extension[] {
  const ku = new KeyUsage(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign);
  return [
    ext(id_ce_keyUsage, AsnConvert.serialize(ku), true),
    ext(id_ce_basicConstraints, AsnConvert.serialize(new BasicConstraints({ cA: true })), true),
  ];
}

function toPem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/** Default TCB per product (Turin carries an FMC SPL). */
export function defaultTestTcb(product: SnpProduct): SnpTcbParts {
  return product === 'turin' ? { fmc: 1, bootloader: 3, tee: 2, snp: 5, microcode: 0x61 } : { bootloader: 3, tee: 0, snp: 8, microcode: 0x73 };
}

/** Build a test chain for `product` (VCEK by default). The ARK/ASK keys and certificates are shared per (keyTag, product, validity); every call makes a new VCEK/VLEK key and chip ID. */
export function makeSnpTestChain(product: SnpProduct, opts: SnpTestChainOptions = {}): SnpTestChain {
  const signingKey = opts.signingKey ?? 'vcek';
  const tag = opts.keyTag ?? 'default';
  const title = PRODUCT_TITLE[product];
  const notBefore = opts.notBefore ?? new Date('2020-01-01T00:00:00Z');
  const notAfter = opts.notAfter ?? new Date('2040-01-01T00:00:00Z');
  const ark = rsaKey(`${tag}:${product}:ark`);
  const inter = rsaKey(`${tag}:${product}:${signingKey === 'vcek' ? 'ask' : 'asvk'}`);
  const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-384' });

  const arkName = amdName(`ARK-${title}`);
  const interCn = opts.intermediateCommonName ?? (signingKey === 'vcek' ? `SEV-${title}` : `SEV-VLEK-${title}`);
  const interName = amdName(interCn);
  // ARK and ASK/ASVK certificates are made once per (tag, product, validity) and shared, as with
  // AMD: every chain of a product has the same root (RSASSA-PSS signatures are randomised, so
  // re-signing would give a different ARK fingerprint each time).
  const validityKey = `${notBefore.toISOString()}/${notAfter.toISOString()}`;
  const arkKey = `${tag}:${product}:${validityKey}`;
  let arkDer = caCerts.get(arkKey);
  if (!arkDer) {
    arkDer = makeCert({
      serial: 1,
      issuer: arkName,
      subject: arkName,
      spki: ark.publicKey.export({ type: 'spki', format: 'der' }),
      notBefore,
      notAfter,
      extensions: caExtensions(),
      signer: ark.privateKey,
    });
    caCerts.set(arkKey, arkDer);
  }
  const interKey = `${arkKey}:${signingKey}:${interCn}`;
  let interDer = caCerts.get(interKey);
  if (!interDer) {
    interDer = makeCert({
      serial: 2,
      issuer: arkName,
      subject: interName,
      spki: inter.publicKey.export({ type: 'spki', format: 'der' }),
      notBefore,
      notAfter,
      extensions: caExtensions(),
      signer: ark.privateKey,
    });
    caCerts.set(interKey, interDer);
  }

  const tcb: SnpTcbParts = { ...defaultTestTcb(product), ...opts.tcb };
  if (product !== 'turin') delete tcb.fmc;
  const hwLen = product === 'turin' ? 8 : 64;
  const chipId = Buffer.alloc(64);
  if (opts.chipId) opts.chipId.copy(chipId);
  else randomBytes(hwLen).copy(chipId);
  const hwId = Buffer.from(chipId.subarray(0, hwLen));

  const leafExts: Extension[] = [
    ext(`${AMD_OID}.1`, derInt(1)),
    ext(`${AMD_OID}.2`, derIa5(PRODUCT_NAME_EXT[product])),
  ];
  if (product === 'turin') leafExts.push(ext(`${AMD_OID}.3.9`, derInt(tcb.fmc ?? 0)));
  leafExts.push(
    ext(`${AMD_OID}.3.1`, derInt(tcb.bootloader)),
    ext(`${AMD_OID}.3.2`, derInt(tcb.tee)),
    ext(`${AMD_OID}.3.3`, derInt(tcb.snp)),
    ext(`${AMD_OID}.3.5`, derInt(0)),
    ext(`${AMD_OID}.3.6`, derInt(0)),
    ext(`${AMD_OID}.3.7`, derInt(0)),
    ext(`${AMD_OID}.3.8`, derInt(tcb.microcode)),
  );
  if (signingKey === 'vcek') leafExts.push(ext(`${AMD_OID}.4`, hwId));
  else leafExts.push(ext(`${AMD_OID}.5`, derIa5(opts.cspId ?? 'sigil-test-csp')));

  const leafDer = makeCert({
    serial: 0,
    issuer: interName,
    subject: amdName(signingKey === 'vcek' ? 'SEV-VCEK' : 'SEV-VLEK'),
    spki: leafKey.publicKey.export({ type: 'spki', format: 'der' }),
    notBefore: opts.leafNotBefore ?? notBefore,
    notAfter: opts.leafNotAfter ?? notAfter,
    extensions: leafExts,
    signer: inter.privateKey,
  });
  const arkSha256 = createHash('sha256').update(arkDer).digest('hex');
  return {
    product,
    signingKey,
    ark: arkDer,
    intermediate: interDer,
    endorsement: leafDer,
    vcek: signingKey === 'vcek' ? leafDer : undefined,
    vlek: signingKey === 'vlek' ? leafDer : undefined,
    chainDer: [interDer, arkDer],
    chainPem: toPem(interDer) + toPem(arkDer),
    signingPrivateKey: leafKey.privateKey,
    arkSha256,
    arkPins: { [product]: arkSha256 },
    chipId,
    hwId,
    tcb,
    reportedTcb: encodeTcb(tcb, product),
    notBefore,
    notAfter,
  };
}

export interface SnpReportOptions {
  chain: SnpTestChain;
  /** Up to 64 bytes, zero-padded. */
  reportData?: Uint8Array;
  /** Guest policy; default 0x30000 (SMT allowed, reserved bit 17 set, debug off). */
  policy?: bigint;
  vmpl?: number;
  /** 48 bytes; default random. */
  measurement?: Uint8Array;
  /** 2, 3 or 5 (default 5). Other values are written as given (for malformed-input tests). */
  version?: number;
  guestSvn?: number;
  hostData?: Uint8Array;
  familyId?: Uint8Array;
  imageId?: Uint8Array;
  idKeyDigest?: Uint8Array;
  authorKeyDigest?: Uint8Array;
  /** Default: the chain's CHIP_ID (VCEK) or zeros (VLEK). */
  chipId?: Uint8Array;
  /** Default: the chain's TCB. */
  reportedTcb?: Uint8Array;
  /** SIGNING_KEY in the report; default the chain's kind. */
  signingKey?: SnpTestSigningKey;
  /** Edit the bytes after the fields are filled and before signing. */
  tamper?: (report: Buffer) => void;
  /** Sign with this P-384 key instead of the chain's. */
  signWith?: KeyObject;
}

function put(buf: Buffer, off: number, len: number, v: Uint8Array | undefined, random = false): void {
  if (v) {
    if (v.byteLength > len) throw new Error(`field at 0x${off.toString(16)} takes at most ${len} bytes`);
    Buffer.from(v).copy(buf, off);
  } else if (random) {
    randomBytes(len).copy(buf, off);
  }
}

/** Sign bytes 0x000..0x29F with P-384/SHA-384 and write R and S as 72-byte little-endian fields. */
export function signSnpReport(report: Buffer, key: KeyObject): Buffer {
  const sig = sign('sha384', report.subarray(0, 0x2a0), { key, dsaEncoding: 'ieee-p1363' });
  report.fill(0, 0x2a0, 0x4a0);
  for (let i = 0; i < 48; i++) {
    report[0x2a0 + i] = sig[47 - i]!;
    report[0x2e8 + i] = sig[95 - i]!;
  }
  return report;
}

/** A signed synthetic report for `chain`. */
export function makeSnpReport(o: SnpReportOptions): Buffer {
  const { chain } = o;
  const version = o.version ?? 5;
  const b = Buffer.alloc(0x4a0);
  b.writeUInt32LE(version, 0x000);
  b.writeUInt32LE(o.guestSvn ?? 0, 0x004);
  b.writeBigUInt64LE(o.policy ?? 0x30000n, 0x008);
  put(b, 0x010, 16, o.familyId);
  put(b, 0x020, 16, o.imageId);
  b.writeUInt32LE(o.vmpl ?? 0, 0x030);
  b.writeUInt32LE(1, 0x034);
  const tcb = Buffer.from(o.reportedTcb ?? chain.reportedTcb);
  tcb.copy(b, 0x038);
  b.writeBigUInt64LE(0x1n, 0x040);
  const kind = o.signingKey ?? chain.signingKey;
  b.writeUInt32LE((kind === 'vcek' ? 0 : 1) << 2, 0x048);
  put(b, 0x050, 64, o.reportData);
  put(b, 0x090, 48, o.measurement, true);
  put(b, 0x0c0, 32, o.hostData);
  put(b, 0x0e0, 48, o.idKeyDigest);
  put(b, 0x110, 48, o.authorKeyDigest);
  randomBytes(32).copy(b, 0x140);
  b.fill(0xff, 0x160, 0x180);
  tcb.copy(b, 0x180);
  if (version >= 3) {
    const [fam, model, step] = SNP_TEST_CPUID[chain.product];
    b[0x188] = fam;
    b[0x189] = model;
    b[0x18a] = step;
  }
  put(b, 0x1a0, 64, o.chipId ?? (chain.signingKey === 'vcek' ? chain.chipId : undefined));
  tcb.copy(b, 0x1e0);
  b[0x1e8] = 4; // build
  b[0x1e9] = 0x37; // minor
  b[0x1ea] = 1; // major
  b[0x1ec] = 4;
  b[0x1ed] = 0x37;
  b[0x1ee] = 1;
  tcb.copy(b, 0x1f0);
  o.tamper?.(b);
  return signSnpReport(b, o.signWith ?? chain.signingPrivateKey);
}
