/**
 * The per-attestation fast paths of issue 14 (verifier CPU per TPM attestation): each answers
 * exactly what the slow path it skips would, and a near-identical input never hits.
 */
import 'reflect-metadata';
import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { decodeBase64 } from '../../src/plugins/base64.js';
import { codeOf, codeOfAsync } from '../support/codes.js';
import { EkCertVerifier, EkTrustStore } from '../../src/tpm/ekcert.js';
import { TPM_ALG } from '../../src/tpm/constants.js';
import { kdfa } from '../../src/tpm/kdf.js';
import { publicToKeyObject, publicToSpkiDer, spkiHash } from '../../src/tpm/keys.js';
import { orderPcrValues, type PcrValue } from '../../src/tpm/quote.js';
import { TpmWriter } from '../../src/tpm/reader.js';
import { encodeIdObject, parseIdObject, parseTpm2bPublic, type PcrSelection, type TpmtPublic } from '../../src/tpm/structures.js';
import { tpmClaims, tpmSelectors } from '../../src/tpm/verify.js';
import { akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair } from './synthetic.js';

describe('publicToKeyObject: the key of an area object is found again by its key bytes', () => {
  it('answers the same area object from its copy of the key bytes; a changed byte or another area is looked up by its own bytes', () => {
    const pub = parseTpm2bPublic(akPublicFor(rsaKeyPair().publicKey));
    const k1 = publicToKeyObject(pub);
    expect(publicToKeyObject(pub)).toBe(k1);
    // Another object with the same bytes: the text-keyed cache, the same KeyObject.
    const same = parseTpm2bPublic(akPublicFor(k1));
    expect(publicToKeyObject(same)).toBe(k1);
    // The attacker's case: one bit of the modulus differs (the area object reused, its buffer written
    // over; or a second area of near-identical bytes): another key, never the remembered one.
    const mutable = parseTpm2bPublic(akPublicFor(rsaKeyPair().publicKey)) as Extract<TpmtPublic, { type: 'rsa' }>;
    const before = publicToKeyObject(mutable);
    const n0 = before.export({ format: 'jwk' }).n;
    mutable.modulus[100] = (mutable.modulus[100] ?? 0) ^ 1;
    const after = publicToKeyObject(mutable);
    expect(after).not.toBe(before);
    expect(after.export({ format: 'jwk' }).n).not.toBe(n0);
    expect(Buffer.from(after.export({ format: 'jwk' }).n as string, 'base64url').equals(mutable.modulus)).toBe(true);
    // The SPKI and its hash follow the bytes too.
    expect(publicToSpkiDer(mutable).equals(after.export({ type: 'spki', format: 'der' }))).toBe(true);
    mutable.modulus[100] = (mutable.modulus[100] ?? 0) ^ 1;
    expect(publicToKeyObject(mutable)).toBe(before);
    const ekArea = parseTpm2bPublic(ekPublicFor(rsaKeyPair().publicKey));
    expect(spkiHash(ekArea)).not.toBe(spkiHash(mutable));
  });

  it('does the same for ECC areas (x and y compared)', () => {
    const key = p256KeyPair().publicKey;
    const pub = parseTpm2bPublic(akPublicFor(key)) as Extract<TpmtPublic, { type: 'ecc' }>;
    const k1 = publicToKeyObject(pub);
    expect(publicToKeyObject(pub)).toBe(k1);
    const other = parseTpm2bPublic(akPublicFor(p256KeyPair().publicKey)) as Extract<TpmtPublic, { type: 'ecc' }>;
    // y of another point (x kept): not on the curve with this x, refused, never the remembered key.
    const y = Buffer.from(pub.y);
    other.y.copy(pub.y);
    expect(codeOf(() => publicToKeyObject(pub))).toBe('tpm.malformed_public');
    y.copy(pub.y);
    expect(publicToKeyObject(pub)).toBe(k1);
  });
});

