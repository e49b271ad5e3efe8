/**
 * Attack review: `minTcb` bounds REPORTED_TCB only. A guest launched while the platform ran
 * vulnerable firmware (its launch secrets and measurement flow exposed then) keeps running after
 * the host updates the firmware and raises REPORTED_TCB, and passes a `minTcb` floor. The signed
 * report also carries LAUNCH_TCB (0x1F0); `minLaunchTcb` (same shape as `minTcb`) bounds it,
 * refused as sev.tcb_too_low naming LAUNCH_TCB and the component. Not set = unchanged behaviour.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { encodeTcb } from '../../src/sev/report.js';
import { reportDataForBinding, verifySnpEvidence } from '../../src/sev/verify.js';
import { createSevVerifier } from '../../src/sev/plugin.js';
import { makeSnpReport, makeSnpTestChain, signSnpReport } from '../support/sev-synthetic.js';
import { requireTestdata } from '../support/testdata.js';
import { MILAN_AT, TURIN_AT, codeOf, codeOfAsync, sevChain, sevFile } from '../sev/helpers.js';

const NOW = new Date('2026-03-01T12:00:00Z');
const milan = makeSnpTestChain('milan', { keyTag: 'launch-tcb' });
const turin = makeSnpTestChain('turin', { keyTag: 'launch-tcb' });
const binding = Buffer.alloc(32, 5);

/** A report whose LAUNCH_TCB is `launch` (REPORTED/CURRENT/COMMITTED as the VCEK), re-signed. */
function launchedAt(chain: typeof milan, launch: Buffer): Buffer {
  const r = makeSnpReport({ chain, reportData: reportDataForBinding(binding) });
  launch.copy(r, 0x1f0);
  return signSnpReport(r, chain.signingPrivateKey);
}

describe('minLaunchTcb: a floor on the signed LAUNCH_TCB', () => {
  const old = launchedAt(milan, encodeTcb({ ...milan.tcb, snp: 2 }, 'milan'));
  const ev = { report: old, endorsementCert: milan.endorsement, chain: milan.chainDer };

  it('REPORTED_TCB passes minTcb, LAUNCH_TCB snp 2 < 8 → sev.tcb_too_low naming LAUNCH_TCB snp', () => {
    const opts = { now: NOW, arkSha256: milan.arkPins, minTcb: { snp: 8 } };
    expect(codeOf(() => verifySnpEvidence(ev, opts))).toBe('no error');
    let err: unknown;
    try {
      verifySnpEvidence(ev, { ...opts, minLaunchTcb: { snp: 8 } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SigilError);
    expect((err as SigilError).code).toBe('sev.tcb_too_low');
    expect((err as SigilError).message).toMatch(/LAUNCH_TCB snp SPL 2 is below the minimum 8/);
    expect(codeOf(() => verifySnpEvidence(ev, { ...opts, minLaunchTcb: { snp: 2, bootloader: 3, microcode: 0x73 } }))).toBe('no error');
  });

  it('each component is checked (bootloader, tee, microcode; fmc on Turin only)', () => {
    for (const [name, value] of [['bootloader', 4], ['tee', 1], ['microcode', 0x74]] as const) {
      expect(codeOf(() => verifySnpEvidence(ev, { now: NOW, arkSha256: milan.arkPins, minLaunchTcb: { [name]: value } }))).toBe('sev.tcb_too_low');
    }
    // fmc has no place in a Milan TCB: ignored, as in minTcb.
    expect(codeOf(() => verifySnpEvidence(ev, { now: NOW, arkSha256: milan.arkPins, minLaunchTcb: { fmc: 9 } }))).toBe('no error');
    const t = launchedAt(turin, encodeTcb({ ...turin.tcb, fmc: 0 }, 'turin'));
    const tev = { report: t, endorsementCert: turin.endorsement, chain: turin.chainDer };
    expect(codeOf(() => verifySnpEvidence(tev, { now: NOW, arkSha256: turin.arkPins, minLaunchTcb: { fmc: 1 } }))).toBe('sev.tcb_too_low');
  });

  it('the plugin takes minLaunchTcb from its config (schema-checked) and refuses before any collateral lookup', async () => {
    const deps = { configDir: '/tmp', logger: { warn() {}, info() {}, debug() {}, error() {} } } as never;
    let fetched = 0;
    const fetch = async () => {
      fetched++;
      throw new Error('no network');
    };
    const v = createSevVerifier({ arkSha256: milan.arkPins, minLaunchTcb: { snp: 8 }, kds: { enabled: true } }, deps, { fetch });
    const session = { binding, now: NOW } as never;
    expect(await codeOfAsync(() => v.finish({ report: old.toString('base64') }, { certs: {} }, session))).toBe('sev.tcb_too_low');
    expect(fetched).toBe(0);
    expect(await codeOfAsync(async () => createSevVerifier({ minLaunchTcb: { snp: 256 } }, deps))).toBe('sev.config_invalid');
    expect(await codeOfAsync(async () => createSevVerifier({ minLaunchTcb: { spl: 1 } }, deps))).toBe('sev.config_invalid');
  });
});

describe.skipIf(!requireTestdata())('minLaunchTcb on AMD\'s real reports', () => {
  it('milan-v2 (LAUNCH_TCB bl 3, snp 8, ucode 0x73): accepted at its own values, refused one above', () => {
    const ev = { report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minLaunchTcb: { bootloader: 3, tee: 0, snp: 8, microcode: 0x73 } }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence(ev, { now: MILAN_AT, minLaunchTcb: { snp: 9 } }))).toBe('sev.tcb_too_low');
  });

  it('turin-v5 (LAUNCH_TCB fmc 1, bl 3, tee 2, snp 5, ucode 0x61): fmc is checked on Turin', () => {
    const ev = { report: sevFile('turin-v5.report.bin'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') };
    expect(codeOf(() => verifySnpEvidence(ev, { now: TURIN_AT, minLaunchTcb: { fmc: 1, bootloader: 3, tee: 2, snp: 5, microcode: 0x61 } }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence(ev, { now: TURIN_AT, minLaunchTcb: { fmc: 2 } }))).toBe('sev.tcb_too_low');
  });
});
