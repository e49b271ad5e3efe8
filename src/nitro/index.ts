/** AWS Nitro Enclaves attestation: offline verifier, NSM message codec and the aws_nitro node attestor. */
export { AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_G1_SHA256 } from './aws-root.js';
export { NitroCertCache, pemCertificateToDer } from './certs.js';
export { parseCoseSign1, parseNitroPayload, sigStructure, type CoseSign1, type NitroDocumentFields } from './document.js';
export {
  DEFAULT_MAX_AGE_SECONDS,
  DEFAULT_MAX_FUTURE_SKEW_SECONDS,
  instanceIdFromModuleId,
  nitroClaims,
  nitroSelectors,
  verifyNitroDocument,
  type NitroVerified,
  type NitroVerifyOptions,
} from './verify.js';
export { decodeAttestationRequest, decodeAttestationResponse, encodeAttestationRequest, type NsmAttestationRequest } from './nsm.js';
export { makeNitroAgentPlugin, nitroAgentPlugin, nitroVerifierPlugin, type NsmTransport } from './plugin.js';
