/**
 * The verifier config's `federation` block (docs/federation.md): the optional bundle endpoint,
 * refresh timing, and relationships declared in the config (created or updated in the datastore at
 * start; the CLI manages the same relationships at run time).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { durationSchema, parseDuration } from '../util/duration.js';
import type { BundleEndpointConfig } from './endpoint.js';
import { listenAddressFrom } from '../util/listen.js';
import { REFRESH_DEFAULTS, type RefreshSettings } from './service.js';
import { validateRelationship, type ValidRelationship } from './validate.js';

export interface FederationConfig {
  bundleEndpoint?: BundleEndpointConfig;
  refresh: RefreshSettings;
  relationships: (ValidRelationship & { initialBundle?: string })[];
}

export const federationSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    bundleEndpoint: {
      type: 'object',
      additionalProperties: false,
      required: ['profile'],
      properties: {
        listen: { type: 'string', minLength: 1 },
        address: { type: 'string', minLength: 1 },
        port: { type: 'integer', minimum: 0, maximum: 65535 },
        profile: { enum: ['https_web', 'https_spiffe'] },
        cert: { type: 'string', minLength: 1 },
        key: { type: 'string', minLength: 1 },
      },
    },
    refresh: {
      type: 'object',
      additionalProperties: false,
      properties: {
        default: { ...durationSchema, default: `${REFRESH_DEFAULTS.defaultSeconds}s` },
        min: { ...durationSchema, default: `${REFRESH_DEFAULTS.minSeconds}s` },
        max: { ...durationSchema, default: `${REFRESH_DEFAULTS.maxSeconds}s` },
        maxBackoff: { ...durationSchema, default: `${REFRESH_DEFAULTS.maxBackoffSeconds}s` },
        timeout: { ...durationSchema, default: `${REFRESH_DEFAULTS.timeoutMs / 1000}s` },
      },
      default: {},
    },
    relationships: {
      type: 'array',
      maxItems: 1000,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['trustDomain', 'bundleEndpointUrl', 'profile'],
        properties: {
          trustDomain: { type: 'string', minLength: 1, maxLength: 255 },
          bundleEndpointUrl: { type: 'string', minLength: 1, maxLength: 2048 },
          profile: { enum: ['https_web', 'https_spiffe'] },
          endpointSpiffeId: { type: 'string', minLength: 1, maxLength: 2048 },
          trustBundle: { type: 'string', minLength: 1 },
          webCa: { type: 'string', minLength: 1 },
        },
      },
      default: [],
    },
  },
  default: {},
} as const;

export interface RawFederation {
  bundleEndpoint?: { listen?: string; address?: string; port?: number; profile: 'https_web' | 'https_spiffe'; cert?: string; key?: string };
  refresh: { default: string | number; min: string | number; max: string | number; maxBackoff: string | number; timeout: string | number };
  relationships: { trustDomain: string; bundleEndpointUrl: string; profile: string; endpointSpiffeId?: string; trustBundle?: string; webCa?: string }[];
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new SigilError('config.invalid', `verifier config: /federation: cannot read ${what} ${path}: ${errorMessage(e)}`);
  }
}

/**
 * Upper bounds of `federation.refresh`: `max`, `default` and `maxBackoff` at most 24 days (a delay
 * must fit one Node timer, 2^31 − 1 ms ≈ 24.8 days), `timeout` at most 10 minutes.
 */
export const REFRESH_UPPER_LIMITS = { intervalSeconds: 24 * 86_400, timeoutSeconds: 600 } as const;

