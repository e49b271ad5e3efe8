/**
 * Property-based tests of the TPM 2.0 wire-structure parsers (src/tpm/structures.ts).
 *
 * Valid structures are generated field by field from the TPM 2.0 Library Part 2 layouts and
 * marshalled with TpmWriter; the parsers must read back every field, keep the exact bytes (the
 * object Name and the quote signature are computed over them), refuse every truncation and any
 * trailing byte, and answer hostile bytes with a `tpm.malformed_*` SigilError and nothing else.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_ST, TPMA_OBJECT_RESERVED } from '../../src/tpm/constants.js';
import { TpmWriter } from '../../src/tpm/reader.js';
import {
  encodeEncryptedSecret,
  encodeIdObject,
  encodePcrSelection,
  encodeTpm2bPublic,
  parseAttest,
  parseAttestAny,
  parseEncryptedSecret,
  parseIdObject,
  parsePcrSelection,
  parseSignature,
  parseTpm2bAttest,
  parseTpm2bPublic,
  parseTpmtPublic,
  type PcrBankSelection,
} from '../../src/tpm/structures.js';
import { bytes, parseOrRefuse, refusedWith, runs, withByte } from './support.js';

const HASH_ALGS = [TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512] as const;
const HASH_SIZE: Record<number, number> = { [TPM_ALG.SHA1]: 20, [TPM_ALG.SHA256]: 32, [TPM_ALG.SHA384]: 48, [TPM_ALG.SHA512]: 64 };
const NAME_ALGS = [...HASH_ALGS, TPM_ALG.SM3_256] as const;

// ------------------------------------------------------------------ TPMT_PUBLIC model

interface PublicModel {
  type: 'rsa' | 'ecc';
  nameAlg: number;
  objectAttributes: number;
  authPolicy: Buffer;
  symmetric: { algorithm: number; keyBits: number; mode: number };
  scheme: { scheme: number; hashAlg: number; count?: number };
  rsa?: { keyBits: number; wireExponent: number; modulus: Buffer };
  ecc?: { curveId: number; kdf: { scheme: number; hashAlg: number }; x: Buffer; y: Buffer };
}

const symmetricArb = fc.oneof(
  fc.constant({ algorithm: TPM_ALG.NULL as number, keyBits: 0, mode: TPM_ALG.NULL as number }),
  fc.record({
    algorithm: fc.constantFrom<number>(TPM_ALG.AES, TPM_ALG.SM4, TPM_ALG.CAMELLIA),
    keyBits: fc.constantFrom(128, 192, 256),
    mode: fc.constantFrom<number>(TPM_ALG.CTR, TPM_ALG.OFB, TPM_ALG.CBC, TPM_ALG.CFB, TPM_ALG.ECB, TPM_ALG.NULL),
  }),
);

const attributesArb = fc.integer({ min: 0, max: 0xffffffff }).map((a) => (a & ~TPMA_OBJECT_RESERVED) >>> 0);

const rsaArb: fc.Arbitrary<PublicModel> = fc
  .record({
    nameAlg: fc.constantFrom<number>(...NAME_ALGS),
    objectAttributes: attributesArb,
    authPolicy: bytes(0, 64),
    symmetric: symmetricArb,
    scheme: fc.oneof(
      fc.constant({ scheme: TPM_ALG.NULL as number, hashAlg: TPM_ALG.NULL as number }),
      fc.constant({ scheme: TPM_ALG.RSAES as number, hashAlg: TPM_ALG.NULL as number }),
      fc.record({ scheme: fc.constantFrom<number>(TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.OAEP), hashAlg: fc.constantFrom<number>(...NAME_ALGS) }),
    ),
    keyBytes: fc.integer({ min: 128, max: 512 }),
    wireExponent: fc.oneof(fc.constant(0), fc.constant(65537), fc.integer({ min: 1, max: 0x7fffffff }).map((e) => e * 2 + 1)),
    seed: fc.integer({ min: 0, max: 255 }),
  })
  .map(({ keyBytes, wireExponent, seed, ...rest }) => ({
    ...rest,
    type: 'rsa' as const,
    rsa: { keyBits: keyBytes * 8, wireExponent, modulus: Buffer.alloc(keyBytes, seed) },
  }));

const eccArb: fc.Arbitrary<PublicModel> = fc.record({
  type: fc.constant('ecc' as const),
  nameAlg: fc.constantFrom<number>(...NAME_ALGS),
  objectAttributes: attributesArb,
  authPolicy: bytes(0, 64),
  symmetric: symmetricArb,
  scheme: fc.oneof(
    fc.constant({ scheme: TPM_ALG.NULL as number, hashAlg: TPM_ALG.NULL as number }),
    fc.record({
      scheme: fc.constantFrom<number>(TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.SM2, TPM_ALG.ECSCHNORR, TPM_ALG.ECMQV),
      hashAlg: fc.constantFrom<number>(...NAME_ALGS),
    }),
    fc.record({ scheme: fc.constant(TPM_ALG.ECDAA as number), hashAlg: fc.constantFrom<number>(...NAME_ALGS), count: fc.integer({ min: 0, max: 0xffff }) }),
  ),
  ecc: fc.record({
    curveId: fc.integer({ min: 0, max: 0xffff }),
    kdf: fc.oneof(
      fc.constant({ scheme: TPM_ALG.NULL as number, hashAlg: TPM_ALG.NULL as number }),
      fc.record({
        scheme: fc.constantFrom<number>(TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108),
        hashAlg: fc.constantFrom<number>(...NAME_ALGS),
      }),
    ),
    x: bytes(0, 128),
    y: bytes(0, 128),
  }),
});

const publicArb = fc.oneof(rsaArb, eccArb);

/** Marshal a TPMT_PUBLIC from the model (TPM 2.0 Part 2 §12.2.4). */
function marshalPublic(m: PublicModel): Buffer {
  const w = new TpmWriter()
    .u16(m.type === 'rsa' ? TPM_ALG.RSA : TPM_ALG.ECC)
    .u16(m.nameAlg)
    .u32(m.objectAttributes)
    .tpm2b(m.authPolicy)
    .u16(m.symmetric.algorithm);
  if (m.symmetric.algorithm !== TPM_ALG.NULL) w.u16(m.symmetric.keyBits).u16(m.symmetric.mode);
  w.u16(m.scheme.scheme);
  if (m.scheme.scheme !== TPM_ALG.NULL && m.scheme.scheme !== TPM_ALG.RSAES) w.u16(m.scheme.hashAlg);
  if (m.scheme.count !== undefined) w.u16(m.scheme.count);
  if (m.rsa) {
    w.u16(m.rsa.keyBits).u32(m.rsa.wireExponent).tpm2b(m.rsa.modulus);
  } else if (m.ecc) {
    w.u16(m.ecc.curveId).u16(m.ecc.kdf.scheme);
    if (m.ecc.kdf.scheme !== TPM_ALG.NULL) w.u16(m.ecc.kdf.hashAlg);
    w.tpm2b(m.ecc.x).tpm2b(m.ecc.y);
  }
  return w.toBuffer();
}

