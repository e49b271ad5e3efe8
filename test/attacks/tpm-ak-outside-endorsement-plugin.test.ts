/**
 * The `tpm` attestor end to end with an AK that is not the EK's child (see
 * tpm-ak-outside-endorsement.test.ts): the TPM activates the credential for it, and its quote's
 * obfuscated resetCount passes the per-EK rollback check that the node's real counters fail.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { SessionInput } from '../../src/plugins/types.js';
import { spkiHash } from '../../src/tpm/keys.js';
import { parsePcrValuesFile } from '../../src/tpm/pcrvalues.js';
import { tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { parseTpm2bPublic } from '../../src/tpm/structures.js';
import { finishAndCommit } from '../tpm/commit.js';
import { MemoryState } from '../tpm/memory-state.js';
import { RSA_EK_HANDLE, startToolsTpm, type ToolsTpm } from '../tpm/tpm2tools.js';

let t: ToolsTpm | null = null;
let ak: { pub: Buffer; ctx: string };
let ownerAk: { pub: Buffer; ctx: string };

beforeAll(async () => {
  t = await startToolsTpm();
  if (!t) return;
  ak = await t.createAk('ak', 'rsa');
  await t.run('tpm2_createprimary', ['-C', 'o', '-c', t.file('srk.ctx')]);
  await t.run('tpm2_create', ['-C', t.file('srk.ctx'), '-G', 'rsa2048:rsassa-sha256:null', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-u', t.file('own.pub'), '-r', t.file('own.priv')]);
  await t.flush();
  await t.run('tpm2_load', ['-C', t.file('srk.ctx'), '-u', t.file('own.pub'), '-r', t.file('own.priv'), '-c', t.file('own.ctx')]);
  await t.flush();
  ownerAk = { pub: readFileSync(t.file('own.pub')), ctx: t.file('own.ctx') };
}, 60_000);
afterAll(async () => t?.stop());

/** One session of the tpm attestor with `key` as AK, against counters stored as `stored`. */
async function attestWith(key: { pub: Buffer; ctx: string }, stored: unknown, tag: string): Promise<string> {
  const tpm = t as ToolsTpm;
  const state = new MemoryState();
  await state.put(`counters:${spkiHash(parseTpm2bPublic(tpm.ekPubRsa))}`, stored);
  const v = await tpmVerifierPlugin.create(
    { ekCa: tpm.ekCaFiles, pcrs: { sha256: [0, 7] } },
    { trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => new Date(), state, configDir: tpm.dir },
  );
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const s: SessionInput = { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
  const hello = { ekCert: tpm.ekCertRsa.toString('base64'), ekPub: tpm.ekPubRsa.toString('base64'), akPub: key.pub.toString('base64') };
  const { challenge, state: st } = await v.begin(hello, s);
  const ch = challenge as { credentialBlob: string; encryptedSecret: string };
  const secret = await tpm.activate(key.ctx, RSA_EK_HANDLE, Buffer.from(ch.credentialBlob, 'base64'), Buffer.from(ch.encryptedSecret, 'base64'), `${tag}-act`);
  const q = await tpm.quote(key.ctx, 'sha256:0,7', s.binding.toString('hex'), `${tag}-q`);
  const response = {
    secret: secret.toString('base64'),
    quote: q.msg.toString('base64'),
    signature: q.sig.toString('base64'),
    pcrValues: parsePcrValuesFile(q.pcrs).map((p) => ({ bank: p.bank, index: p.index, value: p.value.toString('hex') })),
  };
  try {
    await finishAndCommit(v, response, st, s);
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

describe('the tpm attestor with an AK outside the endorsement hierarchy', () => {
  // Counters stored before the node's TPM was cleared (or by a copy of its TPM state that ran ahead).
  const ahead = { resetCount: 1000, restartCount: 0, clock: '0' };

  it('the AK made under the EK reports the real counters: refused as a rollback until eviction', async ({ skip }) => {
    if (!t) return skip();
    expect(await attestWith(ak, ahead, 'real')).toBe('tpm.counter_rollback');
  }, 60_000);

  it('an owner-hierarchy AK of the same TPM is refused: tpm.ak_not_under_ek (its obfuscated counters would pass)', async ({ skip }) => {
    if (!t) return skip();
    expect(await attestWith(ownerAk, ahead, 'owner')).toBe('tpm.ak_not_under_ek');
  }, 60_000);
});