/** Validate the block (already schema-checked and defaulted); relative files resolve against `configDir`. */
export function federationConfigFrom(raw: RawFederation, trustDomain: string, configDir: string): FederationConfig {
  const r = raw.refresh;
  const refresh: RefreshSettings = {
    ...REFRESH_DEFAULTS,
    defaultSeconds: parseDuration(r.default, 'federation.refresh.default'),
    minSeconds: parseDuration(r.min, 'federation.refresh.min'),
    maxSeconds: parseDuration(r.max, 'federation.refresh.max'),
    maxBackoffSeconds: parseDuration(r.maxBackoff, 'federation.refresh.maxBackoff'),
    timeoutMs: parseDuration(r.timeout, 'federation.refresh.timeout') * 1000,
  };
  if (refresh.minSeconds < 1 || refresh.minSeconds > refresh.maxSeconds) throw new SigilError('config.invalid', 'verifier config: /federation/refresh: min must be at least 1s and at most max');
  if (refresh.maxBackoffSeconds < 1 || refresh.timeoutMs < 1000) throw new SigilError('config.invalid', 'verifier config: /federation/refresh: maxBackoff and timeout must be at least 1s');
  // Upper bounds: a refresh delay must fit one Node timer (2^31 − 1 ms, 24.8 days).
  for (const [key, seconds, limit, text] of [
    ['max', refresh.maxSeconds, REFRESH_UPPER_LIMITS.intervalSeconds, '24d'],
    ['default', refresh.defaultSeconds, REFRESH_UPPER_LIMITS.intervalSeconds, '24d'],
    ['maxBackoff', refresh.maxBackoffSeconds, REFRESH_UPPER_LIMITS.intervalSeconds, '24d'],
    ['timeout', refresh.timeoutMs / 1000, REFRESH_UPPER_LIMITS.timeoutSeconds, '10m'],
  ] as const) {
    if (seconds > limit) throw new SigilError('config.invalid', `verifier config: /federation/refresh/${key}: at most ${text} (${limit} s), got ${seconds} s`);
  }
  const out: FederationConfig = { refresh, relationships: [] };
  const be = raw.bundleEndpoint;
  if (be) {
    if (be.profile === 'https_web' && (!be.cert || !be.key)) throw new SigilError('config.invalid', 'verifier config: /federation/bundleEndpoint: profile https_web needs "cert" and "key" (a Web PKI certificate for the endpoint\'s host name)');
    if (be.profile === 'https_spiffe' && (be.cert || be.key)) throw new SigilError('config.invalid', 'verifier config: /federation/bundleEndpoint: profile https_spiffe serves the verifier\'s own SVID; "cert" and "key" apply to https_web only');
    // Either `listen: "host:port"` (the form every listen key takes, src/util/listen.ts) or the
    // older `address`/`port` pair (defaults 0.0.0.0 and 8444); not both.
    if (be.listen !== undefined && (be.address !== undefined || be.port !== undefined)) {
      throw new SigilError('config.invalid', 'verifier config: /federation/bundleEndpoint: give either "listen" or "address"/"port", not both');
    }
    const at = be.listen !== undefined
      ? listenAddressFrom(be.listen, 'verifier config: /federation/bundleEndpoint/listen', { allowPortZero: true })
      : { host: be.address ?? '0.0.0.0', port: be.port ?? 8444 };
    out.bundleEndpoint = {
      address: at.host,
      port: at.port,
      profile: be.profile,
      ...(be.cert ? { certFile: resolve(configDir, be.cert) } : {}),
      ...(be.key ? { keyFile: resolve(configDir, be.key) } : {}),
    };
  }
  const seen = new Set<string>();
  raw.relationships.forEach((x, i) => {
    let rel: ValidRelationship;
    try {
      rel = validateRelationship(
        {
          trustDomain: x.trustDomain,
          bundleEndpointUrl: x.bundleEndpointUrl,
          profile: x.profile,
          ...(x.endpointSpiffeId !== undefined ? { endpointSpiffeId: x.endpointSpiffeId } : {}),
          ...(x.webCa !== undefined ? { webCaPem: readText(resolve(configDir, x.webCa), 'webCa') } : {}),
        },
        trustDomain,
      );
    } catch (e) {
      if (e instanceof SigilError && e.code !== 'config.invalid') throw new SigilError(e.code, `verifier config: /federation/relationships/${i}: ${e.message}`);
      throw e;
    }
    if (seen.has(rel.trustDomain)) throw new SigilError('config.invalid', `verifier config: /federation/relationships/${i}: a second relationship with ${rel.trustDomain}`);
    seen.add(rel.trustDomain);
    out.relationships.push({ ...rel, ...(x.trustBundle !== undefined ? { initialBundle: readText(resolve(configDir, x.trustBundle), 'trustBundle') } : {}) });
  });
  return out;
}
