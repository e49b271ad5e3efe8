/**
 * Replay-and-match in the tpm verifier half and in `checkEventLog`: a log is trusted only as far
 * as it replays to quoted PCRs; boot selectors come only from matched PCRs and, for data-bearing
 * events, only when the data hashes to the digest. Attacks first: an unlogged extend, a forged
 * SecureBoot variable, a log from another machine, an IMA file outside the allowlist.
 */
import 'reflect-metadata';
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';
import { checkEventLog, parseEventLog, replayEventLog } from '../../src/tpm/eventlog/index.js';
import { checkImaLog, parseImaAsciiLog, replayIma } from '../../src/tpm/ima/index.js';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { tpmVerifierPlugin } from '../../src/tpm/plugin.js';
import { verifyQuote } from '../../src/tpm/quote.js';
import { parseTpmtPublic } from '../../src/tpm/structures.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';
import { agileRecord } from './eventlog-builder.js';
import { finishAndCommit } from './commit.js';
import { MemoryState } from './memory-state.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, syntheticQuote } from './synthetic.js';

const have = requireTestdata();
const read = (f: string): Buffer => readFileSync(td('tpm-eventlog', f));
const SHA256 = algorithmByName('sha256')!;
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

/** The sha256 PCR values a machine that booted with `log` holds (plus PCR 10 from an IMA list). */
function pcrsOf(log: Buffer, ima?: Buffer): Map<number, Buffer> {
  const m = new Map(replayEventLog(parseEventLog(log), { banks: ['sha256'], indices: [...PCRS, 8, 9, 10] }).get('sha256')!);
  if (ima) m.set(10, replayIma(parseImaAsciiLog(ima), SHA256));
  return m;
}

function trusted(m: Map<number, Buffer>, idx = PCRS): { bank: string; index: number; value: Buffer }[] {
  return idx.map((index) => ({ bank: 'sha256', index, value: m.get(index)! }));
}

/** Change one byte of the data of the first event matching `pick`, keeping its digests. */
function forgeData(raw: Buffer, pick: (data: Buffer, type: number, pcr: number) => number | undefined): Buffer {
  const log = parseEventLog(raw);
  for (const ev of log.events) {
    const at = pick(ev.data, ev.type, ev.index);
    if (at === undefined) continue;
    const out = Buffer.from(raw);
    // The data is the tail of the record, which ends where the next one starts.
    const idx = (log.events[ev.seq + 1]?.offset ?? raw.length) - ev.data.length;
    out.writeUInt8(out.readUInt8(idx + at) ^ 1, idx + at);
    return out;
  }
  throw new Error('no event picked');
}

const secureBootAt = (data: Buffer, type: number, pcr: number): number | undefined =>
  type === 0x80000001 && pcr === 7 && data.length === 53 && data.subarray(32, 52).toString('utf16le') === 'SecureBoot' ? 52 : undefined;

