/** Linux IMA runtime measurement list: parsing, PCR 10 replay and the allowlist policy. */
export { parseImaAsciiLog, replayIma, IMA_DEFAULT_MAX_BYTES, IMA_DEFAULT_MAX_ENTRIES, type ImaEntry } from './log.js';
export { parseImaAllowlist, compileExcludes, checkImaPolicy, type ImaPolicy } from './policy.js';
export { checkImaLog, type ImaCheckInput, type ImaCheckResult } from './verify.js';
