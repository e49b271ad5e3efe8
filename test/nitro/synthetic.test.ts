/**
 * The whole aws_nitro protocol at plugin level with a synthetic ES384 PKI: agent hello → verifier
 * begin → agent respond (through an injected NSM transport that signs with the test chain) →
 * verifier finish; plus replays, documents for other keys, stale and future documents, wrong roots,
 * debug PCRs, PCR policy and certificate-path defects.
 */
import 'reflect-metadata';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { encode } from 'cbor2';
import { pino } from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorAgent, NodeAttestorVerifier, SessionInput, VerifierPluginDeps } from '../../src/plugins/types.js';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { makeNitroAgentPlugin, nitroVerifierPlugin, type NsmTransport } from '../../src/nitro/plugin.js';
import { verifyNitroDocument } from '../../src/nitro/verify.js';
import { MemoryState } from '../tpm/memory-state.js';
import { debugPcrs, defaultPcrs, fakeNsm, makeCa, makeDocument, makeLeaf, makePki, MODULE_ID, type DocFields, type Leaf, type TestPki } from './fixtures.js';

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
const dir = mkdtempSync(join(tmpdir(), 'sigil-nitro-'));

let pki: TestPki;
let leaf: Leaf;
let otherPki: TestPki;

beforeAll(async () => {
  pki = await makePki({ name: 'a' });
  leaf = await makeLeaf(pki);
  otherPki = await makePki({ name: 'b' });
  writeFileSync(join(dir, 'root.pem'), pki.rootPem);
  writeFileSync(join(dir, 'other-root.pem'), otherPki.rootPem);
});

function deps(): VerifierPluginDeps {
  return {
    trustDomain: 'example.org',
    logger: pino({ level: 'silent' }),
    now: () => new Date(T0),
    // The full plugin state contract (get/put/compareAndSet on JSON text, as the datastores do).
    state: new MemoryState(),
    configDir: dir,
  };
}

function newSession(now = T0): SessionInput {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const csrSpki = publicKey.export({ format: 'der', type: 'spki' });
  const nonce = randomBytes(32);
  return { nonce, binding: sessionBinding(nonce, csrSpki), csrSpki, now: new Date(now) };
}

async function verifier(config: Record<string, unknown> = { rootCert: 'root.pem' }): Promise<NodeAttestorVerifier> {
  return await nitroVerifierPlugin.create(config, deps());
}

async function agent(transport: NsmTransport): Promise<NodeAttestorAgent> {
  const p = makeNitroAgentPlugin({ transport });
  return await p.create({}, { trustDomain: 'example.org', logger: pino({ level: 'silent' }), dataDir: dir, configDir: dir, now: () => new Date(T0) });
}

/** Run the protocol; `docSession` is the session the agent answers for (default: the verifier's). */
async function run(v: NodeAttestorVerifier, a: NodeAttestorAgent, session: SessionInput, docSession: SessionInput = session) {
  const hello = await a.hello();
  const { challenge, state } = await v.begin(JSON.parse(JSON.stringify(hello)), session);
  const response = await a.respond(JSON.parse(JSON.stringify(challenge)), { nonce: docSession.nonce, binding: docSession.binding, csrSpki: docSession.csrSpki });
  return v.finish(JSON.parse(JSON.stringify(response)), state, session);
}

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(SigilError);
  expect((err as SigilError).code).toBe(code);
}

const fresh = (f: DocFields = {}) => () => ({ timestamp: T0 - 2_000, ...f });