describe.skipIf(!have)('checkEventLog over the real logs', () => {
  const states: [string, string | undefined][] = [
    ['sb_cert_eventlog', 'enabled'],
    ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'disabled'],
    ['crypto_agile_eventlog', 'disabled'],
    ['keylime_binary_bios_measurements', 'disabled'],
    ['keylime_binary_bios_measurements_secureboot', 'enabled'],
  ];
  it.each(states)('%s: Secure Boot %s, as the README says', (f, want) => {
    const raw = read(f);
    const r = checkEventLog({ log: raw, pcrs: trusted(pcrsOf(raw)) });
    expect(r.facts!.secureBoot).toBe(want);
    expect(r.selectors).toContain(`tpm:secureboot:${want}`);
    expect(r.selectors).not.toContain(`tpm:secureboot:${want === 'enabled' ? 'disabled' : 'enabled'}`);
  });

  it('replays only the compared PCRs (the others are the log\'s word): claims carry exactly those, with the values of a full replay', () => {
    const raw = read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog');
    const full = pcrsOf(raw);
    const r = checkEventLog({ log: raw, pcrs: trusted(full, [0, 4, 7]) });
    expect([...r.replayed.get('sha256')!.keys()].sort((a, b) => a - b)).toEqual([0, 4, 7]);
    for (const i of [0, 4, 7]) expect(r.replayed.get('sha256')!.get(i)!.equals(full.get(i)!)).toBe(true);
    // PCR 8 (GRUB, 67 events) is not quoted: not replayed, and no selector comes from it.
    expect(r.selectors.some((s) => s.startsWith('tpm:kernel_cmdline:'))).toBe(false);
    // Every bank replays the same with the shared-scratch extender as with a plain H(R || d) per event.
    const log = parseEventLog(raw);
    for (const alg of log.banks) {
      const plain = new Map<number, Buffer>();
      for (const ev of log.events.slice(1)) {
        if (ev.type === 3) continue;
        const d = ev.digests.find((x) => x.alg.id === alg.id)!.digest;
        plain.set(ev.index, createHash(alg.nodeHash).update(plain.get(ev.index) ?? Buffer.alloc(alg.size)).update(d).digest());
      }
      expect(replayEventLog(log, { banks: [alg.name] }).get(alg.name)).toEqual(plain);
    }
  });

  it('a hand-built log with a digest of the wrong size for its bank is a typed error, not a silent short hash', () => {
    const log = parseEventLog(read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog'));
    const ev = log.events[1]!;
    const bad = { ...log, events: [log.events[0]!, { ...ev, digests: ev.digests.map((d) => (d.alg.name === 'sha256' ? { ...d, digest: d.digest.subarray(0, 31) } : d)) }] };
    expect(codeOf(() => replayEventLog(bad, { banks: ['sha256'] }))).toBe('tpm.eventlog_bad_digest_size');
    expect(replayEventLog(bad, { banks: ['sha1'] }).get('sha1')!.size).toBe(1);
  });

  it('sb_cert_eventlog: the db authority and shim\'s own authority (3 post-separator events, 2 certificates; old shim quirk named)', () => {
    const raw = read('sb_cert_eventlog');
    const r = checkEventLog({ log: raw, pcrs: trusted(pcrsOf(raw)) });
    expect(r.facts!.authorities).toHaveLength(2);
    expect(r.facts!.db).toContain(r.facts!.authorities[0]);
    expect(r.facts!.quirks).toContain('shim_authority_extra_bytes');
    expect(r.facts!.bootApps).toHaveLength(3);
    expect(r.selectors).toContain(`tpm:boot_chain:sha256:${r.facts!.bootApps.join('+')}`);
  });

  it('keylime secure-boot log: kernel command line text is shown only because its digest covers it; kernel and initrd digests', () => {
    const raw = read('keylime_binary_bios_measurements_secureboot');
    const m = pcrsOf(raw);
    const r = checkEventLog({ log: raw, pcrs: trusted(m, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) });
    expect(r.facts!.kernelCmdlines[0]!.text).toMatch(/^\(hd0,gpt2\)\/vmlinuz-5\.14\.0-503\.11\.1\.el9_5\.x86_64 /);
    expect(r.facts!.kernels).toHaveLength(1);
    expect(r.facts!.initrds).toHaveLength(1);
    expect(r.facts!.scrtmVersion).toBe('edk2-20240524-7.el9');
    // With PCRs 8/9 not quoted, nothing from them.
    const r7 = checkEventLog({ log: raw, pcrs: trusted(m) });
    expect(r7.facts!.kernelCmdlines).toHaveLength(0);
    expect(r7.selectors.some((s) => s.startsWith('tpm:initrd:'))).toBe(false);
  });

  it('attack: a log from another machine does not match the quoted PCRs (mismatch names PCR and bank)', () => {
    const a = read('keylime_binary_bios_measurements_secureboot');
    const b = read('keylime_binary_bios_measurements');
    const e = (() => {
      try {
        checkEventLog({ log: b, pcrs: trusted(pcrsOf(a)) });
      } catch (x) {
        return x as SigilError;
      }
      throw new Error('accepted');
    })();
    expect(e.code).toBe('tpm.eventlog_mismatch');
    expect(e.message).toMatch(/PCR 0 \(sha256\)/);
  });

  it('attack: SecureBoot variable data flipped 00→01 with the digests kept: PCRs still match, the event is refused, no selector', () => {
    const raw = read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog');
    const forged = forgeData(raw, secureBootAt);
    const m = pcrsOf(raw);
    expect(codeOf(() => checkEventLog({ log: forged, pcrs: trusted(m) }))).toBe('tpm.eventlog_event_data_mismatch');
  });

  it('the GCP vTPM quote verifies over its SHA-1 PCRs only with the explicit legacy sha1 allowlist, and its legacy log replays to them', () => {
    const dump = JSON.parse(read('windows_gcp_shielded_vm.json').toString('utf8')) as {
      AK: { Public: string };
      Quote: { Quote: string; Signature: string };
      Log: { Raw: string; PCRs: { Index: number; Digest: string }[] };
    };
    const ak = parseTpmtPublic(Buffer.from(dump.AK.Public, 'base64'));
    const input = {
      ak,
      quote: Buffer.from(dump.Quote.Quote, 'base64'),
      signature: Buffer.from(dump.Quote.Signature, 'base64'),
      qualifyingData: Buffer.alloc(0),
      pcrValues: dump.Log.PCRs.map((p) => ({ bank: 'sha1' as const, index: p.Index, value: Buffer.from(p.Digest, 'base64') })),
    };
    expect(codeOf(() => verifyQuote(input))).toBe('tpm.hash_not_allowed');
    const q = verifyQuote({ ...input, hashAllowlist: ['sha1'] });
    expect(q.pcrs).toHaveLength(24);
    const r = checkEventLog({ log: Buffer.from(dump.Log.Raw, 'base64'), pcrs: q.pcrs! });
    expect(r.log.format).toBe('legacy-sha1');
    expect(r.facts!.bank).toBe('sha1');
    expect(r.selectors).toContain('tpm:secureboot:enabled');
    const tampered = q.pcrs!.map((p) => (p.index === 7 ? { ...p, value: Buffer.alloc(20, 1) } : p));
    expect(codeOf(() => checkEventLog({ log: Buffer.from(dump.Log.Raw, 'base64'), pcrs: tampered }))).toBe('tpm.eventlog_mismatch');
  });
});

