/**
 * RSASSA-PSS quote signatures: a TPM salts PSS with as many bytes as the digest (TPM 2.0 Part 1,
 * RSASSA-PSS: the largest salt ≤ the hash size, which for RSA ≥ 2048 is the digest size), so the
 * verifier pins that length and refuses any other — a PSS signature with another salt was not made
 * by a TPM. (The swtpm path is in tools.test.ts.)
 */
import { constants, randomBytes, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TPM_ALG, hashByName, type HashName } from '../../src/tpm/constants.js';
import { verifyQuote, verifyTpmSignature } from '../../src/tpm/quote.js';
import { TpmWriter } from '../../src/tpm/reader.js';
import { parseSignature, parseTpm2bPublic } from '../../src/tpm/structures.js';
import { akPublicFor, rsaKeyPair, syntheticQuote } from './synthetic.js';
import { codeOf } from '../support/codes.js';

const ak = rsaKeyPair();
const akPss = parseTpm2bPublic(akPublicFor(ak.publicKey, undefined, 'rsapss'));
const binding = randomBytes(32);
const selection = [{ bank: 'sha256' as const, pcrs: [7] }];
const values = new Map<string, Buffer>([['sha256:7', Buffer.alloc(32, 7)]]);


function quoteWithSalt(saltLength: number): { attest: Buffer; signature: Buffer } {
  return syntheticQuote({ ak: ak.privateKey, extraData: binding, selection, values, clock: 1n, resetCount: 1, restartCount: 0, pssSaltLength: saltLength });
}

function check(q: { attest: Buffer; signature: Buffer }): string {
  return codeOf(() => verifyQuote({ ak: akPss, quote: q.attest, signature: q.signature, qualifyingData: binding, expectedSelection: [{ hashAlg: TPM_ALG.SHA256, sizeofSelect: 3, pcrs: [7] }] }));
}

describe('RSASSA-PSS AK signatures', () => {
  it('accept a quote salted with the digest length (32 bytes for SHA-256), as a TPM signs', () => {
    const q = quoteWithSalt(32);
    expect(parseSignature(q.signature).sigAlg).toBe(TPM_ALG.RSAPSS);
    expect(check(q)).toBe('no error');
  });

  it('refuse a PSS quote with any other salt length (valid PSS otherwise)', () => {
    // 256-byte modulus, SHA-256: the largest salt PSS allows is 256 - 32 - 2 = 222.
    for (const salt of [0, 1, 20, 31, 33, 48, 64, 222]) {
      expect({ salt, code: check(quoteWithSalt(salt)) }).toEqual({ salt, code: 'tpm.quote_signature_invalid' });
    }
  });

  it('pins the salt to the signature hash: 48 bytes for SHA-384, 64 for SHA-512', () => {
    // verifyTpmSignature directly: the synthetic AK's scheme names SHA-256, which verifyQuote would refuse first.
    const data = randomBytes(100);
    const pss = (hash: HashName, saltLength: number) => {
      const s = sign(hash, data, { key: ak.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength });
      return parseSignature(new TpmWriter().u16(TPM_ALG.RSAPSS).u16(hashByName(hash)!.alg).tpm2b(s).toBuffer());
    };
    for (const [hash, size] of [['sha256', 32], ['sha384', 48], ['sha512', 64]] as const) {
      expect(codeOf(() => verifyTpmSignature(akPss, pss(hash, size), hash, data))).toBe('no error');
      for (const other of [0, 20, 32, 48, 64].filter((n) => n !== size)) {
        expect({ hash, other, code: codeOf(() => verifyTpmSignature(akPss, pss(hash, other), hash, data)) }).toEqual({ hash, other, code: 'tpm.quote_signature_invalid' });
      }
    }
  });
});
