/**
 * `sev_snp` node attestor (DESIGN §2–§4): the attester half runs in an SEV-SNP guest and sends an
 * attestation report whose REPORT_DATA = binding ‖ 32 zero bytes; the verifier half verifies it
 * with verifySnpEvidence at the session time.
 *
 * Protocol:
 *   hello     `{}` or `{ certs: { vcek?, vlek?, ask?, ark? } }`   (base64 DER, from agent config files)
 *   challenge `{}`
 *   response  `{ report: <base64 0x4A0 bytes>, certs?: { vcek?, vlek?, ask?, ark? } }` (from the host's certificate table)
 * Missing certificates come from `collateralDir` and, if enabled, AMD KDS. Before any lookup the
 * report passes every check that does not need the VCEK (precheckSnpReport); certificates fetched
 * from KDS are cached only once they verified against the pinned ARK: an ASK/ASVK+ARK chain as soon
 * as it checks out on its own, a VCEK once it verified through its chain (and only if it is the
 * requested chip's at the requested TCB, see SnpCollateralSource).
 *
 * Revocation: AMD's CRL for the report's product line and key kind comes from the same collateral
 * source (memory, `collateralDir`, KDS) and is checked against the pinned ARK by verifySnpEvidence.
 * `crl.mode` (require | best_effort | off) says what happens when no current, verifying CRL can be
 * had; the default is `require` when KDS is enabled (the verifier can fetch it) and `best_effort`
 * otherwise (offline deployments keep working; a CRL file in collateralDir is still enforced).
 */
import { readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
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
import { SigilError, asSigilError, errorMessage, errorFields } from '../errors.js';
import { decodeBase64 } from '../plugins/base64.js';
import { validatePluginConfig } from '../plugins/validate.js';
import { type SnpReportSource, type TsmFs, DEFAULT_CONFIGFS_ROOT, createSnpReportSource } from './attester.js';
import { certBundleFromTable, type SnpCertBundle } from './certtable.js';
import {
  certificatesFromFile,
  parseAmdExtensions,
  parseSevCert,
  productFromEndorsementCert,
  resolveArkPins,
  verifyEndorsementChain,
  verifyIssuerChain,
} from './certs.js';
import { type SnpCrlMode, SNP_CRL_MODES, verifyAmdCrl } from './crl.js';
import { type CollateralHit, DEFAULT_KDS_BASE_URL, DEFAULT_KDS_MAX_REQUESTS_PER_MINUTE, type FetchLike, SnpCollateralSource, checkKdsBaseUrl } from './collateral.js';
import { type SnpProduct, type SnpSigningKey, SNP_PRODUCTS, SNP_REPORT_SIZE, parseSnpReport } from './report.js';
import { type SnpMinTcb, type SnpPolicyOptions, type SnpVerification, SEV_ATTESTOR, precheckSnpReport, reportDataForBinding, verifySnpEvidence } from './verify.js';

const CERT_KINDS = ['vcek', 'vlek', 'ask', 'ark'] as const;
type CertKind = (typeof CERT_KINDS)[number];
const MAX_CERT_BYTES = 16 * 1024;

const hex64 = { type: 'string', pattern: '^[0-9a-fA-F]{64}$' };
const spl = { type: 'integer', minimum: 0, maximum: 255 };

export const sevVerifierConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    allowDebug: { type: 'boolean', default: false },
    allowMigrationAgent: { type: 'boolean', default: false },
    vmpls: { type: 'array', items: { type: 'integer', minimum: 0, maximum: 3 }, minItems: 1, uniqueItems: true, default: [0] },
    products: { type: 'array', items: { enum: [...SNP_PRODUCTS] }, minItems: 1, uniqueItems: true, default: [...SNP_PRODUCTS] },
    minTcb: {
      type: 'object',
      additionalProperties: false,
      properties: { bootloader: spl, tee: spl, snp: spl, microcode: spl, fmc: spl },
    },
    minLaunchTcb: {
      type: 'object',
      additionalProperties: false,
      properties: { bootloader: spl, tee: spl, snp: spl, microcode: spl, fmc: spl },
    },
    minGuestSvn: { type: 'integer', minimum: 0, maximum: 4294967295 },
    measurements: { type: 'array', items: { type: 'string', pattern: '^[0-9a-fA-F]{96}$' } },
    arkSha256: {
      type: 'object',
      additionalProperties: false,
      properties: { milan: hex64, genoa: hex64, turin: hex64 },
    },
    collateralDir: { type: 'string', minLength: 1 },
    kds: {
      type: 'object',
      additionalProperties: false,
      required: ['enabled'],
      properties: {
        enabled: { type: 'boolean', default: false },
        baseUrl: { type: 'string', pattern: '^https?://[^\\s]+$', default: DEFAULT_KDS_BASE_URL },
        maxRequestsPerMinute: { type: 'integer', minimum: 1, maximum: 6000, default: DEFAULT_KDS_MAX_REQUESTS_PER_MINUTE },
      },
    },
    crl: {
      type: 'object',
      additionalProperties: false,
      properties: { mode: { enum: [...SNP_CRL_MODES] } },
    },
  },
};

