/**
 * Verifier configuration (DESIGN §8): YAML or JSON, validated with JSON Schema before anything starts.
 */
import { resolve } from 'node:path';
import { SigilError } from '../errors.js';
import { validateAgainstSchema } from '../plugins/validate.js';
import { readConfigFile } from '../util/config-file.js';
import { durationSchema, parseDuration } from '../util/duration.js';
import { listenAddressFrom } from '../util/listen.js';
import { parseTrustDomain } from '../spiffe/id.js';
import { federationConfigFrom, federationSchema, type FederationConfig, type RawFederation } from '../federation/config.js';
import { BUNDLE_ENDPOINT_CAPS } from '../federation/endpoint.js';
import { SESSION_DEFAULTS, type SessionLimits } from './attestation.js';
import { LONG_POLL_DEFAULTS, type LongPollLimits } from './authorized-cache.js';
import { checkMmapThreshold, mmapThresholdSchema } from '../native/malloc-tuning.js';

export interface VerifierConfig {
  trustDomain: string;
  listen: { address: string; port: number; maxConnections: number; maxConnectionsPerAddress: number };
  adminSocket: string;
  dataDir: string;
  datastore: { kind: 'sqlite' } | { kind: 'postgres'; url: string; schema?: string };
  ca: { keyType: 'ec-p256' | 'ec-p384' | 'rsa-2048'; ttlSeconds: number; upstream?: { cert: string; key: string } };
  svid: { x509TtlSeconds: number; jwtTtlSeconds: number };
  jwtKeyType: 'ec-p256' | 'ec-p384' | 'rsa-2048';
  requireAttestors: string[];
  nodeAttestors: Record<string, unknown>;
  plugins: Record<string, string>;
  agentSvidTtlSeconds: number;
  logLevel: string;
  /** Limits of the unauthenticated attestation endpoint (DESIGN §10). */
  attestation: SessionLimits & { helloBodyLimit: number };
  /** Long-polls of GET /v1/entries/authorized?wait=N (docs/api.md). */
  longPoll: LongPollLimits;
  /** SPIFFE Federation: bundle endpoint, refresh timing, relationships (docs/federation.md). */
  federation: FederationConfig;
  /** glibc's mmap threshold for this process, bytes; 0 leaves the C library's own (docs/api.md "Memory per connection"). */
  mallocMmapThreshold: number;
  /** Directory of the config file; relative paths in the config resolve against it. */
  configDir: string;
}

/** Defaults of the agent-facing HTTPS listener (also when `listen` is given as "<host>:<port>"). */
const LISTEN_DEFAULTS = { address: '127.0.0.1', port: 8443, maxConnections: 16384, maxConnectionsPerAddress: 1024 } as const;

/**
 * The federation block with the bundle endpoint's connection caps
 * (`federation.bundleEndpoint.maxConnections`, `maxConnectionsPerAddress`, named like the
 * listener's caps; defaults BUNDLE_ENDPOINT_CAPS).
 */
