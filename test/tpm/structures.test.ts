/**
 * Parser unit tests: real structures captured from swtpm 0.7 with tpm2-tools 5.4 (AK public,
 * ECC P-384 EK public, quotes and signatures), plus truncated / oversized / trailing-byte
 * variants that must fail with typed errors.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { TPM_ALG } from '../../src/tpm/constants.js';
import { publicToKeyObject, publicToSpkiDer } from '../../src/tpm/keys.js';
import { parseMarshaledPcrs, parsePcrValuesFile, parseRawPcrValues, parseSerializedPcrs } from '../../src/tpm/pcrvalues.js';
import { checkAkPublic, checkCounters, checkEkPublic, verifyQuote, type PcrValue } from '../../src/tpm/quote.js';
import { TpmWriter } from '../../src/tpm/reader.js';
import {
  encodeEncryptedSecret,
  encodeIdObject,
  encodePcrSelection,
  encodeTpm2bPublic,
  objectName,
  parseAttest,
  parseAttestAny,
  parseEncryptedSecret,
  parseIdObject,
  parsePcrSelection,
  parseSignature,
  parseTpm2bAttest,
  parseTpm2bPublic,
  parseTpmtPublic,
} from '../../src/tpm/structures.js';
import { akPublicFor } from './synthetic.js';
import { codeOf } from '../support/codes.js';

const hex = (s: string): Buffer => Buffer.from(s, 'hex');

// swtpm RSA AK from `tpm2_createak -G rsa -g sha256 -s rsassa` (TPM2B_PUBLIC)
const AK_RSA = hex(
  '01180001000b00050072000000100014000b0800000000000100b9507c1a9745edaa16d526c2c5fc6ea57dc341d4fcdfb32f908251def9fe1bb51ff09b3d1d4f662d9cef74f2f825a79378cdae492212ae3567f13994b5f5e7668fc9e9f3f6bba71ba16236d8cc79204451c4c274714769c2b3545e2eb07b14adaabac29c344239ebb8e97b78b44ae56882cbda36a77b8d883b1db2956c60a60637aaf5dcfe85e7aba5f2c14fa58f17ac4d0cb6534c3de95f726da912a768274a50cf9329bd772a751214b02f7a0b22794e97336bd54c2f8799e027eb51c0b5903273d9b4f3487ff6451feb0be9eaaa67f80821984263f7ba9270bf24a5222a274e21b5446d63b3843313f57bad26f2f519f3755d69306667bef62f253ac8d02d',
);
const AK_RSA_NAME = '000b87506fa19c0885ec9adb5c97aa4f426dc1acfda19d66436167b28019376798e3';
// `tpm2_quote -l sha1:0,1+sha256:0,1,2,16 -q 0011223344 -m` with that AK (all PCRs zero), and `-s`
const QUOTE_RSA = hex(
  'ff54434780180022000b2a08dfa2ad08f7f3a9562ad537d24a47853085ed475bed3b5b86ce13192889d4000500112233440000000000006cd8000000020000000001201910230016363600000002000403030000000b030700010020e3c2af35d1dfc500e16f826a071cc311bf55003a3de77de7ea3376c6b6fa2857',
);
const SIG_RSA = hex(
  '0014000b010007e8b900ab3bc9df82c788d389083d33cd29341a60096b103e8e60dc62a6b5b0af81f7c39085f60cc5a8e7da90ff2e2effe4dfb04caa836c43d68022c13b8cfe8cf82bf6b48b30e4b458b1595e265692b85d5ec82328c8ae93c5a01b44c77c6df7a8dea423f8b50d4e13927fff09afc7ba33993725791c8581d40acaf3db556722df8db3fe3acc0191f158120ee3d4f6099876ec18eaf11862846d9b94465d0a44bb872de5afc191ef13df040440a2d922b89caf1acf56769e0386ed6ed2f0b6811293e00013c7aa93ac17a23c4c1b17394b72704bceb4a9358118012fc60d6683ff972d5ed15a7ae5262214d5dc06743279a5d53ceb7a67b4c7cc6c7bcd8499',
);
// swtpm ECC P-384 EK at 0x81010016 (high-range template: sha384, AES-256-CFB, PolicyB)
const EK_ECC = hex(
  '00aa0023000c000300f20030b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e120006010000430010000400100030cce07efe350365340ae6316814612afb1143f1116a872c308fc64cf344bf58756a05a11d197df1feff0f07dadfaccbf90030d6bfd76b0eb5d089c4adf0217122cd6801495dcc93b3d1fa95718aa43e9579fb368d01424851007262bd7adb558956ca',
);
// ECC AK (`-G ecc -s ecdsa`), its quote over sha256:0 with -q 00112233, and the ECDSA signature
const AK_ECC = hex(
  '00580023000b00050072000000100018000b0003001000209937bd731c6b63d3dcecf1ada23ab55249246e9fbcac532c258d997d706878bd0020b687fef77ff7d266915c9b82e6d8ce19e92199b42f9f4467881f80141996881a',
);
const QUOTE_ECC = hex(
  'ff54434780180022000b073e8c76c2c5866755ea855321a505bc6394c9a54078a2b0212797ab10e4cd5500040011223300000000000f2ae8000000020000000001201910230016363600000001000b03010000002066687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925',
);
const SIG_ECC = hex(
  '0018000b00206e4d3c472982400b526a51d21ad8d777fd95ea11bca79dc2ef974575fb8914d5002009fdf0d0e7105c894160db4c4aac883c53d528fae96a38d34fd4a8551b90f2c5',
);


/** Every proper prefix must fail with `code` (never a raw exception, never a partial parse). */
function expectAllTruncationsFail(buf: Buffer, parse: (b: Buffer) => unknown, code: string): void {
  for (let n = 0; n < buf.length; n++) {
    const c = codeOf(() => parse(buf.subarray(0, n)));
    expect({ n, c }).toEqual({ n, c: code });
  }
}

