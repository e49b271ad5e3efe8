/**
 * Attack review: AMD's CRL was never checked, so an ASK/ASVK that AMD revoked (say, after a key
 * compromise: whoever holds it can mint VCEKs for chips that do not exist) was still accepted.
 *
 * The pure verifier now takes the CRL bytes (`evidence.crl`) and the mode (`crl.mode`); these
 * tests hold an ARK key of their own (crl-fixtures.ts) to sign CRLs, and use AMD's real Milan
 * chain and report (../shared/testdata/sev-snp) for what only a forger could sign.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { reportDataForBinding, verifySnpEvidence, type SnpVerifyOptions } from '../../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata } from '../support/testdata.js';
import { MILAN_AT, codeOf, sevChain, sevFile } from '../sev/helpers.js';
import { algorithmOf, crlFor, makeAmdCrl, ownArk, serialOf, subjectOf } from '../sev/crl-fixtures.js';

const NOW = new Date('2026-03-01T12:00:00Z');
const DAY = 86_400_000;
const THIS = new Date(NOW.getTime() - DAY);
const NEXT = new Date(NOW.getTime() + 7 * DAY);

const milan = makeSnpTestChain('milan', { keyTag: 'crl-attack' });
const root = ownArk(milan);
const genoaRoot = ownArk(makeSnpTestChain('genoa', { keyTag: 'crl-attack' }));
const binding = Buffer.alloc(32, 7);
const report = makeSnpReport({ chain: milan, reportData: reportDataForBinding(binding) });
const askSerial = serialOf(root.intermediate);

function verify(crl: Buffer | undefined, mode: 'require' | 'best_effort' | 'off' = 'require', now = NOW) {
  const opts: SnpVerifyOptions = { now, arkSha256: root.arkPins, crl: { mode } };
  return verifySnpEvidence({ report, endorsementCert: milan.endorsement, chain: root.chainDer, ...(crl ? { crl } : {}) }, opts);
}

function errorOf(fn: () => unknown): SigilError {
  try {
    fn();
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
  throw new Error('no error');
}

describe('AMD CRL: a revoked ASK is refused', () => {
  it('control: a current CRL signed by the pinned ARK that does not list the ASK → accepted, and says so', () => {
    const v = verify(crlFor(root, THIS, NEXT, [Buffer.from([0x7f, 0x01])]));
    expect(v.revocation).toMatchObject({ checked: true, nextUpdate: NEXT.toISOString() });
  });

  it('the ASK serial on the ARK-signed CRL → sev.cert_revoked (403), naming the ASK and the serial, in every mode but off', () => {
    const crl = crlFor(root, THIS, NEXT, [Buffer.from([0x7f, 0x01]), askSerial]);
    for (const mode of ['require', 'best_effort'] as const) {
      const e = errorOf(() => verify(crl, mode));
      expect(e.code).toBe('sev.cert_revoked');
      expect(e.status).toBe(403);
      expect(e.message).toContain('ASK');
      expect(e.message).toContain(askSerial.toString('hex'));
    }
    expect(codeOf(() => verify(crl, 'off'))).toBe('no error');
  });

  it('a revoked ASVK (VLEK chain) is refused the same way', () => {
    const vlek = makeSnpTestChain('milan', { keyTag: 'crl-attack', signingKey: 'vlek' });
    const vroot = ownArk(vlek);
    const r = makeSnpReport({ chain: vlek, reportData: reportDataForBinding(binding) });
    const crl = crlFor(vroot, THIS, NEXT, [serialOf(vroot.intermediate)]);
    const e = errorOf(() => verifySnpEvidence({ report: r, endorsementCert: vlek.endorsement, chain: vroot.chainDer, crl }, { now: NOW, arkSha256: vroot.arkPins, crl: { mode: 'require' } }));
    expect(e.code).toBe('sev.cert_revoked');
    expect(e.message).toContain('ASVK');
  });
});

describe('AMD CRL: a CRL the verifier cannot trust does not count as checked', () => {
  it('signed by another key under the ARK name → sev.crl_invalid (require); best_effort accepts, unchecked', () => {
    const other = ownArk(milan); // same names, another key
    const forged = makeAmdCrl({ issuer: subjectOf(root.ark), key: other.key, alg: algorithmOf(root.ark), thisUpdate: THIS, nextUpdate: NEXT });
    expect(codeOf(() => verify(forged))).toBe('sev.crl_invalid');
    expect(verify(forged, 'best_effort').revocation).toMatchObject({ checked: false });
  });

  it('another key cannot revoke either: a forged CRL listing the ASK is not a revocation', () => {
    const other = ownArk(milan);
    const forged = makeAmdCrl({ issuer: subjectOf(root.ark), key: other.key, alg: algorithmOf(root.ark), thisUpdate: THIS, nextUpdate: NEXT, revoked: [askSerial] });
    expect(codeOf(() => verify(forged))).toBe('sev.crl_invalid');
  });

  it('the CRL of another product line (Genoa ARK) for a Milan chain → sev.crl_invalid', () => {
    expect(codeOf(() => verify(crlFor(genoaRoot, THIS, NEXT)))).toBe('sev.crl_invalid');
  });

  it('past its nextUpdate → sev.crl_expired; before its thisUpdate → sev.crl_invalid; at nextUpdate itself → accepted', () => {
    const crl = crlFor(root, THIS, NEXT);
    expect(codeOf(() => verify(crl, 'require', new Date(NEXT.getTime() + 1000)))).toBe('sev.crl_expired');
    expect(codeOf(() => verify(crl, 'require', new Date(THIS.getTime() - 1000)))).toBe('sev.crl_invalid');
    expect(codeOf(() => verify(crl, 'require', NEXT))).toBe('no error');
    // An expired CRL that lists the ASK still is no evidence the ASK is good: refused either way.
    expect(codeOf(() => verify(crlFor(root, THIS, NEXT, [askSerial]), 'require', new Date(NEXT.getTime() + 1000)))).toBe('sev.crl_expired');
  });

  it('trailing bytes after the CertificateList → sev.crl_invalid', () => {
    const crl = crlFor(root, THIS, NEXT);
    expect(codeOf(() => verify(Buffer.concat([crl, Buffer.from([0])])))).toBe('sev.crl_invalid');
  });

  it('a huge CRL (1 MiB) is refused before it is parsed → sev.crl_invalid, quickly', () => {
    const entries = Array.from({ length: 40_000 }, (_, i) => Buffer.from([0x10 + (i >> 16), (i >> 8) & 0xff, i & 0xff]));
    const huge = crlFor(root, THIS, NEXT, entries);
    expect(huge.length).toBeGreaterThan(256 * 1024);
    const t = Date.now();
    const e = errorOf(() => verify(huge));
    expect(e.code).toBe('sev.crl_invalid');
    expect(e.message).toMatch(/larger than/);
    expect(Date.now() - t).toBeLessThan(2000);
  });

  it('signed with RSA PKCS#1 v1.5 by the ARK key (not AMD\'s RSASSA-PSS profile) → sev.crl_invalid', () => {
    const crl = makeAmdCrl({ issuer: subjectOf(root.ark), key: root.key, alg: algorithmOf(root.ark), thisUpdate: THIS, nextUpdate: NEXT, pkcs1: true });
    expect(codeOf(() => verify(crl))).toBe('sev.crl_invalid');
  });

  it('an unknown mode (library caller) is a config error, not a silent best_effort', () => {
    expect(codeOf(() => verify(undefined, 'sometimes' as never))).toBe('sev.config_invalid');
  });

  it('garbage, or no CRL at all, under require → sev.crl_invalid / sev.crl_unavailable; best_effort → accepted, unchecked', () => {
    expect(codeOf(() => verify(Buffer.from('not a crl')))).toBe('sev.crl_invalid');
    expect(codeOf(() => verify(undefined))).toBe('sev.crl_unavailable');
    expect(verify(undefined, 'best_effort').revocation).toMatchObject({ checked: false });
  });
});

describe.skipIf(!requireTestdata())('AMD CRL with AMD\'s real Milan chain and report', () => {
  const ev = { report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') };
  const [realAsk, realArk] = sevChain('milan');

  it('a CRL under the real ARK\'s name signed by another key → sev.crl_invalid; without a CRL best_effort accepts', () => {
    const forged = makeAmdCrl({ issuer: subjectOf(realArk!), key: root.key, alg: algorithmOf(realArk!), thisUpdate: new Date('2024-12-01T00:00:00Z'), nextUpdate: new Date('2025-02-01T00:00:00Z'), revoked: [serialOf(realAsk!)] });
    expect(codeOf(() => verifySnpEvidence({ ...ev, crl: forged }, { now: MILAN_AT, crl: { mode: 'require' } }))).toBe('sev.crl_invalid');
    expect(codeOf(() => verifySnpEvidence({ ...ev, crl: forged }, { now: MILAN_AT }))).toBe('no error');
    expect(verifySnpEvidence(ev, { now: MILAN_AT }).revocation).toMatchObject({ checked: false });
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, crl: { mode: 'require' } }))).toBe('sev.crl_unavailable');
  });
});
