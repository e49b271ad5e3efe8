/**
 * An AK that is not a child of the EK. Credential activation proves only that the AK is loaded in
 * the TPM that holds the EK, not where it was created; and for a signing key outside the
 * endorsement and platform hierarchies the TPM obfuscates clockInfo.resetCount,
 * clockInfo.restartCount and firmwareVersion in what it signs (TPM 2.0 Part 2, TPMS_ATTEST). So a
 * node whose AK lives under an owner-hierarchy primary (an SRK) reports counters and a firmware
 * version that say nothing about its TPM — random-looking values that change with every such AK it
 * makes — and the per-EK rollback check (docs/tpm.md "Counters": after TPM2_Clear the node is
 * refused until evicted) is passed by making AKs until one's obfuscated resetCount is above the
 * stored one. The quote's qualifiedSigner (signed) is the AK's Qualified Name, which for a child of
 * the EK is nameAlg ‖ H(QN(EK) ‖ Name(AK)) with QN(EK) = nameAlg ‖ H(TPM_RH_ENDORSEMENT ‖ Name(EK)):
 * comparing it proves the AK is the EK's child and its counters are the TPM's own.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { verifyQuote } from '../../src/tpm/quote.js';
import { parseAttestAny, parseTpm2bPublic, qualifiedNameUnderEk } from '../../src/tpm/structures.js';
import { parsePcrValuesFile } from '../../src/tpm/pcrvalues.js';
import { readFileSync } from 'node:fs';
import { startToolsTpm, type ToolsTpm } from '../tpm/tpm2tools.js';

let t: ToolsTpm | null = null;
let ak: { pub: Buffer; ctx: string };
let ownerAk: { pub: Buffer; ctx: string };

beforeAll(async () => {
  t = await startToolsTpm();
  if (!t) return;
  ak = await t.createAk('ak', 'rsa');
  // A restricted signing key with every attribute an AK needs, under an owner-hierarchy primary.
  await t.run('tpm2_createprimary', ['-C', 'o', '-c', t.file('srk.ctx')]);
  await t.run('tpm2_create', ['-C', t.file('srk.ctx'), '-G', 'rsa2048:rsassa-sha256:null', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-u', t.file('own.pub'), '-r', t.file('own.priv')]);
  await t.flush();
  await t.run('tpm2_load', ['-C', t.file('srk.ctx'), '-u', t.file('own.pub'), '-r', t.file('own.priv'), '-c', t.file('own.ctx')]);
  await t.flush();
  ownerAk = { pub: readFileSync(t.file('own.pub')), ctx: t.file('own.ctx') };
}, 60_000);
afterAll(async () => t?.stop());

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

async function quoteWith(key: { ctx: string }, tag: string) {
  const q = await (t as ToolsTpm).quote(key.ctx, 'sha256:0,7', '5a'.repeat(32), tag);
  return { ...q, values: parsePcrValuesFile(q.pcrs) };
}

describe('an AK outside the endorsement hierarchy', () => {
  it('qualifiedNameUnderEk is the qualifiedSigner a TPM writes for an AK made under its EK', async ({ skip }) => {
    if (!t) return skip();
    const q = await quoteWith(ak, 'qn');
    expect(parseAttestAny(q.msg).qualifiedSigner.toString('hex')).toBe(qualifiedNameUnderEk(parseTpm2bPublic(t.ekPubRsa), parseTpm2bPublic(ak.pub)).toString('hex'));
  });

  it('its quotes carry obfuscated counters and firmware version, and verifyQuote refuses them: tpm.ak_not_under_ek', async ({ skip }) => {
    if (!t) return skip();
    const ek = parseTpm2bPublic(t.ekPubRsa);
    const real = parseAttestAny((await quoteWith(ak, 'real')).msg);
    const q = await quoteWith(ownerAk, 'owner');
    const own = parseAttestAny(q.msg);
    // What the owner-hierarchy AK's quote says is not the TPM's state.
    expect(own.clockInfo.resetCount).not.toBe(real.clockInfo.resetCount);
    expect(own.firmwareVersion).not.toBe(real.firmwareVersion);
    const owner = parseTpm2bPublic(ownerAk.pub);
    const input = { ak: owner, quote: q.msg, signature: q.sig, qualifyingData: Buffer.from('5a'.repeat(32), 'hex'), pcrValues: q.values };
    expect(codeOf(() => verifyQuote(input))).toBe('ok'); // structurally a perfect quote
    expect(codeOf(() => verifyQuote({ ...input, expectedSigner: qualifiedNameUnderEk(ek, owner) }))).toBe('tpm.ak_not_under_ek');
    // The AK made under the EK passes the same check.
    const good = await quoteWith(ak, 'good');
    const akPub = parseTpm2bPublic(ak.pub);
    expect(
      codeOf(() => verifyQuote({ ak: akPub, quote: good.msg, signature: good.sig, qualifyingData: Buffer.from('5a'.repeat(32), 'hex'), pcrValues: good.values, expectedSigner: qualifiedNameUnderEk(ek, akPub) })),
    ).toBe('ok');
  });
});