const tpm2b = (b: Buffer): Buffer => new TpmWriter().tpm2b(b).toBuffer();

describe('TPMT_PUBLIC / TPM2B_PUBLIC', () => {
  it('parse(marshal(x)) reads back every field, and re-encoding gives the same bytes', () => {
    fc.assert(
      fc.property(publicArb, (m) => {
        const area = marshalPublic(m);
        const wire = tpm2b(area);
        const p = parseTpm2bPublic(wire);
        expect(p.type).toBe(m.type);
        expect(p.nameAlg).toBe(m.nameAlg);
        expect(p.objectAttributes).toBe(m.objectAttributes);
        expect(p.authPolicy.equals(m.authPolicy)).toBe(true);
        expect(p.symmetric).toEqual(m.symmetric);
        expect(p.scheme).toEqual(m.scheme);
        if (p.type === 'rsa') {
          expect(p.keyBits).toBe(m.rsa!.keyBits);
          expect(p.exponent).toBe(m.rsa!.wireExponent === 0 ? 65537 : m.rsa!.wireExponent);
          expect(p.modulus.equals(m.rsa!.modulus)).toBe(true);
        } else {
          expect(p.curveId).toBe(m.ecc!.curveId);
          expect(p.kdf).toEqual(m.ecc!.kdf);
          expect(p.x.equals(m.ecc!.x)).toBe(true);
          expect(p.y.equals(m.ecc!.y)).toBe(true);
        }
        expect(p.raw.equals(area)).toBe(true);
        expect(encodeTpm2bPublic(p).equals(wire)).toBe(true);
        expect(parseTpmtPublic(area).raw.equals(area)).toBe(true);
      }),
      runs(300),
    );
  });

  it('every truncation is refused', () => {
    fc.assert(
      fc.property(publicArb, fc.nat(), (m, cut) => {
        const area = marshalPublic(m);
        const wire = tpm2b(area);
        const n = cut % wire.length;
        refusedWith(() => parseTpm2bPublic(wire.subarray(0, n)), /^tpm\.malformed_public$/);
        refusedWith(() => parseTpmtPublic(area.subarray(0, cut % area.length)), /^tpm\.malformed_public$/);
      }),
      runs(300),
    );
  });

  it('trailing bytes are refused, whether the size field covers them or not', () => {
    fc.assert(
      fc.property(publicArb, bytes(1, 16), (m, extra) => {
        const area = marshalPublic(m);
        refusedWith(() => parseTpmtPublic(Buffer.concat([area, extra])), /^tpm\.malformed_public$/);
        refusedWith(() => parseTpm2bPublic(Buffer.concat([tpm2b(area), extra])), /^tpm\.malformed_public$/);
        refusedWith(() => parseTpm2bPublic(tpm2b(Buffer.concat([area, extra]))), /^tpm\.malformed_public$/);
      }),
      runs(200),
    );
  });

  it('a changed byte is either refused with tpm.malformed_public or parsed with the changed bytes kept as raw', () => {
    fc.assert(
      fc.property(publicArb, fc.nat(), fc.nat(), (m, pos, xor) => {
        const bad = withByte(marshalPublic(m), pos, xor);
        const r = parseOrRefuse(() => parseTpmtPublic(bad), /^tpm\.malformed_public$/);
        if (r.ok) expect(r.value.raw.equals(bad)).toBe(true);
      }),
      runs(500),
    );
  });

  it('arbitrary bytes get tpm.malformed_public and nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 600), (b) => {
        parseOrRefuse(() => parseTpm2bPublic(b), /^tpm\.malformed_public$/);
        parseOrRefuse(() => parseTpmtPublic(b), /^tpm\.malformed_public$/);
      }),
      runs(500),
    );
  });
});

