/**
 * `--at TIME` on `sigil evidence verify aws_nitro|sev_snp|tdx|tpm`, through the real CLI, on real
 * evidence: only an RFC 3339 time with an explicit zone (`Z` or `±hh:mm`) is taken. A time
 * without a zone (which would be read in the local time zone, so the verdict would depend on the
 * machine), a date that does not exist (2025-02-30, which Date would roll over to March 2) and
 * hour 24 (which Date would roll over to the next day) are usage errors (exit 2, `cli.usage`)
 * naming `--at`, as is a year outside 0000..9999.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTestdata, td } from '../support/testdata.js';
import { cosQuote } from '../tdx/helpers.js';
import { sigil, type CliRun } from './evidence-cli.js';

const have = requireTestdata();

/** Three CLI processes at a time (each compiles the CLI through tsx when dist/ is stale). */
async function each<T>(items: T[], f: (t: T) => Promise<CliRun>): Promise<CliRun[]> {
  const out: CliRun[] = [];
  for (let i = 0; i < items.length; i += 3) out.push(...(await Promise.all(items.slice(i, i + 3).map(f))));
  return out;
}

function expectAtRefused(r: CliRun, at: string, phrase: RegExp): void {
  expect({ at, code: r.code }).toEqual({ at, code: 2 });
  // With --json the refusal is one JSON object; the message names the flag, the value and the fault.
  expect(r.json?.ok).toBe(false);
  expect(r.json?.error?.code).toBe('cli.usage');
  expect(r.json?.error?.message).toContain('--at');
  expect(r.json?.error?.message).toContain(JSON.stringify(at));
  expect(r.json?.error?.message).toMatch(phrase);
}

const NO_ZONE = /no zone offset/;
const NOT_A_DATE = /not a real date/;
const NOT_A_TIME = /not a real time/;

describe.skipIf(!have)('evidence verify --at: a zone is required, impossible dates are refused', () => {
  const sev = (at: string): string[] => [
    'evidence', 'verify', 'sev_snp', td('sev-snp', 'milan-v2.report.hex'),
    '--vcek', td('sev-snp', 'milan-v2.vcek.der'), '--ca', td('sev-snp', 'ask_ark_milan.pem'), '--at', at, '--json',
  ];
  const nitro = (at: string): string[] => ['evidence', 'verify', 'aws_nitro', td('nitro', 'marlin-aws.cbor'), '--at', at, '--json'];

  let tmp = '';
  let quote = '';
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'sigil-evidence-at-'));
    quote = join(tmp, 'cos.quote');
    await writeFile(quote, cosQuote());
  });
  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });
  const tdx = (at: string): string[] => ['evidence', 'verify', 'tdx', quote, '--allow-unknown-tcb', '--at', at, '--json'];

  it('sev_snp: a time without a zone is refused (the old parser read it in local time and verified)', async () => {
    const cases = ['2025-01-01T00:00:00', '2025-01-01T00:00:00.000', '2025-01-01T00:00'];
    const runs = await each(cases, (at) => sigil(sev(at)));
    cases.forEach((at, i) => expectAtRefused(runs[i]!, at, NO_ZONE));
  }, 240_000);

  it('sev_snp: dates and times that do not exist are refused, not rolled over into a valid instant', async () => {
    const cases: [string, RegExp][] = [
      ['2025-02-30T00:00:00Z', NOT_A_DATE], // would be 2025-03-02
      ['2025-02-29T00:00:00Z', NOT_A_DATE], // 2025 is not a leap year: would be 2025-03-01
      ['2025-04-31T12:00:00Z', NOT_A_DATE], // would be 2025-05-01
      ['2024-12-31T24:00:00Z', NOT_A_TIME], // would be 2025-01-01T00:00:00Z
    ];
    const runs = await each(cases, ([at]) => sigil(sev(at)));
    cases.forEach(([at, phrase], i) => expectAtRefused(runs[i]!, at, phrase));
  }, 240_000);

  it('sev_snp: years outside 0000..9999 and other shapes are refused', async () => {
    const cases: [string, RegExp][] = [
      ['+002025-01-01T00:00:00Z', /four digits/],
      ['12025-01-01T00:00:00Z', /four digits/],
      ['2025-01-01', /no time/],
      ['1735689600', /RFC 3339/],
      ['Wed, 01 Jan 2025 00:00:00 GMT', /RFC 3339/],
    ];
    const runs = await each(cases, ([at]) => sigil(sev(at)));
    cases.forEach(([at, phrase], i) => expectAtRefused(runs[i]!, at, phrase));
  }, 240_000);

  it('sev_snp: a real date with Z, with an offset, and 29 February of a leap year are taken', async () => {
    const runs = await each(['2025-01-01T00:00:00Z', '2025-01-01T05:30:00+05:30', '2024-02-29T23:59:59.999-01:00'], (at) => sigil(sev(at)));
    for (const r of runs) {
      expect(r.code).toBe(0);
      expect(r.json?.ok).toBe(true);
    }
  }, 240_000);

  it('aws_nitro: a time without a zone is refused; the same instant with an offset verifies at that instant', async () => {
    const [bare, offset, hour24] = await each(['2024-12-13T07:37:58.960', '2024-12-13T08:37:58.960+01:00', '2024-12-12T24:00:00Z'], (at) => sigil(nitro(at)));
    expectAtRefused(bare!, '2024-12-13T07:37:58.960', NO_ZONE);
    expect(offset!.code).toBe(0);
    expect(offset!.json?.claims.verifiedAt).toBe('2024-12-13T07:37:58.960Z');
    expectAtRefused(hour24!, '2024-12-12T24:00:00Z', NOT_A_TIME);
  }, 240_000);

  it('tdx: a time without a zone, and hour 24, are refused', async () => {
    const [bare, hour24, ok] = await each(['2025-06-01T00:00:00', '2025-05-31T24:00:00Z', '2025-06-01T00:00:00Z'], (at) => sigil(tdx(at)));
    expectAtRefused(bare!, '2025-06-01T00:00:00', NO_ZONE);
    expectAtRefused(hour24!, '2025-05-31T24:00:00Z', NOT_A_TIME);
    expect(ok!.code).toBe(0);
  }, 240_000);

  it('tpm: --at is checked the same way, before any file is read (exit 2, the message names --at)', async () => {
    // The files do not exist: a good --at goes on to complain about --ek-cert; a bad one never gets there.
    const tpm = (at: string): string[] => [
      'evidence', 'verify', 'tpm', '--ek-cert', join(tmp, 'none.der'), '--ek-ca', join(tmp, 'none.pem'), '--ak-pub', join(tmp, 'none.pub'),
      '--quote', join(tmp, 'none.msg'), '--signature', join(tmp, 'none.sig'), '--nonce', '00', '--at', at,
    ];
    const [bare, rolled, words, good] = await each(['2025-01-01T00:00:00', '2023-02-30T00:00:00Z', 'Dec 13 2024', '2025-01-01T00:00:00Z'], (at) => sigil(tpm(at)));
    expect(bare!.code).toBe(2);
    expect(bare!.err).toMatch(/--at "2025-01-01T00:00:00" has no zone offset/);
    expect(rolled!.code).toBe(2);
    expect(rolled!.err).toMatch(/--at "2023-02-30T00:00:00Z" is not a real date/);
    expect(words!.code).toBe(2);
    expect(words!.err).toMatch(/--at .*RFC 3339/);
    expect(good!.code).toBe(2);
    expect(good!.err).toContain('--ek-cert');
  }, 240_000);
});
