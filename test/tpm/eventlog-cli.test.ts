/**
 * `sigil evidence eventlog` and `sigil evidence verify tpm --event-log`: an operator copies the
 * selectors printed for a golden machine's log into entries; a log that does not replay to the
 * given or quoted PCRs exits 1 with tpm.eventlog_mismatch.
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { registerEventLogCommand, registerTpmEvidence } from '../../src/cli/evidence-commands.js';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { parseEventLog, replayEventLog, replayedToJson } from '../../src/tpm/eventlog/index.js';
import { parseImaAsciiLog, replayIma } from '../../src/tpm/ima/index.js';
import { requireTestdata, td } from '../support/testdata.js';
import { akPublicFor, makeEkCert, makeIntermediate, makeRoot, rsaKeyPair, syntheticQuote } from './synthetic.js';

const have = requireTestdata();
const dir = mkdtempSync(join(tmpdir(), 'sigil-eventlog-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = (f: string): string => td('tpm-eventlog', f);

interface Out {
  ok: boolean;
  selectors: string[];
  claims: Record<string, unknown>;
  error?: { code: string; message: string };
}

async function cli(args: string[]): Promise<{ code: number; json: Out | undefined; err: string }> {
  const program = new Command();
  program.exitOverride();
  const evidence = program.command('evidence');
  registerEventLogCommand(evidence);
  registerTpmEvidence(evidence.command('verify'));
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
    await program.parseAsync(['node', 'sigil', 'evidence', ...args]);
    return { code: Number(process.exitCode ?? 0), json: out.trim() ? (JSON.parse(out) as Out) : undefined, err };
  } finally {
    so.mockRestore();
    se.mockRestore();
    process.exitCode = before;
  }
}

describe.skipIf(!have)('sigil evidence eventlog', () => {
  it('prints per-bank replayed PCRs and the selectors of a golden log', async () => {
    const r = await cli(['eventlog', log('keylime_binary_bios_measurements_secureboot'), '--json']);
    expect(r.code).toBe(0);
    expect(r.json!.selectors).toContain('tpm:secureboot:enabled');
    const replayed = r.json!.claims.replayed as Record<string, Record<string, string>>;
    expect(Object.keys(replayed.sha256!)).toHaveLength(24);
  });

  it('--pcrs: the recorded PCRs of sb_cert_eventlog (IMA PCR 10 left out) pass; one changed PCR 7 exits 1 naming it', async () => {
    const rec = (JSON.parse(readFileSync(log('recorded-pcrs.json'), 'utf8')) as Record<string, Record<string, Record<string, string>>>).sb_cert_eventlog!;
    for (const b of Object.values(rec)) delete b['10'];
    const ok = await cli(['eventlog', log('sb_cert_eventlog'), '--pcrs', JSON.stringify(rec), '--json']);
    expect(ok.code).toBe(0);
    expect(ok.json!.selectors).toContain('tpm:secureboot:enabled');
    rec.sha256!['7'] = '00'.repeat(32);
    writeFileSync(join(dir, 'pcrs.json'), JSON.stringify(rec));
    const bad = await cli(['eventlog', log('sb_cert_eventlog'), '--pcrs', join(dir, 'pcrs.json'), '--json']);
    expect(bad.code).toBe(1);
    expect(bad.json!.error!.code).toBe('tpm.eventlog_mismatch');
    expect(bad.json!.error!.message).toMatch(/PCR 7 \(sha256\)/);
    expect(bad.json!.selectors).toEqual([]);
  });

  it('refuses the truncated log (exit 1) and a bad --pcrs (exit 2)', async () => {
    const r = await cli(['eventlog', log('short_no_action_eventlog'), '--json']);
    expect(r.code).toBe(1);
    expect(r.json!.error!.code).toBe('tpm.eventlog_truncated');
    await expect(cli(['eventlog', log('sb_cert_eventlog'), '--pcrs', '{"md5":{}}'])).rejects.toMatchObject({ code: 'cli.usage' });
  });
});

describe.skipIf(!have)('sigil evidence verify tpm --event-log', () => {
  it('adds boot selectors when the log replays to the quoted PCRs, exits 1 when it does not', async () => {
    const root = await makeRoot('CLI Eventlog Root');
    const inter = await makeIntermediate('CLI Eventlog CA', root);
    const ek = rsaKeyPair();
    const ak = rsaKeyPair();
    writeFileSync(join(dir, 'ca.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
    writeFileSync(join(dir, 'ek.der'), await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) }));
    writeFileSync(join(dir, 'ak.pub'), akPublicFor(ak.publicKey));
    const raw = readFileSync(log('keylime_binary_bios_measurements_secureboot'));
    const regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: [0, 1, 2, 3, 4, 5, 6, 7] }).get('sha256')!;
    const pcrs = [0, 1, 2, 3, 4, 5, 6, 7];
    const nonce = randomBytes(32);
    const q = syntheticQuote({ ak: ak.privateKey, extraData: nonce, selection: [{ bank: 'sha256', pcrs }], values: new Map(pcrs.map((i) => [`sha256:${i}`, regs.get(i)!])), clock: 1n, resetCount: 1, restartCount: 0 });
    writeFileSync(join(dir, 'quote.bin'), q.attest);
    writeFileSync(join(dir, 'sig.bin'), q.signature);
    writeFileSync(join(dir, 'pcrs.json'), JSON.stringify(replayedToJson(new Map([['sha256', new Map(pcrs.map((i) => [i, regs.get(i)!]))]]))));
    const base = ['verify', 'tpm', '--ek-cert', join(dir, 'ek.der'), '--ek-ca', join(dir, 'ca.pem'), '--ak-pub', join(dir, 'ak.pub'), '--quote', join(dir, 'quote.bin'), '--signature', join(dir, 'sig.bin'), '--nonce', nonce.toString('hex'), '--pcr-values', join(dir, 'pcrs.json'), '--json'];
    const ok = await cli([...base, '--event-log', log('keylime_binary_bios_measurements_secureboot')]);
    expect(ok.code).toBe(0);
    expect(ok.json!.selectors).toContain('tpm:secureboot:enabled');
    expect(ok.json!.selectors.some((s) => s.startsWith('tpm:boot_app:sha256:'))).toBe(true);
    const other = await cli([...base, '--event-log', log('keylime_binary_bios_measurements')]);
    expect(other.code).toBe(1);
    expect(other.json!.error!.code).toBe('tpm.eventlog_mismatch');
  });

  it('--ima-log: replayed against the quoted PCR 10 (the IMA entry count in the claims), exit 1 on a mismatch or when PCR 10 is not quoted; no allowlist here, so no tpm:ima:policy selector', async () => {
    const root = await makeRoot('CLI IMA Root');
    const inter = await makeIntermediate('CLI IMA CA', root);
    const ek = rsaKeyPair();
    const ak = rsaKeyPair();
    const d = mkdtempSync(join(dir, 'ima-'));
    writeFileSync(join(d, 'ca.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
    writeFileSync(join(d, 'ek.der'), await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) }));
    writeFileSync(join(d, 'ak.pub'), akPublicFor(ak.publicKey));
    const ima = readFileSync(log('keylime_ima_log_sha256.txt'));
    const entries = parseImaAsciiLog(ima);
    const pcr10 = replayIma(entries, algorithmByName('sha256')!);
    const quoteOf = (name: string, pcrs: number[], values: Map<number, Buffer>): string[] => {
      const nonce = randomBytes(32);
      const q = syntheticQuote({ ak: ak.privateKey, extraData: nonce, selection: [{ bank: 'sha256', pcrs }], values: new Map(pcrs.map((i) => [`sha256:${i}`, values.get(i)!])), clock: 1n, resetCount: 1, restartCount: 0 });
      writeFileSync(join(d, `${name}.quote`), q.attest);
      writeFileSync(join(d, `${name}.sig`), q.signature);
      writeFileSync(join(d, `${name}.pcrs`), JSON.stringify(replayedToJson(new Map([['sha256', new Map(pcrs.map((i) => [i, values.get(i)!]))]]))));
      return ['verify', 'tpm', '--ek-cert', join(d, 'ek.der'), '--ek-ca', join(d, 'ca.pem'), '--ak-pub', join(d, 'ak.pub'), '--quote', join(d, `${name}.quote`), '--signature', join(d, `${name}.sig`), '--nonce', nonce.toString('hex'), '--pcr-values', join(d, `${name}.pcrs`), '--ima-log', log('keylime_ima_log_sha256.txt'), '--json'];
    };
    const zero = Buffer.alloc(32);
    const ok = await cli(quoteOf('ok', [0, 10], new Map([[0, zero], [10, pcr10]])));
    expect(ok.code).toBe(0);
    expect((ok.json!.claims as { ima?: { entries: number } }).ima?.entries).toBe(entries.length);
    expect(ok.json!.selectors.some((s) => s.startsWith('tpm:ima:'))).toBe(false);
    // One more measurement extended into PCR 10 that the log does not have.
    const extra = Buffer.from(replayIma(entries, algorithmByName('sha256')!)).fill(7, 0, 1);
    const bad = await cli(quoteOf('bad', [0, 10], new Map([[0, zero], [10, extra]])));
    expect(bad.code).toBe(1);
    expect(bad.json!.error!.code).toBe('tpm.eventlog_mismatch');
    expect(bad.json!.error!.message).toContain('PCR 10');
    const unquoted = await cli(quoteOf('no10', [0], new Map([[0, zero]])));
    expect(unquoted.code).toBe(1);
    expect(unquoted.json!.error!.code).toBe('tpm.ima_pcr_not_quoted');
  });
});