// ------------------------------------------------------------------ TPML_PCR_SELECTION

const bankSelectionArb: fc.Arbitrary<PcrBankSelection[]> = fc.array(
  fc.record({
    bank: fc.constantFrom('sha1' as const, 'sha256' as const, 'sha384' as const, 'sha512' as const),
    pcrs: fc.array(fc.integer({ min: 0, max: 31 }), { maxLength: 32 }),
  }),
  { maxLength: 16 },
);

const BANK_ALG = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 } as const;

describe('TPML_PCR_SELECTION', () => {
  it('parse(encode(x)) gives each bank its PCRs, ascending and without repeats', () => {
    fc.assert(
      fc.property(bankSelectionArb, (sel) => {
        const parsed = parsePcrSelection(encodePcrSelection(sel));
        expect(parsed.map((s) => s.hashAlg)).toEqual(sel.map((s) => BANK_ALG[s.bank]));
        parsed.forEach((s, i) => {
          expect(s.pcrs).toEqual([...new Set(sel[i]!.pcrs)].sort((a, b) => a - b));
          expect(s.sizeofSelect).toBe(sel[i]!.pcrs.some((p) => p >= 24) ? 4 : 3);
        });
      }),
      runs(300),
    );
  });

  it('every truncation and any trailing byte is refused', () => {
    fc.assert(
      fc.property(bankSelectionArb, fc.nat(), bytes(1, 8), (sel, cut, extra) => {
        const wire = encodePcrSelection(sel);
        refusedWith(() => parsePcrSelection(wire.subarray(0, cut % wire.length)), /^tpm\.malformed_pcr_selection$/);
        refusedWith(() => parsePcrSelection(Buffer.concat([wire, extra])), /^tpm\.malformed_pcr_selection$/);
      }),
      runs(300),
    );
  });

  it('arbitrary bytes get tpm.malformed_pcr_selection and nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 64), (b) => void parseOrRefuse(() => parsePcrSelection(b), /^tpm\.malformed_pcr_selection$/)),
      runs(500),
    );
  });
});

