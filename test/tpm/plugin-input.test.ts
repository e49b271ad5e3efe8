/**
 * Verifier plugin config and input validation on synthetic material (no TPM needed): bad
 * configs, malformed hello/response/state JSON, and the agent half without a TPM binding.
 */
import { finishAndCommit } from './commit.js';
import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { TpmAgent, parseVerifierConfig, tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { MemoryState } from './memory-state.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, signerUnderEk, syntheticQuote } from './synthetic.js';

const logger = pino({ level: 'silent' });
let dir = '';
let v: NodeAttestorVerifier;
let state: MemoryState;
let hello: Record<string, unknown>;
let ak = rsaKeyPair();
let ek: { publicKey: KeyObject; privateKey: KeyObject };

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

function session(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
}

/** What the TPM holding `ek` recovers from a challenge with TPM2_ActivateCredential (done in software). */
function activate(challenge: unknown): Buffer {
  const c = challenge as { credentialBlob: string; encryptedSecret: string };
  return activateCredentialSoftware(ek.privateKey, Buffer.from(hello.akPub as string, 'base64'), Buffer.from(c.credentialBlob, 'base64'), Buffer.from(c.encryptedSecret, 'base64'));
}

/** The agent's answer to `challenge`: the activated secret and a synthetic quote over the session binding. */
function respond(challenge: unknown, s: SessionInput, clock: bigint, resetCount = 1, restartCount = 0): Record<string, unknown> {
  const values = new Map<string, Buffer>([['sha256:7', Buffer.alloc(32, 7)]]);
  const signer = { ekPub: Buffer.from(hello.ekPub as string, 'base64'), akPub: Buffer.from(hello.akPub as string, 'base64') };
  const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: [7] }], values, clock, resetCount, restartCount, signer });
  return {
    secret: activate(challenge).toString('base64'),
    quote: q.attest.toString('base64'),
    signature: q.signature.toString('base64'),
    pcrValues: [{ bank: 'sha256', index: 7, value: '07'.repeat(32) }],
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-tpm-input-'));
  const root = await makeRoot('Input Test Root');
  const inter = await makeIntermediate('Input Test CA', root);
  writeFileSync(join(dir, 'roots.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
  ek = rsaKeyPair();
  ak = rsaKeyPair();
  hello = {
    ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
    ekPub: ekPublicFor(ek.publicKey).toString('base64'),
    akPub: akPublicFor(ak.publicKey).toString('base64'),
  };
  state = new MemoryState();
  v = await tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dir });
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('verifier config', () => {
  it('defaults and validation', async () => {
    expect(parseVerifierConfig({ ekCa: ['a.pem'] }).selection).toEqual([{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }]);
    expect(parseVerifierConfig({ ekCa: ['a.pem'], pcrs: { sha256: [7, 0], sha1: [1] } }).selection).toEqual([
      { bank: 'sha1', pcrs: [1] },
      { bank: 'sha256', pcrs: [0, 7] },
    ]);
    const deps = { trustDomain: 'example.org', logger, now: () => new Date(), state: new MemoryState(), configDir: dir };
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({}, deps)))).toBe('tpm.config_invalid');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: [] }, deps)))).toBe('tpm.config_invalid');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: ['roots.pem'], extra: 1 }, deps)))).toBe('tpm.config_invalid');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { md5: [1] } }, deps)))).toBe('tpm.config_invalid');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [24] } }, deps)))).toBe('tpm.config_invalid');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: ['roots.pem'], hashAllowlist: ['sha1'] }, deps)))).toBe('tpm.config_invalid');
    const missing = await Promise.resolve()
      .then(() => tpmVerifierPlugin.create({ ekCa: ['missing.pem'] }, deps))
      .catch((e: unknown) => e);
    expect((missing as SigilError).code).toBe('tpm.config_invalid');
    expect((missing as SigilError).message).toContain(join(dir, 'missing.pem'));
    writeFileSync(join(dir, 'junk.pem'), 'hello');
    expect(await code(Promise.resolve().then(() => tpmVerifierPlugin.create({ ekCa: ['junk.pem'] }, deps)))).toBe('tpm.config_invalid');
  });
});