function zeroValues(): PcrValue[] {
  return [
    ...[0, 1].map((index) => ({ bank: 'sha1' as const, index, value: Buffer.alloc(20) })),
    ...[0, 1, 2, 16].map((index) => ({ bank: 'sha256' as const, index, value: Buffer.alloc(32) })),
  ];
}

describe('TPM2B_PUBLIC / TPMT_PUBLIC', () => {
  it('parses a real RSA AK and computes its Name as tpm2-tools does', () => {
    const p = parseTpm2bPublic(AK_RSA);
    expect(p.type).toBe('rsa');
    if (p.type !== 'rsa') return;
    expect(p.nameAlg).toBe(TPM_ALG.SHA256);
    expect(p.objectAttributes).toBe(0x00050072);
    expect(p.scheme).toEqual({ scheme: TPM_ALG.RSASSA, hashAlg: TPM_ALG.SHA256 });
    expect(p.symmetric.algorithm).toBe(TPM_ALG.NULL);
    expect(p.keyBits).toBe(2048);
    expect(p.exponent).toBe(65537);
    expect(p.modulus).toHaveLength(256);
    expect(objectName(p).toString('hex')).toBe(AK_RSA_NAME);
    expect(encodeTpm2bPublic(p).equals(AK_RSA)).toBe(true);
    expect(publicToKeyObject(p).asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(() => checkAkPublic(p)).not.toThrow();
  });

  it('parses a real ECC P-384 EK (high range) and converts it to SPKI', () => {
    const p = parseTpm2bPublic(EK_ECC);
    expect(p.type).toBe('ecc');
    if (p.type !== 'ecc') return;
    expect(p.nameAlg).toBe(TPM_ALG.SHA384);
    expect(p.curveId).toBe(0x0004);
    expect(p.symmetric).toEqual({ algorithm: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB });
    expect(p.scheme.scheme).toBe(TPM_ALG.NULL);
    expect(p.kdf.scheme).toBe(TPM_ALG.NULL);
    expect(p.authPolicy.toString('hex')).toMatch(/^b26e7d28/);
    const spki = publicToSpkiDer(p);
    expect(publicToKeyObject(p).asymmetricKeyDetails?.namedCurve).toBe('secp384r1');
    expect(spki.length).toBeGreaterThan(100);
    expect(() => checkEkPublic(p)).not.toThrow();
    expect(codeOf(() => checkAkPublic(p))).toBe('tpm.ak_not_signing');
  });

  it('rejects every truncation, trailing bytes and a lying size field', () => {
    expectAllTruncationsFail(AK_RSA, parseTpm2bPublic, 'tpm.malformed_public');
    expectAllTruncationsFail(EK_ECC, parseTpm2bPublic, 'tpm.malformed_public');
    expect(codeOf(() => parseTpm2bPublic(Buffer.concat([AK_RSA, Buffer.from([0])])))).toBe('tpm.malformed_public');
    expect(codeOf(() => parseTpmtPublic(Buffer.concat([AK_RSA.subarray(2), Buffer.from([0])])))).toBe('tpm.malformed_public');
    const bigger = Buffer.from(AK_RSA);
    bigger.writeUInt16BE(AK_RSA.length, 0);
    expect(codeOf(() => parseTpm2bPublic(bigger))).toBe('tpm.malformed_public');
    expect(codeOf(() => parseTpm2bPublic(Buffer.from([0, 0])))).toBe('tpm.malformed_public');
  });

  it('rejects oversized fields, reserved attribute bits, unknown algorithms and inconsistent key sizes', () => {
    const inner = AK_RSA.subarray(2);
    const mut = (off: number, bytes: number[]): Buffer => {
      const b = Buffer.from(inner);
      Buffer.from(bytes).copy(b, off);
      return b;
    };
    expect(codeOf(() => parseTpmtPublic(mut(0, [0x00, 0x08])))).toBe('tpm.malformed_public'); // keyedhash
    expect(codeOf(() => parseTpmtPublic(mut(2, [0x00, 0x99])))).toBe('tpm.malformed_public'); // nameAlg
    expect(codeOf(() => parseTpmtPublic(mut(4, [0x00, 0x05, 0x00, 0x73])))).toBe('tpm.malformed_public'); // reserved bit 0
    expect(codeOf(() => parseTpmtPublic(mut(8, [0x00, 0x41])))).toBe('tpm.malformed_public'); // authPolicy size 65 > 64
    expect(codeOf(() => parseTpmtPublic(mut(16, [0x04, 0x00])))).toBe('tpm.malformed_public'); // keyBits 1024 ≠ 256-byte modulus
    expect(codeOf(() => parseTpmtPublic(mut(18, [0x00, 0x00, 0x00, 0x04])))).toBe('tpm.malformed_public'); // even exponent
    expect(codeOf(() => parseTpmtPublic(mut(22, [0x02, 0x01])))).toBe('tpm.malformed_public'); // unique 513 > 512
    expect(codeOf(() => parseTpmtPublic(Buffer.alloc(2000)))).toBe('tpm.malformed_public');
  });

  it('rejects an ECC point that is not on the curve when converting to a key', () => {
    const p = parseTpm2bPublic(AK_ECC);
    if (p.type !== 'ecc') throw new Error('ecc');
    const bad = { ...p, y: Buffer.from(p.y.map((b, i) => (i === 31 ? b ^ 1 : b))) };
    expect(codeOf(() => publicToKeyObject(bad))).toBe('tpm.malformed_public');
  });

  it('AK attribute checks name the missing attribute', () => {
    const k = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
    const with_ = (attrs: number): string => codeOf(() => checkAkPublic(parseTpm2bPublic(akPublicFor(k, attrs))));
    expect(with_(0x00050072)).toBe('no error');
    expect(with_(0x00040072)).toBe('tpm.ak_not_restricted');
    expect(with_(0x00050070)).toBe('tpm.ak_not_fixed_tpm');
    expect(with_(0x00050062)).toBe('tpm.ak_not_fixed_parent');
    expect(with_(0x00050052)).toBe('tpm.ak_not_sensitive_data_origin');
    expect(with_(0x00010072)).toBe('tpm.ak_not_signing');
    expect(with_(0x00070072)).toBe('tpm.ak_decrypt_set');
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
    expect(codeOf(() => checkAkPublic(parseTpm2bPublic(akPublicFor(small))))).toBe('tpm.ak_weak_key');
  });
});

describe('TPMS_ATTEST', () => {
  it('parses a real quote: clockInfo, firmware, selection and digest', () => {
    const a = parseAttest(QUOTE_RSA);
    expect(a.type).toBe(0x8018);
    expect(a.extraData.toString('hex')).toBe('0011223344');
    expect(a.clockInfo).toEqual({ clock: 0x6cd8n, resetCount: 2, restartCount: 0, safe: true });
    expect(a.firmwareVersion).toBe(0x2019102300163636n);
    if (a.attested.kind !== 'quote') throw new Error('quote');
    expect(a.attested.pcrSelect.map((s) => [s.hashAlg, s.pcrs])).toEqual([
      [TPM_ALG.SHA1, [0, 1]],
      [TPM_ALG.SHA256, [0, 1, 2, 16]],
    ]);
    expect(a.attested.pcrDigest.toString('hex')).toBe('e3c2af35d1dfc500e16f826a071cc311bf55003a3de77de7ea3376c6b6fa2857');
    const size = Buffer.alloc(2);
    size.writeUInt16BE(QUOTE_RSA.length);
    expect(parseTpm2bAttest(Buffer.concat([size, QUOTE_RSA])).raw.equals(QUOTE_RSA)).toBe(true);
    expect(parseAttestAny(Buffer.concat([size, QUOTE_RSA])).raw.equals(QUOTE_RSA)).toBe(true);
  });

  it('parses certify and creation attestations', () => {
    const name = Buffer.concat([Buffer.from([0, 0x0b]), Buffer.alloc(32, 7)]);
    const head = (type: number): TpmWriter => new TpmWriter().u32(0xff544347).u16(type).tpm2b(name).tpm2b(Buffer.alloc(0)).u64(1n).u32(2).u32(3).u8(0).u64(4n);
    const cert = parseAttest(head(0x8017).tpm2b(name).tpm2b(name).toBuffer());
    expect(cert.attested.kind).toBe('certify');
    const cr = parseAttest(head(0x801a).tpm2b(name).tpm2b(Buffer.alloc(32, 9)).toBuffer());
    expect(cr.attested).toEqual({ kind: 'creation', objectName: name, creationHash: Buffer.alloc(32, 9) });
    expect(cr.clockInfo).toEqual({ clock: 1n, resetCount: 2, restartCount: 3, safe: false });
  });

  it('rejects every truncation, trailing bytes, wrong magic, unknown type, bad safe flag and bad names', () => {
    expectAllTruncationsFail(QUOTE_RSA, parseAttest, 'tpm.malformed_attest');
    expect(codeOf(() => parseAttest(Buffer.concat([QUOTE_RSA, Buffer.from([0])])))).toBe('tpm.malformed_attest');
    const mut = (off: number, bytes: number[]): Buffer => {
      const b = Buffer.from(QUOTE_RSA);
      Buffer.from(bytes).copy(b, off);
      return b;
    };
    expect(codeOf(() => parseAttest(mut(0, [0xff, 0x54, 0x43, 0x48])))).toBe('tpm.malformed_attest');
    expect(codeOf(() => parseAttest(mut(4, [0x80, 0x14])))).toBe('tpm.malformed_attest');
    expect(codeOf(() => parseAttest(mut(0x41, [0x02])))).toBe('tpm.malformed_attest'); // safe = 2
    expect(codeOf(() => parseAttest(mut(8, [0x00, 0x0c])))).toBe('tpm.malformed_attest'); // sha384 name with a 32-byte digest
    expect(codeOf(() => parseAttest(mut(0x2a, [0x00, 0x43])))).toBe('tpm.malformed_attest'); // extraData 67 > 66
    const size = Buffer.alloc(2);
    size.writeUInt16BE(QUOTE_RSA.length + 1);
    expect(codeOf(() => parseTpm2bAttest(Buffer.concat([size, QUOTE_RSA])))).toBe('tpm.malformed_attest');
    expect(codeOf(() => parseAttestAny(Buffer.alloc(3000)))).toBe('tpm.malformed_attest');
  });
});

describe('TPMT_SIGNATURE', () => {
  it('parses RSASSA and ECDSA signatures', () => {
    const r = parseSignature(SIG_RSA);
    expect(r.sigAlg).toBe(TPM_ALG.RSASSA);
    const e = parseSignature(SIG_ECC);
    expect(e.sigAlg).toBe(TPM_ALG.ECDSA);
    if (e.sigAlg === TPM_ALG.ECDSA) expect([e.r.length, e.s.length]).toEqual([32, 32]);
  });

  it('rejects truncations, trailing bytes, unsupported algorithms and oversized fields', () => {
    expectAllTruncationsFail(SIG_RSA, parseSignature, 'tpm.malformed_signature');
    expectAllTruncationsFail(SIG_ECC, parseSignature, 'tpm.malformed_signature');
    expect(codeOf(() => parseSignature(Buffer.concat([SIG_ECC, Buffer.from([0])])))).toBe('tpm.malformed_signature');
    expect(codeOf(() => parseSignature(Buffer.from('0005000b0000', 'hex')))).toBe('tpm.malformed_signature'); // HMAC
    expect(codeOf(() => parseSignature(Buffer.concat([Buffer.from('0014000b0201', 'hex'), Buffer.alloc(513)])))).toBe('tpm.malformed_signature');
    expect(codeOf(() => parseSignature(Buffer.from('0014000b0000', 'hex')))).toBe('tpm.malformed_signature'); // empty RSA signature
  });
});

describe('TPML_PCR_SELECTION', () => {
  it('round-trips selections', () => {
    const w = encodePcrSelection([
      { bank: 'sha1', pcrs: [0] },
      { bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 23] },
    ]);
    expect(w.toString('hex')).toBe('00000002' + '0004' + '03' + '010000' + '000b' + '03' + 'ff0080');
    expect(parsePcrSelection(w).map((s) => s.pcrs)).toEqual([[0], [0, 1, 2, 3, 4, 5, 6, 7, 23]]);
  });

  it('rejects too many banks, oversized sizeofSelect, unknown banks and trailing bytes', () => {
    const many = new TpmWriter().u32(17);
    for (let i = 0; i < 17; i++) many.u16(0x000b).u8(3).bytes(Buffer.alloc(3));
    expect(codeOf(() => parsePcrSelection(many.toBuffer()))).toBe('tpm.malformed_pcr_selection');
    expect(codeOf(() => parsePcrSelection(hex('00000001000b050000000000')))).toBe('tpm.malformed_pcr_selection');
    expect(codeOf(() => parsePcrSelection(hex('000000010099030000ff')))).toBe('tpm.malformed_pcr_selection');
    expect(codeOf(() => parsePcrSelection(hex('00000001000b0301000000')))).toBe('tpm.malformed_pcr_selection');
    expectAllTruncationsFail(hex('00000001000b03010000'), parsePcrSelection, 'tpm.malformed_pcr_selection');
  });
});