// ------------------------------------------------------------------ TPMS_ATTEST

/** A TPM2B_NAME value: empty, a 4-byte handle, or nameAlg ‖ digest. */
const nameArb = fc.oneof(
  fc.constant(Buffer.alloc(0)),
  bytes(4, 4),
  fc.constantFrom(...HASH_ALGS).chain((alg) =>
    bytes(HASH_SIZE[alg]!, HASH_SIZE[alg]!).map((d) => Buffer.concat([new TpmWriter().u16(alg).toBuffer(), d])),
  ),
);

type AttestedModel =
  | { kind: 'quote'; sel: PcrBankSelection[]; pcrDigest: Buffer }
  | { kind: 'certify'; name: Buffer; qualifiedName: Buffer }
  | { kind: 'creation'; objectName: Buffer; creationHash: Buffer };

interface AttestModel {
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
  firmwareVersion: bigint;
  attested: AttestedModel;
}

const attestArb: fc.Arbitrary<AttestModel> = fc.record({
  qualifiedSigner: nameArb,
  extraData: bytes(0, 66),
  clock: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  resetCount: fc.integer({ min: 0, max: 0xffffffff }),
  restartCount: fc.integer({ min: 0, max: 0xffffffff }),
  safe: fc.boolean(),
  firmwareVersion: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  attested: fc.oneof(
    fc.record({ kind: fc.constant('quote' as const), sel: bankSelectionArb, pcrDigest: bytes(0, 64) }),
    fc.record({ kind: fc.constant('certify' as const), name: nameArb, qualifiedName: nameArb }),
    fc.record({ kind: fc.constant('creation' as const), objectName: nameArb, creationHash: bytes(0, 64) }),
  ),
});

function marshalAttest(m: AttestModel): Buffer {
  const a = m.attested;
  const type = a.kind === 'quote' ? TPM_ST.ATTEST_QUOTE : a.kind === 'certify' ? TPM_ST.ATTEST_CERTIFY : TPM_ST.ATTEST_CREATION;
  const w = new TpmWriter()
    .u32(TPM_GENERATED_VALUE)
    .u16(type)
    .tpm2b(m.qualifiedSigner)
    .tpm2b(m.extraData)
    .u64(m.clock)
    .u32(m.resetCount)
    .u32(m.restartCount)
    .u8(m.safe ? 1 : 0)
    .u64(m.firmwareVersion);
  if (a.kind === 'quote') w.bytes(encodePcrSelection(a.sel)).tpm2b(a.pcrDigest);
  else if (a.kind === 'certify') w.tpm2b(a.name).tpm2b(a.qualifiedName);
  else w.tpm2b(a.objectName).tpm2b(a.creationHash);
  return w.toBuffer();
}