describe('EkCertVerifier: chains by their texts', () => {
  async function setup(): Promise<{ v: EkCertVerifier; root: Awaited<ReturnType<typeof makeRoot>>; inter: Awaited<ReturnType<typeof makeIntermediate>>; certs: string[] }> {
    const root = await makeRoot('Hot Root');
    const inter = await makeIntermediate('Hot CA', root);
    const certs = await Promise.all([0, 1, 2, 3, 4].map(async () => (await makeEkCert(rsaKeyPair().publicKey, inter)).toString('base64')));
    return { v: new EkCertVerifier(new EkTrustStore([root.der]), 3), root, inter, certs };
  }
  const at = new Date('2027-06-01T00:00:00Z');
  const strict = (t: string): Buffer => decodeBase64(t, 'ekCert', { code: 'tpm.bad_hello', maxBytes: 16384 });

  it('cachedTexts answers only a chain verified before, for exactly its texts, within its validity', async () => {
    const { v, inter, certs } = await setup();
    const i = inter.der.toString('base64');
    expect(v.cachedTexts(certs[0]!, [i], at)).toBeUndefined();
    const r = await v.verifyTexts(certs[0]!, [i], at, strict);
    expect(v.cachedTexts(certs[0]!, [i], at)).toBe(r);
    // Equal texts that are other string objects.
    expect(v.cachedTexts(`${certs[0]!.slice(0, 10)}${certs[0]!.slice(10)}`, [`${i}`.concat('')], at)).toBe(r);
    // Near-identical lists: no hit.
    expect(v.cachedTexts(certs[0]!, [], at)).toBeUndefined();
    expect(v.cachedTexts(certs[0]!, [i, i], at)).toBeUndefined();
    expect(v.cachedTexts(certs[0]!, [`${i.slice(0, -5)}A${i.slice(-4)}`], at)).toBeUndefined();
    expect(v.cachedTexts(`${certs[0]!.slice(0, 40)}${certs[0]![40] === 'A' ? 'B' : 'A'}${certs[0]!.slice(41)}`, [i], at)).toBeUndefined();
    expect(v.cachedTexts(certs[0]! + i, [], at)).toBeUndefined();
    // Outside the chain's validity: no hit (verifyTexts then refuses).
    expect(v.cachedTexts(certs[0]!, [i], new Date('2099-01-01T00:00:00Z'))).toBeUndefined();
    expect(await codeOfAsync(v.verifyTexts(certs[0]!, [i], new Date('2099-01-01T00:00:00Z'), strict))).toBe('tpm.ek_cert_expired');
    expect(v.cachedTexts(certs[0]!, Array.from({ length: 9 }, () => i), at)).toBeUndefined();
  });

  it('verifyTexts decodes again for any other list of texts, and stays bounded (chains in all, and per certificate)', async () => {
    const { v, inter, certs } = await setup();
    const i = inter.der.toString('base64');
    let decodes = 0;
    const counting = (t: string): Buffer => {
      decodes++;
      return strict(t);
    };
    for (const c of certs) await v.verifyTexts(c, [i], at, counting);
    expect(decodes).toBe(10);
    // maxCache 3: only the three most recently used certificates are kept.
    expect(v.textCacheSize).toBe(3);
    await v.verifyTexts(certs[4]!, [i], at, counting);
    expect(decodes).toBe(10);
    await v.verifyTexts(certs[0]!, [i], at, counting);
    expect(decodes).toBe(12);
    expect(v.textCacheSize).toBe(3);
    // One certificate with other (useless but valid base64) intermediates: each list its own entry, all within the bound.
    const big = new EkCertVerifier(v.trust, 100);
    for (let k = 0; k < 6; k++) {
      const extra = [i, ...Array.from({ length: k }, () => i)];
      await big.verifyTexts(certs[1]!, extra, at, strict);
    }
    expect(big.textCacheSize).toBe(4);
    // A bad text under a kept certificate is still decoded, and refused.
    expect(await codeOfAsync(v.verifyTexts(certs[0]!, [`${i}x`], at, strict))).toBe('tpm.bad_hello');
  });
});

