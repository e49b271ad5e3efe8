/** Linux IMA runtime measurement list: parsing (ASCII and binary), PCR 10 replay, the allowlist policy and incremental re-checks. */
export { parseImaAsciiLog, replayIma, IMA_DEFAULT_MAX_BYTES, IMA_DEFAULT_MAX_ENTRIES, type ImaEntry, type ImaParseOptions, type ImaTemplate } from './log.js';
export { parseImaBinaryLog, parseImaLog, detectImaFormat, IMA_MAX_TEMPLATE_DATA, IMA_MAX_TEMPLATE_NAME, type ImaLogFormat } from './binary.js';
export { parseImaAllowlist, compileExcludes, checkImaPolicy, type ImaPolicy } from './policy.js';
export { checkImaLog, imaListResumesAt, isImaProgress, policyFingerprint, IMA_PCR, type ImaCheckInput, type ImaCheckResult, type ImaProgress } from './verify.js';