const federationWithEndpointCaps = {
  ...federationSchema,
  properties: {
    ...federationSchema.properties,
    bundleEndpoint: {
      ...federationSchema.properties.bundleEndpoint,
      properties: {
        ...federationSchema.properties.bundleEndpoint.properties,
        maxConnections: { type: 'integer', minimum: 1, maximum: 1_000_000, default: BUNDLE_ENDPOINT_CAPS.maxConnections },
        maxConnectionsPerAddress: { type: 'integer', minimum: 1, maximum: 1_000_000, default: BUNDLE_ENDPOINT_CAPS.maxConnectionsPerAddress },
      },
    },
  },
} as const;

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['trustDomain', 'dataDir'],
  properties: {
    trustDomain: { type: 'string', minLength: 1, maxLength: 255 },
    // "<host>:<port>" / "[<ipv6>]:<port>" (the form every listen key takes), or the object form,
    // which also holds the connection caps; address and port are checked by listenAddressFrom.
    listen: {
      type: ['string', 'object'],
      minLength: 1,
      maxLength: 300,
      additionalProperties: false,
      properties: {
        address: { type: 'string', minLength: 1, default: LISTEN_DEFAULTS.address },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: LISTEN_DEFAULTS.port },
        maxConnections: { type: 'integer', minimum: 1, maximum: 1_000_000, default: LISTEN_DEFAULTS.maxConnections },
        maxConnectionsPerAddress: { type: 'integer', minimum: 1, maximum: 1_000_000, default: LISTEN_DEFAULTS.maxConnectionsPerAddress },
      },
      default: {},
    },
    adminSocket: { type: 'string', minLength: 1, default: '/run/sigil/admin.sock' },
    dataDir: { type: 'string', minLength: 1 },
    datastore: {
      type: 'object',
      additionalProperties: false,
      required: ['kind'],
      properties: {
        kind: { enum: ['sqlite', 'postgres'] },
        url: { type: 'string', minLength: 1 },
        schema: { type: 'string', pattern: '^[a-z_][a-z0-9_]{0,62}$' },
      },
      default: { kind: 'sqlite' },
    },
    ca: {
      type: 'object',
      additionalProperties: false,
      properties: {
        keyType: { enum: ['ec-p256', 'ec-p384', 'rsa-2048'], default: 'ec-p256' },
        ttl: { ...durationSchema, default: '24h' },
        upstream: {
          type: 'object',
          additionalProperties: false,
          required: ['cert', 'key'],
          properties: { cert: { type: 'string', minLength: 1 }, key: { type: 'string', minLength: 1 } },
        },
      },
      default: {},
    },
    svid: {
      type: 'object',
      additionalProperties: false,
      properties: { x509Ttl: { ...durationSchema, default: '1h' }, jwtTtl: { ...durationSchema, default: '5m' }, agentTtl: { ...durationSchema, default: '1h' } },
      default: {},
    },
    jwtKeyType: { enum: ['ec-p256', 'ec-p384', 'rsa-2048'], default: 'ec-p256' },
    requireAttestors: { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true, default: [] },
    nodeAttestors: { type: 'object', minProperties: 1, additionalProperties: { type: 'object' } },
    plugins: { type: 'object', additionalProperties: { type: 'string', minLength: 1 }, default: {} },
    logLevel: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    mallocMmapThreshold: mmapThresholdSchema,
    attestation: {
      type: 'object',
      additionalProperties: false,
      properties: {
        sessionTtl: { ...durationSchema, default: `${SESSION_DEFAULTS.sessionTtlSeconds}s` },
        maxSessions: { type: 'integer', minimum: 1, maximum: 1_000_000, default: SESSION_DEFAULTS.maxSessions },
        reservedSessions: { type: 'integer', minimum: 0, default: SESSION_DEFAULTS.reservedSessions },
        maxSessionsPerCredential: { type: 'integer', minimum: 1, default: SESSION_DEFAULTS.maxSessionsPerCredential },
        maxSessionsPerAddress: { type: 'integer', minimum: 1, default: SESSION_DEFAULTS.maxSessionsPerAddress },
        helloBodyLimit: { type: 'integer', minimum: 4096, maximum: 1024 * 1024, default: SESSION_DEFAULTS.helloBodyLimit },
      },
      default: {},
    },
    federation: federationWithEndpointCaps,
    longPoll: {
      type: 'object',
      additionalProperties: false,
      properties: {
        maxWait: { ...durationSchema, default: `${LONG_POLL_DEFAULTS.maxWaitSeconds}s` },
        maxWaiters: { type: 'integer', minimum: 0, maximum: 1_000_000, default: LONG_POLL_DEFAULTS.maxWaiters },
        maxWaitersPerAgent: { type: 'integer', minimum: 1, maximum: 64, default: LONG_POLL_DEFAULTS.maxWaitersPerAgent },
      },
      default: {},
    },
  },
} as const;

interface RawConfig {
  trustDomain: string;
  listen: string | { address: string; port: number; maxConnections: number; maxConnectionsPerAddress: number };
  adminSocket: string;
  dataDir: string;
  datastore: { kind: 'sqlite' | 'postgres'; url?: string; schema?: string };
  ca: { keyType: 'ec-p256' | 'ec-p384' | 'rsa-2048'; ttl: string | number; upstream?: { cert: string; key: string } };
  svid: { x509Ttl: string | number; jwtTtl: string | number; agentTtl: string | number };
  jwtKeyType: 'ec-p256' | 'ec-p384' | 'rsa-2048';
  requireAttestors: string[];
  nodeAttestors?: Record<string, unknown>;
  plugins: Record<string, string>;
  logLevel: string;
  mallocMmapThreshold: number;
  attestation: { sessionTtl: string | number; maxSessions: number; reservedSessions: number; maxSessionsPerCredential: number; maxSessionsPerAddress: number; helloBodyLimit: number };
  longPoll: { maxWait: string | number; maxWaiters: number; maxWaitersPerAgent: number };
  federation: RawFederation & { bundleEndpoint?: { maxConnections: number; maxConnectionsPerAddress: number } };
}

