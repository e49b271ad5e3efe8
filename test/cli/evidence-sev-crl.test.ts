/**
 * `sigil evidence verify sev_snp --crl FILE` and `--allow-migration-agent`, through the real CLI.
 *
 * --crl: AMD's CRL (DER or PEM) for the report's product line and key kind, checked the way the
 * verifier checks it (src/sev/crl.ts, mode `require`): issued and signed by the pinned ARK and
 * current at --at, then an ARK or ASK/ASVK serial on it is `sev.cert_revoked`. The test holds an
 * ARK key of its own (crl-fixtures.ts `ownArk`: AMD's real Milan ARK re-issued under a test key,
 * AMD's real ASK re-signed by it, trusted with --ark-sha256), so it can sign CRLs for AMD's real
 * Milan report and VCEK. The CRL covers the certificates the ARK issues (ARK, ASK/ASVK); a VCEK is
 * issued by the ASK and every VCEK has serial 0, so VCEKs are out of its scope (crl.ts).
 *
 * --allow-migration-agent: a report whose guest policy allows a migration agent (MIGRATE_MA, bit
 * 18; only synthetic reports have it) is refused without it (`sev.migration_agent_not_allowed`).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSnpReport, makeSnpTestChain, type SnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata, td } from '../support/testdata.js';
import { crlFor, ownArk, serialOf, type OwnArk } from '../sev/crl-fixtures.js';
import { sevChain } from '../sev/helpers.js';
import { sigil } from './evidence-cli.js';

const have = requireTestdata();
const AT = '2025-01-01T00:00:00Z'; // inside the real milan-v2 VCEK's validity
const DAY = 86_400_000;
const THIS = new Date(Date.parse(AT) - 30 * DAY);
const NEXT = new Date(Date.parse(AT) + 30 * DAY);

let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-evidence-sev-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function file(name: string, data: Buffer | string): Promise<string> {
  const p = join(tmp, name);
  await writeFile(p, data);
  return p;
}

const crlPem = (der: Buffer): string => `-----BEGIN X509 CRL-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END X509 CRL-----\n`;

describe.skipIf(!have)('evidence verify sev_snp --crl, on AMD\'s real Milan report and VCEK', () => {
  let root: OwnArk;
  let ca = '';
  let args: (extra: string[]) => string[];
  beforeAll(async () => {
    const [ask, ark] = sevChain('milan');
    // ownArk reads only product, ark and intermediate of the chain it re-issues.
    root = ownArk({ product: 'milan', ark: ark!, intermediate: ask! } as SnpTestChain);
    ca = await file('ask_ark_milan-own.pem', root.chainPem);
    args = (extra) => [
      'evidence', 'verify', 'sev_snp', td('sev-snp', 'milan-v2.report.hex'), '--vcek', td('sev-snp', 'milan-v2.vcek.der'),
      '--ca', ca, '--ark-sha256', root.arkSha256, '--at', AT, '--json', ...extra,
    ];
  });

  it('a CRL signed by the ARK that lists the ASK: refused, sev.cert_revoked naming the ASK and its serial', async () => {
    const askSerial = serialOf(root.intermediate);
    const crl = await file('revokes-ask.crl', crlFor(root, THIS, NEXT, [Buffer.from([0x7f, 0x01]), askSerial]));
    const r = await sigil(args(['--crl', crl]));
    expect(r.code).toBe(1);
    expect(r.json?.ok).toBe(false);
    expect(r.json?.error?.code).toBe('sev.cert_revoked');
    expect(r.json?.error?.message).toContain('milan ASK certificate');
    expect(r.json?.error?.message).toContain(askSerial.toString('hex'));
  }, 120_000);

  it('a CRL that lists the ARK itself: refused, sev.cert_revoked naming the ARK', async () => {
    const crl = await file('revokes-ark.crl', crlFor(root, THIS, NEXT, [serialOf(root.ark)]));
    const r = await sigil(args(['--crl', crl]));
    expect(r.code).toBe(1);
    expect(r.json?.error?.code).toBe('sev.cert_revoked');
    expect(r.json?.error?.message).toContain('milan ARK certificate');
  }, 120_000);

  it('a current CRL that lists other serials (DER, and the same as PEM): accepted, and the output says which CRL was checked', async () => {
    const der = crlFor(root, THIS, NEXT, [Buffer.from([0x7f, 0x01]), Buffer.from([0x12, 0x34, 0x56])]);
    const [a, b] = await Promise.all([sigil(args(['--crl', await file('other.crl', der)])), sigil(args(['--crl', await file('other.pem', crlPem(der))]))]);
    for (const r of [a!, b!]) {
      expect(r.code).toBe(0);
      expect(r.json?.ok).toBe(true);
      expect(r.json?.selectors).toContain('sev_snp:product:milan');
      expect(r.json?.claims.revocation).toEqual({
        checked: true,
        crlSha256: createHash('sha256').update(der).digest('hex'),
        thisUpdate: THIS.toISOString(),
        nextUpdate: NEXT.toISOString(),
      });
    }
  }, 120_000);

  it('the VCEK\'s own serial (0) on the ARK\'s CRL revokes nothing: VCEKs are issued by the ASK, outside that CRL\'s scope', async () => {
    const crl = await file('serial-0.crl', crlFor(root, THIS, NEXT, [Buffer.from([0])]));
    const r = await sigil(args(['--crl', crl]));
    expect(r.code).toBe(0);
    expect(r.json?.claims.revocation).toMatchObject({ checked: true });
  }, 120_000);

  it('with --crl the check is required: a CRL it cannot use is a refusal, never "unchecked"', async () => {
    const genoa = ownArk(makeSnpTestChain('genoa', { keyTag: 'cli-crl' }));
    const [foreign, expired, garbage, missing] = await Promise.all([
      // Issued by another ARK (another product line's CRL).
      sigil(args(['--crl', await file('genoa.crl', crlFor(genoa, THIS, NEXT))])),
      // Past its nextUpdate at --at.
      sigil(args(['--crl', await file('expired.crl', crlFor(root, new Date(Date.parse(AT) - 60 * DAY), new Date(Date.parse(AT) - DAY)))])),
      sigil(args(['--crl', await file('garbage.crl', 'not a CRL')])),
      sigil(args(['--crl', join(tmp, 'no-such.crl')])),
    ]);
    expect([foreign!.code, foreign!.json?.error?.code]).toEqual([1, 'sev.crl_invalid']);
    expect([expired!.code, expired!.json?.error?.code]).toEqual([1, 'sev.crl_expired']);
    expect([garbage!.code, garbage!.json?.error?.code]).toEqual([1, 'sev.crl_invalid']);
    expect([missing!.code, missing!.json?.error?.code]).toEqual([1, 'input.unreadable']);
    expect(missing!.json?.error?.message).toContain('--crl');
  }, 120_000);

  it('without --crl: accepted as before, and the output says revocation was not checked', async () => {
    const r = await sigil(args([]));
    expect(r.code).toBe(0);
    expect(r.json?.claims.revocation).toMatchObject({ checked: false });
    expect(String((r.json?.claims.revocation as { reason: string }).reason)).toMatch(/--crl/);
  }, 120_000);

  it('without --crl, the CRL kept in --collateral-dir (crl_vcek_milan.der) is checked: a listed ASK is refused, a current one is reported checked, a stale one unchecked with the reason', async () => {
    const { mkdir } = await import('node:fs/promises');
    const dirWith = async (name: string, der: Buffer | undefined): Promise<string> => {
      const d = join(tmp, name);
      await mkdir(d, { recursive: true });
      if (der) await writeFile(join(d, 'crl_vcek_milan.der'), der);
      return d;
    };
    const current = crlFor(root, THIS, NEXT, [Buffer.from([0x7f, 0x01])]);
    const [revoked, ok, stale, none] = await Promise.all([
      sigil(args(['--collateral-dir', await dirWith('coll-revoked', crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]))])),
      sigil(args(['--collateral-dir', await dirWith('coll-current', current)])),
      sigil(args(['--collateral-dir', await dirWith('coll-stale', crlFor(root, new Date(Date.parse(AT) - 60 * DAY), new Date(Date.parse(AT) - DAY)))])),
      sigil(args(['--collateral-dir', await dirWith('coll-none', undefined)])),
    ]);
    expect([revoked!.code, revoked!.json?.error?.code]).toEqual([1, 'sev.cert_revoked']);
    expect(ok!.code).toBe(0);
    expect(ok!.json?.claims.revocation).toMatchObject({ checked: true, crlSha256: createHash('sha256').update(current).digest('hex') });
    expect(stale!.code).toBe(0);
    expect(stale!.json?.claims.revocation).toMatchObject({ checked: false });
    expect(String((stale!.json?.claims.revocation as { reason: string }).reason)).toContain('sev.crl_expired');
    expect(none!.code).toBe(0);
    expect(String((none!.json?.claims.revocation as { reason: string }).reason)).toContain('crl_vcek_milan.der');
  }, 120_000);
});

describe('evidence verify sev_snp --allow-migration-agent', () => {
  const MIGRATE_MA = 1n << 18n;
  const chain = makeSnpTestChain('milan', { keyTag: 'cli-migration-agent' });
  const at = '2026-01-01T00:00:00Z';
  let base: (report: string, extra: string[]) => string[];
  beforeAll(async () => {
    const vcek = await file('ma.vcek.der', chain.endorsement);
    const ca = await file('ma.ask_ark.pem', chain.chainPem);
    base = (report, extra) => ['evidence', 'verify', 'sev_snp', report, '--vcek', vcek, '--ca', ca, '--ark-sha256', chain.arkSha256, '--at', at, '--json', ...extra];
  });

  it('a report whose policy allows a migration agent: refused by default, accepted with --allow-migration-agent and reported', async () => {
    const withMa = await file('ma.report.bin', makeSnpReport({ chain, policy: 0x30000n | MIGRATE_MA }));
    const without = await file('no-ma.report.bin', makeSnpReport({ chain }));
    const [refused, allowed, control] = await Promise.all([sigil(base(withMa, [])), sigil(base(withMa, ['--allow-migration-agent'])), sigil(base(without, []))]);
    expect(refused!.code).toBe(1);
    expect(refused!.json?.error?.code).toBe('sev.migration_agent_not_allowed');
    expect(allowed!.code).toBe(0);
    expect(allowed!.json?.ok).toBe(true);
    expect((allowed!.json?.claims.policyFlags as { migrateMa: boolean }).migrateMa).toBe(true);
    expect(control!.code).toBe(0);
    expect((control!.json?.claims.policyFlags as { migrateMa: boolean }).migrateMa).toBe(false);
  }, 120_000);

  it('--allow-migration-agent does not relax anything else: a debug report is still refused', async () => {
    const debugMa = await file('ma-debug.report.bin', makeSnpReport({ chain, policy: 0x30000n | MIGRATE_MA | (1n << 19n) }));
    const r = await sigil(base(debugMa, ['--allow-migration-agent']));
    expect(r.code).toBe(1);
    expect(r.json?.error?.code).toBe('sev.debug_not_allowed');
  }, 120_000);
});