describe('verifier input validation', () => {
  it('a synthetic session passes, and counters move forward', async () => {
    const s = session();
    const b = await v.begin(hello, s);
    const r = await finishAndCommit(v, respond(b.challenge, s, 100n), b.state, s);
    expect(r.selectors).toContain(`tpm:pcr:sha256:7:${'07'.repeat(32)}`);
    expect(r.selectors).toContain('tpm:ek_manufacturer:id:53544d20');
    const s2 = session();
    const b2 = await v.begin(hello, s2);
    expect(await code(finishAndCommit(v, respond(b2.challenge, s2, 99n), b2.state, s2))).toBe('tpm.counter_rollback');
    expect(await code(finishAndCommit(v, respond(b2.challenge, s2, 50n, 1, 1), b2.state, s2))).toBe('ok');
    expect(await code(finishAndCommit(v, respond(b2.challenge, s2, 10n, 1, 0), b2.state, s2))).toBe('tpm.counter_rollback');
  });

  it('stores counters only at commit, after every factor passed', async () => {
    const fresh = await tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state: new MemoryState(), configDir: dir });
    const s = session();
    const b = await fresh.begin(hello, s);
    await fresh.finish(respond(b.challenge, s, 500n), b.state, s);
    // Not committed (another factor failed): an older quote is still acceptable.
    const s2 = session();
    const b2 = await fresh.begin(hello, s2);
    expect(await code(fresh.finish(respond(b2.challenge, s2, 400n), b2.state, s2))).toBe('ok');
    await fresh.commit!(b2.state, s2);
    const s3 = session();
    const b3 = await fresh.begin(hello, s3);
    expect(await code(fresh.finish(respond(b3.challenge, s3, 300n), b3.state, s3))).toBe('tpm.counter_rollback');
  });

  it('rejects malformed hellos with tpm.bad_hello / tpm.malformed_public', async () => {
    const s = session();
    for (const h of [null, 'x', [], {}, { ...hello, extra: 1 }, { ...hello, ekCert: 'not base64!' }, { ...hello, ekCert: 5 }, { ...hello, ekIntermediates: 'x' }, { ...hello, ekIntermediates: Array(9).fill('AAAA') }]) {
      expect(await code(v.begin(h, s))).toBe('tpm.bad_hello');
    }
    expect(await code(v.begin({ ...hello, akPub: 'AAAA' }, s))).toBe('tpm.malformed_public');
    expect(await code(v.begin({ ...hello, ekCert: 'AAAA' }, s))).toBe('tpm.ek_cert_malformed');
    expect(await code(v.begin({ ...hello, ekPub: hello.akPub }, s))).toBe('tpm.ek_attributes_invalid');
  });

  it('rejects malformed responses and foreign state', async () => {
    const s = session();
    const b = await v.begin(hello, s);
    const good = respond(b.challenge, s, 1000n, 2, 0); // a new reset epoch after the previous test
    for (const r of [null, {}, { ...good, extra: 1 }, { ...good, secret: '***' }, { ...good, pcrValues: {} }, { ...good, pcrValues: [{ bank: 'md5', index: 0, value: '00' }] }, { ...good, pcrValues: [{ bank: 'sha256', index: 7, value: 'zz' }] }]) {
      expect(await code(finishAndCommit(v, r, b.state, s))).toBe('tpm.bad_response');
    }
    for (const st of [
      null,
      {},
      { ...(b.state as object), v: 4 },
      { ...(b.state as object), ekIntermediates: 'x' },
      { ...(b.state as object), akSigner: undefined },
      { ...(b.state as object), akSigner: 'AAAA' },
      { ...(b.state as object), akSigner: Buffer.alloc(34).toString('hex') },
      { ...(b.state as object), secretHash: 'AAAA' },
      { ...(b.state as object), secretHash: 5 },
      { ...(b.state as object), secret: good.secret },
    ]) {
      expect(await code(finishAndCommit(v, good, st, s))).toBe('tpm.bad_state');
    }
    expect(await code(finishAndCommit(v, { ...good, secret: randomBytes(32).toString('base64') }, b.state, s))).toBe('tpm.credential_mismatch');
    // A well-formed akSigner other than the AK's Qualified Name under the EK: the quote's signer is not it.
    const otherSigner = Buffer.concat([Buffer.from([0, 0x0b]), randomBytes(32)]).toString('base64');
    expect(await code(finishAndCommit(v, good, { ...(b.state as object), akSigner: otherSigner }, s))).toBe('tpm.ak_not_under_ek');
    expect(await code(finishAndCommit(v, good, b.state, s))).toBe('ok');
  });
});

