/**
 * Real SEV-SNP reports from ../shared/testdata/sev-snp, each verified at a fixed time inside its
 * VCEK's validity: Milan reports at 2025-01-01T00:00:00Z, the Turin report at 2026-07-01T00:00:00Z.
 * Skipped (with a warning) when the folder is absent; a hard failure under CI=true.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { AMD_ARK_SHA256, parseSevCert } from '../../src/sev/certs.js';
import { parseSnpReport } from '../../src/sev/report.js';
import { verifySnpEvidence } from '../../src/sev/verify.js';
import { requireTestdata } from '../support/testdata.js';
import { MILAN_AT, TURIN_AT, codeOf, sevChain, sevFile } from './helpers.js';

const have = requireTestdata();

describe.skipIf(!have)('real SEV-SNP evidence', () => {
  it('the pinned ARKs are the ARKs in the AMD chains', () => {
    for (const p of ['milan', 'genoa', 'turin'] as const) {
      const [, ark] = sevChain(p);
      expect(parseSevCert(ark!, 'ARK').sha256).toBe(AMD_ARK_SHA256[p]);
    }
    const [asvk, ark] = sevChain('milan', 'asvk');
    expect(parseSevCert(ark!, 'ARK').sha256).toBe(AMD_ARK_SHA256.milan);
    expect(parseSevCert(asvk!, 'ASVK').subjectCN).toBe('SEV-VLEK-Milan');
  });

  it('milan-v2: accepted, Milan v2, VCEK, reported_tcb 7308000000000003', () => {
    const v = verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') }, { now: MILAN_AT });
    expect(v.product).toBe('milan');
    expect(v.signingKey).toBe('vcek');
    expect(v.report.version).toBe(2);
    expect(v.report.policy).toBe(0x30000n);
    expect(v.selectors).toContain('sev_snp:reported_tcb:7308000000000003');
    expect(v.selectors).toContain('sev_snp:product:milan');
    expect(v.selectors).toContain('sev_snp:signing_key:vcek');
    expect(v.selectors).toContain('sev_snp:vmpl:0');
    expect(v.selectors).toContain('sev_snp:debug:false');
    expect(v.selectors).toContain('sev_snp:guest_svn:0');
    expect(v.selectors).toContain(
      'sev_snp:measurement:7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f',
    );
    const chip = v.report.chipId.toString('hex');
    expect(v.selectors).toContain(`sev_snp:chip_id:${chip}`);
    expect(v.agentIdSuffix).toBe(chip);
    expect(v.reportedTcb).toEqual({ bootloader: 3, tee: 0, snp: 8, microcode: 0x73 });
    for (const s of v.selectors) expect(s).toMatch(/^sev_snp:[a-z_]+:[0-9a-z]+$/);
    expect(JSON.parse(JSON.stringify(v.claims))).toEqual(v.claims);
  });

  it('milan-v2-debug: rejected by default (debug), accepted with allowDebug', () => {
    const ev = { report: sevFile('milan-v2-debug.report.bin'), endorsementCert: sevFile('milan-v2-debug.vcek.der'), chain: sevChain('milan') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT }))).toBe('sev.debug_not_allowed');
    const v = verifySnpEvidence(ev, { now: MILAN_AT, allowDebug: true });
    expect(v.report.policy).toBe(0xb0000n);
    expect(v.selectors).toContain('sev_snp:debug:true');
    expect(v.report.reportData.subarray(0, 5).toString('hex')).toBe('0102030405');
    const rd = Buffer.alloc(64);
    Buffer.from('0102030405', 'hex').copy(rd);
    expect(() => verifySnpEvidence(ev, { now: MILAN_AT, allowDebug: true, expectedReportData: rd })).not.toThrow();
  });

  it('turin-v5: accepted, Turin v5, 8-byte hwID, FMC in the TCB', () => {
    const v = verifySnpEvidence({ report: sevFile('turin-v5.report.bin'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') }, { now: TURIN_AT });
    expect(v.product).toBe('turin');
    expect(v.report.version).toBe(5);
    expect(v.report.cpuid).toEqual({ family: 0x1a, model: 0x02, stepping: 0x01 });
    expect(v.selectors).toContain('sev_snp:reported_tcb:6100000005020301');
    expect(v.reportedTcb).toEqual({ fmc: 1, bootloader: 3, tee: 2, snp: 5, microcode: 0x61 });
    expect(v.claims.launchMitVector).toBe('0x3f');
    expect(v.agentIdSuffix.startsWith('0910b4f884ff4ba9')).toBe(true);
  });

  it('policy options apply to real reports', () => {
    const ev = { report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') };
    const meas = parseSnpReport(ev.report).measurement.toString('hex');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, measurements: [meas.toUpperCase()] }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, measurements: ['00'.repeat(48)] }))).toBe('sev.measurement_not_allowed');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minTcb: { microcode: 0x73, snp: 8 } }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minTcb: { microcode: 0x74 } }))).toBe('sev.tcb_too_low');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minTcb: { fmc: 9 } }))).toBe('no error'); // no FMC on Milan
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minGuestSvn: 1 }))).toBe('sev.guest_svn_too_low');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, vmpls: [1, 2] }))).toBe('sev.vmpl_not_allowed');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, products: ['genoa', 'turin'] }))).toBe('sev.product_not_allowed');
  });

  it('errors are SigilErrors with a one-line message', () => {
    try {
      verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('genoa') }, { now: MILAN_AT });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(SigilError);
      expect((e as SigilError).message).not.toContain('\n');
    }
  });
});