describe.skipIf(!have)('IMA log against PCR 10', () => {
  const ima = (): Buffer => read('keylime_ima_log_sha256.txt');
  const pcr10 = (b: Buffer): { bank: string; index: number; value: Buffer }[] => [{ bank: 'sha256', index: 10, value: replayIma(parseImaAsciiLog(b), SHA256) }];
  const lines = (): string[] => ima().toString('latin1').trimEnd().split('\n');
  const policy = (allow: Record<string, string[]>, excludes: RegExp[] = []): { name: string; allow: Map<string, Set<string>>; excludes: RegExp[] } => ({
    name: 'prod',
    allow: new Map(Object.entries(allow).map(([k, v]) => [k, new Set(v)])),
    excludes,
  });
  const dataDigest = 'sha256:96d7fae8adb7286a419a88f78c13d35fb782d63df654b7db56f154765698b754';

  it('replays, passes an allowlist that has /data, and yields tpm:ima:policy:<name>', () => {
    const r = checkImaLog({ log: ima(), pcrs: pcr10(ima()), policy: policy({ '/data': [dataDigest] }) });
    expect(r.entries).toHaveLength(2);
    expect(r.selectors).toEqual(['tpm:ima:policy:prod']);
  });

  it('attack: a file outside the allowlist (or another version of it) fails attestation', () => {
    expect(codeOf(() => checkImaLog({ log: ima(), pcrs: pcr10(ima()), policy: policy({}) }))).toBe('tpm.ima_policy_violation');
    expect(codeOf(() => checkImaLog({ log: ima(), pcrs: pcr10(ima()), policy: policy({ '/data': ['sha256:' + '00'.repeat(32)] }) }))).toBe('tpm.ima_policy_violation');
    expect(checkImaLog({ log: ima(), pcrs: pcr10(ima()), policy: policy({}, [/^\/data$/]) }).selectors).toEqual(['tpm:ima:policy:prod']);
  });

  it('entries measured after the quote are pending, not checked; a dropped entry is a mismatch on PCR 10', () => {
    const first = Buffer.from(lines()[0]! + '\n');
    const r = checkImaLog({ log: ima(), pcrs: pcr10(first), policy: policy({}) });
    expect(r.entries).toHaveLength(1);
    expect(r.pending).toBe(1);
    expect(codeOf(() => checkImaLog({ log: first, pcrs: pcr10(ima()) }))).toBe('tpm.eventlog_mismatch');
    expect(codeOf(() => checkImaLog({ log: ima(), pcrs: [] }))).toBe('tpm.ima_pcr_not_quoted');
  });

  it('attack: an edited file digest no longer matches its template hash', () => {
    const l = lines();
    const edited = Buffer.from(`${l[0]}\n${l[1]!.replace(dataDigest.slice(7), '11'.repeat(32))}\n`);
    expect(codeOf(() => parseImaAsciiLog(edited))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaAsciiLog(Buffer.from(l[0]!)))).toBe('tpm.ima_truncated');
    expect(codeOf(() => parseImaAsciiLog(Buffer.alloc(0)))).toBe('tpm.ima_empty');
  });
});

