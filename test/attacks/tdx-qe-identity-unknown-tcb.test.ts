/**
 * Attack review (TDX, no-collateral mode): the Provisioning Certification Enclave certifies the
 * report of any enclave that holds the PROVISIONKEY attribute, so a PCK-signed QE report alone does
 * not prove the quote came from Intel's TD Quoting Enclave. With collateral, the QE Identity pins
 * MRSIGNER / ISVPRODID / ATTRIBUTES; with `allowUnknownTcb` and no collateral nothing did, so the
 * owner of any SGX machine could run their own "QE" (or Intel's QE in debug mode, whose key the
 * host can read) and sign TD reports with any MRTD, RTMRs and REPORTDATA.
 */
import { createHash, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { verifyTdxQuote } from '../../src/tdx/verify.js';
import { codeOf } from '../support/codes.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki, type TdxTestPki } from '../tdx/synthetic.js';

const pki = makeTdxTestPki();
/** v4: header 48 + body 584 + SIG_DATA_LEN 4 + signature 64 + key 64 + type 2 + size 4. */
const QE_AT = 48 + 584 + 4 + 64 + 64 + 2 + 4;

/** The quote with its QE report edited by `edit` and re-signed with the (real) PCK key. */
function withQeReport(p: TdxTestPki, edit: (qe: Buffer) => void): Buffer {
  const q = Buffer.from(makeTdxQuote(p));
  const qe = q.subarray(QE_AT, QE_AT + 384);
  edit(qe);
  sign('sha256', qe, { key: p.pck.privateKey, dsaEncoding: 'ieee-p1363' }).copy(q, QE_AT + 384);
  return q;
}

const unknownTcb = { now: T0, rootSha256: pki.rootSha256, allowUnknownTcb: true } as const;

describe('tdx without collateral: the QE must still be Intel\'s TD QE', () => {
  it('a genuine QE is accepted (control)', () => {
    expect(verifyTdxQuote(makeTdxQuote(pki), undefined, unknownTcb).tcbStatus).toBe('Unknown');
  });

  it('refuses a PCK-certified enclave with another MRSIGNER (attacker-built QE)', () => {
    const q = withQeReport(pki, (qe) => createHash('sha256').update('attacker enclave signer').digest().copy(qe, 128));
    // With collateral the QE Identity catches it…
    expect(codeOf(() => verifyTdxQuote(q, makeCollateral(pki), { now: T0, rootSha256: pki.rootSha256 }))).toBe('tdx.qe_identity_mismatch');
    // …and without collateral it must too.
    expect(codeOf(() => verifyTdxQuote(q, undefined, unknownTcb))).toBe('tdx.qe_identity_mismatch');
  });

  it('refuses Intel\'s QE running in debug mode (ATTRIBUTES.DEBUG set)', () => {
    const q = withQeReport(pki, (qe) => {
      qe[48] = qe[48]! | 0x02;
    });
    expect(codeOf(() => verifyTdxQuote(q, undefined, unknownTcb))).toBe('tdx.qe_identity_mismatch');
  });

  it('refuses an Intel-signed enclave that is not the TD QE (ISVPRODID 1 = SGX QE)', () => {
    const q = withQeReport(pki, (qe) => qe.writeUInt16LE(1, 256));
    expect(codeOf(() => verifyTdxQuote(q, undefined, unknownTcb))).toBe('tdx.qe_identity_mismatch');
  });
});