describe('credential structures', () => {
  it('encodes and parses TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET with bounds', () => {
    const id = encodeIdObject(Buffer.alloc(32, 1), Buffer.alloc(34, 2));
    expect(id.readUInt16BE(0)).toBe(2 + 32 + 34);
    expect(parseIdObject(id)).toEqual({ integrityHmac: Buffer.alloc(32, 1), encIdentity: Buffer.alloc(34, 2) });
    expect(codeOf(() => parseIdObject(Buffer.concat([id, Buffer.from([0])])))).toBe('tpm.malformed_id_object');
    expect(codeOf(() => encodeIdObject(Buffer.alloc(64), Buffer.alloc(100)))).toBe('tpm.malformed_id_object');
    const es = encodeEncryptedSecret(Buffer.alloc(256, 3));
    expect(parseEncryptedSecret(es)).toEqual(Buffer.alloc(256, 3));
    expect(codeOf(() => parseEncryptedSecret(Buffer.concat([es, Buffer.from([0])])))).toBe('tpm.malformed_encrypted_secret');
    expect(codeOf(() => encodeEncryptedSecret(Buffer.alloc(513)))).toBe('tpm.malformed_encrypted_secret');
  });
});

describe('quote verification (pure, on real swtpm quotes)', () => {
  it('verifies the RSA quote with its PCR values, and the ECDSA quote', () => {
    const r = verifyQuote({ ak: parseTpm2bPublic(AK_RSA), quote: QUOTE_RSA, signature: SIG_RSA, qualifyingData: hex('0011223344'), pcrValues: zeroValues() });
    expect(r.pcrs?.map((p) => `${p.bank}:${p.index}`)).toEqual(['sha1:0', 'sha1:1', 'sha256:0', 'sha256:1', 'sha256:2', 'sha256:16']);
    expect(r.signatureHash).toBe('sha256');
    const e = verifyQuote({ ak: parseTpm2bPublic(AK_ECC), quote: QUOTE_ECC, signature: SIG_ECC, qualifyingData: hex('00112233') });
    expect(e.attest.clockInfo.clock).toBe(0xf2ae8n);
  });

  it('each failed check has its own code', () => {
    const ak = parseTpm2bPublic(AK_RSA);
    const base = { ak, quote: QUOTE_RSA, signature: SIG_RSA, qualifyingData: hex('0011223344'), pcrValues: zeroValues() };
    expect(codeOf(() => verifyQuote({ ...base, qualifyingData: hex('0011223345') }))).toBe('tpm.nonce_mismatch');
    expect(codeOf(() => verifyQuote({ ...base, qualifyingData: hex('00112233') }))).toBe('tpm.nonce_mismatch');
    const q = Buffer.from(QUOTE_RSA);
    q[0x30] = (q[0x30] ?? 0) ^ 1;
    expect(codeOf(() => verifyQuote({ ...base, quote: q }))).toBe('tpm.quote_signature_invalid');
    expect(codeOf(() => verifyQuote({ ...base, quote: QUOTE_RSA.subarray(0, 50) }))).toBe('tpm.quote_malformed');
    const values = zeroValues();
    values[5] = { bank: 'sha256', index: 16, value: Buffer.alloc(32, 1) };
    expect(codeOf(() => verifyQuote({ ...base, pcrValues: values }))).toBe('tpm.pcr_digest_mismatch');
    expect(codeOf(() => verifyQuote({ ...base, pcrValues: zeroValues().slice(1) }))).toBe('tpm.pcr_values_invalid');
    expect(codeOf(() => verifyQuote({ ...base, pcrValues: [...zeroValues(), { bank: 'sha256', index: 7, value: Buffer.alloc(32) }] }))).toBe('tpm.pcr_values_invalid');
    expect(codeOf(() => verifyQuote({ ...base, expectedSelection: parsePcrSelection(encodePcrSelection([{ bank: 'sha256', pcrs: [0, 1, 2, 16] }])) }))).toBe('tpm.pcr_selection_mismatch');
    expect(
      codeOf(() => verifyQuote({ ...base, expectedSelection: parsePcrSelection(encodePcrSelection([{ bank: 'sha1', pcrs: [0, 1] }, { bank: 'sha256', pcrs: [0, 1, 2, 16] }])) })),
    ).toBe('no error');
    expect(codeOf(() => verifyQuote({ ...base, hashAllowlist: ['sha384'] }))).toBe('tpm.hash_not_allowed');
    expect(codeOf(() => verifyQuote({ ...base, ak: parseTpm2bPublic(AK_ECC) }))).toBe('tpm.signature_scheme_mismatch');
    expect(codeOf(() => verifyQuote({ ...base, signature: SIG_ECC }))).toBe('tpm.signature_scheme_mismatch');
  });
});