describe('decodeBase64: the re-encoding fast path accepts and refuses exactly what the pattern did', () => {
  const RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
  function reference(v: string, maxBytes: number): Buffer | string {
    if (v.length > Math.ceil(maxBytes / 3) * 4) return 'too long';
    if (!RE.test(v)) return 'not base64';
    const b = Buffer.from(v, 'base64');
    if (b.length < 1) return 'empty';
    if (b.length > maxBytes) return 'too long';
    return b;
  }
  function actual(v: string, maxBytes: number): Buffer | string {
    try {
      return decodeBase64(v, 'x', { code: 'test.bad', maxBytes });
    } catch (e) {
      expect((e as SigilError).code).toBe('test.bad');
      const m = (e as Error).message;
      return m.includes('standard base64') ? 'not base64' : m.includes('empty') ? 'empty' : 'too long';
    }
  }
  it('agrees on canonical, non-canonical tail bits, url-safe, whitespace, non-ASCII look-alikes, bad padding and sizes', () => {
    const texts: string[] = ['', '=', '==', 'AA==', 'AB==', 'AAA=', 'AAB=', 'AAAA', 'AAAAAA', 'AA=A', 'A===', 'AA', ' AAAA', 'AA AA', 'AA-_', 'AA+/', '\u0141AAA', 'AA\u0130=', 'ŁŁŁŁ'];
    for (let n = 0; n < 400; n++) {
      const t = randomBytes(1 + (n % 40)).toString('base64');
      texts.push(t);
      const pos = n % t.length;
      for (const ch of ['-', '_', ' ', '\n', '=', '*', '\u0141', '\u0100', 'A', '/']) texts.push(t.slice(0, pos) + ch + t.slice(pos + 1));
      texts.push(t.slice(0, -1), t.replace(/=+$/, ''), `${t}=`);
    }
    for (const t of texts) for (const max of [3, 48]) expect(actual(t, max)).toStrictEqual(reference(t, max));
  });
});

describe('kdfa (one HMAC input buffer, labels kept)', () => {
  function reference(key: Buffer, label: string, u: Buffer, v: Buffer, bits: number): Buffer {
    const l = Buffer.from(label, 'latin1');
    const lab = l.length > 0 && l[l.length - 1] === 0 ? l : Buffer.concat([l, Buffer.from([0])]);
    const out: Buffer[] = [];
    for (let i = 1; out.length * 32 * 8 < bits; i++) {
      const c = Buffer.alloc(4);
      c.writeUInt32BE(i);
      const len = Buffer.alloc(4);
      len.writeUInt32BE(bits);
      out.push(createHmac('sha256', key).update(c).update(lab).update(u).update(v).update(len).digest());
    }
    const r = Buffer.concat(out).subarray(0, Math.ceil(bits / 8));
    if (bits % 8 !== 0) r[0] = (r[0] ?? 0) & (0xff >> (8 - (bits % 8)));
    return r;
  }
  it('equals the specification formula for one and several blocks, odd bit counts, labels with their NUL, many labels', () => {
    const key = randomBytes(32);
    const u = randomBytes(34);
    const v = randomBytes(7);
    for (const bits of [128, 256, 255, 257, 512, 600, 1]) {
      for (const label of ['STORAGE', 'INTEGRITY', 'IDENTITY\0', '']) {
        expect(kdfa('sha256', key, label, u, v, bits).equals(reference(key, label, u, v, bits))).toBe(true);
        expect(kdfa('sha256', key, label, Buffer.alloc(0), Buffer.alloc(0), bits).equals(reference(key, label, Buffer.alloc(0), Buffer.alloc(0), bits))).toBe(true);
      }
    }
    for (let n = 0; n < 40; n++) expect(kdfa('sha256', key, `L${n}`, u, v, 128).equals(reference(key, `L${n}`, u, v, 128))).toBe(true);
  });
});

