/** TCG event logs: parsing, replay, and (from verified events) boot selectors. */
export { algorithmById, algorithmByName, bankHash, type EventLogAlgorithm } from './algorithms.js';
export { EV, eventTypeName } from './events.js';
export {
  parseEventLog,
  parseSpecIdEvent,
  ParsedEvent,
  eventDigest,
  EVENTLOG_DEFAULT_MAX_BYTES,
  EVENTLOG_DEFAULT_MAX_EVENTS,
  EVENTLOG_DEFAULT_MAX_INDEX,
  type ParsedEventLog,
  type ParseEventLogOptions,
  type EventLogEvent,
  type EventLogDigest,
  type SpecIdEvent,
} from './parse.js';
export { replayEventLog, replayedToJson, pcClientInitialValue, ReplayMemo, type ReplayOptions, type ReplayedRegisters } from './replay.js';
export { GUID, guidText, parseUefiVariable, parseSignatureLists, walkSignatureLists, type UefiVariable, type SignatureEntry } from './uefi.js';
export { QUIRKS, type QuirkName } from './quirks.js';
export { deriveBootFacts, bootSelectors, VerifiedVariableMemo, type BootFacts } from './boot.js';
export { checkEventLog, eventLogClaims, type EventLogCheckInput, type EventLogCheckResult, type TrustedPcr } from './verify.js';
export { EventLogCheckCache, type CachedEventLogCheck } from './cache.js';
