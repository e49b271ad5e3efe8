/**
 * Verifier plugin config and input validation on synthetic material (no TPM needed): bad
 * configs, malformed hello/response/state JSON, and the agent half without a TPM binding.
 */
import { finishAndCommit } from './commit.js';
import 'reflect-metadata';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, PluginStateStore, SessionInput } from '../../src/plugins/types.js';
import { TpmAgent, parseVerifierConfig, tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, syntheticQuote } from './synthetic.js';

class MemoryState implements PluginStateStore {
  readonly m = new Map<string, unknown>();
  async get(k: string): Promise<unknown> {
    return this.m.get(k);
  }
  async put(k: string, v: unknown): Promise<void> {
    this.m.set(k, JSON.parse(JSON.stringify(v)));
  }
}

const logger = pino({ level: 'silent' });
let dir = '';
let v: NodeAttestorVerifier;
let state: MemoryState;
let hello: Record<string, unknown>;
let ak = rsaKeyPair();

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

function respond(st: unknown, s: SessionInput, clock: bigint, resetCount = 1, restartCount = 0): Record<string, unknown> {
  const values = new Map<string, Buffer>([['sha256:7', Buffer.alloc(32, 7)]]);
  const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: [7] }], values, clock, resetCount, restartCount });
  return {
    secret: (st as { secret: string }).secret,
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
  const ek = rsaKeyPair();
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
    const r = await finishAndCommit(v, respond(b.state, s, 100n), b.state, s);
    expect(r.selectors).toContain(`tpm:pcr:sha256:7:${'07'.repeat(32)}`);
    expect(r.selectors).toContain('tpm:ek_manufacturer:id:53544d20');
    const s2 = session();
    const b2 = await v.begin(hello, s2);
    expect(await code(finishAndCommit(v, respond(b2.state, s2, 99n), b2.state, s2))).toBe('tpm.counter_rollback');
    expect(await code(finishAndCommit(v, respond(b2.state, s2, 50n, 1, 1), b2.state, s2))).toBe('ok');
    expect(await code(finishAndCommit(v, respond(b2.state, s2, 10n, 1, 0), b2.state, s2))).toBe('tpm.counter_rollback');
  });

  it('stores counters only at commit, after every factor passed', async () => {
    const fresh = await tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state: new MemoryState(), configDir: dir });
    const s = session();
    const b = await fresh.begin(hello, s);
    await fresh.finish(respond(b.state, s, 500n), b.state, s);
    // Not committed (another factor failed): an older quote is still acceptable.
    const s2 = session();
    const b2 = await fresh.begin(hello, s2);
    expect(await code(fresh.finish(respond(b2.state, s2, 400n), b2.state, s2))).toBe('ok');
    await fresh.commit!(b2.state, s2);
    const s3 = session();
    const b3 = await fresh.begin(hello, s3);
    expect(await code(fresh.finish(respond(b3.state, s3, 300n), b3.state, s3))).toBe('tpm.counter_rollback');
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
    const good = respond(b.state, s, 1000n, 2, 0); // a new reset epoch after the previous test
    for (const r of [null, {}, { ...good, extra: 1 }, { ...good, secret: '***' }, { ...good, pcrValues: {} }, { ...good, pcrValues: [{ bank: 'md5', index: 0, value: '00' }] }, { ...good, pcrValues: [{ bank: 'sha256', index: 7, value: 'zz' }] }]) {
      expect(await code(finishAndCommit(v, r, b.state, s))).toBe('tpm.bad_response');
    }
    for (const st of [null, {}, { ...(b.state as object), v: 2 }, { ...(b.state as object), ekIntermediates: 'x' }]) {
      expect(await code(finishAndCommit(v, good, st, s))).toBe('tpm.bad_state');
    }
    expect(await code(finishAndCommit(v, { ...good, secret: randomBytes(32).toString('base64') }, b.state, s))).toBe('tpm.credential_mismatch');
    expect(await code(finishAndCommit(v, good, b.state, s))).toBe('ok');
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