describe('TPMS_ATTEST / TPM2B_ATTEST', () => {
  it('parse(marshal(x)) reads back every field, bare or size-prefixed', () => {
    fc.assert(
      fc.property(attestArb, (m) => {
        const bare = marshalAttest(m);
        const p = parseAttest(bare);
        expect(p.magic).toBe(TPM_GENERATED_VALUE);
        expect(p.qualifiedSigner.equals(m.qualifiedSigner)).toBe(true);
        expect(p.extraData.equals(m.extraData)).toBe(true);
        expect(p.clockInfo).toEqual({ clock: m.clock, resetCount: m.resetCount, restartCount: m.restartCount, safe: m.safe });
        expect(p.firmwareVersion).toBe(m.firmwareVersion);
        expect(p.raw.equals(bare)).toBe(true);
        const a = m.attested;
        expect(p.attested.kind).toBe(a.kind);
        if (p.attested.kind === 'quote' && a.kind === 'quote') {
          expect(p.attested.pcrSelect.map((s) => s.pcrs)).toEqual(a.sel.map((s) => [...new Set(s.pcrs)].sort((x, y) => x - y)));
          expect(p.attested.pcrDigest.equals(a.pcrDigest)).toBe(true);
        } else if (p.attested.kind === 'certify' && a.kind === 'certify') {
          expect(p.attested.name.equals(a.name)).toBe(true);
          expect(p.attested.qualifiedName.equals(a.qualifiedName)).toBe(true);
        } else if (p.attested.kind === 'creation' && a.kind === 'creation') {
          expect(p.attested.objectName.equals(a.objectName)).toBe(true);
          expect(p.attested.creationHash.equals(a.creationHash)).toBe(true);
        }
        const sized = tpm2b(bare);
        expect(parseTpm2bAttest(sized)).toEqual(p);
        expect(parseAttestAny(sized)).toEqual(p);
        expect(parseAttestAny(bare)).toEqual(p);
      }),
      runs(300),
    );
  });

  it('every truncation and any trailing byte is refused', () => {
    fc.assert(
      fc.property(attestArb, fc.nat(), bytes(1, 8), (m, cut, extra) => {
        const bare = marshalAttest(m);
        const sized = tpm2b(bare);
        refusedWith(() => parseAttest(bare.subarray(0, cut % bare.length)), /^tpm\.malformed_attest$/);
        refusedWith(() => parseAttestAny(sized.subarray(0, cut % sized.length)), /^tpm\.malformed_attest$/);
        refusedWith(() => parseAttest(Buffer.concat([bare, extra])), /^tpm\.malformed_attest$/);
        refusedWith(() => parseAttestAny(Buffer.concat([sized, extra])), /^tpm\.malformed_attest$/);
        refusedWith(() => parseTpm2bAttest(tpm2b(Buffer.concat([bare, extra]))), /^tpm\.malformed_attest$/);
      }),
      runs(300),
    );
  });

  it('a changed byte is refused with tpm.malformed_attest or parsed with the changed bytes as raw', () => {
    fc.assert(
      fc.property(attestArb, fc.nat(), fc.nat(), (m, pos, xor) => {
        const bad = withByte(marshalAttest(m), pos, xor);
        const r = parseOrRefuse(() => parseAttest(bad), /^tpm\.malformed_attest$/);
        if (r.ok) expect(r.value.raw.equals(bad)).toBe(true);
      }),
      runs(500),
    );
  });

  it('arbitrary bytes (with and without the TPM_GENERATED magic) get tpm.malformed_attest and nothing else', () => {
    const magic = new TpmWriter().u32(TPM_GENERATED_VALUE).toBuffer();
    fc.assert(
      fc.property(bytes(0, 300), fc.boolean(), (b, withMagic) => {
        const input = withMagic ? Buffer.concat([magic, b]) : b;
        parseOrRefuse(() => parseAttestAny(input), /^tpm\.malformed_attest$/);
        parseOrRefuse(() => parseAttest(input), /^tpm\.malformed_attest$/);
      }),
      runs(500),
    );
  });
});

// ------------------------------------------------------------------ TPMT_SIGNATURE

