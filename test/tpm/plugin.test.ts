/**
 * Plugin-level sessions: Sigil's `tpm` verifier plugin (begin/finish) against a swtpm where
 * tpm2-tools plays the agent (tpm2_activatecredential + tpm2_quote -q <binding>).
 * Every rejection has its own error code.
 */
import { finishAndCommit } from './commit.js';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { hashByAlg } from '../../src/tpm/constants.js';
import { spkiHash } from '../../src/tpm/keys.js';
import { parsePcrValuesFile } from '../../src/tpm/pcrvalues.js';
import { tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { parsePcrSelection, parseTpm2bPublic } from '../../src/tpm/structures.js';
import { MemoryState } from './memory-state.js';
import { ECC_EK_HANDLE, RSA_EK_HANDLE, pcrListString, startToolsTpm, type ToolsTpm } from './tpm2tools.js';

const exec = promisify(execFile);

let t: ToolsTpm | null = null;
let ak: { pub: Buffer; ctx: string; nameHex: string };
let akEcc: { pub: Buffer; ctx: string; nameHex: string };
/** An AK made under the ECC P-384 EK, as an agent attesting with that EK makes it. */
let akUnderEccEk: { pub: Buffer; ctx: string; nameHex: string };
let ak2: { pub: Buffer; ctx: string; nameHex: string };
const PCRS = { sha1: [0], sha256: [0, 1, 2, 16] };

async function makeVerifier(state = new MemoryState(), ekCa?: string[]): Promise<{ v: NodeAttestorVerifier; state: MemoryState }> {
  if (!t) throw new Error('no TPM');
  const v = await tpmVerifierPlugin.create(
    { ekCa: ekCa ?? t.ekCaFiles, pcrs: PCRS },
    { trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => new Date(), state, configDir: t.dir },
  );
  return { v, state };
}

function newSession(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date(Date.now() + 1000) };
}

function b64(b: Buffer): string {
  return b.toString('base64');
}

interface Challenge {
  credentialBlob: string;
  encryptedSecret: string;
  pcrSelection: string;
}

/** tpm2-tools as the agent: activate the credential and quote over `binding` with the selection sent. */
async function toolsRespond(
  challenge: Challenge,
  binding: Buffer,
  opts: { activateWith?: typeof ak; quoteWith?: typeof ak; ekHandle?: string; pcrList?: string; tag: string },
): Promise<{ secret: string; quote: string; signature: string; pcrValues: { bank: string; index: number; value: string }[] }> {
  if (!t) throw new Error('no TPM');
  const sel = parsePcrSelection(Buffer.from(challenge.pcrSelection, 'base64'));
  const list = opts.pcrList ?? pcrListString(sel.map((s) => ({ bank: hashByAlg(s.hashAlg)?.name ?? '?', pcrs: s.pcrs })));
  let secret: Buffer;
  try {
    secret = await t.activate(
      (opts.activateWith ?? ak).ctx,
      opts.ekHandle ?? RSA_EK_HANDLE,
      Buffer.from(challenge.credentialBlob, 'base64'),
      Buffer.from(challenge.encryptedSecret, 'base64'),
      `${opts.tag}-act`,
    );
  } catch {
    secret = randomBytes(32); // the TPM refused: an agent can only guess
  }
  const q = await t.quote((opts.quoteWith ?? ak).ctx, list, binding.toString('hex'), `${opts.tag}-q`);
  return {
    secret: b64(secret),
    quote: b64(q.msg),
    signature: b64(q.sig),
    pcrValues: parsePcrValuesFile(q.pcrs).map((v) => ({ bank: v.bank, index: v.index, value: v.value.toString('hex') })),
  };
}