describe('credential secret in the session state', () => {
  it('keeps only a SHA-256 digest of the secret (state v3); the secret the TPM recovers passes finish', async () => {
    const s = session();
    const b = await v.begin(hello, s);
    const secret = activate(b.challenge);
    expect(secret).toHaveLength(32);
    const st = b.state as Record<string, unknown>;
    expect(st.v).toBe(3);
    // The quote's signer must be the AK as the EK's child.
    expect(st.akSigner).toBe(signerUnderEk(Buffer.from(hello.ekPub as string, 'base64'), Buffer.from(hello.akPub as string, 'base64')).toString('base64'));
    expect(st).not.toHaveProperty('secret');
    expect(st.secretHash).toBe(createHash('sha256').update(secret).digest('base64'));
    // The stored state (the verifier persists it with the session) holds the secret in no form.
    const text = JSON.stringify(st);
    for (const form of [secret.toString('base64'), secret.toString('hex'), secret.toString('base64url')]) expect(text).not.toContain(form);
    const good = respond(b.challenge, s, 5000n, 3, 0); // a new reset epoch after the tests above
    expect(await code(finishAndCommit(v, { ...good, secret: createHash('sha256').update(secret).digest('base64') }, b.state, s))).toBe('tpm.credential_mismatch');
    expect(await code(finishAndCommit(v, { ...good, secret: secret.subarray(0, 31).toString('base64') }, b.state, s))).toBe('tpm.credential_mismatch');
    expect(await code(finishAndCommit(v, good, b.state, s))).toBe('ok');
  });

  it('refuses version 1 state (the secret in plain form) with tpm.bad_state naming the version', async () => {
    const s = session();
    const b = await v.begin(hello, s);
    const secret = activate(b.challenge).toString('base64');
    const { secretHash: _drop, ...rest } = b.state as Record<string, unknown>;
    const v1 = { ...rest, v: 1, secret };
    const e = await finishAndCommit(v, respond(b.challenge, s, 6000n, 4, 0), v1, s).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.bad_state');
    expect((e as SigilError).message).toMatch(/version 1/);
  });

  it('refuses version 2 state (no expected AK signer: written before the AK had to be the EK\'s child) with tpm.bad_state telling the agent to attest again', async () => {
    const s = session();
    const b = await v.begin(hello, s);
    const { akSigner: _drop, ...rest } = b.state as Record<string, unknown>;
    const e = await finishAndCommit(v, respond(b.challenge, s, 6500n, 4, 0), { ...rest, v: 2 }, s).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.bad_state');
    expect((e as SigilError).message).toMatch(/version 2.*attest again/);
  });

  it('the software activation helper recovers what MakeCredential sealed, for RSA and P-256 EKs, and only for the AK it names', async () => {
    const { makeCredential } = await import('../../src/tpm/credential.js');
    const { objectName, parseTpm2bPublic } = await import('../../src/tpm/structures.js');
    for (const key of [rsaKeyPair(), p256KeyPair()]) {
      const ekPub = parseTpm2bPublic(ekPublicFor(key.publicKey));
      const akPub = akPublicFor(rsaKeyPair().publicKey);
      const secret = randomBytes(32);
      const made = makeCredential(ekPub, objectName(parseTpm2bPublic(akPub)), secret);
      expect(activateCredentialSoftware(key.privateKey, akPub, made.credentialBlob, made.encryptedSecret).equals(secret)).toBe(true);
      expect(() => activateCredentialSoftware(key.privateKey, akPublicFor(p256KeyPair().publicKey), made.credentialBlob, made.encryptedSecret)).toThrow(/integrity/);
    }
  });
});