export const sevAgentConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    transport: { enum: ['auto', 'configfs', 'ioctl'], default: 'auto' },
    configfsRoot: { type: 'string', minLength: 1, default: DEFAULT_CONFIGFS_ROOT },
    privlevel: { type: 'integer', minimum: 0, maximum: 3 },
    certsBufferLen: { type: 'integer', minimum: 4096, maximum: 16384 },
    certFiles: {
      type: 'object',
      additionalProperties: false,
      properties: { vcek: { type: 'string' }, vlek: { type: 'string' }, ask: { type: 'string' }, ark: { type: 'string' } },
    },
  },
};

export interface SevVerifierConfig {
  allowDebug?: boolean;
  allowMigrationAgent?: boolean;
  vmpls?: number[];
  products?: SnpProduct[];
  minTcb?: SnpMinTcb;
  minLaunchTcb?: SnpMinTcb;
  minGuestSvn?: number;
  measurements?: string[];
  arkSha256?: Partial<Record<SnpProduct, string>>;
  collateralDir?: string;
  kds?: { enabled: boolean; baseUrl?: string; maxRequestsPerMinute?: number };
  /** Default mode: `require` when kds.enabled, else `best_effort`. */
  crl?: { mode?: SnpCrlMode };
}

export interface SevAgentConfig {
  transport?: 'auto' | 'configfs' | 'ioctl';
  configfsRoot?: string;
  privlevel?: number;
  certsBufferLen?: number;
  certFiles?: Partial<Record<CertKind, string>>;
}

function validateConfig<T>(schema: JsonSchema, config: unknown, which: string): T {
  return validatePluginConfig<T>(schema, config, { namespace: 'sev', what: `plugin "sev_snp" ${which} config` });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;
}

/** An attacker-chosen JSON key as quoted in an error message: JSON-escaped, at most 64 characters. */
function keyShown(k: string): string {
  return k.length > 64 ? `${JSON.stringify(k.slice(0, 64))}… (${k.length} characters)` : JSON.stringify(k);
}

function decodeB64(v: unknown, what: string, maxBytes: number): Buffer {
  return decodeBase64(v, what, { code: 'sev.payload_invalid', maxBytes });
}

/** `{ vcek?, vlek?, ask?, ark? }` of base64 strings → DER buffers; unknown keys refused. */
function decodeCerts(v: unknown, where: string): Partial<Record<CertKind, Buffer>> {
  if (v === undefined) return {};
  if (!isPlainObject(v)) throw new SigilError('sev.payload_invalid', `${where}.certs must be an object`);
  const out: Partial<Record<CertKind, Buffer>> = {};
  for (const [k, val] of Object.entries(v)) {
    if (!(CERT_KINDS as readonly string[]).includes(k)) throw new SigilError('sev.payload_invalid', `${where}.certs has unknown key ${keyShown(k)}`);
    out[k as CertKind] = decodeB64(val, `${where}.certs.${k}`, MAX_CERT_BYTES);
  }
  return out;
}

