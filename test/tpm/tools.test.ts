/**
 * Cross-checks against tools Sigil did not write: tpm2-tools on a manufactured swtpm.
 *  - quotes made by tpm2_quote verify with Sigil's offline verifier and the CLI, and Sigil's
 *    verdicts match tpm2_checkquote on valid and tampered evidence;
 *  - credential blobs made by Sigil's MakeCredential are accepted by tpm2_activatecredential
 *    for both EKs swtpm_setup creates (RSA-2048 low range, ECC P-384 high range).
 */
import { constants, createHash, randomBytes, verify as cryptoVerify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerTpmEvidence } from '../../src/cli/evidence-commands.js';
import { SigilError } from '../../src/errors.js';
import { makeCredential } from '../../src/tpm/credential.js';
import { certificatesFromBytes } from '../../src/tpm/ekcert.js';
import { spkiHash } from '../../src/tpm/keys.js';
import { parsePcrValuesFile } from '../../src/tpm/pcrvalues.js';
import { publicToKeyObject } from '../../src/tpm/keys.js';
import { objectName, parseAttestAny, parseSignature, parseTpm2bPublic } from '../../src/tpm/structures.js';
import { OFFLINE_NOTE, verifyTpmEvidenceOffline, type OfflineTpmEvidence } from '../../src/tpm/verify.js';
import { ECC_EK_HANDLE, RSA_EK_HANDLE, startToolsTpm, type ToolsTpm } from './tpm2tools.js';

let t: ToolsTpm | null = null;
let ekCa: Buffer[] = [];
let rootSha256 = '';
let akRsa: { pub: Buffer; ctx: string; nameHex: string };
let akEcc: { pub: Buffer; ctx: string; nameHex: string };
const NONCE = 'c0ffee00' + randomBytes(28).toString('hex');
let quoteRsa: Awaited<ReturnType<ToolsTpm['quote']>>;
let quoteEcc: Awaited<ReturnType<ToolsTpm['quote']>>;
let AT = new Date();

beforeAll(async () => {
  t = await startToolsTpm();
  if (!t) return;
  AT = new Date(Date.now() + 1000);
  ekCa = t.ekCaFiles.flatMap((f) => certificatesFromBytes(readFileSync(f), f));
  rootSha256 = createHash('sha256').update(ekCa[0] as Buffer).digest('hex');
  // make PCR 16 non-zero so the values mean something
  await t.run('tpm2_pcrextend', ['16:sha256=' + 'ab'.repeat(32) + ',sha1=' + 'cd'.repeat(20)]);
  akRsa = await t.createAk('ak-rsa', 'rsa');
  akEcc = await t.createAk('ak-ecc', 'ecc');
  quoteRsa = await t.quote(akRsa.ctx, 'sha1:0,16+sha256:0,1,2,3,4,5,6,7,16', NONCE, 'q-rsa');
  quoteEcc = await t.quote(akEcc.ctx, 'sha256:0,16', NONCE, 'q-ecc');
}, 60_000);

afterAll(async () => {
  await t?.stop();
});

function evidence(over: Partial<OfflineTpmEvidence> = {}): OfflineTpmEvidence {
  if (!t) throw new Error('no TPM');
  return {
    ekCert: t.ekCertRsa,
    ekCa,
    akPub: akRsa.pub,
    quote: quoteRsa.msg,
    signature: quoteRsa.sig,
    nonce: Buffer.from(NONCE, 'hex'),
    pcrValues: quoteRsa.pcrs,
    at: AT,
    ...over,
  };
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

async function checkquote(files: { ak: string; msg: string; sig: string; pcrs: string }, nonceHex: string): Promise<boolean> {
  if (!t) throw new Error('no TPM');
  try {
    await t.run('tpm2_checkquote', ['-u', files.ak, '-m', files.msg, '-s', files.sig, '-f', files.pcrs, '-g', 'sha256', '-q', nonceHex]);
    return true;
  } catch {
    return false;
  }
}

function flip(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at] = (c[at] ?? 0) ^ 0x01;
  return c;
}

