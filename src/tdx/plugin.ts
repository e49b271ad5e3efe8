/**
 * `tdx` node attestor (DESIGN §2–§4): the attester half runs in an Intel TDX guest and sends a
 * DCAP quote whose REPORTDATA = binding ‖ 32 zero bytes, plus the CC event log when it can read it;
 * the verifier half verifies it with verifyTdxQuote at the session time.
 *
 * Protocol:
 *   hello     `{}`
 *   challenge `{}`
 *   response  `{ quote: <base64>, eventLog?: <base64 CCEL area>, ccelTable?: <base64 ACPI CCEL table> }`
 * Collateral comes from `collateralDir` and, if enabled, Intel PCS. Before any lookup the quote
 * passes every check that needs no collateral (structure, REPORTDATA binding, DEBUG, MRTD
 * allowlist, then the PCK chain to the pinned root and the quote and QE report signatures), so a
 * quote bound to another session, or forged, never makes the verifier call PCS; fetched collateral
 * is cached only once it verified against the pinned root.
 */
import { readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { SigilError, asSigilError, errorFields } from '../errors.js';
import { decodeBase64 } from '../plugins/base64.js';
import type {
  AgentPluginDeps,
  AttestorResult,
  JsonSchema,
  NodeAttestorAgent,
  NodeAttestorAgentPlugin,
  NodeAttestorVerifier,
  NodeAttestorVerifierPlugin,
  SessionInput,
  VerifierPluginDeps,
} from '../plugins/types.js';
import { validatePluginConfig } from '../plugins/validate.js';
import { DEFAULT_CONFIGFS_ROOT, type TsmFs, getTsmReport } from '../util/configfs-tsm.js';
import { CCEL_MAX_AREA, CCEL_TABLE_SIZE } from './ccel.js';
import { DEFAULT_PCS_BASE_URL, DEFAULT_PCS_MAX_REQUESTS_PER_MINUTE, DEFAULT_ROOT_CRL_URL, type PcsFetch, TdxCollateralSource, collateralKeyOfQuote } from './collateral.js';
import { TDX_QUOTE_MAX_BYTES, parseTdxQuote } from './quote.js';
import { TCB_STATUSES, type TcbStatus } from './tcb.js';
import { TDX_ATTESTOR, type TdxCollateral, type TdxPolicyOptions, checkTdReportPolicy, tdxReportDataForBinding, verifyTdxCollateral, verifyTdxQuote, verifyTdxQuoteSignatures } from './verify.js';

export const DEFAULT_CCEL_DATA_PATH = '/sys/firmware/acpi/tables/data/CCEL';
export const DEFAULT_CCEL_TABLE_PATH = '/sys/firmware/acpi/tables/CCEL';

export const tdxVerifierConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    allowDebug: { type: 'boolean', default: false },
    acceptedTcbStatuses: { type: 'array', items: { enum: [...TCB_STATUSES] }, minItems: 1, uniqueItems: true, default: ['UpToDate'] },
    allowUnknownTcb: { type: 'boolean', default: false },
    maxCollateralAge: { type: 'integer', minimum: 1, maximum: 31_536_000 },
    requireEventLog: { type: 'boolean', default: false },
    mrTds: { type: 'array', items: { type: 'string', pattern: '^[0-9a-fA-F]{96}$' } },
    rootSha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$' },
    collateralDir: { type: 'string', minLength: 1 },
    pcs: {
      type: 'object',
      additionalProperties: false,
      required: ['enabled'],
      properties: {
        enabled: { type: 'boolean', default: false },
        baseUrl: { type: 'string', pattern: '^https?://[^\\s]+$', default: DEFAULT_PCS_BASE_URL },
        rootCrlUrl: { type: 'string', pattern: '^https?://[^\\s]+$', default: DEFAULT_ROOT_CRL_URL },
        maxRequestsPerMinute: { type: 'integer', minimum: 1, maximum: 6000, default: DEFAULT_PCS_MAX_REQUESTS_PER_MINUTE },
      },
    },
  },
};

export const tdxAgentConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    configfsRoot: { type: 'string', minLength: 1, default: DEFAULT_CONFIGFS_ROOT },
    eventLog: { enum: ['auto', 'always', 'never'], default: 'auto' },
    eventLogPath: { type: 'string', minLength: 1, default: DEFAULT_CCEL_DATA_PATH },
    ccelTablePath: { type: 'string', minLength: 1, default: DEFAULT_CCEL_TABLE_PATH },
  },
};

export interface TdxVerifierConfig {
  allowDebug?: boolean;
  acceptedTcbStatuses?: TcbStatus[];
  allowUnknownTcb?: boolean;
  /** Seconds. */
  maxCollateralAge?: number;
  requireEventLog?: boolean;
  mrTds?: string[];
  rootSha256?: string;
  collateralDir?: string;
  pcs?: { enabled: boolean; baseUrl?: string; rootCrlUrl?: string; maxRequestsPerMinute?: number };
}