describe('encodeIdObject (written in place)', () => {
  it('is TPM2B(TPM2B(integrityHMAC) ‖ encIdentity), parsed back; over-long parts refused as before', () => {
    const h = randomBytes(32);
    const e = randomBytes(34);
    const inner = new TpmWriter().tpm2b(h).bytes(e).toBuffer();
    expect(encodeIdObject(h, e).equals(new TpmWriter().tpm2b(inner).toBuffer())).toBe(true);
    expect(parseIdObject(encodeIdObject(h, e))).toStrictEqual({ integrityHmac: h, encIdentity: e });
    expect(codeOf(() => encodeIdObject(randomBytes(64), randomBytes(67)))).toBe('tpm.malformed_id_object');
    expect(codeOf(() => encodeIdObject(Buffer.alloc(0x10000), e))).toBe('tpm.encode_too_large');
  });
});

describe('orderPcrValues (numeric keys)', () => {
  const v = (bank: PcrValue['bank'], index: number, size: number): PcrValue => ({ bank, index, value: Buffer.alloc(size, index) });
  const sel = (hashAlg: number, pcrs: number[]): PcrSelection => ({ hashAlg, sizeofSelect: 3, pcrs });
  it('orders by selection, refuses duplicates, missing and extra values with the same messages', () => {
    const vals = [v('sha256', 7, 32), v('sha384', 0, 48), v('sha256', 0, 32)];
    const out = orderPcrValues([sel(TPM_ALG.SHA256, [0, 7]), sel(TPM_ALG.SHA384, [0])], vals);
    expect(out).toStrictEqual([vals[2], vals[0], vals[1]]);
    expect(() => orderPcrValues([sel(TPM_ALG.SHA256, [0])], [v('sha256', 0, 32), v('sha256', 0, 32)])).toThrow('PCR sha256:0 is listed twice');
    expect(() => orderPcrValues([sel(TPM_ALG.SHA256, [0, 1])], [v('sha256', 0, 32)])).toThrow('no value for quoted PCR sha256:1');
    expect(() => orderPcrValues([sel(TPM_ALG.SHA256, [0])], [v('sha256', 0, 32), v('sha1', 3, 20), v('sha256', 9, 32)])).toThrow(
      "PCR values not in the quote's selection: sha1:3, sha256:9",
    );
    expect(() => orderPcrValues([sel(TPM_ALG.SHA256, [0]), sel(TPM_ALG.SHA256, [1])], [v('sha256', 0, 32), v('sha256', 1, 32)])).toThrow('is selected twice');
  });
  it('never lets an index outside 0..31 of one bank find a value of another bank', () => {
    // sha256 (0x0b) index 40 would be 0x0b·32+40 = 0x0c·32+8: sha384 PCR 8.
    expect(() => orderPcrValues([sel(TPM_ALG.SHA256, [40])], [v('sha384', 8, 48)])).toThrow('no value for quoted PCR sha256:40');
    expect(() => orderPcrValues([sel(TPM_ALG.SHA384, [-24])], [v('sha256', 8, 32)])).toThrow('no value for quoted PCR sha384:-24');
  });
});

describe('tpmSelectors / tpmClaims with the PCR hex handed in', () => {
  it('give what they give computing it themselves', async () => {
    const root = await makeRoot('Claims Root');
    const inter = await makeIntermediate('Claims CA', root);
    const ekKey = rsaKeyPair().publicKey;
    const v = new EkCertVerifier(new EkTrustStore([root.der]));
    const chain = await v.verify(await makeEkCert(ekKey, inter), [inter.der], new Date('2027-01-01T00:00:00Z'));
    const pcrs: PcrValue[] = [0, 1, 7].map((i) => ({ bank: 'sha256', index: i, value: randomBytes(32) }));
    const ak = parseTpm2bPublic(akPublicFor(rsaKeyPair().publicKey));
    const quote = { attest: { clockInfo: { clock: 5n, resetCount: 1, restartCount: 0, safe: true }, firmwareVersion: 7n }, signatureHash: 'sha256' } as never;
    const base = { ekPubHash: 'ab'.repeat(32), chain, pcrs };
    const withHex = { ...base, pcrHex: pcrs.map((p) => p.value.toString('hex')) };
    expect(tpmSelectors(withHex)).toStrictEqual(tpmSelectors(base));
    expect(tpmClaims({ ...withHex, ak, quote })).toStrictEqual(tpmClaims({ ...base, ak, quote }));
  });
});