describe('tpm2-tools cross-checks', () => {
  it('our AK Name equals the one tpm2_createak wrote', ({ skip }) => {
    if (!t) return skip();
    expect(objectName(parseTpm2bPublic(akRsa.pub)).toString('hex')).toBe(akRsa.nameHex);
    expect(objectName(parseTpm2bPublic(akEcc.pub)).toString('hex')).toBe(akEcc.nameHex);
  });

  it('tpm2_quote -m is a bare TPMS_ATTEST; both it and the TPM2B form parse', ({ skip }) => {
    if (!t) return skip();
    expect(quoteRsa.msg.readUInt32BE(0)).toBe(0xff544347);
    const size = Buffer.alloc(2);
    size.writeUInt16BE(quoteRsa.msg.length);
    const a = parseAttestAny(quoteRsa.msg);
    const b = parseAttestAny(Buffer.concat([size, quoteRsa.msg]));
    expect(b.raw.equals(a.raw)).toBe(true);
    expect(a.extraData.toString('hex')).toBe(NONCE);
  });

  it('a quote made by tpm2_quote (RSA AK) verifies offline, with the PCR values tpm2-tools wrote', async ({ skip }) => {
    if (!t) return skip();
    const r = await verifyTpmEvidenceOffline(evidence());
    const ekHash = spkiHash(parseTpm2bPublic(t.ekPubRsa));
    expect(r.selectors).toContain(`tpm:ek_pubhash:${ekHash}`);
    expect(r.selectors).toContain('tpm:ek_manufacturer:id:00001014');
    expect(r.selectors).toContain('tpm:ek_model:swtpm');
    expect(r.selectors).toContain('tpm:ek_version:id:20191023');
    expect(r.selectors).toContain(`tpm:ek_ca:${rootSha256}`);
    expect(r.selectors).toContain(`tpm:pcr:sha256:16:${createHash('sha256').update(Buffer.concat([Buffer.alloc(32), Buffer.from('ab'.repeat(32), 'hex')])).digest('hex')}`);
    expect(r.selectors).toContain(`tpm:pcr:sha1:0:${'00'.repeat(20)}`);
    expect(r.selectors.filter((s) => s.startsWith('tpm:pcr:'))).toHaveLength(11);
    expect(r.claims.akBoundToEk).toBe(false);
    expect(r.claims.note).toBe(OFFLINE_NOTE);
  });

  it('PCR values read by tpm2_pcrread (YAML) give the same result as the binary file', async ({ skip }) => {
    if (!t) return skip();
    const yaml = await t.run('tpm2_pcrread', ['sha1:0,16+sha256:0,1,2,3,4,5,6,7,16']);
    const fromYaml = parsePcrValuesFile(Buffer.from(yaml));
    const fromBin = parsePcrValuesFile(quoteRsa.pcrs);
    const norm = (v: typeof fromBin): string[] => v.map((x) => `${x.bank}:${x.index}:${x.value.toString('hex')}`).sort();
    expect(norm(fromYaml)).toEqual(norm(fromBin));
    const r = await verifyTpmEvidenceOffline(evidence({ pcrValues: Buffer.from(yaml) }));
    expect(r.selectors.filter((s) => s.startsWith('tpm:pcr:'))).toHaveLength(11);
  });

  it('a quote by an ECC (ECDSA P-256) AK verifies offline', async ({ skip }) => {
    if (!t) return skip();
    const r = await verifyTpmEvidenceOffline(evidence({ akPub: akEcc.pub, quote: quoteEcc.msg, signature: quoteEcc.sig, pcrValues: quoteEcc.pcrs }));
    expect(r.selectors.filter((s) => s.startsWith('tpm:pcr:'))).toEqual([
      `tpm:pcr:sha256:0:${'00'.repeat(32)}`,
      expect.stringMatching(/^tpm:pcr:sha256:16:[0-9a-f]{64}$/),
    ]);
  });

  it('a quote by an RSASSA-PSS AK verifies offline; the TPM salts with the digest length, the length Sigil pins', async ({ skip }) => {
    if (!t) return skip();
    const akPss = await t.createAk('ak-pss', 'rsapss');
    const q = await t.quote(akPss.ctx, 'sha256:0,16', NONCE, 'q-pss', 'rsapss');
    const sig = parseSignature(q.sig);
    expect(sig.sigAlg).toBe(0x0016); // TPM_ALG_RSAPSS
    const r = await verifyTpmEvidenceOffline(evidence({ akPub: akPss.pub, quote: q.msg, signature: q.sig, pcrValues: q.pcrs }));
    expect(r.selectors.filter((s) => s.startsWith('tpm:pcr:'))).toHaveLength(2);
    // What the TPM did, checked with node directly: salt = 32 bytes (SHA-256) verifies, other lengths do not.
    if (sig.sigAlg !== 0x0016) throw new Error('not PSS');
    const key = publicToKeyObject(parseTpm2bPublic(akPss.pub));
    const withSalt = (saltLength: number): boolean => cryptoVerify('sha256', q.msg, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, sig.sig);
    expect(withSalt(32)).toBe(true);
    expect(withSalt(20)).toBe(false);
    expect(withSalt(0)).toBe(false);
    // The TPM itself (TPM2_VerifySignature) agrees, and both refuse a tampered PSS signature.
    // (Not tpm2_checkquote: tpm2-tools 5.x cannot check RSAPSS quotes, tpm2-tools issue #3283.)
    const tpmVerifies = async (sigFile: string): Promise<boolean> => {
      if (!t) throw new Error('no TPM');
      try {
        await t.run('tpm2_verifysignature', ['-c', akPss.ctx, '-g', 'sha256', '-m', q.files.msg, '-s', sigFile]);
        return true;
      } catch {
        return false;
      } finally {
        await t.flush();
      }
    };
    expect(await tpmVerifies(q.files.sig)).toBe(true);
    const bad = flip(q.sig, q.sig.length - 9);
    writeFileSync(t.file('q-pss-bad.sig'), bad);
    expect(await tpmVerifies(t.file('q-pss-bad.sig'))).toBe(false);
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ akPub: akPss.pub, quote: q.msg, signature: bad, pcrValues: q.pcrs })))).toBe('tpm.quote_signature_invalid');
  });

  it("Sigil's verdicts match tpm2_checkquote on valid and tampered evidence", async ({ skip }) => {
    if (!t) return skip();
    const tk = t;
    const write = (name: string, b: Buffer): string => {
      writeFileSync(tk.file(name), b);
      return tk.file(name);
    };
    const akFile = tk.file('ak-rsa.pub');
    const pcrValues = parsePcrValuesFile(quoteRsa.pcrs);
    const firstValue = pcrValues[0];
    if (!firstValue) throw new Error('no PCR values');
    const cases: { name: string; msg: Buffer; sig: Buffer; pcrs: Buffer; nonce: string; code: string }[] = [
      { name: 'valid', msg: quoteRsa.msg, sig: quoteRsa.sig, pcrs: quoteRsa.pcrs, nonce: NONCE, code: 'ok' },
      { name: 'wrong nonce', msg: quoteRsa.msg, sig: quoteRsa.sig, pcrs: quoteRsa.pcrs, nonce: 'ff' + NONCE.slice(2), code: 'tpm.nonce_mismatch' },
      // byte 60 is inside clockInfo: still parses, the signature no longer covers it
      { name: 'tampered quote', msg: flip(quoteRsa.msg, 60), sig: quoteRsa.sig, pcrs: quoteRsa.pcrs, nonce: NONCE, code: 'tpm.quote_signature_invalid' },
      { name: 'tampered signature', msg: quoteRsa.msg, sig: flip(quoteRsa.sig, quoteRsa.sig.length - 7), pcrs: quoteRsa.pcrs, nonce: NONCE, code: 'tpm.quote_signature_invalid' },
      // serialized file: first digest byte of the first TPML_DIGEST is at 132 + 4 + 4 + 2
      { name: 'wrong PCR values', msg: quoteRsa.msg, sig: quoteRsa.sig, pcrs: flip(quoteRsa.pcrs, 142), nonce: NONCE, code: 'tpm.pcr_digest_mismatch' },
    ];
    for (const c of cases) {
      const ours = await codeOf(
        verifyTpmEvidenceOffline(evidence({ quote: c.msg, signature: c.sig, pcrValues: c.pcrs, nonce: Buffer.from(c.nonce, 'hex') })),
      );
      const theirs = await checkquote(
        { ak: akFile, msg: write(`cq-${c.name}.msg`, c.msg), sig: write(`cq-${c.name}.sig`, c.sig), pcrs: write(`cq-${c.name}.pcrs`, c.pcrs) },
        c.nonce,
      );
      expect({ case: c.name, code: ours }).toEqual({ case: c.name, code: c.code });
      expect({ case: c.name, checkquote: theirs }).toEqual({ case: c.name, checkquote: c.code === 'ok' });
    }
  });

  it('offline rejections: unrestricted AK, untrusted EK CA, expired time', async ({ skip }) => {
    if (!t) return skip();
    // an ordinary signing key (not restricted) under the owner hierarchy, made with tpm2_create
    await t.run('tpm2_createprimary', ['-C', 'o', '-c', t.file('srk.ctx')]);
    await t.run('tpm2_create', ['-C', t.file('srk.ctx'), '-G', 'rsa2048', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign', '-u', t.file('plain.pub'), '-r', t.file('plain.priv')]);
    await t.flush();
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ akPub: readFileSync(t.file('plain.pub')) })))).toBe('tpm.ak_not_restricted');
    // a CA with the same name as swtpm's issuing CA but another key: signature check fails
    await t.run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', t.file('fake.key'), '-out', t.file('fake.pem'), '-subj', '/CN=swtpm-localca', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
    const fake = certificatesFromBytes(readFileSync(t.file('fake.pem')), 'fake');
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ ekCa: fake })))).toBe('tpm.ek_untrusted');
    // only the root configured: the issuing CA is missing unless sent as an intermediate
    const [root, issuer] = ekCa as [Buffer, Buffer];
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ ekCa: [root] })))).toBe('tpm.ek_untrusted');
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ ekCa: [root], ekIntermediates: [issuer] })))).toBe('ok');
    expect(await codeOf(verifyTpmEvidenceOffline(evidence({ at: new Date('2001-01-01T00:00:00Z') })))).toBe('tpm.ek_cert_expired');
  });
});