export interface TdxAgentConfig {
  configfsRoot?: string;
  eventLog?: 'auto' | 'always' | 'never';
  eventLogPath?: string;
  ccelTablePath?: string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;
}

function onlyKeys(o: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new SigilError('tdx.payload_invalid', `${where} has unknown key "${k}"`);
}

const b64 = (v: unknown, what: string, maxBytes: number): Buffer => decodeBase64(v, what, { code: 'tdx.payload_invalid', maxBytes });

/** Codes after which a collateral copy from the directory or memory is worth replacing from PCS. */
const STALE_CODES = new Set(['tdx.collateral_expired', 'tdx.crl_expired', 'tdx.collateral_stale', 'tdx.cert_expired']);

export interface TdxVerifierInjection {
  fetch?: PcsFetch;
}

/** Verifier half, with injectable I/O. */
export function createTdxVerifier(config: unknown, deps: VerifierPluginDeps, inject: TdxVerifierInjection = {}): NodeAttestorVerifier {
  const cfg = validatePluginConfig<TdxVerifierConfig>(tdxVerifierConfigSchema, config, { namespace: 'tdx', what: 'plugin "tdx" verifier config' });
  const dir = cfg.collateralDir === undefined ? undefined : isAbsolute(cfg.collateralDir) ? cfg.collateralDir : resolve(deps.configDir, cfg.collateralDir);
  const collateral = new TdxCollateralSource({
    ...(dir === undefined ? {} : { dir }),
    ...(cfg.pcs?.enabled
      ? {
          pcs: {
            ...(cfg.pcs.baseUrl === undefined ? {} : { baseUrl: cfg.pcs.baseUrl }),
            ...(cfg.pcs.rootCrlUrl === undefined ? {} : { rootCrlUrl: cfg.pcs.rootCrlUrl }),
            ...(cfg.pcs.maxRequestsPerMinute === undefined ? {} : { maxRequestsPerMinute: cfg.pcs.maxRequestsPerMinute }),
          },
        }
      : {}),
    ...(inject.fetch ? { fetch: inject.fetch } : {}),
    nowMs: () => deps.now().getTime(),
  });
  const policy: TdxPolicyOptions = {
    allowDebug: cfg.allowDebug === true,
    acceptedTcbStatuses: cfg.acceptedTcbStatuses ?? ['UpToDate'],
    allowUnknownTcb: cfg.allowUnknownTcb === true,
    ...(cfg.maxCollateralAge === undefined ? {} : { maxCollateralAgeMs: cfg.maxCollateralAge * 1000 }),
    ...(cfg.rootSha256 === undefined ? {} : { rootSha256: cfg.rootSha256.toLowerCase() }),
    ...(cfg.mrTds ? { mrTds: cfg.mrTds } : {}),
  };
  const collateralOk = (c: TdxCollateral, now: Date): Date | undefined => {
    try {
      return verifyTdxCollateral(c, { now, ...(policy.rootSha256 ? { rootSha256: policy.rootSha256 } : {}) }).validUntil;
    } catch {
      return undefined;
    }
  };

  return {
    async begin(hello: unknown): Promise<{ challenge: unknown; state: unknown }> {
      const h = hello ?? {};
      if (!isPlainObject(h)) throw new SigilError('tdx.payload_invalid', 'tdx hello must be an object');
      onlyKeys(h, [], 'tdx hello');
      return { challenge: {}, state: {} };
    },

    async finish(response: unknown, _state: unknown, session: SessionInput): Promise<AttestorResult> {
      if (!isPlainObject(response)) throw new SigilError('tdx.payload_invalid', 'tdx response must be an object');
      onlyKeys(response, ['quote', 'eventLog', 'ccelTable'], 'tdx response');
      const quoteBytes = b64(response.quote, 'tdx response.quote', TDX_QUOTE_MAX_BYTES);
      const eventLog = response.eventLog === undefined ? undefined : b64(response.eventLog, 'tdx response.eventLog', CCEL_MAX_AREA);
      const table = response.ccelTable === undefined ? undefined : b64(response.ccelTable, 'tdx response.ccelTable', CCEL_TABLE_SIZE);
      if (cfg.requireEventLog && !eventLog) throw new SigilError('tdx.event_log_missing', 'the tdx verifier requires the CC event log and the agent sent none', { status: 403 });
      const expectedReportData = tdxReportDataForBinding(session.binding);
      // Everything that needs no collateral comes before any lookup (policy first, then the PCK
      // chain and signatures), so a quote bound to another session, refused by the policy, or not
      // signed under a genuine PCK key never makes the verifier call PCS or spend its budget.
      const quote = parseTdxQuote(quoteBytes);
      checkTdReportPolicy(quote, { ...policy, expectedReportData });
      verifyTdxQuoteSignatures(quote, session.now, policy.rootSha256);

      let hit = collateral.configured ? await collateral.lookup(collateralKeyOfQuote(quoteBytes)) : undefined;
      const opts = { ...policy, now: session.now, expectedReportData, ...(eventLog ? { eventLog: { area: eventLog, ...(table ? { table } : {}) } } : {}) };
      const run = (c: TdxCollateral | undefined) => verifyTdxQuote(quoteBytes, c, opts);
      let v: ReturnType<typeof run>;
      try {
        v = run(hit?.collateral);
      } catch (e) {
        // A stored copy that has expired is replaced from PCS (when enabled) and tried once more.
        if (!(e instanceof SigilError) || !STALE_CODES.has(e.code) || !hit || hit.source === 'pcs' || !collateral.online) {
          if (hit && hit.source === 'pcs') {
            const until = collateralOk(hit.collateral, session.now);
            if (until) await hit.persist(until);
          }
          throw asSigilError(e, 'tdx.internal', 'tdx verification failed unexpectedly');
        }
        hit = await collateral.lookup(collateralKeyOfQuote(quoteBytes), true);
        try {
          v = run(hit?.collateral);
        } catch (e2) {
          const until = hit ? collateralOk(hit.collateral, session.now) : undefined;
          if (hit && until) await hit.persist(until);
          throw asSigilError(e2, 'tdx.internal', 'tdx verification failed unexpectedly');
        }
      }
      if (hit && v.collateralValidUntil) {
        await hit.persist(v.collateralValidUntil).catch((e: unknown) => deps.logger.warn(errorFields(e), 'tdx: could not cache collateral'));
      }
      return { selectors: v.selectors, claims: v.claims, agentIdSuffix: v.agentIdSuffix };
    },
  };
}