describe('counter monotonicity', () => {
  const ci = (resetCount: number, restartCount: number, clock: bigint) => ({ resetCount, restartCount, clock, safe: true });
  const prev = { resetCount: 5, restartCount: 2, clock: '1000' };
  it('accepts forward movement and a new reset epoch', () => {
    expect(checkCounters(undefined, ci(0, 0, 1n))).toEqual({ resetCount: 0, restartCount: 0, clock: '1' });
    expect(codeOf(() => checkCounters(prev, ci(5, 2, 1000n)))).toBe('no error');
    expect(codeOf(() => checkCounters(prev, ci(5, 2, 1001n)))).toBe('no error');
    expect(codeOf(() => checkCounters(prev, ci(5, 3, 10n)))).toBe('no error'); // restart: clock may lag
    expect(codeOf(() => checkCounters(prev, ci(6, 0, 5n)))).toBe('no error'); // reset: new epoch
  });
  it('rejects resetCount, restartCount or clock going backwards: tpm.counter_rollback', () => {
    expect(codeOf(() => checkCounters(prev, ci(4, 9, 99999n)))).toBe('tpm.counter_rollback');
    expect(codeOf(() => checkCounters(prev, ci(5, 1, 99999n)))).toBe('tpm.counter_rollback');
    expect(codeOf(() => checkCounters(prev, ci(5, 2, 999n)))).toBe('tpm.counter_rollback');
  });
});

