/**
 * Agent configuration (DESIGN §8): YAML or JSON, validated with JSON Schema (ajv) before anything
 * starts. Errors name the key, e.g. `agent config: /verifier/port must be integer`.
 */
import { resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { validateAgainstSchema } from '../plugins/validate.js';
import { parseTrustDomain } from '../spiffe/id.js';
import { readConfigFile } from '../util/config-file.js';
import { durationSchema, parseDuration } from '../util/duration.js';
import { listenAddressFrom } from '../util/listen.js';

export interface AgentConfig {
  trustDomain: string;
  verifier: { address: string; port: number };
  /** Bootstrap trust bundle (PEM), absolute path. */
  trustBundle: string;
  /** Workload API Unix socket, absolute path. */
  workloadApiSocket: string;
  dataDir: string;
  /** name → plugin config block (validated by the plugin loader against the plugin's schema). */
  nodeAttestors: Record<string, unknown>;
  workloadAttestors: Record<string, unknown>;
  /** Third-party plugins: name → module specifier or path (relative to the config file). */
  plugins: Record<string, string>;
  logLevel: string;
  /** Fraction of an X.509-SVID's lifetime after which it is rotated (± 10 % jitter). */
  x509SvidRotation: number;
  /** How often authorized entries and the bundle are fetched, in seconds. */
  syncIntervalSeconds: number;
  /** Directory of the config file; relative paths resolve against it. */
  configDir: string;
  /**
   * The Prometheus metrics and health endpoint (plain HTTP, unauthenticated); absent = none.
   * `host` is a name, an IPv4 address or an IPv6 address without brackets.
   */
  metrics?: { host: string; port: number };
}

export const DEFAULT_WORKLOAD_API_SOCKET = '/run/sigil/agent.sock';

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['trustDomain', 'verifier', 'trustBundle', 'dataDir', 'nodeAttestors'],
  properties: {
    trustDomain: { type: 'string', minLength: 1, maxLength: 255 },
    verifier: {
      type: 'object',
      additionalProperties: false,
      required: ['address'],
      properties: {
        address: { type: 'string', minLength: 1, maxLength: 255 },
        port: { type: 'integer', minimum: 1, maximum: 65535, default: 8443 },
      },
    },
    trustBundle: { type: 'string', minLength: 1 },
    workloadApiSocket: { type: 'string', minLength: 1, default: DEFAULT_WORKLOAD_API_SOCKET },
    dataDir: { type: 'string', minLength: 1 },
    nodeAttestors: { type: 'object', minProperties: 1, maxProperties: 8, additionalProperties: { type: ['object', 'null'] } },
    workloadAttestors: { type: 'object', additionalProperties: { type: ['object', 'null'] }, default: { unix: {} } },
    plugins: { type: 'object', additionalProperties: { type: 'string', minLength: 1 }, default: {} },
    logLevel: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    x509SvidRotation: { type: 'number', exclusiveMinimum: 0, maximum: 0.9, default: 0.5 },
    syncInterval: { ...durationSchema, default: '2s' },
    metrics: {
      type: 'object',
      additionalProperties: false,
      required: ['listen'],
      properties: {
        // "<host>:<port>" or "[<ipv6>]:<port>"; checked by listenAddressFrom (util/listen.ts) (ajv's pattern message would not say what is expected).
        listen: { type: 'string', minLength: 1, maxLength: 300 },
      },
    },
  },
} as const;

interface RawConfig {
  trustDomain: string;
  verifier: { address: string; port: number };
  trustBundle: string;
  workloadApiSocket: string;
  dataDir: string;
  nodeAttestors: Record<string, unknown>;
  workloadAttestors: Record<string, unknown>;
  plugins: Record<string, string>;
  logLevel: string;
  x509SvidRotation: number;
  syncInterval: string | number;
  metrics?: { listen: string };
}

// Listen addresses are parsed by util/listen.ts for every listen key; isLoopbackHost stays
// importable from here for the metrics endpoint and its tests.
export { isLoopbackHost } from '../util/listen.js';

/** Validate a parsed config object; `configDir` anchors relative paths. */
export function agentConfigFrom(raw: unknown, configDir: string): AgentConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new SigilError('config.invalid', 'agent config: (top level) must be an object');
  }
  const c = validateAgainstSchema<RawConfig>(schema, structuredClone(raw), 'agent config');
  let trustDomain: string;
  try {
    trustDomain = parseTrustDomain(c.trustDomain);
  } catch (e) {
    throw new SigilError('config.invalid', `agent config: /trustDomain ${errorMessage(e)}`);
  }
  let syncIntervalSeconds: number;
  try {
    syncIntervalSeconds = parseDuration(c.syncInterval, 'agent config: /syncInterval');
  } catch (e) {
    throw new SigilError('config.invalid', errorMessage(e));
  }
  if (syncIntervalSeconds < 0.05 || syncIntervalSeconds > 300) {
    throw new SigilError('config.invalid', `agent config: /syncInterval must be between 50ms and 5m (entry changes must reach workloads quickly), got ${syncIntervalSeconds}s`);
  }
  let metrics: { host: string; port: number } | undefined;
  if (c.metrics) {
    metrics = listenAddressFrom(c.metrics.listen, 'agent config: /metrics/listen');
  }
  const nullToEmpty = (m: Record<string, unknown>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v ?? {}]));
  return {
    trustDomain,
    verifier: { address: c.verifier.address, port: c.verifier.port },
    trustBundle: resolve(configDir, c.trustBundle),
    workloadApiSocket: resolve(configDir, c.workloadApiSocket.replace(/^unix:\/\//, '')),
    dataDir: resolve(configDir, c.dataDir),
    nodeAttestors: nullToEmpty(c.nodeAttestors),
    workloadAttestors: nullToEmpty(c.workloadAttestors),
    plugins: c.plugins,
    logLevel: c.logLevel,
    x509SvidRotation: c.x509SvidRotation,
    syncIntervalSeconds,
    configDir,
    ...(metrics ? { metrics } : {}),
  };
}

/** Read, parse (YAML ⊇ JSON) and validate an agent config file. */
export function loadAgentConfig(path: string): AgentConfig {
  const { raw, dir } = readConfigFile(path);
  return agentConfigFrom(raw, dir);
}