describe('aws_nitro protocol with a synthetic NSM', () => {
  it('accepts a bound document and returns DESIGN §4 selectors', async () => {
    const nsm = fakeNsm(pki, leaf, fresh());
    const s = newSession();
    const r = await run(await verifier(), await agent(nsm), s);
    const pcrs = defaultPcrs();
    expect(r.agentIdSuffix).toBe(MODULE_ID);
    expect(r.selectors).toEqual([
      ...[0, 1, 2].map((i) => `aws_nitro:pcr${i}:${Buffer.from(pcrs.get(i) as Uint8Array).toString('hex')}`),
      `aws_nitro:module_id:${MODULE_ID}`,
      'aws_nitro:instance_id:i-0123456789abcdef0',
      'aws_nitro:debug:false',
    ]);
    expect(r.claims.nonceChecked).toBe(true);
    expect(r.claims.publicKeyChecked).toBe(true);
    expect(r.claims.publicKeySpkiType).toBe('ec');
    // the agent asked the NSM for nonce = binding and public_key = CSR SPKI
    expect(nsm.requests).toHaveLength(1);
    const expected = encode(new Map([['Attestation', new Map<string, Uint8Array | null>([['user_data', null], ['nonce', new Uint8Array(s.binding)], ['public_key', new Uint8Array(s.csrSpki)]])]]));
    expect(Buffer.from(nsm.requests[0] as Buffer).equals(Buffer.from(expected))).toBe(true);
  });

  it('rejects a document replayed from another session', async () => {
    const a = await agent(fakeNsm(pki, leaf, fresh()));
    const v = await verifier();
    const old = newSession();
    const hello = await a.hello();
    const { challenge } = await v.begin(hello, old);
    const oldResponse = await a.respond(challenge, old);
    await v.finish(oldResponse, {}, old); // fine in its own session
    const s2 = newSession();
    const { state } = await v.begin(hello, s2);
    await rejects(v.finish(oldResponse, state, s2), 'nitro.nonce_mismatch');
  });

  it('rejects evidence bound to another key', async () => {
    const v = await verifier();
    const s = newSession();
    // an agent that holds a different key computes a different binding
    const thief = newSession();
    const stolen = { ...thief, nonce: s.nonce, binding: sessionBinding(s.nonce, thief.csrSpki) };
    await rejects(run(v, await agent(fakeNsm(pki, leaf, fresh())), s, stolen), 'nitro.nonce_mismatch');
    // right nonce, wrong public_key
    const doc = makeDocument(pki, leaf, { timestamp: T0 - 1000, nonce: s.binding, publicKey: thief.csrSpki });
    await rejects(v.finish({ document: doc.toString('base64') }, {}, s), 'nitro.public_key_mismatch');
    // right nonce, no public_key
    const doc2 = makeDocument(pki, leaf, { timestamp: T0 - 1000, nonce: s.binding, publicKey: null });
    await rejects(v.finish({ document: doc2.toString('base64') }, {}, s), 'nitro.public_key_mismatch');
    // no nonce
    const doc3 = makeDocument(pki, leaf, { timestamp: T0 - 1000, nonce: null, publicKey: s.csrSpki });
    await rejects(v.finish({ document: doc3.toString('base64') }, {}, s), 'nitro.nonce_mismatch');
  });

  it('rejects stale and future documents; maxAge is configurable', async () => {
    const stale = fakeNsm(pki, leaf, fresh({ timestamp: T0 - 5 * 60_000 - 1 }));
    await rejects(run(await verifier(), await agent(stale), newSession()), 'nitro.document_stale');
    const r = await run(await verifier({ rootCert: 'root.pem', maxAge: '10m' }), await agent(stale), newSession());
    expect(r.claims.freshness).toMatch(/600s/);
    await rejects(run(await verifier({ rootCert: 'root.pem', maxAge: 60 }), await agent(fakeNsm(pki, leaf, fresh({ timestamp: T0 - 61_000 }))), newSession()), 'nitro.document_stale');
    const future = fakeNsm(pki, leaf, fresh({ timestamp: T0 + 61_000 }));
    await rejects(run(await verifier(), await agent(future), newSession()), 'nitro.document_from_future');
    const slightlyAhead = fakeNsm(pki, leaf, fresh({ timestamp: T0 + 59_000 }));
    await run(await verifier(), await agent(slightlyAhead), newSession());
  });

  it('rejects a chain to the wrong root', async () => {
    const a = await agent(fakeNsm(pki, leaf, fresh()));
    await rejects(run(await verifier({}), a, newSession()), 'nitro.untrusted_root'); // default: AWS pin
    await rejects(run(await verifier({ rootCert: 'other-root.pem' }), a, newSession()), 'nitro.untrusted_root');
    await rejects(run(await verifier({ rootCertSha256: otherPki.rootSha256 }), a, newSession()), 'nitro.untrusted_root');
    await run(await verifier({ rootCertSha256: pki.rootSha256.toUpperCase() }), a, newSession());
    await expect(verifier({ rootCert: 'root.pem', rootCertSha256: otherPki.rootSha256 })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
    await expect(verifier({ rootCert: 'missing.pem' })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
  });

  it('rejects debug-mode PCRs unless allowDebug', async () => {
    const a = await agent(fakeNsm(pki, leaf, fresh({ pcrs: debugPcrs() })));
    await rejects(run(await verifier(), a, newSession()), 'nitro.debug_enclave');
    const r = await run(await verifier({ rootCert: 'root.pem', allowDebug: true }), a, newSession());
    expect(r.selectors).toContain('aws_nitro:debug:true');
    expect(r.selectors.some((s) => /^aws_nitro:pcr[012]:/.test(s))).toBe(false);
    // PCR0 zero alone is not debug mode
    const pcrs = defaultPcrs();
    pcrs.set(0, new Uint8Array(48));
    const r2 = await run(await verifier(), await agent(fakeNsm(pki, leaf, fresh({ pcrs }))), newSession());
    expect(r2.selectors).toContain('aws_nitro:debug:false');
  });

  it('enforces configured PCR values', async () => {
    const pcrs = defaultPcrs();
    const a = await agent(fakeNsm(pki, leaf, fresh()));
    const pcr0 = Buffer.from(pcrs.get(0) as Uint8Array).toString('hex');
    await run(await verifier({ rootCert: 'root.pem', pcrs: { '0': pcr0, '3': '00'.repeat(48) } }), a, newSession());
    await rejects(run(await verifier({ rootCert: 'root.pem', pcrs: { '0': 'ab'.repeat(48) } }), a, newSession()), 'nitro.pcr_mismatch');
    await rejects(run(await verifier({ rootCert: 'root.pem', pcrs: { '20': pcr0 } }), a, newSession()), 'nitro.pcr_mismatch');
    await expect(verifier({ pcrs: { '32': pcr0 } })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
    await expect(verifier({ pcrs: { '0': 'abc' } })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
    await expect(verifier({ maxAge: 'soon' })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
    await expect(verifier({ maxAge: 0 })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
    await expect(verifier({ colour: 'red' })).rejects.toMatchObject({ code: 'nitro.config_invalid' });
  });

  it('checks hello, challenge and response shapes', async () => {
    const v = await verifier();
    const s = newSession();
    const a = await agent(fakeNsm(pki, leaf, fresh()));
    // hello announcing another module
    const { state } = await v.begin({ moduleId: 'i-0fffffffffffffff0-enc0000000000000000' }, s);
    const resp = await a.respond({}, s);
    await rejects(v.finish(resp, state, s), 'nitro.module_id_mismatch');
    const ok = await v.begin({ moduleId: MODULE_ID }, s);
    expect((await v.finish(resp, ok.state, s)).agentIdSuffix).toBe(MODULE_ID);
    for (const bad of [null, [], 'x', { moduleId: 5 }, { moduleId: 'a b' }, { other: 1 }]) await rejects(v.begin(bad, s), 'nitro.bad_hello');
    for (const bad of [null, {}, { document: 5 }, { document: '' }, { document: '!!!!' }, { document: 'YQ' }, { document: 'a'.repeat(30000) }, { document: 'YQ==', x: 1 }]) {
      await rejects(v.finish(bad, {}, s), 'nitro.bad_response');
    }
    await rejects(v.finish({ document: 'YWJj' }, {}, s), 'nitro.cbor_invalid');
    await rejects(a.respond({ x: 1 }, s), 'nitro.bad_challenge');
    await rejects(a.respond(null, s), 'nitro.bad_challenge');
  });

  it('agent maps NSM failures to typed errors', async () => {
    const s = newSession();
    const errNsm: NsmTransport = async () => Buffer.from(encode(new Map([['Error', 'InvalidArgument']])));
    await rejects((await agent(errNsm)).respond({}, s), 'nitro.nsm_error');
    const broken: NsmTransport = async () => {
      throw new Error('ioctl failed: ENOTTY');
    };
    await rejects((await agent(broken)).respond({}, s), 'nitro.nsm_unavailable');
    const junk: NsmTransport = async () => Buffer.from([0xff]);
    await rejects((await agent(junk)).respond({}, s), 'nitro.nsm_bad_response');
  });

  it('loads through the plugin loader by name', async () => {
    const { resolvePlugin } = await import('../../src/catalog.js');
    expect(await resolvePlugin('nodeAttestorVerifier', 'aws_nitro', {}, dir)).toBe(nitroVerifierPlugin);
    expect((await resolvePlugin('nodeAttestorAgent', 'aws_nitro', {}, dir)).name).toBe('aws_nitro');
  });

  it('accepts tagged COSE_Sign1 (tag 18)', async () => {
    const s = newSession();
    const doc = makeDocument(pki, leaf, { timestamp: T0 - 1000, nonce: s.binding, publicKey: s.csrSpki }, { tagged: true });
    expect(doc[0]).toBe(0xd2);
    const r = await (await verifier()).finish({ document: doc.toString('base64') }, {}, s);
    expect(r.claims.coseTagged).toBe(true);
  });
});

describe('certificate path defects (synthetic)', () => {
  const at = new Date(T0);
  function code(doc: Buffer, rootSha256: string, cache = new NitroCertCache()): string {
    try {
      verifyNitroDocument(doc, { at, rootSha256, cache });
      return 'accepted';
    } catch (e) {
      expect(e).toBeInstanceOf(SigilError);
      return (e as SigilError).code;
    }
  }

  it('the synthetic baseline is accepted', () => {
    expect(code(makeDocument(pki, leaf, { timestamp: T0 }), pki.rootSha256)).toBe('accepted');
  });

  it('CA profile: keyCertSign, critical basicConstraints, cA, pathLen', async () => {
    const noSign = await makeCa(pki.root, { name: 'CN=no-sign', keyUsage: x509.KeyUsageFlags.digitalSignature });
    let l = await makeLeaf(pki, {}, noSign);
    expect(code(makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, noSign.der] }), pki.rootSha256)).toBe('nitro.chain_invalid');

    const notCritical = await makeCa(pki.root, { name: 'CN=bc-not-critical', bcCritical: false });
    l = await makeLeaf(pki, {}, notCritical);
    expect(code(makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, notCritical.der] }), pki.rootSha256)).toBe('nitro.chain_invalid');

    const notCa = await makeCa(pki.root, { name: 'CN=not-ca', ca: false });
    l = await makeLeaf(pki, {}, notCa);
    expect(code(makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, notCa.der] }), pki.rootSha256)).toBe('nitro.chain_invalid');

    const zero = await makeCa(pki.root, { name: 'CN=pathlen0', pathLength: 0 });
    const below = await makeCa(zero, { name: 'CN=below-pathlen0' });
    l = await makeLeaf(pki, {}, below);
    expect(code(makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, zero.der, below.der] }), pki.rootSha256)).toBe('nitro.chain_invalid');
    // the same pathLen 0 CA directly above the leaf is fine
    l = await makeLeaf(pki, {}, zero);
    expect(code(makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, zero.der] }), pki.rootSha256)).toBe('accepted');
  });

  it('leaf profile: not a CA, digitalSignature, P-384, no unknown critical extension', async () => {
    const cases: [Parameters<typeof makeLeaf>[1], string][] = [
      [{ ca: true }, 'nitro.chain_invalid'],
      [{ keyUsage: x509.KeyUsageFlags.keyEncipherment }, 'nitro.chain_invalid'],
      [{ curve: 'P-256' }, 'nitro.cert_invalid'],
      [{ extraExtensions: [new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([5, 0]))] }, 'nitro.cert_invalid'],
    ];
    for (const [o, want] of cases) {
      const l = await makeLeaf(pki, o);
      // COSE-sign with a P-384 key so the envelope is well-formed and the certificate check decides
      expect(code(makeDocument(pki, { der: l.der, key: leaf.key }, { timestamp: T0 }), pki.rootSha256)).toBe(want);
    }
    // a non-critical unknown extension is fine
    const ok = await makeLeaf(pki, { extraExtensions: [new x509.Extension('1.3.6.1.4.1.99999.1', false, new Uint8Array([5, 0]))] });
    expect(code(makeDocument(pki, ok, { timestamp: T0 }), pki.rootSha256)).toBe('accepted');
  });

  it('names and signatures must chain', async () => {
    const last = pki.intermediates[pki.intermediates.length - 1];
    // issuer name of another CA, signed by the right key
    const misnamed = await makeLeaf(pki, { issuerName: 'CN=someone-else' });
    expect(code(makeDocument(pki, misnamed, { timestamp: T0 }), pki.rootSha256)).toBe('nitro.chain_invalid');
    // right issuer name, signed by another PKI's key
    const forged = await makeLeaf(otherPki, { issuerName: last?.cert.subject }, otherPki.intermediates[2]);
    expect(code(makeDocument(pki, forged, { timestamp: T0 }), pki.rootSha256)).toBe('nitro.cert_signature_invalid');
    // cabundle not root first
    expect(code(makeDocument(pki, leaf, { timestamp: T0, cabundle: [...pki.cabundle].reverse() }), pki.rootSha256)).toBe('nitro.untrusted_root');
    // an intermediate missing from the bundle
    expect(code(makeDocument(pki, leaf, { timestamp: T0, cabundle: [pki.cabundle[0] as Buffer, pki.cabundle[1] as Buffer, pki.cabundle[3] as Buffer] }), pki.rootSha256)).toBe('nitro.chain_invalid');
    // COSE signed by another key than the leaf's
    const otherLeaf = await makeLeaf(pki);
    expect(code(makeDocument(pki, { der: leaf.der, key: otherLeaf.key }, { timestamp: T0 }), pki.rootSha256)).toBe('nitro.signature_invalid');
  });

  it('a cached intermediate is only trusted under the issuer it was verified against', () => {
    const cache = new NitroCertCache();
    expect(code(makeDocument(pki, leaf, { timestamp: T0 }), pki.rootSha256, cache)).toBe('accepted');
    // same intermediates and leaf, but presented under another (pinned) root
    const graft = makeDocument(pki, leaf, { timestamp: T0, cabundle: [otherPki.root.der, ...pki.cabundle.slice(1)] });
    expect(code(graft, otherPki.rootSha256, cache)).toBe('nitro.chain_invalid');
  });

  it('validity of cached intermediates is checked on every call', async () => {
    const shortLived = await makeCa(pki.root, { name: 'CN=short-lived', notBefore: new Date(T0 - 3_600_000), notAfter: new Date(T0 + 3_600_000) });
    const l = await makeLeaf(pki, {}, shortLived);
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, l, { timestamp: T0, cabundle: [pki.root.der, shortLived.der] });
    expect(code(doc, pki.rootSha256, cache)).toBe('accepted');
    expect(cache.size.ca).toBe(2);
    try {
      verifyNitroDocument(doc, { at: new Date(T0 + 3_600_001), rootSha256: pki.rootSha256, cache });
      throw new Error('accepted');
    } catch (e) {
      expect((e as SigilError).code).toBe('nitro.cert_expired');
      expect((e as SigilError).message).toMatch(/cabundle\[1\]/);
    }
  });

  it('the cache is bounded (LRU)', async () => {
    const cache = new NitroCertCache(2);
    const docA = makeDocument(pki, leaf, { timestamp: T0 });
    expect(code(docA, pki.rootSha256, cache)).toBe('accepted');
    expect(cache.size).toEqual({ ca: 2, leaf: 1, paths: 1 });
    cache.clear();
    expect(cache.size).toEqual({ ca: 0, leaf: 0, paths: 0 });
    expect(() => new NitroCertCache(0)).toThrow(SigilError);
  });
});
