/** Public TPM API of the library (offline verification, structures, the `tpm` plugins). */
export { TPM_ALG, TPM_ST, TPMA_OBJECT, TPM_GENERATED_VALUE, type HashName } from './constants.js';
export {
  parseTpm2bPublic,
  parseTpmtPublic,
  parseAttest,
  parseAttestAny,
  parseTpm2bAttest,
  parseSignature,
  parsePcrSelection,
  encodePcrSelection,
  encodeIdObject,
  encodeEncryptedSecret,
  parseIdObject,
  parseEncryptedSecret,
  objectName,
  type TpmtPublic,
  type RsaPublic,
  type EccPublic,
  type TpmsAttest,
  type TpmtSignature,
  type PcrSelection,
  type PcrBankSelection,
  type ClockInfo,
} from './structures.js';
export { publicToKeyObject, publicToSpkiDer, spkiHash } from './keys.js';
export { kdfa, kdfe } from './kdf.js';
export { makeCredential, type MadeCredential } from './credential.js';
export { EkTrustStore, EkCertVerifier, verifyEkChain, checkEkPublicMatches, certificatesFromBytes, parseCertificate, tpmIdentity, type EkChainResult, type TpmIdentity } from './ekcert.js';
export { verifyQuote, checkAkPublic, checkEkPublic, checkCounters, pcrDigest, type PcrValue, type QuoteCheckInput, type QuoteCheckResult, type CounterState } from './quote.js';
export { parsePcrValuesFile } from './pcrvalues.js';
export { verifyTpmEvidenceOffline, tpmSelectors, OFFLINE_NOTE, type OfflineTpmEvidence, type OfflineTpmResult } from './verify.js';
export { tpmVerifierPlugin, tpmAgentPlugin, tpmVerifierConfigSchema, tpmAgentConfigSchema } from './plugin.js';
export {
  parseEventLog,
  replayEventLog,
  replayedToJson,
  pcClientInitialValue,
  checkEventLog,
  eventLogClaims,
  deriveBootFacts,
  bootSelectors,
  algorithmById,
  algorithmByName,
  eventTypeName,
  EV,
  QUIRKS,
  type ParsedEventLog,
  type ParseEventLogOptions,
  type EventLogEvent,
  type EventLogDigest,
  type EventLogAlgorithm,
  type SpecIdEvent,
  type ReplayOptions,
  type ReplayedRegisters,
  type EventLogCheckInput,
  type EventLogCheckResult,
  type TrustedPcr,
  type BootFacts,
} from './eventlog/index.js';
export { parseImaAsciiLog, replayIma, checkImaLog, checkImaPolicy, parseImaAllowlist, type ImaEntry, type ImaPolicy, type ImaCheckResult } from './ima/index.js';