function hello(over: Record<string, unknown> = {}): Record<string, unknown> {
  if (!t) throw new Error('no TPM');
  return { ekCert: b64(t.ekCertRsa), ekPub: b64(t.ekPubRsa), akPub: b64(ak.pub), ...over };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

beforeAll(async () => {
  t = await startToolsTpm();
  if (!t) return;
  await t.run('tpm2_pcrextend', ['16:sha256=' + '11'.repeat(32) + ',sha1=' + '22'.repeat(20)]);
  ak = await t.createAk('ak', 'rsa');
  akEcc = await t.createAk('ak-ecc', 'ecc');
  ak2 = await t.createAk('ak2', 'rsa');
  akUnderEccEk = await t.createAk('ak-under-ecc-ek', 'ecc', ECC_EK_HANDLE);
}, 60_000);

afterAll(async () => {
  await t?.stop();
});

describe('tpm verifier plugin driven by tpm2-tools', () => {
  it('full session with the RSA EK: begin → activate + quote → finish', async ({ skip }) => {
    if (!t) return skip();
    const { v, state } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'ok' });
    const r = await finishAndCommit(v, resp, st, s);
    const ekHash = spkiHash(parseTpm2bPublic(t.ekPubRsa));
    expect(r.agentIdSuffix).toBe(ekHash);
    expect(r.selectors).toContain(`tpm:ek_pubhash:${ekHash}`);
    expect(r.selectors).toContain('tpm:ek_manufacturer:id:00001014');
    expect(r.selectors).toContain('tpm:ek_model:swtpm');
    expect(r.selectors).toContain('tpm:ek_version:id:20191023');
    expect(r.selectors.filter((x) => x.startsWith('tpm:pcr:'))).toEqual([
      `tpm:pcr:sha1:0:${'00'.repeat(20)}`,
      `tpm:pcr:sha256:0:${'00'.repeat(32)}`,
      `tpm:pcr:sha256:1:${'00'.repeat(32)}`,
      `tpm:pcr:sha256:2:${'00'.repeat(32)}`,
      expect.stringMatching(/^tpm:pcr:sha256:16:[0-9a-f]{64}$/),
    ]);
    expect(r.claims.akBoundToEk).toBe(true);
    expect(state.m.get(`counters:${ekHash}`)).toMatchObject({ resetCount: expect.any(Number), restartCount: expect.any(Number) });
    // JSON round trip of the challenge and state (they may be stored or sent over HTTP)
    expect(JSON.parse(JSON.stringify(challenge))).toEqual(challenge);
  });

  it('full session with the ECC P-384 EK (sha384 / AES-256 credential protection)', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello({ ekCert: b64(t.ekCertEcc), ekPub: b64(t.ekPubEcc), akPub: b64(akUnderEccEk.pub) }), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'ecc', ekHandle: ECC_EK_HANDLE, activateWith: akUnderEccEk, quoteWith: akUnderEccEk });
    const r = await finishAndCommit(v, resp, st, s);
    expect(r.agentIdSuffix).toBe(spkiHash(parseTpm2bPublic(t.ekPubEcc)));
  });

  it('an AK made under the RSA EK, attested with the ECC EK: activation works (any loaded key), the quote signer is not the ECC EK\'s child: tpm.ak_not_under_ek', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello({ ekCert: b64(t.ekCertEcc), ekPub: b64(t.ekPubEcc), akPub: b64(akEcc.pub) }), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'ecc-foreign-ak', ekHandle: ECC_EK_HANDLE, activateWith: akEcc, quoteWith: akEcc });
    expect(await codeOf(finishAndCommit(v, resp, st, s))).toBe('tpm.ak_not_under_ek');
  });

  it('rejects a quote over another nonce: tpm.nonce_mismatch', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    const resp = await toolsRespond(challenge as Challenge, newSession().binding, { tag: 'nonce' });
    expect(await codeOf(finishAndCommit(v, resp, st, s))).toBe('tpm.nonce_mismatch');
  });

  it('rejects a tampered quote and a tampered signature: tpm.quote_signature_invalid', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'tamper' });
    const q = Buffer.from(resp.quote, 'base64');
    q[q.length - 1] = (q[q.length - 1] ?? 0) ^ 0x80; // last byte of the PCR digest
    expect(await codeOf(finishAndCommit(v, { ...resp, quote: b64(q) }, st, s))).toBe('tpm.quote_signature_invalid');
    const sig = Buffer.from(resp.signature, 'base64');
    sig[10] = (sig[10] ?? 0) ^ 0x01;
    expect(await codeOf(finishAndCommit(v, { ...resp, signature: b64(sig) }, st, s))).toBe('tpm.quote_signature_invalid');
    // garbage in the quote's structure
    expect(await codeOf(finishAndCommit(v, { ...resp, quote: b64(Buffer.from('ff544347801800', 'hex')) }, st, s))).toBe('tpm.quote_malformed');
  });

  it('rejects PCR values that do not match the quoted digest: tpm.pcr_digest_mismatch', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'pcr' });
    const pcrValues = resp.pcrValues.map((p) => (p.bank === 'sha256' && p.index === 16 ? { ...p, value: 'ee'.repeat(32) } : p));
    expect(await codeOf(finishAndCommit(v, { ...resp, pcrValues }, st, s))).toBe('tpm.pcr_digest_mismatch');
  });

  it('rejects a quote over other PCRs than required: tpm.pcr_selection_mismatch', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'sel', pcrList: 'sha256:0,1' });
    expect(await codeOf(finishAndCommit(v, resp, st, s))).toBe('tpm.pcr_selection_mismatch');
  });

  it('rejects an unrestricted signing key as AK: tpm.ak_not_restricted', async ({ skip }) => {
    if (!t) return skip();
    await t.run('tpm2_createprimary', ['-C', 'o', '-c', t.file('srk.ctx')]);
    await t.run('tpm2_create', ['-C', t.file('srk.ctx'), '-G', 'rsa2048', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign', '-u', t.file('plain.pub'), '-r', t.file('plain.priv')]);
    await t.flush();
    const { v } = await makeVerifier();
    expect(await codeOf(v.begin(hello({ akPub: b64(readFileSync(t.file('plain.pub'))) }), newSession()))).toBe('tpm.ak_not_restricted');
  });

  it('rejects an EK certificate from an untrusted CA: tpm.ek_untrusted', async ({ skip }) => {
    if (!t) return skip();
    await exec('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', t.file('other.key'), '-out', t.file('other.pem'), '-subj', '/CN=swtpm-localca', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
    const { v } = await makeVerifier(new MemoryState(), ['other.pem']); // relative: resolved against configDir
    expect(await codeOf(v.begin(hello(), newSession()))).toBe('tpm.ek_untrusted');
  });

  it('rejects an EK public that differs from the certificate: tpm.ek_public_mismatch', async ({ skip }) => {
    if (!t) return skip();
    // another restricted decryption primary in the endorsement hierarchy (valid EK-like key, other key material)
    await t.run('tpm2_createprimary', ['-C', 'e', '-G', 'rsa2048:aes128cfb', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt', '-c', t.file('other-ek.ctx')]);
    await t.run('tpm2_readpublic', ['-c', t.file('other-ek.ctx'), '-o', t.file('other-ek.pub')]);
    await t.flush();
    const { v } = await makeVerifier();
    expect(await codeOf(v.begin(hello({ ekPub: b64(readFileSync(t.file('other-ek.pub'))) }), newSession()))).toBe('tpm.ek_public_mismatch');
    // and the other EK's type with the RSA certificate
    expect(await codeOf(v.begin(hello({ ekPub: b64(t.ekPubEcc) }), newSession()))).toBe('tpm.ek_public_mismatch');
  });

  it('rejects when the AK that is used is not the one the credential was made for: tpm.credential_mismatch', async ({ skip }) => {
    if (!t) return skip();
    const { v } = await makeVerifier();
    const s = newSession();
    const { challenge, state: st } = await v.begin(hello(), s);
    // the agent activates and quotes with another AK: the TPM refuses activation, the agent can only guess
    const resp = await toolsRespond(challenge as Challenge, s.binding, { tag: 'name', activateWith: akEcc, quoteWith: akEcc });
    expect(await codeOf(finishAndCommit(v, resp, st, s))).toBe('tpm.credential_mismatch');
    // activation with the right AK but a quote from another AK does not pass either
    const resp2 = await toolsRespond(challenge as Challenge, s.binding, { tag: 'name2', quoteWith: ak2 });
    expect(await codeOf(finishAndCommit(v, resp2, st, s))).toBe('tpm.quote_signature_invalid');
    const resp3 = await toolsRespond(challenge as Challenge, s.binding, { tag: 'name3', quoteWith: akEcc });
    expect(await codeOf(finishAndCommit(v, resp3, st, s))).toBe('tpm.signature_scheme_mismatch');
  });

  it('rejects replays: an old response in a new session, and an older quote after a newer one', async ({ skip }) => {
    if (!t) return skip();
    const { v, state } = await makeVerifier();
    // session A completes
    const sA = newSession();
    const a = await v.begin(hello(), sA);
    const respA = await toolsRespond(a.challenge as Challenge, sA.binding, { tag: 'rA' });
    await finishAndCommit(v, respA, a.state, sA);
    // replaying A's response into session B: the secret is B's, not A's
    const sB = newSession();
    const b = await v.begin(hello(), sB);
    expect(await codeOf(finishAndCommit(v, respA, b.state, sB))).toBe('tpm.credential_mismatch');

    // session C's quote is made first (older clock), then session D completes, then C finishes late
    const sC = newSession();
    const c = await v.begin(hello(), sC);
    const respC = await toolsRespond(c.challenge as Challenge, sC.binding, { tag: 'rC' });
    await new Promise((r) => setTimeout(r, 20));
    const sD = newSession();
    const d = await v.begin(hello(), sD);
    await finishAndCommit(v, await toolsRespond(d.challenge as Challenge, sD.binding, { tag: 'rD' }), d.state, sD);
    expect(await codeOf(finishAndCommit(v, respC, c.state, sC))).toBe('tpm.counter_rollback');
    const key = `counters:${spkiHash(parseTpm2bPublic(t.ekPubRsa))}`;
    const last = state.m.get(key) as { clock: string };
    expect(BigInt(last.clock)).toBeGreaterThan(0n);
  });

  it('accepts a TPM reset (resetCount grows, restartCount back to 0) after earlier quotes', async ({ skip }) => {
    if (!t) return skip();
    const { v, state } = await makeVerifier();
    const s1 = newSession();
    const one = await v.begin(hello(), s1);
    await finishAndCommit(v, await toolsRespond(one.challenge as Challenge, s1.binding, { tag: 'reset1' }), one.state, s1);
    const key = `counters:${spkiHash(parseTpm2bPublic(t.ekPubRsa))}`;
    const before = state.m.get(key) as { resetCount: number };
    // power-cycle the swtpm: Shutdown(CLEAR), re-init over the control channel, Startup(CLEAR)
    await t.run('tpm2_shutdown', ['-c']);
    await exec('swtpm_ioctl', ['--tcp', `127.0.0.1:${t.swtpm.port + 1}`, '-i']);
    await t.run('tpm2_startup', ['-c']);
    await t.reloadAk('ak');
    await t.run('tpm2_pcrextend', ['16:sha256=' + '11'.repeat(32) + ',sha1=' + '22'.repeat(20)]);
    const s2 = newSession();
    const two = await v.begin(hello(), s2);
    const r = await finishAndCommit(v, await toolsRespond(two.challenge as Challenge, s2.binding, { tag: 'reset2' }), two.state, s2);
    expect((state.m.get(key) as { resetCount: number }).resetCount).toBe(before.resetCount + 1);
    expect(r.claims.resetCount).toBe(before.resetCount + 1);
  });
});