describe('PCR value files', () => {
  const sel = parsePcrSelection(encodePcrSelection([{ bank: 'sha1', pcrs: [0] }, { bank: 'sha256', pcrs: [0, 16] }]));
  const v = { s1: Buffer.alloc(20, 1), s0: Buffer.alloc(32, 2), s16: Buffer.alloc(32, 3) };
  const expected = [
    { bank: 'sha1', index: 0, value: v.s1 },
    { bank: 'sha256', index: 0, value: v.s0 },
    { bank: 'sha256', index: 16, value: v.s16 },
  ];

  it('reads the tpm2-tools serialized layout', () => {
    const b = Buffer.alloc(132 + 4 + 532);
    b.writeUInt32LE(2, 0);
    b.writeUInt16LE(0x0004, 4);
    b.writeUInt8(3, 6);
    b.writeUInt8(0x01, 7);
    b.writeUInt16LE(0x000b, 12);
    b.writeUInt8(3, 14);
    b.writeUInt8(0x01, 15);
    b.writeUInt8(0x01, 17);
    b.writeUInt32LE(1, 132);
    b.writeUInt32LE(3, 136);
    const digests = [v.s1, v.s0, v.s16];
    digests.forEach((d, i) => {
      b.writeUInt16LE(d.length, 140 + i * 66);
      d.copy(b, 142 + i * 66);
    });
    expect(parseSerializedPcrs(b)).toEqual(expected);
    expect(parsePcrValuesFile(b)).toEqual(expected);
    const lying = Buffer.from(b);
    lying.writeUInt32LE(4, 136);
    expect(codeOf(() => parseSerializedPcrs(lying))).toBe('tpm.malformed_pcr_values');
  });

  it('reads the marshaled layout and raw values', () => {
    const m = new TpmWriter().bytes(encodePcrSelection([{ bank: 'sha1', pcrs: [0] }, { bank: 'sha256', pcrs: [0, 16] }])).u32(1).u32(3).tpm2b(v.s1).tpm2b(v.s0).tpm2b(v.s16).toBuffer();
    expect(parseMarshaledPcrs(m)).toEqual(expected);
    expect(parsePcrValuesFile(m)).toEqual(expected);
    expect(codeOf(() => parseMarshaledPcrs(Buffer.concat([m, Buffer.from([0])])))).toBe('tpm.malformed_pcr_values');
    const raw = Buffer.concat([v.s1, v.s0, v.s16]);
    expect(parseRawPcrValues(raw, sel)).toEqual(expected);
    expect(parsePcrValuesFile(raw, sel)).toEqual(expected);
    expect(codeOf(() => parseRawPcrValues(raw.subarray(1), sel))).toBe('tpm.malformed_pcr_values');
  });

  it('reads JSON lists and tpm2_pcrread YAML', () => {
    const json = JSON.stringify(expected.map((e) => ({ bank: e.bank, index: e.index, value: e.value.toString('hex') })));
    expect(parsePcrValuesFile(Buffer.from(json))).toEqual(expected);
    const yaml = `sha1:\n  0 : 0x${v.s1.toString('hex').toUpperCase()}\nsha256:\n  0 : 0x${v.s0.toString('hex')}\n  16: 0x${v.s16.toString('hex')}\n`;
    expect(parsePcrValuesFile(Buffer.from(yaml))).toEqual(expected);
    expect(parsePcrValuesFile(Buffer.from(`pcrs:\n${yaml.replace(/^/gm, '  ')}`))).toEqual(expected);
    expect(codeOf(() => parsePcrValuesFile(Buffer.from('sha999:\n  0 : 0x00\n')))).toBe('tpm.malformed_pcr_values');
    expect(codeOf(() => parsePcrValuesFile(Buffer.from('[{"bank":"sha256","index":40,"value":"00"}]')))).toBe('tpm.malformed_pcr_values');
  });

  it('SHA-256 of tpm2-tools-style concatenation is what the quote digest expects', () => {
    const d = createHash('sha256').update(Buffer.alloc(20 * 2 + 32 * 4)).digest('hex');
    expect(d).toBe('e3c2af35d1dfc500e16f826a071cc311bf55003a3de77de7ea3376c6b6fa2857');
  });
});