// ---------------------------------------------------------------- the verifier half

const logger = pino({ level: 'silent' });
let dir = '';
let ek: { publicKey: KeyObject; privateKey: KeyObject };
let ak: { publicKey: KeyObject; privateKey: KeyObject };
let hello: Record<string, unknown>;
let clock = 1000n;

function session(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date() };
}

async function attest(v: NodeAttestorVerifier, pcrs: Map<number, Buffer>, indices: number[], extra: Record<string, unknown>): Promise<{ selectors: string[]; claims: Record<string, unknown> }> {
  const s = session();
  const b = await v.begin(hello, s);
  const c = b.challenge as { credentialBlob: string; encryptedSecret: string };
  const secret = activateCredentialSoftware(ek.privateKey, Buffer.from(hello.akPub as string, 'base64'), Buffer.from(c.credentialBlob, 'base64'), Buffer.from(c.encryptedSecret, 'base64'));
  const values = new Map(indices.map((i) => [`sha256:${i}`, pcrs.get(i)!]));
  clock += 10n;
  const signer = { ekPub: Buffer.from(hello.ekPub as string, 'base64'), akPub: Buffer.from(hello.akPub as string, 'base64') };
  const q = syntheticQuote({ ak: ak.privateKey, extraData: s.binding, selection: [{ bank: 'sha256', pcrs: indices }], values, clock, resetCount: 1, restartCount: 0, signer });
  const response = {
    secret: secret.toString('base64'),
    quote: q.attest.toString('base64'),
    signature: q.signature.toString('base64'),
    pcrValues: indices.map((i) => ({ bank: 'sha256', index: i, value: pcrs.get(i)!.toString('hex') })),
    ...extra,
  };
  return finishAndCommit(v, response, b.state, s);
}

