import { describe, expect, it } from 'vitest';
import { isSigilError } from '../../src/errors.js';
import { agentConfigFrom } from '../../src/agent/config.js';
import { isLoopbackHost, listenAddressFrom, parseListenAddress } from '../../src/util/listen.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';

function refusal(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (e) {
    if (isSigilError(e)) return { code: e.code, message: e.message };
    return { code: 'plain Error', message: (e as Error).message };
  }
  throw new Error('expected a refusal');
}

describe('parseListenAddress', () => {
  it('host names, IPv4 and bracketed IPv6, the host returned without brackets', () => {
    expect(parseListenAddress('127.0.0.1:9102')).toEqual({ host: '127.0.0.1', port: 9102 });
    expect(parseListenAddress('[::1]:9102')).toEqual({ host: '::1', port: 9102 });
    expect(parseListenAddress('[::]:443')).toEqual({ host: '::', port: 443 });
    expect(parseListenAddress('[fe80::1:2]:65535')).toEqual({ host: 'fe80::1:2', port: 65535 });
    expect(parseListenAddress('node-1.example.org:1')).toEqual({ host: 'node-1.example.org', port: 1 });
  });

  it('bad ports: 0 unless allowed, > 65535, signs, spaces, hex, missing', () => {
    for (const v of ['h:0', 'h:65536', 'h:99999', 'h:+1', 'h:-1', 'h: 1', 'h:0x10', 'h:', 'h:1.0', 'h:123456']) {
      expect(() => parseListenAddress(v), v).toThrow(/bad port/);
    }
    expect(parseListenAddress('h:0', { allowPortZero: true })).toEqual({ host: 'h', port: 0 });
    expect(() => parseListenAddress('h:0', { allowPortZero: true })).not.toThrow();
    expect(() => parseListenAddress('h')).toThrow(/no port/);
  });

  it('a missing host says how to listen everywhere', () => {
    expect(() => parseListenAddress(':9102')).toThrow(/no host: use 0\.0\.0\.0 .* \[::\]/);
  });

  it('IPv6 without brackets, brackets around IPv4, malformed IPv4 and names are refused', () => {
    expect(() => parseListenAddress('::1:9102')).toThrow(/IPv6 address goes in brackets/);
    expect(() => parseListenAddress('[127.0.0.1]:80')).toThrow(/"127.0.0.1" is not an IPv6 address/);
    expect(() => parseListenAddress('[::1]')).toThrow(/no ":<port>" after/);
    expect(() => parseListenAddress('999.1.1.1:80')).toThrow(/is not a host name or IPv4 address/);
    expect(() => parseListenAddress('10.0.0:80')).toThrow(/is not a host name or IPv4 address/);
    expect(() => parseListenAddress('bad host:80')).toThrow(/is not a host name or IPv4 address/);
    expect(() => parseListenAddress('http://127.0.0.1:80')).toThrow(/must be "<host>:<port>"/);
  });
});