function encodeCerts(c: SnpCertBundle): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const k of CERT_KINDS) {
    const b = c[k];
    if (b) out[k] = b.toString('base64');
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

function onlyKeys(o: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new SigilError('sev.payload_invalid', `${where} has unknown key ${keyShown(k)}`);
}

interface VerifierState {
  certs: Record<string, string>;
}

export interface SevVerifierInjection {
  /** fetch used for AMD KDS (tests point it at a local server by baseUrl instead; this is for full control). */
  fetch?: FetchLike;
}

/** Verifier half, with injectable I/O. */
export function createSevVerifier(config: unknown, deps: VerifierPluginDeps, inject: SevVerifierInjection = {}): NodeAttestorVerifier {
  const cfg = validateConfig<SevVerifierConfig>(sevVerifierConfigSchema, config, 'verifier');
  const products = cfg.products ?? [...SNP_PRODUCTS];
  const dir = cfg.collateralDir === undefined ? undefined : isAbsolute(cfg.collateralDir) ? cfg.collateralDir : resolve(deps.configDir, cfg.collateralDir);
  // https only (http:// just for a loopback test server); checked even while KDS is disabled.
  if (cfg.kds?.baseUrl !== undefined) checkKdsBaseUrl(cfg.kds.baseUrl);
  const collateral = new SnpCollateralSource({
    ...(dir === undefined ? {} : { dir }),
    ...(cfg.kds?.enabled
      ? { kds: { enabled: true, baseUrl: cfg.kds.baseUrl ?? DEFAULT_KDS_BASE_URL, maxRequestsPerMinute: cfg.kds.maxRequestsPerMinute ?? DEFAULT_KDS_MAX_REQUESTS_PER_MINUTE } }
      : {}),
    ...(inject.fetch ? { fetch: inject.fetch } : {}),
    onCacheWriteError: (path, e) => deps.logger.warn({ path, err: errorMessage(e) }, 'sev_snp: could not cache collateral'),
  });
  const policy: SnpPolicyOptions = {
    allowDebug: cfg.allowDebug === true,
    allowMigrationAgent: cfg.allowMigrationAgent === true,
    vmpls: cfg.vmpls ?? [0],
    products,
    ...(cfg.minTcb ? { minTcb: cfg.minTcb } : {}),
    ...(cfg.minLaunchTcb ? { minLaunchTcb: cfg.minLaunchTcb } : {}),
    ...(cfg.minGuestSvn === undefined ? {} : { minGuestSvn: cfg.minGuestSvn }),
    ...(cfg.measurements ? { measurements: cfg.measurements } : {}),
    ...(cfg.arkSha256 ? { arkSha256: cfg.arkSha256 } : {}),
  };
  const pins = resolveArkPins(cfg.arkSha256);
  const crlMode: SnpCrlMode = cfg.crl?.mode ?? (cfg.kds?.enabled ? 'require' : 'best_effort');
  /** best_effort: when revocation was last reported unchecked (one warning per 10 minutes). */
  let uncheckedWarnedAt = -Infinity;

  /**
   * Whether a CRL verifies on its own under the pinned ARK of `product` at `now` (issuer,
   * signature, current), whatever it lists and whatever the session's outcome: only then is a
   * fetched CRL cached.
   */
  const crlVerifies = (crl: Buffer, chain: Buffer[], product: SnpProduct, now: Date): boolean => {
    try {
      const ark = chain.map((d) => parseSevCert(d, 'chain certificate')).find((c) => c.sha256 === pins[product]);
      if (!ark) return false;
      verifyAmdCrl(crl, ark, product, now);
      return true;
    } catch {
      return false;
    }
  };

  /**
   * Whether an ASK/ASVK+ARK chain checks out on its own (pinned ARK, self-signed, CA roles, ASK/ASVK
   * signed by the ARK, both valid at `now`), whatever VCEK/VLEK it comes with.
   */
  const chainVerifies = (ders: Buffer[], product: SnpProduct, kind: SnpSigningKey, now: Date): boolean => {
    try {
      verifyIssuerChain(ders, product, kind, { now, pins });
      return true;
    } catch {
      return false;
    }
  };

  /** Whether the VCEK/VLEK verifies against the pinned ARK through `chain` (whatever the report says). */
  const endorsementVerifies = (leaf: Buffer, chain: Buffer[], reportProduct: SnpProduct | undefined, now: Date): boolean => {
    try {
      verifyEndorsementChain(leaf, chain, { now, pins, ...(reportProduct ? { reportProduct } : {}) });
      return true;
    } catch {
      return false;
    }
  };

  return {
    async begin(hello: unknown, _session: SessionInput): Promise<{ challenge: unknown; state: unknown }> {
      const h = hello ?? {};
      if (!isPlainObject(h)) throw new SigilError('sev.payload_invalid', 'sev_snp hello must be an object');
      onlyKeys(h, ['certs'], 'sev_snp hello');
      const certs = decodeCerts(h.certs, 'sev_snp hello');
      const state: VerifierState = { certs: encodeCerts(certs) ?? {} };
      return { challenge: {}, state };
    },

    async finish(response: unknown, state: unknown, session: SessionInput): Promise<AttestorResult> {
      try {
        if (!isPlainObject(response)) throw new SigilError('sev.payload_invalid', 'sev_snp response must be an object');
        onlyKeys(response, ['report', 'certs'], 'sev_snp response');
        const reportBytes = decodeB64(response.report, 'sev_snp response.report', SNP_REPORT_SIZE);
        const helloCerts = isPlainObject(state) && isPlainObject(state.certs) ? decodeCerts(state.certs, 'sev_snp session state') : {};
        const certs = { ...helloCerts, ...decodeCerts(response.certs, 'sev_snp response') };

        const report = parseSnpReport(reportBytes);
        const expectedReportData = reportDataForBinding(session.binding);
        // Everything that can be checked without the VCEK/VLEK comes before any collateral lookup,
        // so a report that is malformed, bound to another session or refused by the policy never
        // makes the verifier call AMD KDS. The report signature cannot be among these checks: it
        // needs the VCEK, which is what would be fetched. So a forged report that passes them can
        // still cause a fetch; the collateral source rate-limits those, and what is fetched is
        // cached only after it verified against the pinned ARK (below).
        const pre = precheckSnpReport(report, { ...policy, expectedReportData });
        const reportProduct = pre.product;
        /** Fetched VCEKs, cached below only if they verify through the chain. */
        const hits: CollateralHit[] = [];
        let endorsement = certs[report.signingKey] ?? certs.vcek ?? certs.vlek;
        if (!endorsement && report.signingKey === 'vcek' && collateral.configured) {
          const hit = await collateral.lookupVcek(pre.candidates, report.chipId, report.reportedTcb);
          if (hit) {
            hits.push(hit);
            endorsement = hit.ders[0];
          }
        }
        const chain = [certs.ask, certs.ark].filter((c): c is Buffer => c !== undefined);
        // No VCEK/VLEK means sev.vcek_missing whatever the chain: do not look one up for nothing.
        if (chain.length < 2 && collateral.configured && endorsement) {
          let product = reportProduct;
          if (!product && endorsement) {
            const leaf = parseSevCert(endorsement, 'VCEK/VLEK');
            product = productFromEndorsementCert(leaf, parseAmdExtensions(leaf));
          }
          // Only for a line the report passed the pre-checks as: a v2 report's line comes from the
          // agent's (unverified) certificate, and as any other line verification refuses anyway.
          if (product && pre.candidates.includes(product)) {
            const hit = await collateral.lookupChain(product, report.signingKey);
            if (hit) {
              // A fetched chain is cached as soon as it checks out on its own, whatever the leaf:
              // otherwise a made-up VCEK would make every session fetch the genuine chain again and
              // use up the KDS request budget that all nodes share.
              if (hit.fetched && chainVerifies(hit.ders, product, report.signingKey, session.now)) await hit.persist();
              chain.push(...hit.ders);
            }
          }
        }
        const evidence = { report: reportBytes, ...(endorsement ? { endorsementCert: endorsement } : {}), chain };
        const opts = { now: session.now, expectedReportData, ...policy };
        let outcome: { ok: true; v: SnpVerification } | { ok: false; error: unknown };
        try {
          // Everything but revocation first: a report that fails anyway (forged, wrong chain) never
          // makes the verifier look up, or spend a KDS request on, the CRL.
          outcome = { ok: true, v: verifySnpEvidence(evidence, { ...opts, crl: { mode: 'off' } }) };
        } catch (e) {
          outcome = { ok: false, error: e };
        }
        // Then AMD's CRL for the verified product line and key kind, checked by the pure verifier.
        let crl: CollateralHit | undefined;
        if (outcome.ok && crlMode !== 'off') {
          const { product } = outcome.v;
          let crlUnavailableReason = 'neither collateralDir nor KDS is configured';
          if (collateral.configured) {
            try {
              crl = await collateral.lookupCrl(product, outcome.v.signingKey, session.now);
              // A cached CRL that does not verify (a damaged or foreign file in collateralDir) must
              // not stand in the way of a good one: ask KDS, when enabled.
              if (crl && !crl.fetched && !crlVerifies(crl.ders[0]!, chain, product, session.now)) {
                crl = (await collateral.lookupCrl(product, outcome.v.signingKey, session.now, { fromKds: true })) ?? crl;
              }
              crlUnavailableReason = 'not in collateralDir, and KDS is off or has none';
            } catch (e) {
              crlUnavailableReason = errorMessage(e);
            }
          }
          try {
            outcome = { ok: true, v: verifySnpEvidence({ ...evidence, ...(crl ? { crl: crl.ders[0] } : { crlUnavailableReason }) }, { ...opts, crl: { mode: crlMode } }) };
          } catch (e) {
            outcome = { ok: false, error: e };
          }
          // A fetched CRL is cached once it verifies under the pinned ARK, whatever it lists.
          if (crl?.fetched && crlVerifies(crl.ders[0]!, chain, product, session.now)) await crl.persist();
        }
        if (outcome.ok && !outcome.v.revocation.checked && crlMode === 'best_effort') {
          const t = session.now.getTime();
          if (t - uncheckedWarnedAt >= 10 * 60_000 || t < uncheckedWarnedAt) {
            uncheckedWarnedAt = t;
            deps.logger.warn({ reason: outcome.v.revocation.reason }, 'sev_snp: revocation not checked (crl.mode best_effort); attestation accepted');
          }
        }
        // Cache a VCEK fetched from KDS only if it verified against the pinned ARK: on success, or
        // when only the report (signature, binding, policy) failed. A fetched VCEK that does not
        // chain is never cached as trusted for that chip (nor one naming another chip or TCB: its
        // persist() does nothing).
        const fetched = hits.filter((h) => h.fetched);
        if (fetched.length > 0 && endorsement && (outcome.ok || endorsementVerifies(endorsement, chain, reportProduct, session.now))) {
          for (const h of fetched) await h.persist();
        }
        if (!outcome.ok) throw outcome.error;
        const { v } = outcome;
        return { selectors: v.selectors, claims: v.claims, agentIdSuffix: v.agentIdSuffix };
      } catch (e) {
        throw asSigilError(e, 'sev.internal', 'sev_snp verification failed unexpectedly');
      }
    },
  };
}

export const sevVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: SEV_ATTESTOR,
  configSchema: sevVerifierConfigSchema,
  create(config: unknown, deps: VerifierPluginDeps): NodeAttestorVerifier {
    return createSevVerifier(config, deps);
  },
};

