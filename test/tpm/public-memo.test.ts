import 'reflect-metadata';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { codeOf, codeOfAsync } from '../support/codes.js';
import { EkCertVerifier, EkTrustStore } from '../../src/tpm/ekcert.js';
import { PublicAreaMemo } from '../../src/tpm/public-memo.js';
import { objectName, parseTpm2bPublic, qualifiedNameUnderEk } from '../../src/tpm/structures.js';
import { akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, rsaKeyPair } from './synthetic.js';

describe('PublicAreaMemo (TPM public areas by the text the agent sent)', () => {
  const ak = akPublicFor(rsaKeyPair().publicKey);
  const ek = ekPublicFor(rsaKeyPair().publicKey);

  it('parses a text once: the same text gives the same frozen area; its Name is the TPM Name, handed out as a copy', () => {
    const m = new PublicAreaMemo();
    const a = m.get(ak.toString('base64'), 'akPub', 'tpm.bad_hello');
    expect(m.get(ak.toString('base64'), 'akPub', 'tpm.bad_hello')).toBe(a);
    expect(a.pub).toStrictEqual(Object.freeze(parseTpm2bPublic(ak)));
    expect(Object.isFrozen(a.pub)).toBe(true);
    expect(a.bytes.equals(ak)).toBe(true);
    const n = a.name();
    expect(n.equals(objectName(parseTpm2bPublic(ak)))).toBe(true);
    n.fill(0);
    expect(a.name().equals(objectName(parseTpm2bPublic(ak)))).toBe(true);
  });

  it('keeps nothing that failed: a non-string, bad base64, bytes that are no public area, a text over the size limit', () => {
    const m = new PublicAreaMemo();
    expect(codeOf(() => m.get(42, 'akPub', 'tpm.bad_hello'))).toBe('tpm.bad_hello');
    expect(codeOf(() => m.get('not base64!', 'akPub', 'tpm.bad_hello'))).toBe('tpm.bad_hello');
    const junk = Buffer.from([0, 4, 1, 2, 3, 4]).toString('base64');
    expect(codeOf(() => m.get(junk, 'akPub', 'tpm.bad_hello'))).toMatch(/^tpm\./);
    // The same junk again is parsed (and refused) again, not answered from the memo.
    expect(codeOf(() => m.get(junk, 'akPub', 'tpm.bad_hello'))).toMatch(/^tpm\./);
    expect(codeOf(() => m.get(Buffer.alloc(2049, 1).toString('base64'), 'akPub', 'tpm.bad_hello'))).toBe('tpm.bad_hello');
    // A valid area with trailing bytes is refused by the parser, and not kept.
    const trailing = Buffer.concat([ak, Buffer.from([0])]).toString('base64');
    expect(codeOf(() => m.get(trailing, 'akPub', 'tpm.bad_hello'))).toMatch(/^tpm\./);
    expect(m.size).toBe(0);
  });

  it("gives the AK's Qualified Name under the EK it is asked for (computed once per EK area), as qualifiedNameUnderEk does", () => {
    const m = new PublicAreaMemo();
    const a = m.get(ak.toString('base64'), 'akPub', 'tpm.bad_hello');
    const e = m.get(ek.toString('base64'), 'ekPub', 'tpm.bad_hello');
    const want = qualifiedNameUnderEk(parseTpm2bPublic(ek), parseTpm2bPublic(ak)).toString('base64');
    expect(a.signerUnderEk(e)).toBe(want);
    expect(a.signerUnderEk(e)).toBe(want);
    // Another EK: its own name, and back again.
    const ek2 = ekPublicFor(rsaKeyPair().publicKey);
    const e2 = m.get(ek2.toString('base64'), 'ekPub', 'tpm.bad_hello');
    const want2 = qualifiedNameUnderEk(parseTpm2bPublic(ek2), parseTpm2bPublic(ak)).toString('base64');
    expect(want2).not.toBe(want);
    expect(a.signerUnderEk(e2)).toBe(want2);
    expect(a.signerUnderEk(e)).toBe(want);
    // The Name handed out before is a copy: changing it changes nothing kept.
    a.name().fill(0);
    expect(a.signerUnderEk(e2)).toBe(want2);
  });

  it('is bounded, least recently used out first', () => {
    const m = new PublicAreaMemo(2);
    const [a, b, c] = [ak, ek, akPublicFor(rsaKeyPair().publicKey)].map((x) => x.toString('base64')) as [string, string, string];
    const first = m.get(a, 'akPub', 'tpm.bad_hello');
    const second = m.get(b, 'ekPub', 'tpm.bad_hello');
    m.get(a, 'akPub', 'tpm.bad_hello');
    m.get(c, 'akPub', 'tpm.bad_hello');
    expect(m.size).toBe(2);
    expect(m.get(a, 'akPub', 'tpm.bad_hello')).toBe(first);
    // b was the least recently used: parsed again, a new entry.
    expect(m.get(b, 'ekPub', 'tpm.bad_hello')).not.toBe(second);
  });
});