export const tdxVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: TDX_ATTESTOR,
  configSchema: tdxVerifierConfigSchema,
  create(config: unknown, deps: VerifierPluginDeps): NodeAttestorVerifier {
    return createTdxVerifier(config, deps);
  },
};

export interface TdxAgentInjection {
  /** Filesystem for the configfs collector (tests use an in-memory fake). */
  fs?: TsmFs;
  /** Reads the event log files (tests). */
  readFile?: (path: string) => Promise<Buffer>;
}

/** Attester half, with injectable I/O. */
export function createTdxAgent(config: unknown, deps: AgentPluginDeps, inject: TdxAgentInjection = {}): NodeAttestorAgent {
  const cfg = validatePluginConfig<TdxAgentConfig>(tdxAgentConfigSchema, config, { namespace: 'tdx', what: 'plugin "tdx" agent config' });
  const read = inject.readFile ?? ((p: string) => readFile(p));
  const mode = cfg.eventLog ?? 'auto';

  const readLog = async (): Promise<{ eventLog?: string; ccelTable?: string }> => {
    if (mode === 'never') return {};
    try {
      const area = await read(cfg.eventLogPath ?? DEFAULT_CCEL_DATA_PATH);
      const table = await read(cfg.ccelTablePath ?? DEFAULT_CCEL_TABLE_PATH).catch(() => undefined);
      if (area.length > CCEL_MAX_AREA) throw new SigilError('tdx.ccel_too_large', `CC event log area is ${area.length} bytes, more than ${CCEL_MAX_AREA}`, { status: 500 });
      return { eventLog: area.toString('base64'), ...(table && table.length === CCEL_TABLE_SIZE ? { ccelTable: table.toString('base64') } : {}) };
    } catch (e) {
      if (mode === 'always') throw asSigilError(e, 'tdx.event_log_unreadable', 'cannot read the CC event log');
      deps.logger.warn(errorFields(e), 'tdx: sending no CC event log');
      return {};
    }
  };

  return {
    async hello(): Promise<unknown> {
      return {};
    },

    async respond(challenge: unknown, session: { nonce: Buffer; binding: Buffer; csrSpki: Buffer }): Promise<unknown> {
      if (!isPlainObject(challenge) || Object.keys(challenge).length !== 0) throw new SigilError('tdx.challenge_invalid', 'tdx challenge must be an empty object');
      const reportData = tdxReportDataForBinding(session.binding);
      const r = await getTsmReport({
        area: 'tdx',
        provider: 'tdx_guest',
        guestName: 'Intel TDX',
        inblob: reportData,
        ...(cfg.configfsRoot === undefined ? {} : { root: cfg.configfsRoot }),
        ...(inject.fs ? { fs: inject.fs } : {}),
      });
      // The quote must carry what we asked for; anything else means a confused or shared collector.
      let quote;
      try {
        quote = parseTdxQuote(r.outblob);
      } catch (e) {
        throw asSigilError(e, 'tdx.quote_malformed', 'the guest returned an unparsable quote');
      }
      if (!quote.body.reportData.equals(reportData)) {
        throw new SigilError('tdx.attester_report_data_mismatch', 'the guest returned a quote whose REPORTDATA is not the session binding', { status: 500 });
      }
      return { quote: r.outblob.toString('base64'), ...(await readLog()) };
    },
  };
}

export const tdxAgentPlugin: NodeAttestorAgentPlugin = {
  name: TDX_ATTESTOR,
  configSchema: tdxAgentConfigSchema,
  create(config: unknown, deps: AgentPluginDeps): NodeAttestorAgent {
    return createTdxAgent(config, deps);
  },
};
