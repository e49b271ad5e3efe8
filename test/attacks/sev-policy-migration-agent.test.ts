/**
 * Attack: a host launches the guest with guest policy MIGRATE_MA (bit 18) set and binds a
 * migration agent of its choosing. The migration agent can export the guest's memory and state
 * (it is trusted with the guest's context), so with an agent the host controls the guest's secrets
 * (the agent's private key, its SVID) are readable — as with DEBUG. The verifier must refuse such a
 * report unless the operator allows it, as it does for DEBUG.
 */
import { describe, expect, it } from 'vitest';
import { createSevVerifier } from '../../src/sev/plugin.js';
import { reportDataForBinding, verifySnpEvidence } from '../../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { codeOf, codeOfAsync } from '../sev/helpers.js';

const NOW = new Date('2026-01-01T00:00:00Z');
const MIGRATE_MA = 1n << 18n;
const milan = makeSnpTestChain('milan');

function verify(policy: bigint, extra: { allowMigrationAgent?: boolean } = {}) {
  const rd = reportDataForBinding(Buffer.alloc(32, 7));
  const report = makeSnpReport({ chain: milan, reportData: rd, policy });
  return verifySnpEvidence(
    { report, endorsementCert: milan.endorsement, chain: milan.chainDer },
    { now: NOW, expectedReportData: rd, arkSha256: milan.arkPins, ...extra },
  );
}

describe('sev_snp guest policy MIGRATE_MA', () => {
  it('a report whose policy allows a migration agent is refused by default', () => {
    expect(codeOf(() => verify(0x30000n | MIGRATE_MA))).toBe('sev.migration_agent_not_allowed');
  });

  it('is accepted only when the operator allows it, and then reported as a claim', () => {
    const v = verify(0x30000n | MIGRATE_MA, { allowMigrationAgent: true });
    expect((v.claims.policyFlags as { migrateMa: boolean }).migrateMa).toBe(true);
    expect(codeOf(() => verify(0x30000n))).toBe('no error');
  });

  it('the plugin refuses it before any collateral lookup, and takes allowMigrationAgent from its config', async () => {
    const binding = Buffer.alloc(32, 9);
    const report = makeSnpReport({ chain: milan, reportData: reportDataForBinding(binding), policy: 0x30000n | MIGRATE_MA });
    const deps = { configDir: '/tmp', logger: { warn() {}, info() {}, debug() {}, error() {} } } as never;
    const session = { binding, now: NOW } as never;
    const response = { report: report.toString('base64'), certs: { vcek: milan.endorsement.toString('base64'), ask: milan.intermediate.toString('base64'), ark: milan.ark.toString('base64') } };
    let fetched = 0;
    const fetch = async () => {
      fetched++;
      throw new Error('no network');
    };
    const strict = createSevVerifier({ arkSha256: milan.arkPins, kds: { enabled: true } }, deps, { fetch });
    expect(await codeOfAsync(() => strict.finish({ report: response.report }, { certs: {} }, session))).toBe('sev.migration_agent_not_allowed');
    expect(fetched).toBe(0);
    const lax = createSevVerifier({ arkSha256: milan.arkPins, allowMigrationAgent: true }, deps);
    const r = await lax.finish(response, { certs: {} }, session);
    expect(r.agentIdSuffix).toBe(milan.chipId.toString('hex'));
  });
});