describe('hostile input', () => {
  it('random mutations of real structures only ever raise SigilError', () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const mutate = (b: Buffer): Buffer => {
      const c = Buffer.from(b);
      const kind = rnd(3);
      if (kind === 0) for (let i = 0; i < 1 + rnd(4); i++) c[rnd(c.length)] = rnd(256);
      if (kind === 1) return c.subarray(0, rnd(c.length));
      if (kind === 2) return Buffer.concat([c, Buffer.from([rnd(256)])]);
      return c;
    };
    const ak = parseTpm2bPublic(AK_RSA);
    const akE = parseTpm2bPublic(AK_ECC);
    for (let i = 0; i < 3000; i++) {
      for (const f of [
        () => publicToKeyObject(parseTpm2bPublic(mutate(AK_RSA))),
        () => checkEkPublic(parseTpm2bPublic(mutate(EK_ECC))),
        () => verifyQuote({ ak, quote: mutate(QUOTE_RSA), signature: mutate(SIG_RSA), qualifyingData: hex('0011223344'), pcrValues: zeroValues() }),
        () => verifyQuote({ ak: akE, quote: mutate(QUOTE_ECC), signature: mutate(SIG_ECC), qualifyingData: hex('00112233') }),
        () => parsePcrValuesFile(mutate(hex('00000001000b0301000000000001000000010020' + '00'.repeat(32)))),
      ]) {
        try {
          f();
        } catch (e) {
          if (!(e instanceof SigilError)) throw e;
        }
      }
    }
  });
});
