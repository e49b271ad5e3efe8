/**
 * TCP listen addresses in config: one parser for every listen key (the verifier's `listen`, the
 * agent's `metrics.listen`). The form every key accepts is the string `"<host>:<port>"` (host name
 * or IPv4 address) or `"[<ipv6>]:<port>"`; keys that took an object `{ address, port }` before
 * (the verifier's `listen`) still take it. Hosts are returned without brackets, as `listen()` wants.
 */
import { BlockList, isIP } from 'node:net';
import { SigilError } from '../errors.js';

export interface ListenAddress {
  /** Host name, IPv4 address, or IPv6 address without brackets. */
  host: string;
  port: number;
}

export interface ListenOptions {
  /** Accept port 0 (the kernel picks a free port; tests and ephemeral listeners). Default false. */
  allowPortZero?: boolean;
}

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function portRange(opts: ListenOptions): string {
  return opts.allowPortZero ? 'from 0 to 65535 (0: any free port)' : 'from 1 to 65535';
}

/** Why `host` is not a listen host, or undefined when it is one (a name, an IPv4 or a bare IPv6 address). */
function hostProblem(host: string): string | undefined {
  if (host === '') return 'no host: use 0.0.0.0 for every IPv4 address, [::] for every address, or 127.0.0.1 for this machine only';
  if (isIP(host) !== 0) return undefined;
  // A name whose last label is all digits would be a malformed IPv4 address (as in WHATWG URLs).
  if (!HOST_NAME.test(host) || /(?:^|\.)[0-9]+$/.test(host)) return `${JSON.stringify(host)} is not a host name or IPv4 address`;
  return undefined;
}

function portOf(text: string, opts: ListenOptions): number | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port > 65535 || (port === 0 && !opts.allowPortZero) ? undefined : port;
}

/**
 * Parse `"<host>:<port>"` or `"[<ipv6>]:<port>"`, the port in decimal. Throws a plain Error whose
 * message says what is expected, to follow the key's name ("/metrics/listen must be …").
 */
export function parseListenAddress(value: string, opts: ListenOptions = {}): ListenAddress {
  const expected = `must be "<host>:<port>" or "[<ipv6>]:<port>" with a port ${portRange(opts)}, got ${JSON.stringify(value)}`;
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
    const problem = hostProblem(host);
    if (problem !== undefined) throw new Error(`${expected} (${problem})`);
  }
  const port = portOf(portText, opts);
  if (port === undefined) throw new Error(`${expected} (bad port)`);
  return { host, port };
}

/**
 * A listen key's value, in either form: the string `"<host>:<port>"` / `"[<ipv6>]:<port>"`, or the
 * object `{ address, port }` (address: name, IPv4 or IPv6 without brackets). `key` names the key
 * in messages (`verifier config: /listen`). Bad values → `config.invalid` naming the key.
 */
export function listenAddressFrom(value: unknown, key: string, opts: ListenOptions = {}): ListenAddress {
  if (typeof value === 'string') {
    try {
      return parseListenAddress(value, opts);
    } catch (e) {
      throw new SigilError('config.invalid', `${key} ${(e as Error).message}`);
    }
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const { address, port } = value as { address?: unknown; port?: unknown };
    if (typeof address !== 'string') throw new SigilError('config.invalid', `${key}/address must be a host name, an IPv4 address or an IPv6 address (without brackets)`);
    const bare = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
    if (isIP(bare) !== 6) {
      const problem = hostProblem(address);
      if (problem !== undefined) throw new SigilError('config.invalid', `${key}/address must be a host name, an IPv4 address or an IPv6 address, got ${JSON.stringify(address)} (${problem})`);
    }
    if (typeof port !== 'number' || !Number.isInteger(port) || port < (opts.allowPortZero ? 0 : 1) || port > 65535) {
      throw new SigilError('config.invalid', `${key}/port must be an integer ${portRange(opts)}, got ${JSON.stringify(port)}`);
    }
    return { host: bare, port };
  }
  throw new SigilError('config.invalid', `${key} must be "<host>:<port>", "[<ipv6>]:<port>" or { address, port }, got ${JSON.stringify(value)}`);
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