export interface SevAgentInjection {
  /** Report source (default: configfs-tsm with ioctl fallback per config). */
  source?: SnpReportSource;
  /** Filesystem for the configfs collector (tests use an in-memory fake). */
  fs?: TsmFs;
}

/** Attester half, with injectable I/O. */
export function createSevAgent(config: unknown, deps: AgentPluginDeps, inject: SevAgentInjection = {}): NodeAttestorAgent {
  const cfg = validateConfig<SevAgentConfig>(sevAgentConfigSchema, config, 'agent');
  const source =
    inject.source ??
    createSnpReportSource({
      transport: cfg.transport ?? 'auto',
      configfsRoot: cfg.configfsRoot ?? DEFAULT_CONFIGFS_ROOT,
      ...(cfg.privlevel === undefined ? {} : { privlevel: cfg.privlevel }),
      ...(cfg.certsBufferLen === undefined ? {} : { certsBufferLen: cfg.certsBufferLen }),
      ...(inject.fs ? { fs: inject.fs } : {}),
    });
  const path = (p: string) => (isAbsolute(p) ? p : resolve(deps.configDir, p));

  return {
    async hello(): Promise<unknown> {
      const bundle: SnpCertBundle = {};
      for (const k of CERT_KINDS) {
        const p = cfg.certFiles?.[k];
        if (p === undefined) continue;
        let data: Buffer;
        try {
          data = await readFile(path(p));
        } catch (e) {
          throw asSigilError(e, 'sev.cert_file_unreadable', `cannot read sev_snp certFiles.${k} ${path(p)}`);
        }
        const ders = certificatesFromFile(data, `certFiles.${k}`);
        if (ders.length !== 1) throw new SigilError('sev.cert_file_unreadable', `sev_snp certFiles.${k} must hold exactly one certificate, found ${ders.length}`);
        bundle[k] = ders[0];
      }
      const certs = encodeCerts(bundle);
      return certs ? { certs } : {};
    },

    async respond(challenge: unknown, session: { nonce: Buffer; binding: Buffer; csrSpki: Buffer }): Promise<unknown> {
      if (!isPlainObject(challenge) || Object.keys(challenge).length !== 0) {
        throw new SigilError('sev.challenge_invalid', 'sev_snp challenge must be an empty object');
      }
      const reportData = reportDataForBinding(session.binding);
      const raw = await source.getReport(reportData);
      if (raw.report.length !== SNP_REPORT_SIZE) throw new SigilError('sev.report_length', `guest returned a ${raw.report.length}-byte report`, { status: 500 });
      // The report must carry what we asked for; anything else means a confused or shared collector.
      if (!raw.report.subarray(0x50, 0x90).equals(reportData)) {
        throw new SigilError('sev.attester_report_data_mismatch', 'the guest returned a report whose REPORT_DATA is not the session binding', { status: 500 });
      }
      let certs: Record<string, string> | undefined;
      if (raw.certTable) {
        try {
          certs = encodeCerts(certBundleFromTable(raw.certTable));
        } catch (e) {
          // The verifier can still use its collateral; say why the host certificates are missing.
          deps.logger.warn(errorFields(e), 'sev_snp: ignoring malformed host certificate table');
        }
      }
      return certs ? { report: raw.report.toString('base64'), certs } : { report: raw.report.toString('base64') };
    },
  };
}

export const sevAgentPlugin: NodeAttestorAgentPlugin = {
  name: SEV_ATTESTOR,
  configSchema: sevAgentConfigSchema,
  create(config: unknown, deps: AgentPluginDeps): NodeAttestorAgent {
    return createSevAgent(config, deps);
  },
};
