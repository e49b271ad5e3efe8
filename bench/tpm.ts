/**
 * Verifier-side TPM attestation throughput (one core): begin (EK chain — cached per
 * certificate —, EK/AK checks, MakeCredential) + finish (secret check, quote verification,
 * PCR digest, counters). Evidence is synthetic: an RSA-2048 EK certified by an ECDSA CA,
 * an RSA-2048 RSASSA-SHA256 AK, quotes over sha256:0-7 laid out as a TPM does. The agent's
 * work (signing the quote) is done outside the timed sections.
 *
 * Prints attestations/s and the ratio to the raw RSA-2048 verify + RSA-OAEP encrypt rate
 * measured in the same run (the two public-key operations each attestation needs).
 *
 *   npx tsx bench/tpm.ts [seconds=3]
 */
import 'reflect-metadata';
import { constants, createHash, publicEncrypt, randomBytes, sign, verify } from 'node:crypto';
import { sessionBinding } from '../src/plugins/binding.js';
import type { SessionInput } from '../src/plugins/types.js';
import { makeCredential } from '../src/tpm/credential.js';
import { EkCertVerifier, EkTrustStore } from '../src/tpm/ekcert.js';
import { TpmVerifier } from '../src/tpm/plugin.js';
import { verifyQuote, type PcrValue } from '../src/tpm/quote.js';
import { encodePcrSelection, objectName, parsePcrSelection, parseTpm2bPublic, type PcrBankSelection } from '../src/tpm/structures.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, signerUnderEk, syntheticQuote } from '../test/tpm/synthetic.js';
import { MemoryState } from './support/memory-state.js';

const seconds = Number(process.argv[2] ?? 3);


function rate(label: string, n: number, ns: bigint): number {
  const perSec = n / (Number(ns) / 1e9);
  console.log(`${label.padEnd(48)} ${perSec.toFixed(0).padStart(8)} /s  (${n} in ${(Number(ns) / 1e9).toFixed(2)} s)`);
  return perSec;
}

async function main(): Promise<void> {
  const root = await makeRoot('Bench EK Root');
  const inter = await makeIntermediate('Bench EK Issuing CA', root);
  const ek = rsaKeyPair();
  const ak = rsaKeyPair();
  const ekCert = await makeEkCert(ek.publicKey, inter);
  const ekPub = ekPublicFor(ek.publicKey);
  const akPub = akPublicFor(ak.publicKey);
  // The quote's qualifiedSigner: the AK as the EK's child (the attestor requires it).
  const signer = signerUnderEk(ekPub, akPub);
  const selection: PcrBankSelection[] = [{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];
  const values = new Map<string, Buffer>();
  const pcrValues: { bank: string; index: number; value: string }[] = [];
  for (let i = 0; i < 8; i++) {
    const v = createHash('sha256').update(`pcr${i}`).digest();
    values.set(`sha256:${i}`, v);
    pcrValues.push({ bank: 'sha256', index: i, value: v.toString('hex') });
  }
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  const hello = { ekCert: ekCert.toString('base64'), ekIntermediates: [inter.der.toString('base64')], ekPub: ekPub.toString('base64'), akPub: akPub.toString('base64') };
  const verifier = new TpmVerifier(new EkCertVerifier(new EkTrustStore([root.der])), selection, ['sha256', 'sha384', 'sha512'], { state: new MemoryState() });

  // --- raw public-key rate: RSA-2048 PKCS#1 v1.5 verify + RSA-OAEP(SHA-256) encrypt
  const msg = randomBytes(150);
  const sig = sign('sha256', msg, ak.privateKey);
  const seed = randomBytes(32);
  let n = 0;
  let t0 = process.hrtime.bigint();
  const rawEnd = t0 + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < rawEnd) {
    verify('sha256', msg, ak.publicKey, sig);
    publicEncrypt({ key: ek.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from('IDENTITY\0') }, seed);
    n++;
  }
  const raw = rate('raw RSA-2048 verify + OAEP encrypt (pairs)', n, process.hrtime.bigint() - t0);

  // --- components
  const ekParsed = parseTpm2bPublic(ekPub);
  const akParsed = parseTpm2bPublic(akPub);
  const akName = objectName(akParsed);
  n = 0;
  t0 = process.hrtime.bigint();
  while (process.hrtime.bigint() - t0 < BigInt(Math.round((seconds / 3) * 1e9))) {
    makeCredential(ekParsed, akName, seed);
    n++;
  }
  rate('MakeCredential (RSA-2048 EK)', n, process.hrtime.bigint() - t0);
  const fixedBinding = randomBytes(32);
  const q = syntheticQuote({ ak: ak.privateKey, extraData: fixedBinding, selection, values, clock: 1n, resetCount: 1, restartCount: 0, signer });
  const pv: PcrValue[] = pcrValues.map((p) => ({ bank: 'sha256', index: p.index, value: Buffer.from(p.value, 'hex') }));
  const expectedSel = parsePcrSelection(encodePcrSelection(selection));
  n = 0;
  t0 = process.hrtime.bigint();
  while (process.hrtime.bigint() - t0 < BigInt(Math.round((seconds / 3) * 1e9))) {
    verifyQuote({ ak: akParsed, quote: q.attest, signature: q.signature, qualifyingData: fixedBinding, expectedSelection: expectedSel, pcrValues: pv });
    n++;
  }
  rate('verifyQuote (RSASSA-2048, 8 PCRs)', n, process.hrtime.bigint() - t0);

  // --- full verifier-side attestations (begin + finish), agent work untimed
  let timed = 0n;
  let clock = 10n;
  n = 0;
  const wallEnd = process.hrtime.bigint() + BigInt(Math.round(seconds * 2 * 1e9));
  while (process.hrtime.bigint() < wallEnd) {
    const nonce = randomBytes(32);
    const session: SessionInput = { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
    let a = process.hrtime.bigint();
    const { challenge, state } = await verifier.begin(hello, session);
    timed += process.hrtime.bigint() - a;
    // agent side (untimed): the TPM would activate the credential and sign the quote
    const ch = challenge as { credentialBlob: string; encryptedSecret: string };
    const secret = activateCredentialSoftware(ek.privateKey, akPub, Buffer.from(ch.credentialBlob, 'base64'), Buffer.from(ch.encryptedSecret, 'base64')).toString('base64');
    const quote = syntheticQuote({ ak: ak.privateKey, extraData: session.binding, selection, values, clock: clock++, resetCount: 1, restartCount: 0, signer });
    const response = { secret, quote: quote.attest.toString('base64'), signature: quote.signature.toString('base64'), pcrValues };
    a = process.hrtime.bigint();
    await verifier.finish(response, state, session);
    timed += process.hrtime.bigint() - a;
    n++;
  }
  const att = rate('TPM attestations (begin + finish), verifier only', n, timed);
  console.log(`ratio attestations / raw (verify + OAEP) pairs: ${(att / raw).toFixed(3)}  (target ≥ 2,000 attestations/s on one core: ${att >= 2000 ? 'met' : 'NOT met'})`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