async function plugin(config: Record<string, unknown>): Promise<NodeAttestorVerifier> {
  return tpmVerifierPlugin.create({ ekCa: ['roots.pem'], ...config }, { trustDomain: 'example.org', logger, now: () => new Date(), state: new MemoryState(), configDir: dir });
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

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-eventlog-'));
  const root = await makeRoot('Eventlog Test Root');
  const inter = await makeIntermediate('Eventlog Test CA', root);
  writeFileSync(join(dir, 'roots.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
  ek = rsaKeyPair();
  ak = rsaKeyPair();
  hello = {
    ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
    ekPub: ekPublicFor(ek.publicKey).toString('base64'),
    akPub: akPublicFor(ak.publicKey).toString('base64'),
  };
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!have)('tpm verifier half with event logs', () => {
  const raw = (): Buffer => read('keylime_binary_bios_measurements_secureboot');

  it('a matching log adds boot selectors; claims carry the replay and the facts', async () => {
    const v = await plugin({});
    const r = await attest(v, pcrsOf(raw()), PCRS, { eventLog: raw().toString('base64') });
    expect(r.selectors).toContain('tpm:secureboot:enabled');
    expect(r.selectors.filter((s) => s.startsWith('tpm:boot_app:sha256:'))).toHaveLength(3);
    expect(r.selectors.filter((s) => s.startsWith('tpm:pcr:sha256:'))).toHaveLength(8);
    expect((r.claims.eventLog as { matchedPcrs: Record<string, number[]> }).matchedPcrs).toEqual({ sha256: PCRS });
  });

  it('attack: one more digest extended into PCR 4 without logging it → tpm.eventlog_mismatch naming PCR 4 and sha256', async () => {
    const v = await plugin({});
    const m = pcrsOf(raw());
    m.set(4, createHash('sha256').update(Buffer.concat([m.get(4)!, createHash('sha256').update('rootkit').digest()])).digest());
    const e = await attest(v, m, PCRS, { eventLog: raw().toString('base64') }).catch((x: unknown) => x as SigilError);
    expect((e as SigilError).code).toBe('tpm.eventlog_mismatch');
    expect((e as SigilError).message).toMatch(/PCR 4 \(sha256\)/);
  });

  it('attack: forged SecureBoot data gives no selectors but a refusal', async () => {
    const v = await plugin({});
    const base = read('ubuntu_2104_shielded_vm_no_secure_boot_eventlog');
    const forged = forgeData(base, secureBootAt);
    expect(await codeAsync(attest(v, pcrsOf(base), PCRS, { eventLog: forged.toString('base64') }))).toBe('tpm.eventlog_event_data_mismatch');
  });

  it('eventLog.require refuses an attestation without a log; bad base64 and malformed logs are typed errors', async () => {
    const v = await plugin({ eventLog: { require: true } });
    expect(await codeAsync(attest(v, pcrsOf(raw()), PCRS, {}))).toBe('tpm.eventlog_missing');
    expect(await codeAsync(attest(v, pcrsOf(raw()), PCRS, { eventLog: 'not base64!' }))).toBe('tpm.bad_response');
    expect(await codeAsync(attest(v, pcrsOf(raw()), PCRS, { eventLog: read('short_no_action_eventlog').toString('base64') }))).toBe('tpm.eventlog_truncated');
  });

  it('only canonical standard base64 is accepted for the log, whatever the verifier decoded before (the decode buffer is reused)', async () => {
    const v = await plugin({});
    const m = pcrsOf(raw());
    const text = raw().toString('base64');
    // raw() is 3k+1 bytes long or not: build the cases on a text that ends in padding.
    const padded = text.endsWith('=') ? text : Buffer.concat([raw(), Buffer.from([0])]).toString('base64');
    const last = padded.replace(/=+$/, '');
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    const nonzeroTail = last.slice(0, -1) + alphabet[alphabet.indexOf(last.at(-1)!) | 1]! + padded.slice(last.length);
    expect(Buffer.from(nonzeroTail, 'base64').equals(Buffer.from(padded, 'base64'))).toBe(true);
    const urlSafe = text.includes('+') ? text.replace('+', '-') : text.replace('/', '_');
    const bad = [
      urlSafe, // base64url alphabet: decodes to the same bytes
      padded.replace(/=+$/, ''), // padding left out
      nonzeroTail, // unused bits of the last character set
      `${text.slice(0, 40)}\n${text.slice(40)}`, // a line break
      `${text.slice(0, 40)} ${text.slice(40)}`,
      `${padded}AAAA`, // data after the padding
      `${text}=`,
    ];
    for (const t of bad) expect(await codeAsync(attest(v, m, PCRS, { eventLog: t }))).toBe('tpm.bad_response');
    // A larger log then a smaller one through the same decode buffer: each is read at its own length.
    const big = read('keylime_binary_bios_measurements');
    expect(big.length).toBeGreaterThan(raw().length);
    expect((await attest(v, pcrsOf(big), PCRS, { eventLog: big.toString('base64') })).selectors.some((x) => x.startsWith('tpm:boot_app:'))).toBe(true);
    expect((await attest(v, m, PCRS, { eventLog: text })).selectors).toContain('tpm:secureboot:enabled');
    // The refused texts are refused again (never kept), after the good one was.
    for (const t of bad) expect(await codeAsync(attest(v, m, PCRS, { eventLog: t }))).toBe('tpm.bad_response');
  });

  it('IMA: PCR 10 quoted, allowlist file (sha256sum format) → tpm:ima:policy:<name>; a file not in it → tpm.ima_policy_violation', async () => {
    const ima = read('keylime_ima_log_sha256.txt');
    writeFileSync(join(dir, 'allow.txt'), '# golden\n96d7fae8adb7286a419a88f78c13d35fb782d63df654b7db56f154765698b754  /data\n');
    writeFileSync(join(dir, 'deny.txt'), '0000000000000000000000000000000000000000000000000000000000000000  /data\n');
    const idx = [...PCRS, 10];
    const m = pcrsOf(raw(), ima);
    const ok = await attest(await plugin({ pcrs: { sha256: idx }, ima: { allowlist: 'allow.txt', name: 'golden' } }), m, idx, { eventLog: raw().toString('base64'), imaLog: ima.toString('base64') });
    expect(ok.selectors).toContain('tpm:ima:policy:golden');
    expect(ok.selectors).toContain('tpm:secureboot:enabled');
    const deny = await plugin({ pcrs: { sha256: idx }, ima: { allowlist: 'deny.txt', name: 'golden' } });
    expect(await codeAsync(attest(deny, m, idx, { eventLog: raw().toString('base64'), imaLog: ima.toString('base64') }))).toBe('tpm.ima_policy_violation');
    const req = await plugin({ pcrs: { sha256: idx }, ima: { allowlist: 'allow.txt', name: 'golden', require: true } });
    expect(await codeAsync(attest(req, m, idx, { eventLog: raw().toString('base64') }))).toBe('tpm.ima_log_missing');
  });

  it('config validation of eventLog and ima', async () => {
    expect(await codeAsync(plugin({ eventLog: { require: 'yes' } }))).toBe('tpm.config_invalid');
    expect(await codeAsync(plugin({ eventLog: { unloggedPcrs: [30] } }))).toBe('tpm.config_invalid');
    expect(await codeAsync(plugin({ ima: { allowlist: 'allow.txt', name: 'bad name' } }))).toBe('tpm.config_invalid');
    expect(await codeAsync(plugin({ ima: { allowlist: 'missing.txt', name: 'x' } }))).toBe('tpm.config_invalid');
    expect(await codeAsync(plugin({ ima: { allowlist: 'allow.txt', name: 'x', excludes: ['('] } }))).toBe('tpm.config_invalid');
  });
});

describe.skipIf(!have)('EventLogCheckCache', () => {
  it('memoises by log, PCRs and unlogged PCRs; a mismatch is thrown every time and never stored', async () => {
    const { EventLogCheckCache } = await import('../../src/tpm/eventlog/index.js');
    const cache = new EventLogCheckCache(2);
    const raw = read('keylime_binary_bios_measurements_secureboot');
    const m = pcrsOf(raw);
    const a = cache.check(raw, trusted(m), [10]);
    expect(cache.check(raw, trusted(m), [10])).toBe(a);
    expect(cache.size).toBe(1);
    expect(cache.check(raw, trusted(m, [0, 7]), [10])).not.toBe(a);
    expect(cache.size).toBe(2);
    const bad = trusted(m).map((p) => (p.index === 4 ? { ...p, value: Buffer.alloc(32) } : p));
    expect(codeOf(() => cache.check(raw, bad, [10]))).toBe('tpm.eventlog_mismatch');
    expect(codeOf(() => cache.check(raw, bad, [10]))).toBe('tpm.eventlog_mismatch');
    expect(cache.size).toBe(2);
    cache.check(raw, trusted(m, [0]), [10]);
    expect(cache.size).toBe(2);
    expect(a.selectors).toContain('tpm:secureboot:enabled');
  });

  it('checkText decodes a log text no more once kept (on its second sight); bad text is refused every time and never kept; the text budget evicts', async () => {
    const { EventLogCheckCache } = await import('../../src/tpm/eventlog/index.js');
    const raw = read('keylime_binary_bios_measurements_secureboot');
    const text = raw.toString('base64');
    const m = pcrsOf(raw);
    let decodes = 0;
    const decode = (t: string): Buffer => {
      decodes++;
      const b = Buffer.from(t, 'base64');
      if (b.toString('base64') !== t) throw new SigilError('tpm.bad_response', 'not canonical');
      return b;
    };
    const cache = new EventLogCheckCache(8, text.length + 10);
    cache.checkText(text, decode, trusted(m), [10]); // first sight: checked, not kept (kept on the second)
    const a = cache.checkText(text, decode, trusted(m), [10]);
    expect(cache.checkText(text, decode, trusted(m), [10])).toBe(a);
    expect(decodes).toBe(2);
    // Same text, other PCRs: no decode for the key, one for the check itself.
    expect(codeOf(() => cache.checkText(text, decode, trusted(m).map((p) => ({ ...p, value: Buffer.alloc(32) })), [10]))).toBe('tpm.eventlog_mismatch');
    expect(decodes).toBe(3);
    const bad = `${text.slice(0, -4)}@@@@`;
    expect(codeOf(() => cache.checkText(bad, decode, trusted(m), [10]))).toBe('tpm.bad_response');
    expect(codeOf(() => cache.checkText(bad, decode, trusted(m), [10]))).toBe('tpm.bad_response');
    expect(decodes).toBe(5);
    // Another log's text, kept on its second sight, pushes the first out of the text budget, and its outcomes with it: it is decoded and checked again.
    const other = read('sb_cert_eventlog');
    cache.checkText(other.toString('base64'), decode, [], [10]);
    cache.checkText(other.toString('base64'), decode, [], [10]);
    const again = cache.checkText(text, decode, trusted(m), [10]);
    // Decoded and parsed again; the outcome itself may come from the outcome memo (same compared records).
    expect(again).toStrictEqual(a);
    expect(decodes).toBe(8);
  });

  it('checkText keeps many texts of one length apart (V8 hashes long strings by length: they must not share a slot); a text that failed a check against other PCRs stays kept', async () => {
    const { EventLogCheckCache } = await import('../../src/tpm/eventlog/index.js');
    const raw = read('keylime_binary_bios_measurements_secureboot');
    const banks = parseEventLog(raw).banks.map((b) => b.id);
    // One more record in PCR 14 (not compared) makes 40 logs of one length that all match PCRs 0-7.
    const texts = Array.from({ length: 40 }, (_, n) => Buffer.concat([raw, agileRecord({ index: 14, type: 0xd, data: Buffer.from(`node ${String(n).padStart(3, '0')}`) }, banks)]).toString('base64'));
    expect(new Set(texts.map((t) => t.length)).size).toBe(1);
    expect(new Set(texts).size).toBe(40);
    const m = pcrsOf(raw);
    let decodes = 0;
    const decode = (t: string): Buffer => {
      decodes++;
      return Buffer.from(t, 'base64');
    };
    const cache = new EventLogCheckCache(64);
    texts.forEach((t) => cache.checkText(t, decode, trusted(m), [10])); // first sight: fingerprints only
    expect(cache.size).toBe(0);
    const first = texts.map((t) => cache.checkText(t, decode, trusted(m), [10]));
    expect(decodes).toBe(80);
    expect(cache.size).toBe(40);
    texts.forEach((t, n) => expect(cache.checkText(t, decode, trusted(m), [10])).toBe(first[n]));
    expect(decodes).toBe(80);
    // Same text against a wrong PCR 4: refused (one decode for the check), and the text is still kept.
    const wrong = trusted(m).map((p) => (p.index === 4 ? { ...p, value: Buffer.alloc(32) } : p));
    expect(codeOf(() => cache.checkText(texts[0]!, decode, wrong, [10]))).toBe('tpm.eventlog_mismatch');
    expect(decodes).toBe(81);
    expect(cache.checkText(texts[0]!, decode, trusted(m), [10])).toBe(first[0]);
    expect(decodes).toBe(81);
    // Each of them is a log of its own: its selectors are those of the log it extends.
    expect(first[39]!.selectors).toEqual(first[0]!.selectors);
  });
});

describe.skipIf(!have)('mutations of real logs checked against their true PCRs', () => {
  function rng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  it.each(['keylime_binary_bios_measurements_secureboot', 'sb_cert_eventlog'])(
    '%s: 300 one-byte flips are refused with a tpm.eventlog_* code, or accepted with no Secure Boot selector the true log lacks',
    (f) => {
      const raw = read(f);
      const pcrs = trusted(pcrsOf(raw), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      const sb = (sel: string[]): string[] => sel.filter((s) => s.startsWith('tpm:secureboot:') || s.startsWith('tpm:firmware:scrtm_version:'));
      const want = sb(checkEventLog({ log: raw, pcrs }).selectors);
      const next = rng(raw.length);
      let refused = 0;
      for (let i = 0; i < 300; i++) {
        const m = Buffer.from(raw);
        const at = Math.floor(next() * m.length);
        m.writeUInt8(m.readUInt8(at) ^ (1 << Math.floor(next() * 8)), at);
        try {
          // Event types are not covered by the PCRs, so a relabelled event may drop a selector;
          // no mutation may add or change one.
          for (const sel of sb(checkEventLog({ log: m, pcrs }).selectors)) expect(want).toContain(sel);
        } catch (e) {
          if (!(e instanceof SigilError)) throw e;
          expect(e.code).toMatch(/^tpm\.eventlog_/);
          refused++;
        }
      }
      expect(refused).toBeGreaterThan(200);
    },
  );
});