describe('EkCertVerifier.verifyTexts (EK chains by their base64 texts)', () => {
  it('decodes and verifies a chain text once while valid; other texts, a time outside the validity and bad text are checked again', async () => {
    const root = await makeRoot('Memo Root');
    const inter = await makeIntermediate('Memo CA', root, { notAfter: new Date('2030-01-01T00:00:00Z') });
    const ekKey = rsaKeyPair().publicKey;
    const cert = await makeEkCert(ekKey, inter);
    const v = new EkCertVerifier(new EkTrustStore([root.der]));
    let decodes = 0;
    const decode = (t: string): Buffer => {
      decodes++;
      const b = Buffer.from(t, 'base64');
      if (b.toString('base64') !== t) throw new SigilError('tpm.bad_hello', 'bad text');
      return b;
    };
    const at = new Date('2026-06-01T00:00:00Z');
    const texts = [cert.toString('base64'), [inter.der.toString('base64')]] as const;
    const r = await v.verifyTexts(texts[0], texts[1], at, decode);
    expect(decodes).toBe(2);
    expect(await v.verifyTexts(texts[0], texts[1], at, decode)).toBe(r);
    expect(decodes).toBe(2);
    // Without the intermediate: another text, verified on its own (and refused: no path to the root).
    expect(await codeOfAsync(v.verifyTexts(texts[0], [], at, decode))).toMatch(/^tpm\.ek_/);
    // Past the intermediate's notAfter the kept result does not answer: checked again and refused.
    expect(await codeOfAsync(v.verifyTexts(texts[0], texts[1], new Date('2031-01-01T00:00:00Z'), decode))).toBe('tpm.ek_cert_expired');
    // The same characters split differently between the certificate and its intermediates are another list: decoded, refused.
    expect(await codeOfAsync(v.verifyTexts(`${texts[0]}|${texts[1][0]}`, [], at, decode))).toBe('tpm.bad_hello');
    // Joined without a separator: when the certificate's length is a multiple of 3 its text has no padding, the
    // joined text is canonical base64 and decodes to a certificate with trailing bytes; otherwise the padding in
    // the middle is refused by the decoder. Either way it is refused, never the kept result.
    const joined = cert.length % 3 === 0 ? 'tpm.ek_cert_malformed' : 'tpm.bad_hello';
    expect(await codeOfAsync(v.verifyTexts(texts[0] + texts[1][0], [], at, decode))).toBe(joined);
    // A bad text is the decoder's error.
    expect(await codeOfAsync(v.verifyTexts(`${texts[0]}x`, texts[1], at, decode))).toBe('tpm.bad_hello');
    expect(await codeOfAsync(v.verifyTexts(texts[0], Array.from({ length: 9 }, () => texts[1][0]), at, decode))).toBe('tpm.ek_cert_malformed');
  });
});
