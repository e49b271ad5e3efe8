/** AMD SEV-SNP attestation: pure verifier, certificate table, collectors and the `sev_snp` plugin halves. */
export * from './report.js';
export * from './certs.js';
export * from './verify.js';
export * from './certtable.js';
export * from './attester.js';
export * from './collateral.js';
export * from './crl.js';
export { sevVerifierPlugin, sevAgentPlugin, createSevVerifier, createSevAgent, sevVerifierConfigSchema, sevAgentConfigSchema } from './plugin.js';
export type { SevVerifierConfig, SevAgentConfig, SevVerifierInjection, SevAgentInjection } from './plugin.js';
