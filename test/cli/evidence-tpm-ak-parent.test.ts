/**
 * `sigil evidence verify tpm --ek-pub FILE`, through the real CLI, on evidence made by tpm2-tools
 * on a manufactured swtpm.
 *
 * For a signing key outside the endorsement (and platform) hierarchy the TPM obfuscates
 * resetCount, restartCount and firmwareVersion in what it signs, so those claims say something
 * about the TPM only when the AK is the EK's child. The verifier checks that (the quote's
 * qualifiedSigner is the AK's Qualified Name under the EK, `tpm.ak_not_under_ek`); it needs the
 * EK's public area (TPM2B_PUBLIC), which an EK certificate does not carry. With --ek-pub the
 * offline verb applies the same check (and checks --ek-pub against --ek-cert); without it the
 * output says plainly that the AK's parentage was not checked and what that means for the counters.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ECC_EK_HANDLE, startToolsTpm, type ToolsTpm } from '../tpm/tpm2tools.js';
import { sigil, type CliRun } from './evidence-cli.js';

let t: ToolsTpm | null = null;
const NONCE = randomBytes(32).toString('hex');
type Quote = Awaited<ReturnType<ToolsTpm['quote']>>;
let underEk: { pub: string; q: Quote };
let underEccEk: { pub: string; q: Quote };
let underSrk: { pub: string; q: Quote };

beforeAll(async () => {
  t = await startToolsTpm();
  if (!t) return;
  const ak = await t.createAk('ak', 'rsa');
  underEk = { pub: t.file('ak.pub'), q: await t.quote(ak.ctx, 'sha256:0,7', NONCE, 'q-ek') };
  const eccAk = await t.createAk('ak-ecc-ek', 'rsa', ECC_EK_HANDLE);
  underEccEk = { pub: t.file('ak-ecc-ek.pub'), q: await t.quote(eccAk.ctx, 'sha256:0,7', NONCE, 'q-ecc-ek') };
  // A restricted signing key with every attribute an AK needs, under an owner-hierarchy primary (an SRK).
  await t.run('tpm2_createprimary', ['-C', 'o', '-c', t.file('srk.ctx')]);
  await t.run('tpm2_create', ['-C', t.file('srk.ctx'), '-G', 'rsa2048:rsassa-sha256:null', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign', '-u', t.file('own.pub'), '-r', t.file('own.priv')]);
  await t.flush();
  await t.run('tpm2_load', ['-C', t.file('srk.ctx'), '-u', t.file('own.pub'), '-r', t.file('own.priv'), '-c', t.file('own.ctx')]);
  await t.flush();
  underSrk = { pub: t.file('own.pub'), q: await t.quote(t.file('own.ctx'), 'sha256:0,7', NONCE, 'q-srk') };
}, 120_000);
afterAll(async () => t?.stop());

function args(ak: { pub: string; q: Quote }, extra: string[] = [], json = true): string[] {
  const tk = t as ToolsTpm;
  return [
    'evidence', 'verify', 'tpm', '--ek-cert', tk.file('ek-rsa.der'), '--ek-ca', ...tk.ekCaFiles, '--ak-pub', ak.pub,
    '--quote', ak.q.files.msg, '--signature', ak.q.files.sig, '--pcr-values', ak.q.files.pcrs, '--nonce', NONCE, ...extra, ...(json ? ['--json'] : []),
  ];
}

const codeOf = (r: CliRun): [number, string | undefined] => [r.code, r.json?.ok === false ? r.json.error?.code : 'ok'];

describe('sigil evidence verify tpm: the AK as the EK\'s child', () => {
  it('with --ek-pub: an AK made under that EK passes, and the output says its parentage was checked', async ({ skip }) => {
    if (!t) return skip();
    const r = await sigil(args(underEk, ['--ek-pub', t.file('ek-rsa.pub')]));
    expect(codeOf(r)).toEqual([0, 'ok']);
    expect(r.json?.claims.akUnderEkChecked).toBe(true);
    expect(r.json?.claims.countersNote).toBeUndefined();
    // Credential activation is still not done offline: the AK is not proven to be in that TPM.
    expect(r.json?.claims.akBoundToEk).toBe(false);
  }, 120_000);

  it('with --ek-pub: an AK under an owner-hierarchy key (obfuscated counters) is refused, tpm.ak_not_under_ek', async ({ skip }) => {
    if (!t) return skip();
    const r = await sigil(args(underSrk, ['--ek-pub', t.file('ek-rsa.pub')]));
    expect(codeOf(r)).toEqual([1, 'tpm.ak_not_under_ek']);
  }, 120_000);

  it('with --ek-pub: an AK made under the TPM\'s other EK is not the child of the EK given, tpm.ak_not_under_ek', async ({ skip }) => {
    if (!t) return skip();
    const r = await sigil(args(underEccEk, ['--ek-pub', t.file('ek-rsa.pub')]));
    expect(codeOf(r)).toEqual([1, 'tpm.ak_not_under_ek']);
  }, 120_000);

  it('--ek-pub must be the public area of the certified EK, and a TPM2B_PUBLIC', async ({ skip }) => {
    if (!t) return skip();
    const tk = t;
    writeFileSync(tk.file('garbage.pub'), Buffer.from('not a public area'));
    const [other, garbage, missing] = await Promise.all([
      // The ECC EK's public area with the RSA EK's certificate.
      sigil(args(underEccEk, ['--ek-pub', tk.file('ek-ecc.pub')])),
      sigil(args(underEk, ['--ek-pub', tk.file('garbage.pub')])),
      sigil(args(underEk, ['--ek-pub', tk.file('no-such.pub')])),
    ]);
    expect(codeOf(other)).toEqual([1, 'tpm.ek_public_mismatch']);
    expect(codeOf(garbage)).toEqual([1, 'tpm.malformed_public']);
    // A missing file is a usage error; under --json it is the one JSON object on stdout (cli.usage, exit 2).
    expect(codeOf(missing)).toEqual([2, 'cli.usage']);
    expect(String(missing.json?.error?.message)).toContain('--ek-pub');
  }, 120_000);

  it('without --ek-pub: verified as before, and the output says plainly that the AK\'s parentage was not checked', async ({ skip }) => {
    if (!t) return skip();
    // The owner-hierarchy AK, whose counters are obfuscated, goes through: the output must say so.
    const [json, text] = await Promise.all([sigil(args(underSrk)), sigil(args(underSrk, [], false))]);
    expect(codeOf(json)).toEqual([0, 'ok']);
    expect(json.json?.claims.akUnderEkChecked).toBe(false);
    const note = String(json.json?.claims.countersNote);
    expect(note).toMatch(/resetCount, restartCount and firmwareVersion/);
    expect(note).toMatch(/only .*child of the EK/);
    expect(note).toMatch(/not checked/);
    expect(note).toContain('--ek-pub');
    expect(text.code).toBe(0);
    expect(text.out).toContain('claim akUnderEkChecked = false');
    expect(text.out).toContain(`claim countersNote = ${note}`);
  }, 120_000);
});