type SigModel = { sigAlg: number; hashAlg: number; sig: Buffer } | { sigAlg: number; hashAlg: number; r: Buffer; s: Buffer };

const signatureArb: fc.Arbitrary<SigModel> = fc.oneof(
  fc.record({ sigAlg: fc.constantFrom<number>(TPM_ALG.RSASSA, TPM_ALG.RSAPSS), hashAlg: fc.constantFrom<number>(...NAME_ALGS), sig: bytes(1, 512) }),
  fc.record({ sigAlg: fc.constant<number>(TPM_ALG.ECDSA), hashAlg: fc.constantFrom<number>(...NAME_ALGS), r: bytes(1, 128), s: bytes(1, 128) }),
);

function marshalSignature(m: SigModel): Buffer {
  const w = new TpmWriter().u16(m.sigAlg).u16(m.hashAlg);
  if ('sig' in m) w.tpm2b(m.sig);
  else w.tpm2b(m.r).tpm2b(m.s);
  return w.toBuffer();
}

describe('TPMT_SIGNATURE', () => {
  it('parse(marshal(x)) == x', () => {
    fc.assert(
      fc.property(signatureArb, (m) => {
        expect(parseSignature(marshalSignature(m))).toEqual(m);
      }),
      runs(300),
    );
  });

  it('every truncation and any trailing byte is refused; arbitrary bytes get tpm.malformed_signature only', () => {
    fc.assert(
      fc.property(signatureArb, fc.nat(), bytes(1, 8), bytes(0, 200), (m, cut, extra, junk) => {
        const wire = marshalSignature(m);
        refusedWith(() => parseSignature(wire.subarray(0, cut % wire.length)), /^tpm\.malformed_signature$/);
        refusedWith(() => parseSignature(Buffer.concat([wire, extra])), /^tpm\.malformed_signature$/);
        parseOrRefuse(() => parseSignature(junk), /^tpm\.malformed_signature$/);
      }),
      runs(300),
    );
  });
});

// ------------------------------------------------------------------ credential structures

describe('TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET', () => {
  it('parseIdObject(encodeIdObject(h, e)) == {h, e}; truncations and trailing bytes are refused', () => {
    const idArb = bytes(1, 64).chain((h) => fc.tuple(fc.constant(h), bytes(2, 132 - 2 - h.length)));
    fc.assert(
      fc.property(idArb, fc.nat(), bytes(1, 4), ([integrityHmac, encIdentity], cut, extra) => {
        const wire = encodeIdObject(integrityHmac, encIdentity);
        expect(parseIdObject(wire)).toEqual({ integrityHmac, encIdentity });
        refusedWith(() => parseIdObject(wire.subarray(0, cut % wire.length)), /^tpm\.malformed_id_object$/);
        refusedWith(() => parseIdObject(Buffer.concat([wire, extra])), /^tpm\.malformed_id_object$/);
      }),
      runs(300),
    );
  });

  it('parseEncryptedSecret(encodeEncryptedSecret(s)) == s; truncations and trailing bytes are refused', () => {
    fc.assert(
      fc.property(bytes(1, 512), fc.nat(), bytes(1, 4), (secret, cut, extra) => {
        const wire = encodeEncryptedSecret(secret);
        expect(parseEncryptedSecret(wire).equals(secret)).toBe(true);
        refusedWith(() => parseEncryptedSecret(wire.subarray(0, cut % wire.length)), /^tpm\.malformed_encrypted_secret$/);
        refusedWith(() => parseEncryptedSecret(Buffer.concat([wire, extra])), /^tpm\.malformed_encrypted_secret$/);
      }),
      runs(300),
    );
  });

  it('arbitrary bytes get their structure\'s malformed code and nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 200), (b) => {
        parseOrRefuse(() => parseIdObject(b), /^tpm\.malformed_id_object$/);
        parseOrRefuse(() => parseEncryptedSecret(b), /^tpm\.malformed_encrypted_secret$/);
      }),
      runs(500),
    );
  });
});