describe('MakeCredential accepted by tpm2_activatecredential', () => {
  it('RSA-2048 EK (0x81010001, low range, sha256/AES-128)', async ({ skip }) => {
    if (!t) return skip();
    const ek = parseTpm2bPublic(t.ekPubRsa);
    expect(ek.type).toBe('rsa');
    const secret = randomBytes(32);
    const made = makeCredential(ek, objectName(parseTpm2bPublic(akRsa.pub)), secret);
    const got = await t.activate(akRsa.ctx, RSA_EK_HANDLE, made.credentialBlob, made.encryptedSecret, 'act-rsa');
    expect(got.equals(secret)).toBe(true);
  });

  it('ECC P-384 EK (0x81010016, high range, sha384/AES-256)', async ({ skip }) => {
    if (!t) return skip();
    const ek = parseTpm2bPublic(t.ekPubEcc);
    expect(ek.type).toBe('ecc');
    expect(ek.nameAlg).toBe(0x000c);
    expect(ek.symmetric.keyBits).toBe(256);
    const secret = randomBytes(32);
    const made = makeCredential(ek, objectName(parseTpm2bPublic(akEcc.pub)), secret);
    const got = await t.activate(akEcc.ctx, ECC_EK_HANDLE, made.credentialBlob, made.encryptedSecret, 'act-ecc');
    expect(got.equals(secret)).toBe(true);
  });

  it('the TPM refuses to activate for an AK whose Name differs from the one the credential names', async ({ skip }) => {
    if (!t) return skip();
    const made = makeCredential(parseTpm2bPublic(t.ekPubRsa), objectName(parseTpm2bPublic(akEcc.pub)), randomBytes(32));
    await expect(t.activate(akRsa.ctx, RSA_EK_HANDLE, made.credentialBlob, made.encryptedSecret, 'act-wrong')).rejects.toThrow(/activatecredential/);
  });
});