describe('finish: response entries checked without Object.keys lists or names made up front', () => {
  it('refuses unknown own fields and missing ones with the same messages; inherited enumerable keys are not fields', async () => {
    const { TpmVerifier } = await import('../../src/tpm/plugin.js');
    const { MemoryState } = await import('./memory-state.js');
    const { sessionBinding } = await import('../../src/plugins/binding.js');
    const { activateCredentialSoftware, syntheticQuote } = await import('./synthetic.js');
    const root = await makeRoot('Finish Root');
    const inter = await makeIntermediate('Finish CA', root);
    const ek = rsaKeyPair();
    const ak = rsaKeyPair();
    const akPub = akPublicFor(ak.publicKey);
    const hello = {
      ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
      ekIntermediates: [inter.der.toString('base64')],
      ekPub: ekPublicFor(ek.publicKey).toString('base64'),
      akPub: akPub.toString('base64'),
    };
    const v = new TpmVerifier(new EkCertVerifier(new EkTrustStore([root.der])), [{ bank: 'sha256', pcrs: [7] }], ['sha256'], { state: new MemoryState() });
    let clock = 10n;
    const attempt = async (entry: (e: Record<string, unknown>) => unknown): Promise<string> => {
      const nonce = randomBytes(32);
      const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
      const s = { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
      const b = await v.begin(hello, s);
      const c = b.challenge as { credentialBlob: string; encryptedSecret: string };
      const secret = activateCredentialSoftware(ek.privateKey, akPub, Buffer.from(c.credentialBlob, 'base64'), Buffer.from(c.encryptedSecret, 'base64'));
      const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: [7] }], values: new Map([['sha256:7', Buffer.alloc(32, 7)]]), clock: clock++, resetCount: 1, restartCount: 0, signer: { ekPub: Buffer.from(hello.ekPub, 'base64'), akPub } });
      const response = {
        secret: secret.toString('base64'),
        quote: q.attest.toString('base64'),
        signature: q.signature.toString('base64'),
        pcrValues: [entry({ bank: 'sha256', index: 7, value: '07'.repeat(32) })],
      };
      try {
        await v.finish(response, b.state, s);
        return 'ok';
      } catch (e) {
        return `${(e as SigilError).code}: ${(e as Error).message}`;
      }
    };
    expect(await attempt((e) => e)).toBe('ok');
    expect(await attempt((e) => ({ ...e, extra: 1 }))).toBe('tpm.bad_response: pcrValues[0] has unknown field extra');
    expect(await attempt((e) => ({ bank: e.bank, index: e.index }))).toBe('tpm.bad_response: pcrValues[0] lacks value');
    expect(await attempt(() => 'x')).toBe('tpm.bad_response: pcrValues[0] must be a JSON object');
    expect(await attempt(() => [1])).toBe('tpm.bad_response: pcrValues[0] must be a JSON object');
    // An inherited enumerable key is not an own field (Object.keys never listed it).
    expect(await attempt((e) => Object.assign(Object.create({ inherited: 1 }) as object, e))).toBe('ok');
    expect(await attempt((e) => ({ ...e, value: `${'07'.repeat(31)}0g` }))).toBe('tpm.bad_response: pcrValues[0].value must be 64 hex digits');
    expect(await attempt((e) => ({ ...e, value: `${'07'.repeat(31)}0\u0130` }))).toBe('tpm.bad_response: pcrValues[0].value must be 64 hex digits');
  });
});