describe('listenAddressFrom: both forms, errors name the key', () => {
  const key = 'verifier config: /listen';
  it('string and { address, port } give the same address', () => {
    expect(listenAddressFrom('[::1]:9102', key)).toEqual({ host: '::1', port: 9102 });
    expect(listenAddressFrom({ address: '::1', port: 9102 }, key)).toEqual({ host: '::1', port: 9102 });
    expect(listenAddressFrom({ address: '[::1]', port: 9102 }, key)).toEqual({ host: '::1', port: 9102 });
    expect(listenAddressFrom({ address: '0.0.0.0', port: 0 }, key, { allowPortZero: true })).toEqual({ host: '0.0.0.0', port: 0 });
  });
  it('refusals are config.invalid and name the key (and the sub-key in the object form)', () => {
    const cases: [unknown, RegExp][] = [
      ['127.0.0.1:70000', /^verifier config: \/listen must be "<host>:<port>" .*got "127\.0\.0\.1:70000" \(bad port\)$/],
      [':8443', /^verifier config: \/listen must be .*\(no host/],
      [{ address: '', port: 8443 }, /^verifier config: \/listen\/address must be .*\(no host/],
      [{ address: 'a b', port: 8443 }, /^verifier config: \/listen\/address must be/],
      [{ address: '127.0.0.1', port: 0 }, /^verifier config: \/listen\/port must be an integer from 1 to 65535, got 0$/],
      [{ address: '127.0.0.1', port: 70000 }, /^verifier config: \/listen\/port must be an integer/],
      [{ port: 1 }, /^verifier config: \/listen\/address must be/],
      [8443, /^verifier config: \/listen must be "<host>:<port>", "\[<ipv6>\]:<port>" or \{ address, port \}, got 8443$/],
    ];
    for (const [v, re] of cases) {
      const r = refusal(() => listenAddressFrom(v, key));
      expect(r.code, JSON.stringify(v)).toBe('config.invalid');
      expect(r.message, JSON.stringify(v)).toMatch(re);
    }
  });
});

describe('every listen key takes "<host>:<port>"', () => {
  const verifierBase = { trustDomain: 'example.org', dataDir: '/var/lib/sigil' };
  it('verifier listen: the string form, with the default connection caps', () => {
    const c = verifierConfigFrom({ ...verifierBase, listen: '[::1]:8443' }, '/');
    expect(c.listen).toEqual({ address: '::1', port: 8443, maxConnections: 16384, maxConnectionsPerAddress: 1024 });
    expect(verifierConfigFrom({ ...verifierBase, listen: '0.0.0.0:0' }, '/').listen.port).toBe(0);
  });
  it('verifier listen: the object form still works, caps included; absent = 127.0.0.1:8443', () => {
    const c = verifierConfigFrom({ ...verifierBase, listen: { address: '0.0.0.0', port: 9443, maxConnections: 10 } }, '/');
    expect(c.listen).toEqual({ address: '0.0.0.0', port: 9443, maxConnections: 10, maxConnectionsPerAddress: 1024 });
    expect(verifierConfigFrom(verifierBase, '/').listen).toEqual({ address: '127.0.0.1', port: 8443, maxConnections: 16384, maxConnectionsPerAddress: 1024 });
  });
  it('verifier listen: bad values name /listen', () => {
    expect(refusal(() => verifierConfigFrom({ ...verifierBase, listen: '::1:8443' }, '/')).message).toMatch(/^verifier config: \/listen must be .*IPv6 address goes in brackets/);
    expect(refusal(() => verifierConfigFrom({ ...verifierBase, listen: { address: '127.0.0.1', port: 8443, backlog: 5 } }, '/')).message).toMatch(/\/listen: unknown key "backlog"/);
  });
  it('agent metrics.listen: the string form, errors name /metrics/listen', () => {
    const base = {
      trustDomain: 'example.org',
      verifier: { address: 'verifier.example.org' },
      trustBundle: '/etc/sigil/bundle.pem',
      dataDir: '/var/lib/sigil-agent',
      nodeAttestors: { join_token: {} },
    };
    expect(agentConfigFrom({ ...base, metrics: { listen: '[::1]:9102' } }, '/').metrics).toEqual({ host: '::1', port: 9102 });
    const r = refusal(() => agentConfigFrom({ ...base, metrics: { listen: '127.0.0.1:0' } }, '/'));
    expect(r.code).toBe('config.invalid');
    expect(r.message).toMatch(/^agent config: \/metrics\/listen must be .* with a port from 1 to 65535, got "127\.0\.0\.1:0" \(bad port\)$/);
  });
});

describe('isLoopbackHost', () => {
  it('localhost, 127/8 and ::1 in any spelling; nothing else', () => {
    for (const h of ['localhost', '127.0.0.1', '127.255.0.1', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', 'localhost.example.org', '::2']) expect(isLoopbackHost(h), h).toBe(false);
  });
});