describe('sigil evidence verify tpm (CLI)', () => {
  async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
    const program = new Command();
    program.exitOverride();
    const verify = program.command('evidence').command('verify');
    registerTpmEvidence(verify);
    let out = '';
    let err = '';
    const so = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
      out += String(s);
      return true;
    });
    const se = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      err += String(s);
      return true;
    });
    const before = process.exitCode;
    process.exitCode = undefined;
    try {
      await program.parseAsync(['node', 'sigil', 'evidence', 'verify', 'tpm', ...args]);
      return { code: Number(process.exitCode ?? 0), out, err };
    } finally {
      so.mockRestore();
      se.mockRestore();
      process.exitCode = before;
    }
  }

  it('verifies tpm2-tools files and prints one JSON object; rejects a wrong nonce with exit 1', async ({ skip }) => {
    if (!t) return skip();
    const tk = t;
    const base = ['--ek-cert', tk.file('ek-rsa.der'), '--ek-ca', ...tk.ekCaFiles, '--ak-pub', tk.file('ak-rsa.pub'), '--quote', quoteRsa.files.msg, '--signature', quoteRsa.files.sig];
    const ok = await cli([...base, '--nonce', NONCE, '--pcr-values', quoteRsa.files.pcrs, '--pcrs', 'sha1:0,16+sha256:0,1,2,3,4,5,6,7,16', '--json']);
    expect(ok.code).toBe(0);
    const j = JSON.parse(ok.out) as { ok: boolean; attestor: string; selectors: string[]; claims: Record<string, unknown> };
    expect(j.ok).toBe(true);
    expect(j.attestor).toBe('tpm');
    expect(j.selectors).toContain('tpm:ek_model:swtpm');
    expect(j.claims.akBoundToEk).toBe(false);

    const bad = await cli([...base, '--nonce', '00' + NONCE.slice(2), '--json']);
    expect(bad.code).toBe(1);
    expect((JSON.parse(bad.out) as { error: { code: string } }).error.code).toBe('tpm.nonce_mismatch');

    const sel = await cli([...base, '--nonce', NONCE, '--pcrs', 'sha256:0,1', '--json']);
    expect(sel.code).toBe(1);
    expect((JSON.parse(sel.out) as { error: { code: string } }).error.code).toBe('tpm.pcr_selection_mismatch');

    const human = await cli([...base, '--nonce', NONCE]);
    expect(human.code).toBe(0);
    expect(human.out).toMatch(/^OK tpm: evidence verified/);

    await expect(cli([...base, '--nonce', 'xyz'])).rejects.toMatchObject({ code: 'cli.usage' });
  });
});