describe('counter state: check in finish, compare-and-set in commit', () => {
  const fresh = async (state: MemoryState): Promise<NodeAttestorVerifier> =>
    tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dir });
  const counterKey = async (verifier: NodeAttestorVerifier): Promise<string> => {
    const s = session();
    const b = await verifier.begin(hello, s);
    return `counters:${(b.state as { ekPubHash: string }).ekPubHash}`;
  };
  /** Two sessions for the same EK, both begun and finished (A quotes clock 200, B clock 300) before either commits. */
  const twoFinished = async (verifier: NodeAttestorVerifier) => {
    const sa = session();
    const ba = await verifier.begin(hello, sa);
    const sb = session();
    const bb = await verifier.begin(hello, sb);
    await verifier.finish(respond(ba.challenge, sa, 200n), ba.state, sa);
    await verifier.finish(respond(bb.challenge, sb, 300n), bb.state, sb);
    return { commitA: () => verifier.commit!(ba.state, sa), commitB: () => verifier.commit!(bb.state, sb) };
  };

  it('two sessions for one EK both checked against the same counters: the later commit is refused (tpm.counter_race, 409), the stored counters stay', async () => {
    const state = new MemoryState();
    const fv = await fresh(state);
    const key = await counterKey(fv);
    for (const firstStored of [undefined, { resetCount: 1, restartCount: 0, clock: '10' }]) {
      state.m.clear();
      if (firstStored) await state.put(key, firstStored);
      // Both pass the check against what is stored now; B's quote is the newer one.
      const { commitA, commitB } = await twoFinished(fv);
      await commitB();
      expect(state.m.get(key)).toEqual({ resetCount: 1, restartCount: 0, clock: '300' });
      const e = await commitA().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(SigilError);
      expect((e as SigilError).code).toBe('tpm.counter_race');
      expect((e as SigilError).status).toBe(409);
      // A's older counters did not overwrite B's.
      expect(state.m.get(key)).toEqual({ resetCount: 1, restartCount: 0, clock: '300' });
    }
  });

  it('the race is refused whichever session commits first, and a session checked after the commit is judged against it', async () => {
    const state = new MemoryState();
    const fv = await fresh(state);
    const key = await counterKey(fv);
    const { commitA, commitB } = await twoFinished(fv);
    await commitA();
    expect(await code(commitB())).toBe('tpm.counter_race');
    expect(state.m.get(key)).toEqual({ resetCount: 1, restartCount: 0, clock: '200' });
    // A fresh session is checked against A's stored counters and commits normally.
    const sc = session();
    const bc = await fv.begin(hello, sc);
    expect(await code(finishAndCommit(fv, respond(bc.challenge, sc, 250n), bc.state, sc))).toBe('ok');
    expect(state.m.get(key)).toEqual({ resetCount: 1, restartCount: 0, clock: '250' });
  });
});

describe('counter state that does not parse, and eviction', () => {
  const fresh = async (state: MemoryState): Promise<NodeAttestorVerifier> =>
    tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dir });

  it('fails closed with tpm.state_unavailable (503) naming the key, rather than skipping the rollback check', async () => {
    const state = new MemoryState();
    const fv = await fresh(state);
    for (const junk of [{ resetCount: 1 }, 'counters', 42, null, [], { resetCount: 1, restartCount: 0, clock: 5 }]) {
      const s = session();
      const b = await fv.begin(hello, s);
      const key = `counters:${(b.state as { ekPubHash: string }).ekPubHash}`;
      await state.put(key, junk);
      const e = await fv.finish(respond(b.challenge, s, 100n), b.state, s).catch((x: unknown) => x);
      expect(e, JSON.stringify(junk)).toBeInstanceOf(SigilError);
      expect((e as SigilError).code).toBe('tpm.state_unavailable');
      expect((e as SigilError).status).toBe(503);
      expect((e as SigilError).message).toContain(key);
      expect(state.m.get(key)).toEqual(junk); // untouched
    }
  });

  it('names the counters of the EK behind an agent ID suffix (the EK hash), and nothing for other suffixes', async () => {
    const fv = await fresh(new MemoryState());
    const s = session();
    const b = await fv.begin(hello, s);
    const r = await fv.finish(respond(b.challenge, s, 100n), b.state, s);
    expect(fv.stateKeysForAgent?.(r.agentIdSuffix)).toEqual([`counters:${r.agentIdSuffix}`, `ima:${r.agentIdSuffix}`]);
    for (const other of ['', 'abc', 'A'.repeat(64), `${'a'.repeat(64)}/x`, '../counters']) expect(fv.stateKeysForAgent?.(other)).toEqual([]);
  });
});

describe('agent half', () => {
  it('reports a missing TPM binding or device as a SigilError, and validates the challenge', async () => {
    const agent = new TpmAgent({ tcti: 'swtpm:host=127.0.0.1,port=1' }, { dataDir: dir, configDir: dir, logger });
    const e = await agent.hello().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect(await code(agent.respond({ credentialBlob: 'AAAA' }, { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(0) }))).toBe('tpm.bad_challenge');
    await agent.close();
  });
});
