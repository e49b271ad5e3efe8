/** Intel TDX attestation: pure DCAP quote verifier, Intel collateral, collectors and the `tdx` plugin halves. */
export * from './quote.js';
export * from './pki.js';
export * from './signed-json.js';
export * from './tcb.js';
export * from './verify.js';
export * from './ccel.js';
export * from './collateral.js';
export { tdxVerifierPlugin, tdxAgentPlugin, createTdxVerifier, createTdxAgent, tdxVerifierConfigSchema, tdxAgentConfigSchema } from './plugin.js';
export type { TdxVerifierConfig, TdxAgentConfig, TdxVerifierInjection, TdxAgentInjection } from './plugin.js';
