import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentConfigFrom, isLoopbackHost, loadAgentConfig } from '../../src/agent/config.js';
import { SigilError } from '../../src/errors.js';

const base = {
  trustDomain: 'example.org',
  verifier: { address: '10.0.0.1', port: 8443 },
  trustBundle: 'bundle.pem',
  dataDir: 'data',
  nodeAttestors: { join_token: { token: 'a'.repeat(32) } },
};

function errOf(raw: unknown): SigilError {
  try {
    agentConfigFrom(raw, '/etc/sigil');
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return e as SigilError;
  }
  throw new Error('config was accepted');
}

describe('agent config', () => {
  it('fills defaults and resolves paths against the config directory', () => {
    const c = agentConfigFrom({ ...base, verifier: { address: 'v.example.org' } }, '/etc/sigil');
    expect(c.verifier).toEqual({ address: 'v.example.org', port: 8443 });
    expect(c.trustBundle).toBe('/etc/sigil/bundle.pem');
    expect(c.dataDir).toBe('/etc/sigil/data');
    expect(c.workloadApiSocket).toBe('/run/sigil/agent.sock');
    expect(c.workloadAttestors).toEqual({ unix: {} });
    expect(c.x509SvidRotation).toBe(0.5);
    expect(c.syncIntervalSeconds).toBe(2);
    expect(c.logLevel).toBe('info');
    expect(c.plugins).toEqual({});
    expect(c.configDir).toBe('/etc/sigil');
    expect(c.metrics).toBeUndefined();
  });

  it('accepts every optional key', () => {
    const c = agentConfigFrom(
      {
        ...base,
        workloadApiSocket: 'unix:///run/x/agent.sock',
        workloadAttestors: { unix: { hashBinaries: false }, container: null },
        plugins: { acme: './acme.js' },
        logLevel: 'debug',
        x509SvidRotation: 0.3,
        syncInterval: '500ms',
        metrics: { listen: '127.0.0.1:9090' },
      },
      '/etc/sigil',
    );
    expect(c.metrics).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(c.workloadApiSocket).toBe('/run/x/agent.sock');
    expect(c.workloadAttestors).toEqual({ unix: { hashBinaries: false }, container: {} });
    expect(c.plugins).toEqual({ acme: './acme.js' });
    expect(c.x509SvidRotation).toBe(0.3);
    expect(c.syncIntervalSeconds).toBe(0.5);
    expect(agentConfigFrom({ ...base, syncInterval: 3 }, '/').syncIntervalSeconds).toBe(3);
  });

  it('names the offending key', () => {
    expect(errOf({ ...base, verifier: { address: 'x', port: '8443' } }).message).toBe('agent config: /verifier/port must be integer');
    expect(errOf({ ...base, verifier: { address: 'x', port: 70000 } }).message).toMatch(/^agent config: \/verifier\/port must be <= 65535/);
    expect(errOf({ ...base, extra: 1 }).message).toBe('agent config: (top level): unknown key "extra"');
    expect(errOf({ ...base, verifier: { address: 'x', host: 'y' } }).message).toMatch(/\/verifier: unknown key "host"/);
    const { nodeAttestors: _n, ...noNode } = base;
    expect(errOf(noNode).message).toMatch(/missing required key "nodeAttestors"/);
    expect(errOf({ ...base, nodeAttestors: {} }).message).toMatch(/\/nodeAttestors must NOT have fewer than 1 properties/);
    expect(errOf({ ...base, nodeAttestors: { tpm: 'yes' } }).message).toMatch(/\/nodeAttestors\/tpm must be object,null/);
    expect(errOf({ ...base, x509SvidRotation: 0 }).message).toMatch(/\/x509SvidRotation must be > 0/);
    expect(errOf({ ...base, x509SvidRotation: 0.95 }).message).toMatch(/\/x509SvidRotation must be <= 0.9/);
    expect(errOf({ ...base, logLevel: 'loud' }).message).toMatch(/\/logLevel must be equal to one of the allowed values/);
    expect(errOf({ ...base, syncInterval: 'soon' }).message).toMatch(/\/syncInterval/);
    expect(errOf({ ...base, syncInterval: '10m' }).message).toMatch(/\/syncInterval must be between/);
    expect(errOf({ ...base, trustDomain: 'Example.org' }).message).toMatch(/^agent config: \/trustDomain/);
    expect(errOf({ ...base, plugins: { x: 3 } }).message).toMatch(/\/plugins\/x must be string/);
    expect(errOf([]).message).toMatch(/must be an object/);
    expect(errOf({ ...base, trustDomain: 1 }).code).toBe('config.invalid');
  });

  it('parses metrics.listen as <host>:<port> or [<ipv6>]:<port>', () => {
    const listen = (l: string) => agentConfigFrom({ ...base, metrics: { listen: l } }, '/').metrics;
    expect(listen('127.0.0.1:9090')).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(listen('localhost:1')).toEqual({ host: 'localhost', port: 1 });
    expect(listen('0.0.0.0:65535')).toEqual({ host: '0.0.0.0', port: 65535 });
    expect(listen('metrics.node-1.example.org:9102')).toEqual({ host: 'metrics.node-1.example.org', port: 9102 });
    expect(listen('[::1]:9090')).toEqual({ host: '::1', port: 9090 });
    expect(listen('[::]:9090')).toEqual({ host: '::', port: 9090 });
    expect(listen('[fd00::12:3]:80')).toEqual({ host: 'fd00::12:3', port: 80 });
  });

  it('refuses a bad metrics block, naming /metrics/listen', () => {
    const bad = (l: unknown) => errOf({ ...base, metrics: { listen: l } });
    const wants = '^agent config: /metrics/listen must be "<host>:<port>" or "\\[<ipv6>\\]:<port>" with a port from 1 to 65535';
    for (const l of ['127.0.0.1', '127.0.0.1:', '127.0.0.1:0', '127.0.0.1:65536', '127.0.0.1:99999', '127.0.0.1:80a', '127.0.0.1:+80', '127.0.0.1: 80', ':9090', '::1:9090', '[::1]', '[::1]9090', '[127.0.0.1]:80', '[nope]:80', 'bad host:80', '-x.example:80', 'http://127.0.0.1:80', '1.2.3.4.5:80', '999.1.1.1:80', '10.0.0:80']) {
      const e = bad(l);
      expect(e.code, l).toBe('config.invalid');
      expect(e.message, l).toMatch(new RegExp(wants));
      expect(e.message, l).toContain(`got ${JSON.stringify(l)}`);
    }
    expect(bad('::1:9090').message).toMatch(/IPv6 address goes in brackets/);
    expect(bad('127.0.0.1:0').message).toMatch(/bad port/);
    expect(bad('[nope]:80').message).toMatch(/"nope" is not an IPv6 address/);
    expect(bad('999.1.1.1:80').message).toMatch(/"999.1.1.1" is not a host name or IPv4 address/);
    expect(bad(9090).message).toBe('agent config: /metrics/listen must be string');
    expect(bad('').message).toMatch(/^agent config: \/metrics\/listen must NOT have fewer than 1 characters/);
    expect(errOf({ ...base, metrics: {} }).message).toMatch(/\/metrics: missing required key "listen"/);
    expect(errOf({ ...base, metrics: { listen: '127.0.0.1:9090', path: '/m' } }).message).toMatch(/\/metrics: unknown key "path"/);
    expect(errOf({ ...base, metrics: '127.0.0.1:9090' }).message).toBe('agent config: /metrics must be object');
  });

  it('tells loopback listen hosts from others', () => {
    for (const h of ['127.0.0.1', '127.8.9.10', 'localhost', 'LOCALHOST', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1']) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['0.0.0.0', '10.0.0.1', '128.0.0.1', '::', '::2', 'fe80::1', 'metrics.example.org', 'localhost.example.org']) expect(isLoopbackHost(h), h).toBe(false);
  });

  it('loads YAML and JSON files and reports unreadable or unparsable ones', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-acfg-'));
    const yml = join(dir, 'agent.yaml');
    writeFileSync(
      yml,
      ['trustDomain: example.org', 'verifier: { address: 127.0.0.1, port: 9443 }', 'trustBundle: b.pem', 'dataDir: d', 'nodeAttestors:', '  join_token: { tokenFile: tok }', ''].join('\n'),
    );
    const c = loadAgentConfig(yml);
    expect(c.verifier.port).toBe(9443);
    expect(c.trustBundle).toBe(join(dir, 'b.pem'));
    expect(c.nodeAttestors).toEqual({ join_token: { tokenFile: 'tok' } });
    const js = join(dir, 'agent.json');
    writeFileSync(js, JSON.stringify(base));
    expect(loadAgentConfig(js).dataDir).toBe(join(dir, 'data'));
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'trustDomain: [unclosed\n');
    expect(() => loadAgentConfig(bad)).toThrow(expect.objectContaining({ code: 'config.parse_failed' }));
    expect(() => loadAgentConfig(join(dir, 'missing.yaml'))).toThrow(expect.objectContaining({ code: 'config.unreadable' }));
  });
});