/** Validate a parsed config object. `configDir` anchors relative paths. */
export function verifierConfigFrom(raw: unknown, configDir: string): VerifierConfig {
  const c = validateAgainstSchema<RawConfig>(schema, structuredClone(raw ?? {}), 'verifier config');
  const trustDomain = parseTrustDomain(c.trustDomain);
  let datastore: VerifierConfig['datastore'] = { kind: 'sqlite' };
  if (c.datastore.kind === 'postgres') {
    if (!c.datastore.url) throw new SigilError('config.invalid', 'verifier config: /datastore: kind "postgres" needs "url" (postgres://user@host:5432/db)');
    datastore = { kind: 'postgres', url: c.datastore.url, ...(c.datastore.schema ? { schema: c.datastore.schema } : {}) };
  } else if (c.datastore.url !== undefined || c.datastore.schema !== undefined) {
    throw new SigilError('config.invalid', 'verifier config: /datastore: "url" and "schema" only apply to kind "postgres"');
  }
  const nodeAttestors = c.nodeAttestors ?? { join_token: {} };
  for (const name of c.requireAttestors) {
    if (!(name in nodeAttestors)) {
      throw new SigilError('config.invalid', `verifier config: /requireAttestors lists "${name}" but /nodeAttestors has no "${name}" block`);
    }
  }
  const ca = {
    keyType: c.ca.keyType,
    ttlSeconds: parseDuration(c.ca.ttl, 'ca.ttl'),
    ...(c.ca.upstream ? { upstream: { cert: resolve(configDir, c.ca.upstream.cert), key: resolve(configDir, c.ca.upstream.key) } } : {}),
  };
  const svid = { x509TtlSeconds: parseDuration(c.svid.x509Ttl, 'svid.x509Ttl'), jwtTtlSeconds: parseDuration(c.svid.jwtTtl, 'svid.jwtTtl') };
  if (ca.ttlSeconds < 60) throw new SigilError('config.invalid', 'verifier config: /ca/ttl must be at least 60s');
  if (svid.x509TtlSeconds < 1 || svid.jwtTtlSeconds < 1) throw new SigilError('config.invalid', 'verifier config: /svid TTLs must be at least 1s');
  if (svid.x509TtlSeconds > ca.ttlSeconds / 6) {
    throw new SigilError('config.invalid', `verifier config: /svid/x509Ttl (${svid.x509TtlSeconds}s) must be at most a sixth of /ca/ttl (${ca.ttlSeconds}s) so SVIDs never outlive the CA's overlap`);
  }
  const sessionTtlSeconds = parseDuration(c.attestation.sessionTtl, 'attestation.sessionTtl');
  if (sessionTtlSeconds < 5 || sessionTtlSeconds > 300) throw new SigilError('config.invalid', 'verifier config: /attestation/sessionTtl must be between 5s and 5m');
  if (c.attestation.reservedSessions >= c.attestation.maxSessions) {
    throw new SigilError('config.invalid', 'verifier config: /attestation/reservedSessions must be less than /attestation/maxSessions');
  }
  const maxWaitSeconds = parseDuration(c.longPoll.maxWait, 'longPoll.maxWait');
  // The HTTPS listener drops a connection idle for 30 s (connectionTimeout), a held long-poll included.
  if (maxWaitSeconds < 1 || maxWaitSeconds > 25) throw new SigilError('config.invalid', 'verifier config: /longPoll/maxWait must be between 1s and 25s');
  const listen = listenAddressFrom(c.listen, 'verifier config: /listen', { allowPortZero: true });
  const caps = typeof c.listen === 'string' ? { maxConnections: LISTEN_DEFAULTS.maxConnections, maxConnectionsPerAddress: LISTEN_DEFAULTS.maxConnectionsPerAddress } : c.listen;
  const federation = federationConfigFrom(c.federation, trustDomain, configDir);
  const endpointCaps = c.federation.bundleEndpoint;
  if (federation.bundleEndpoint && endpointCaps) {
    federation.bundleEndpoint = { ...federation.bundleEndpoint, maxConnections: endpointCaps.maxConnections, maxConnectionsPerAddress: endpointCaps.maxConnectionsPerAddress };
  }
  return {
    trustDomain,
    listen: { address: listen.host, port: listen.port, maxConnections: caps.maxConnections, maxConnectionsPerAddress: caps.maxConnectionsPerAddress },
    adminSocket: resolve(configDir, c.adminSocket),
    dataDir: resolve(configDir, c.dataDir),
    datastore,
    ca,
    svid,
    agentSvidTtlSeconds: parseDuration(c.svid.agentTtl, 'svid.agentTtl'),
    jwtKeyType: c.jwtKeyType,
    requireAttestors: c.requireAttestors,
    nodeAttestors,
    plugins: c.plugins,
    logLevel: c.logLevel,
    attestation: {
      sessionTtlSeconds,
      maxSessions: c.attestation.maxSessions,
      reservedSessions: c.attestation.reservedSessions,
      maxSessionsPerCredential: c.attestation.maxSessionsPerCredential,
      maxSessionsPerAddress: c.attestation.maxSessionsPerAddress,
      helloBodyLimit: c.attestation.helloBodyLimit,
    },
    longPoll: { maxWaitSeconds, maxWaiters: c.longPoll.maxWaiters, maxWaitersPerAgent: c.longPoll.maxWaitersPerAgent },
    federation,
    mallocMmapThreshold: checkMmapThreshold(c.mallocMmapThreshold, 'verifier config'),
    configDir,
  };
}

export function loadVerifierConfig(path: string): VerifierConfig {
  const { raw, dir } = readConfigFile(path);
  return verifierConfigFrom(raw, dir);
}
