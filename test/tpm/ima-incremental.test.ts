/**
 * Incremental IMA re-check on renewal: only entries after the stored progress are judged, PCR 10
 * must still match the quote (replayed from the stored value), and every way the stored progress
 * can stop fitting (a tampered earlier entry, a reboot, a forged start, another verifier) ends in
 * a full check or a clean refusal — never in accepting entries nobody judged.
 */
import 'reflect-metadata';
import { randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { checkImaLog, imaListResumesAt, parseImaLog, replayIma, type ImaPolicy, type ImaProgress } from '../../src/tpm/ima/index.js';
import { imaToSend, tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { codeOf } from '../support/codes.js';
import { finishAndCommit } from './commit.js';
import { asciiList, binaryList, syntheticSpecs, type ImaSpec } from './ima-builder.js';
import { MemoryState } from './memory-state.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, syntheticQuote } from './synthetic.js';

const SHA256 = algorithmByName('sha256')!;
const SHA1 = algorithmByName('sha1')!;
const pcr10 = (list: Buffer): { bank: string; index: number; value: Buffer }[] => {
  const e = parseImaLog(list, { maxEntries: 1_000_000, maxBytes: 1 << 30 });
  return [
    { bank: 'sha256', index: 10, value: replayIma(e, SHA256) },
    { bank: 'sha1', index: 10, value: replayIma(e, SHA1) },
  ];
};

/** A policy allowing every synthetic file, whose allowlist counts lookups. */
function countingPolicy(specs: readonly ImaSpec[]): { policy: ImaPolicy; lookups: () => number } {
  let n = 0;
  class Counting extends Map<string, Set<string>> {
    override get(k: string): Set<string> | undefined {
      n++;
      return super.get(k);
    }
  }
  const allow = new Counting(specs.map((s) => [s.path, new Set([`sha256:${s.digest.toString('hex')}`])]));
  return { policy: { name: 'fleet', allow, excludes: [] }, lookups: () => n };
}

for (const [form, list] of [['ascii', asciiList], ['binary', binaryList]] as const) {
  describe(`checkImaLog incremental (${form})`, () => {
    const first = syntheticSpecs(50);
    const later = syntheticSpecs(10, 'x', 50);
    const all = [...first, ...later];
    const L1 = list(first);
    const L2 = list(all);

    it('a renewal with 10 new entries judges only those 10, from a whole list and from a tail', () => {
      const { policy, lookups } = countingPolicy(all);
      const r1 = checkImaLog({ log: L1, pcrs: pcr10(L1), policy });
      expect([r1.mode, r1.entries.length, r1.covered, lookups()]).toEqual(['full', 50, 50, 50]);
      expect(r1.progress).toMatchObject({ entries: 50, bytes: L1.length, format: form });
      const r2 = checkImaLog({ log: L2, pcrs: pcr10(L2), policy, progress: r1.progress });
      expect([r2.mode, r2.entries.length, r2.covered, lookups()]).toEqual(['incremental', 10, 60, 60]);
      expect(r2.entries[0]!.line).toBe(51);
      expect(r2.progress.prefixSha256).toBe(checkImaLog({ log: L2, pcrs: pcr10(L2) }).progress.prefixSha256);
      const r3 = checkImaLog({ log: L2.subarray(r1.progress.bytes), tail: true, pcrs: pcr10(L2), policy, progress: r1.progress });
      expect([r3.mode, r3.entries.length, r3.covered, lookups()]).toEqual(['incremental', 10, 60, 70]);
      expect(r3.progress).toMatchObject({ entries: 60, bytes: L2.length });
      expect(r3.progress.prefixSha256).toBeUndefined();
      // No new entries: an empty tail, nothing judged, progress kept.
      const r4 = checkImaLog({ log: Buffer.alloc(0), tail: true, pcrs: pcr10(L2), policy, progress: r3.progress });
      expect([r4.mode, r4.entries.length, r4.covered]).toEqual(['incremental', 0, 60]);
    });

    it('entries measured after the quote are pending, and the next renewal starts right after the covered ones', () => {
      const r1 = checkImaLog({ log: L2, pcrs: pcr10(L1) });
      expect([r1.covered, r1.pending]).toEqual([50, 10]);
      expect(r1.progress.bytes).toBe(L1.length);
      const r2 = checkImaLog({ log: L2.subarray(r1.progress.bytes), tail: true, pcrs: pcr10(L2), progress: r1.progress });
      expect([r2.entries.length, r2.pending]).toEqual([10, 0]);
    });

    it('attack: a new entry rewritten to an allowed file → PCR 10 mismatch, in a tail and in a whole list', () => {
      const { policy } = countingPolicy(all);
      const r1 = checkImaLog({ log: L1, pcrs: pcr10(L1), policy });
      const bad = [...first, ...later.slice(0, 9), { path: '/usr/bin/evil', digest: Buffer.alloc(32, 7) }];
      const forged = list([...first, ...later]); // what the node claims
      const quoted = pcr10(list(bad)); // what the TPM measured
      expect(codeOf(() => checkImaLog({ log: forged.subarray(r1.progress.bytes), tail: true, pcrs: quoted, policy, progress: r1.progress }))).toBe('tpm.ima_full_log_required');
      expect(codeOf(() => checkImaLog({ log: forged, pcrs: quoted, policy, progress: r1.progress }))).toBe('tpm.eventlog_mismatch');
      // And the honest list is refused by the policy.
      expect(codeOf(() => checkImaLog({ log: list(bad), pcrs: quoted, policy, progress: r1.progress }))).toBe('tpm.ima_policy_violation');
    });

    it('attack: an already checked entry edited (template hash recomputed) → not the checked prefix → full check → PCR 10 mismatch', () => {
      const r1 = checkImaLog({ log: L1, pcrs: pcr10(L1) });
      const edited = list([...first.slice(0, 3), { path: first[3]!.path, digest: Buffer.alloc(32, 9) }, ...first.slice(4), ...later]);
      const r = (): unknown => checkImaLog({ log: edited, pcrs: pcr10(L2), progress: r1.progress });
      expect(codeOf(r)).toBe('tpm.eventlog_mismatch');
    });

    it('reboot: a shorter list from a new boot is checked in full; as a tail it is refused for a whole list', () => {
      const { policy, lookups } = countingPolicy(all);
      const r1 = checkImaLog({ log: L2, pcrs: pcr10(L2), policy });
      const boot2 = list(first.slice(0, 20));
      const r = checkImaLog({ log: boot2, pcrs: pcr10(boot2), policy, progress: r1.progress });
      expect([r.mode, r.entries.length, lookups()]).toEqual(['full', 20, 80]);
      expect(r.progress.entries).toBe(20);
      // The agent would see its list no longer resumes at the offered point and send it whole.
      expect(imaListResumesAt(boot2, form, r1.progress.entries, r1.progress.bytes, r1.progress.lastTemplateHash)).toBe(false);
      expect(imaListResumesAt(L2, form, r1.progress.entries, r1.progress.bytes, r1.progress.lastTemplateHash)).toBe(true);
      // A longer list after reboot whose byte prefix differs (other digests) is checked in full too.
      const boot3 = list(syntheticSpecs(70, 'y'));
      expect(checkImaLog({ log: boot3, pcrs: pcr10(boot3), progress: r1.progress }).mode).toBe('full');
      expect(codeOf(() => checkImaLog({ log: boot3.subarray(r1.progress.bytes), tail: true, pcrs: pcr10(boot3), progress: r1.progress }))).toBe('tpm.ima_full_log_required');
    });

    it('progress for another policy or without the quoted bank, or none at all, is not used', () => {
      const r1 = checkImaLog({ log: L1, pcrs: pcr10(L1) });
      const { policy } = countingPolicy(all);
      expect(checkImaLog({ log: L2, pcrs: pcr10(L2), policy, progress: r1.progress }).mode).toBe('full');
      expect(codeOf(() => checkImaLog({ log: L2.subarray(L1.length), tail: true, pcrs: pcr10(L2), policy, progress: r1.progress }))).toBe('tpm.ima_full_log_required');
      const onlySha1: ImaProgress = { ...r1.progress, aggregates: { sha1: r1.progress.aggregates.sha1! } };
      expect(checkImaLog({ log: L2, pcrs: pcr10(L2), progress: onlySha1 }).mode).toBe('full');
      expect(codeOf(() => checkImaLog({ log: L2.subarray(L1.length), tail: true, pcrs: pcr10(L2) }))).toBe('tpm.ima_full_log_required');
    });
  });
}

// ---------------------------------------------------------------- through the verifier plugin

const logger = pino({ level: 'silent' });
let dir = '';
let ek: { publicKey: KeyObject; privateKey: KeyObject };
let ak: { publicKey: KeyObject; privateKey: KeyObject };
let hello: Record<string, unknown>;
let clock = 1000n;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-ima-inc-'));
  const root = await makeRoot('IMA Test Root');
  const inter = await makeIntermediate('IMA Test CA', root);
  writeFileSync(join(dir, 'roots.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
  ek = rsaKeyPair();
  ak = rsaKeyPair();
  hello = {
    ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
    ekPub: ekPublicFor(ek.publicKey).toString('base64'),
    akPub: akPublicFor(ak.publicKey).toString('base64'),
    imaTail: true,
  };
  const specs = syntheticSpecs(200);
  writeFileSync(join(dir, 'allow.json'), JSON.stringify(Object.fromEntries(specs.map((s) => [s.path, [`sha256:${s.digest.toString('hex')}`]]))));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Respond = (challenge: Record<string, unknown>) => Record<string, unknown>;

async function attest(v: NodeAttestorVerifier, list: Buffer, extra: Respond = () => ({})): Promise<{ selectors: string[]; claims: Record<string, unknown>; challenge: Record<string, unknown> }> {
  const nonce = randomBytes(32);
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  const s: SessionInput = { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
  const b = await v.begin(hello, s);
  const c = b.challenge as Record<string, string>;
  const secret = activateCredentialSoftware(ek.privateKey, Buffer.from(hello.akPub as string, 'base64'), Buffer.from(c.credentialBlob!, 'base64'), Buffer.from(c.encryptedSecret!, 'base64'));
  const value = pcr10(list)[0]!.value;
  clock += 10n;
  const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: [10] }], values: new Map([['sha256:10', value]]), clock, resetCount: 1, restartCount: 0, signer: { ekPub: Buffer.from(hello.ekPub as string, 'base64'), akPub: Buffer.from(hello.akPub as string, 'base64') } });
  const send = imaToSend(list, (b.challenge as Record<string, unknown>).imaFrom);
  const response = {
    secret: secret.toString('base64'),
    quote: q.attest.toString('base64'),
    signature: q.signature.toString('base64'),
    pcrValues: [{ bank: 'sha256', index: 10, value: value.toString('hex') }],
    imaLog: send.bytes.toString('base64'),
    ...(send.from ? { imaLogFrom: send.from } : {}),
    ...extra(b.challenge as Record<string, unknown>),
  };
  const r = await finishAndCommit(v, response, b.state, s);
  return { ...r, challenge: b.challenge as Record<string, unknown> };
}

async function codeAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

describe('tpm verifier: IMA progress across attestations', () => {
  const make = async (state: MemoryState): Promise<NodeAttestorVerifier> =>
    tpmVerifierPlugin.create({ ekCa: ['roots.pem'], pcrs: { sha256: [10] }, ima: { allowlist: 'allow.json', name: 'fleet' } }, { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dir });

  it('an agent that does not ask for the tail protocol (no imaTail in its hello: older agents) is never offered imaFrom', async () => {
    const state = new MemoryState();
    const v = await make(state);
    await attest(v, asciiList(syntheticSpecs(100)));
    const s: SessionInput = { nonce: randomBytes(32), csrSpki: Buffer.alloc(0), binding: Buffer.alloc(32), now: new Date() };
    const { imaTail: _asked, ...older } = hello;
    expect(((await v.begin(older, s)).challenge as Record<string, unknown>).imaFrom).toBeUndefined();
    expect(((await v.begin(hello, s)).challenge as Record<string, unknown>).imaFrom).toMatchObject({ entries: 100 });
    expect(await codeAsync(v.begin({ ...hello, imaTail: 'yes' }, s))).toBe('tpm.bad_hello');
  });

  for (const [form, list] of [['ascii', asciiList], ['binary', binaryList]] as const) {
    it(`${form}: first attestation full, renewal sends and checks only the new entries; a restarted verifier on another datastore checks in full`, async () => {
      const state = new MemoryState();
      const v = await make(state);
      const r1 = await attest(v, list(syntheticSpecs(100)));
      expect(r1.challenge.imaFrom).toBeUndefined();
      expect(r1.claims.ima).toMatchObject({ entries: 100, checked: 100, mode: 'full', format: form });
      expect(r1.selectors).toContain('tpm:ima:policy:fleet');
      let sent = 0;
      const r2 = await attest(v, list(syntheticSpecs(120)), (c) => {
        expect(c.imaFrom).toMatchObject({ entries: 100, format: form });
        return {};
      });
      expect(r2.claims.ima).toMatchObject({ entries: 120, checked: 20, mode: 'incremental' });
      // The tail really was the new entries only.
      const tail = imaToSend(list(syntheticSpecs(130)), ((await v.begin(hello, { nonce: randomBytes(32), csrSpki: Buffer.alloc(0), binding: Buffer.alloc(32), now: new Date() })).challenge as { imaFrom: unknown }).imaFrom);
      sent = tail.bytes.length;
      expect(sent).toBe(list(syntheticSpecs(10, 'x', 120)).length);
      const other = await make(new MemoryState());
      const r3 = await attest(other, list(syntheticSpecs(130)));
      expect(r3.claims.ima).toMatchObject({ checked: 130, mode: 'full' });
    });
  }

  it('attack: a forged start (imaLogFrom other than offered, or without an offer) → tpm.ima_bad_start', async () => {
    const state = new MemoryState();
    const v = await make(state);
    const L = asciiList(syntheticSpecs(40));
    expect(await codeAsync(attest(v, L, () => ({ imaLogFrom: { entries: 0, bytes: 0 } })))).toBe('tpm.ima_bad_start');
    await attest(v, L);
    const L2 = asciiList(syntheticSpecs(60));
    expect(await codeAsync(attest(v, L2, (c) => ({ imaLog: L2.subarray(L.length + 10).toString('base64'), imaLogFrom: { entries: (c.imaFrom as { entries: number }).entries + 1, bytes: L.length + 10 } })))).toBe(
      'tpm.ima_bad_start',
    );
  });

  it('a tail that skips entries (claimed start kept) → tpm.ima_full_log_required, progress forgotten, next attempt sends the whole list', async () => {
    const state = new MemoryState();
    const v = await make(state);
    const L = binaryList(syntheticSpecs(40));
    await attest(v, L);
    const L2 = binaryList(syntheticSpecs(60));
    const skip = binaryList(syntheticSpecs(10, 'x', 40)).length;
    expect(await codeAsync(attest(v, L2, () => ({ imaLog: L2.subarray(L.length + skip).toString('base64') })))).toBe('tpm.ima_full_log_required');
    const r = await attest(v, L2);
    expect(r.challenge.imaFrom).toBeUndefined();
    expect(r.claims.ima).toMatchObject({ checked: 60, mode: 'full' });
  });

  it('reboot: the agent sees its list no longer resumes at the offered point and sends it whole', async () => {
    const state = new MemoryState();
    const v = await make(state);
    await attest(v, asciiList(syntheticSpecs(80)));
    const boot2 = asciiList(syntheticSpecs(30));
    const r = await attest(v, boot2);
    expect(r.challenge.imaFrom).toBeDefined();
    expect(r.claims.ima).toMatchObject({ entries: 30, checked: 30, mode: 'full' });
  });
});
