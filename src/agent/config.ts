/**
 * Agent configuration (DESIGN §8): YAML or JSON, validated with JSON Schema (ajv) before anything
 * starts. Errors name the key, e.g. `agent config: /verifier/port must be integer`.
 */
import { BlockList, isIP } from 'node:net';
import { resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { validateAgainstSchema } from '../plugins/validate.js';
import { parseTrustDomain } from '../spiffe/id.js';
import { readConfigFile } from '../util/config-file.js';
import { durationSchema, parseDuration } from '../util/duration.js';

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
        // "<host>:<port>" or "[<ipv6>]:<port>"; checked by parseListenAddress (ajv's pattern message would not say what is expected).
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

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * Parse a TCP listen address: `<host>:<port>` (host name or IPv4 address) or `[<ipv6>]:<port>`.
 * The port is 1–65535 in decimal. Throws a plain Error whose message says what is expected.
 */
export function parseListenAddress(value: string): { host: string; port: number } {
  const expected = `must be "<host>:<port>" or "[<ipv6>]:<port>" with a port from 1 to 65535, got ${JSON.stringify(value)}`;
  let host: string;
  let portText: string;
  if (value.startsWith('[')) {
    const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(value);
    if (!bracketed) throw new Error(`${expected} (no ":<port>" after the bracketed address)`);
    host = bracketed[1]!;
    portText = bracketed[2]!;
    if (isIP(host) !== 6) throw new Error(`${expected} (${JSON.stringify(host)} is not an IPv6 address)`);
  } else {
    const colon = value.lastIndexOf(':');
    if (colon < 0) throw new Error(`${expected} (no port)`);
    host = value.slice(0, colon);
    portText = value.slice(colon + 1);
    if (host.includes(':')) throw new Error(`${expected} (an IPv6 address goes in brackets: "[::1]:9090")`);
    // A name whose last label is all digits would be a malformed IPv4 address (as in WHATWG URLs).
    if (isIP(host) !== 4 && (!HOST_NAME.test(host) || /(?:^|\.)[0-9]+$/.test(host))) {
      throw new Error(`${expected} (${JSON.stringify(host)} is not a host name or IPv4 address)`);
    }
  }
  if (!/^[0-9]{1,5}$/.test(portText)) throw new Error(`${expected} (bad port)`);
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new Error(`${expected} (bad port)`);
  return { host, port };
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * Whether a listen host only accepts connections from this machine: `localhost`, 127.0.0.0/8 or
 * ::1 (in any spelling, IPv4-mapped included). Any other name counts as not loopback.
 */
export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  if (family === 4) return LOOPBACK.check(host, 'ipv4');
  if (family === 6) return LOOPBACK.check(host, 'ipv6');
  return false;
}

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
    try {
      metrics = parseListenAddress(c.metrics.listen);
    } catch (e) {
      throw new SigilError('config.invalid', `agent config: /metrics/listen ${errorMessage(e)}`);
    }
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
